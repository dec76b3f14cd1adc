"""AffectNet, 7 or 8 classes, read from either release as it ships (docs/datasets.md#affectnet).

* **CSV release** (the original): ``Manually_Annotated_file_lists/{training,validation}.csv`` and
  ``Manually_Annotated_Images/<subDirectory>/<file>``; pictures are cropped to the row's face box.
* **npy release** (the newer one the POSTER/BTN code uses): ``train_set/images/<id>.jpg`` with
  ``train_set/annotations/<id>_exp.npy``, and the same under ``val_set/`` (POSTER's lists say
  ``valid_set/``; both are accepted). Faces are already aligned.

The official validation set (500 per class) is our **test** split, as in every paper; our validation
split is a seeded, stratified carve of training.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fer_lightning.data.base import FERDataModule, SplitBuilder, SplitTable
from fer_lightning.data.formats import (
    AFFECTNET_CLASS_NAMES,
    AFFECTNET_CSV_HEADER,
    AFFECTNET_CSV_IMAGE_DIR,
    AFFECTNET_CSV_LIST_DIR,
    AFFECTNET_NON_EXPRESSION_NAMES,
)
from fer_lightning.data.io import BadSampleError, DirectoryIndex, FaceCrop
from fer_lightning.data.synthetic import default_cache_dir
from fer_lightning.errors import DatasetNotFoundError

#: Ids of rows that are not an expression; every setting drops them.
NON_EXPRESSION_IDS = dict(enumerate(AFFECTNET_NON_EXPRESSION_NAMES, start=len(AFFECTNET_CLASS_NAMES)))

CSV_LIST_DIR = AFFECTNET_CSV_LIST_DIR
CSV_IMAGE_DIR = AFFECTNET_CSV_IMAGE_DIR
CSV_COLUMNS = AFFECTNET_CSV_HEADER
_CSV_REQUIRED = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "expression")
NPY_TRAIN_DIR = "train_set"
NPY_TEST_DIRS = ("val_set", "valid_set")

_NPY_ANNOTATION = re.compile(r"^(?P<id>.+)_exp\.npy$")


class AffectNetDataModule(FERDataModule):
    """AffectNet with ``num_classes`` 7 (Contempt dropped) or 8, from either release (auto-detected).

    Rows dropped and counted on every run, as the dataset ships them: expression 8/9/10 (None,
    Uncertain, No-Face), Contempt in the 7-class setting, a face box with width or height ≤ 0 (CSV),
    and annotated images missing from the folder (3FabRec notes at least one). Malformed rows and ids
    outside 0..10 are bad input (see ``on_bad_sample``).

    Args:
        num_classes: 7 (Neutral … Anger) or 8 (adds Contempt); ids keep AffectNet's order.
        release: ``auto`` (by the folders present), ``csv`` or ``npy``. With ``synthetic_size`` and no
            root, ``auto``/``csv`` generate the CSV release and ``npy`` the npy release.
        crop_margin: CSV release: grow the face box by this fraction of its side on every side before
            cropping (0 = the annotated box). The crop is made square about the box centre.
        crop_size: CSV release: resize crops to this side before augmentation (None: keep the crop's
            own size; the transform resizes to ``img_size`` anyway).
        crop_cache: CSV release: write each crop once to ``crop_cache_dir`` and decode the crop on later
            epochs instead of the whole picture. Off by default: AffectNet pictures are small.
        crop_cache_dir: folder of that cache; default ``$FER_LIGHTNING_CACHE/face_crops``.
        **kwargs: the shared options of :class:`~fer_lightning.data.base.FERDataModule`.
    """

    DATASET_NAME = "AffectNet"
    CLASS_NAMES = AFFECTNET_CLASS_NAMES[:7]
    SYNTHETIC_FORMAT = "affectnet_csv"
    ROOT_MARKERS = (CSV_LIST_DIR, f"{NPY_TRAIN_DIR}/annotations")

    def __init__(
        self,
        root: str | None = None,
        num_classes: Literal[7, 8] = 7,
        release: Literal["auto", "csv", "npy"] = "auto",
        crop_margin: float = 0.0,
        crop_size: int | None = None,
        crop_cache: bool = False,
        crop_cache_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        if num_classes not in (7, 8):
            raise ValueError(f"AffectNet: data.num_classes must be 7 or 8, got {num_classes!r}")
        if release not in ("auto", "csv", "npy"):
            raise ValueError(f"AffectNet: data.release must be 'auto', 'csv' or 'npy', got {release!r}")
        super().__init__(root=root, **kwargs)
        self.class_names = list(AFFECTNET_CLASS_NAMES[:num_classes])
        self.num_classes = num_classes
        self.SYNTHETIC_FORMAT = "affectnet_npy" if release == "npy" else "affectnet_csv"
        self.configure_face_crops(crop_margin, crop_size, crop_cache, crop_cache_dir)

    def layout_hint(self) -> str:
        return (
            f"expected the CSV release ({CSV_LIST_DIR}/training.csv, validation.csv and {CSV_IMAGE_DIR}/) or "
            f"the npy release ({NPY_TRAIN_DIR}/images/<id>.jpg, {NPY_TRAIN_DIR}/annotations/<id>_exp.npy and "
            "the same under val_set/ or valid_set/)"
        )

    def detect_release(self, root: Path) -> Literal["csv", "npy"]:
        """``csv`` or ``npy``, from ``data.release`` or from which release's folders exist under ``root``."""
        if self.hparams.release != "auto":
            return self.hparams.release
        has_csv = (root / CSV_LIST_DIR).is_dir()
        has_npy = (root / NPY_TRAIN_DIR / "annotations").is_dir()
        if has_csv and has_npy:
            raise ValueError(f"AffectNet: {root} holds both releases; choose one with data.release=csv|npy")
        if not (has_csv or has_npy):
            raise DatasetNotFoundError(f"AffectNet: no release found under {root} ({self.layout_hint()})")
        return "csv" if has_csv else "npy"

    def read_splits(self, root: Path) -> dict[str, SplitTable]:
        if self.detect_release(root) == "csv":
            return self._read_csv_release(root)
        return self._read_npy_release(root)

    # ---- shared row checks --------------------------------------------------------------------
    def _keep_expression(self, builder: SplitBuilder, expression: int, where: str) -> bool:
        """Drop the ids the setting does not use; ids outside 0..10 are bad input."""
        if expression in NON_EXPRESSION_IDS:
            builder.drop(f"expression {expression} ({NON_EXPRESSION_IDS[expression]})", where)
            return False
        if expression == 7 and self.num_classes == 7:
            builder.drop("expression 7 (Contempt, 7-class setting)", where)
            return False
        if not 0 <= expression < self.num_classes:
            builder.bad("label out of range", f"{where}: expression {expression} is outside 0..10")
            return False
        return True

    # ---- CSV release --------------------------------------------------------------------------
    def _read_csv_release(self, root: Path) -> dict[str, SplitTable]:
        images = DirectoryIndex()
        tables = {}
        for split, stem in (("train", "training"), ("test", "validation")):
            csv_path = root / CSV_LIST_DIR / f"{stem}.csv"
            if not csv_path.is_file():
                raise DatasetNotFoundError(
                    f"AffectNet CSV release: {csv_path} not found ({self.layout_hint()})"
                )
            builder = self.new_split(split)
            self._read_csv_file(csv_path, root / CSV_IMAGE_DIR, images, builder)
            tables[split] = builder.build()
        return tables

    def _read_csv_file(
        self, csv_path: Path, image_root: Path, images: DirectoryIndex, builder: SplitBuilder
    ) -> None:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            first = next(reader, None)
            if first is None:
                return
            # Copies differ in whether validation.csv keeps the header row; without one, the columns are
            # in the documented order.
            has_header = first[0].strip() == CSV_COLUMNS[0]
            header = [name.strip() for name in first] if has_header else list(CSV_COLUMNS)
            missing = [name for name in _CSV_REQUIRED if name not in header]
            if missing:
                raise BadSampleError(
                    f"{csv_path}:1: header lacks column(s) {', '.join(missing)}", reason="bad header"
                )
            column = {name: header.index(name) for name in _CSV_REQUIRED}
            rows = reader if has_header else _prepend(first, reader)
            for row in rows:
                line = reader.line_num
                if not any(field.strip() for field in row):
                    continue
                self._read_csv_row(row, column, f"{csv_path}:{line}", image_root, images, builder)

    def _read_csv_row(
        self,
        row: list[str],
        column: dict[str, int],
        where: str,
        image_root: Path,
        images: DirectoryIndex,
        builder: SplitBuilder,
    ) -> None:
        if len(row) <= max(column.values()):
            builder.bad(
                "malformed row",
                f"{where}: expected {len(CSV_COLUMNS)} comma-separated fields, got {len(row)}",
            )
            return
        try:
            expression = int(row[column["expression"]])
        except ValueError:
            builder.bad(
                "malformed row", f"{where}: expression {row[column['expression']]!r} is not an integer"
            )
            return
        if not self._keep_expression(builder, expression, where):
            return
        try:
            x, y, width, height = (float(row[column[name]]) for name in _CSV_REQUIRED[1:5])
        except ValueError:
            box = [row[column[name]] for name in _CSV_REQUIRED[1:5]]
            builder.bad("malformed row", f"{where}: face box {box} is not numeric")
            return
        if not (width > 0 and height > 0 and np.isfinite([x, y, width, height]).all()):
            builder.drop("invalid face box", f"{where}: face_width={width:g}, face_height={height:g}")
            return
        relative = row[column["subDirectory_filePath"]].strip()
        path = images.find(image_root, relative)
        if path is None:
            builder.drop("image file missing", f"{where}: {image_root / relative} does not exist")
            return
        builder.add(FaceCrop(path, (x, y, x + width, y + height)), expression, f"{path} ({Path(where).name})")

    # ---- npy release --------------------------------------------------------------------------
    def _read_npy_release(self, root: Path) -> dict[str, SplitTable]:
        folders = DirectoryIndex().subfolders(root)
        test_dirs = [folders[name] for name in NPY_TEST_DIRS if name in folders]
        if not test_dirs:
            raise DatasetNotFoundError(f"AffectNet npy release: no val_set/ or valid_set/ under {root}")
        if len(test_dirs) > 1:
            raise ValueError(f"AffectNet npy release: both val_set/ and valid_set/ under {root}; keep one")
        tables = {}
        for split, split_dir in (("train", root / NPY_TRAIN_DIR), ("test", test_dirs[0])):
            builder = self.new_split(split)
            self._read_npy_split(split_dir, builder)
            tables[split] = builder.build()
        return tables

    def _read_npy_split(self, split_dir: Path, builder: SplitBuilder) -> None:
        listing = DirectoryIndex()
        annotations = listing.files(split_dir / "annotations")
        if not annotations:
            raise DatasetNotFoundError(
                f"AffectNet npy release: no annotations in {split_dir / 'annotations'}"
            )
        images = listing.files(split_dir / "images")
        ids = [match["id"] for name in annotations if (match := _NPY_ANNOTATION.match(name))]
        expressions = ExpressionCache(split_dir / "annotations")
        for image_id in sorted(ids, key=_natural_key):
            annotation = annotations[f"{image_id}_exp.npy"]
            expression = expressions.read(annotation)
            if isinstance(expression, str):
                builder.bad(
                    "malformed annotation", f"{annotation}: cannot read an expression id ({expression})"
                )
                continue
            if not self._keep_expression(builder, expression, str(annotation)):
                continue
            image = images.get(f"{image_id}.jpg") or images.get(f"{image_id}.png")
            if image is None:
                builder.drop(
                    "image file missing",
                    f"{annotation}: {split_dir / 'images' / image_id}.jpg does not exist",
                )
                continue
            builder.add(image, expression, f"{image} ({annotation.name})")
        expressions.save()


class ExpressionCache:
    """Expression ids of one ``annotations/`` folder's ``_exp.npy`` files, remembered across runs.

    ``np.load`` of the release's ~291k tiny files takes ~16 s per setup (and per DDP rank), a ``stat``
    of each ~1 s, so ids are cached per file name with the file's size and mtime: an edited, replaced
    or new file is read again, a removed one is forgotten. Stored as JSON in
    ``$FER_LIGHTNING_CACHE/affectnet_npy/``; an unreadable or unwritable cache only costs the re-read.
    """

    VERSION = 1

    def __init__(self, folder: Path, cache_dir: Path | None = None) -> None:
        key = hashlib.sha1(str(Path(folder).resolve()).encode()).hexdigest()[:16]
        self.path = (cache_dir or default_cache_dir() / "affectnet_npy") / f"{key}.json"
        self.entries = self._load()
        self.seen: dict[str, list] = {}
        self.reads = 0

    def _load(self) -> dict[str, list]:
        try:
            data = json.loads(self.path.read_text())
            return data["entries"] if data.get("version") == self.VERSION else {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}

    def read(self, annotation: Path) -> int | str:
        """The expression id in ``annotation``, or the reason it cannot be read (a string)."""
        try:
            stat = annotation.stat()
        except OSError as error:
            return str(error)
        signature = [stat.st_size, stat.st_mtime_ns]
        cached = self.entries.get(annotation.name)
        if isinstance(cached, list) and len(cached) == 3 and cached[:2] == signature:
            value = cached[2]
        else:
            self.reads += 1
            try:
                value = _read_npy_int(annotation)
            except (ValueError, OSError, EOFError) as error:
                value = str(error)
        self.seen[annotation.name] = [*signature, value]
        return value

    def save(self) -> None:
        """Write what this run saw (atomically), unless nothing changed."""
        if self.seen == self.entries:
            return
        scratch = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, scratch = tempfile.mkstemp(dir=self.path.parent, suffix=".partial")
            with os.fdopen(handle, "w") as stream:
                json.dump({"version": self.VERSION, "entries": self.seen}, stream)
            os.replace(scratch, self.path)
        except OSError:  # e.g. a read-only cache folder: the next run reads the files again
            if scratch is not None and os.path.exists(scratch):
                os.unlink(scratch)


def _prepend(first: list[str], rows: Any):
    yield first
    yield from rows


def _natural_key(image_id: str) -> tuple:
    """Numeric ids in numeric order (2 before 10); anything else after them, alphabetically."""
    return (0, int(image_id), "") if image_id.isdigit() else (1, 0, image_id)


def _read_npy_int(path: Path) -> int:
    """The expression id in an ``_exp.npy``: real files hold a 0-d *string* array (``'3'``), some copies ints."""
    value = np.load(path, allow_pickle=False)
    if value.size != 1:
        raise ValueError(f"expected one value, got shape {value.shape}")
    item = value.reshape(()).item()
    if isinstance(item, bytes):
        item = item.decode("ascii")
    if isinstance(item, str):
        return int(item.strip())
    if isinstance(item, float) and not item.is_integer():
        raise ValueError(f"{item} is not an integer")
    return int(item)
