"""FER2013 (Kaggle's ``fer2013.csv``) with its own or Microsoft's FER+ labels (docs/datasets.md#fer2013).

``fer2013.csv`` holds one 48×48 grey face per row as 2,304 space-separated pixel values, the FER2013
label and a ``Usage`` column (Training / PublicTest / PrivateTest). FER+ (``fer2013new.csv``) gives the
same rows, in the same order, ten crowd votes over 8 emotions plus ``unknown`` and ``NF`` (not a face).
"""

from __future__ import annotations

import csv
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from fer_lightning.data.base import FERDataModule, SplitBuilder, SplitTable
from fer_lightning.data.formats import (
    FER2013_CLASS_NAMES,
    FER2013_USAGES,
    FERPLUS_CLASS_NAMES,
    FERPLUS_EXTRA_COLUMNS,
)
from fer_lightning.data.io import BadSampleError, DirectoryIndex
from fer_lightning.data.label_prior import prior_from_votes
from fer_lightning.errors import ConfigurationError, DatasetNotFoundError

USAGES = FER2013_USAGES
FER2013_FILE = "fer2013.csv"
FERPLUS_FILE = "fer2013new.csv"
IMAGE_SIDE = 48


def parse_pixels(text: str, count: int = IMAGE_SIDE * IMAGE_SIDE) -> np.ndarray | None:
    """``count`` space-separated integers 0..255 → uint8 array, or None if the string is not exactly that.

    Vectorised over the characters instead of ``int()`` per token (4× faster on the 35,887 rows, ~80 M
    tokens of the real file) and without the deprecated text mode of ``np.fromstring``.
    """
    try:
        buffer = np.frombuffer(text.strip().encode("ascii"), dtype=np.uint8)
    except UnicodeEncodeError:
        return None
    is_digit = (buffer >= ord("0")) & (buffer <= ord("9"))
    if buffer.size == 0 or not np.all(is_digit | (buffer == ord(" "))):
        return None
    follows_digit = np.concatenate(([False], is_digit[:-1]))
    precedes_digit = np.concatenate((is_digit[1:], [False]))
    starts = np.flatnonzero(is_digit & ~follows_digit)
    ends = np.flatnonzero(is_digit & ~precedes_digit)
    if len(starts) != count or (ends - starts).max() > 2:  # more than three digits cannot be ≤ 255
        return None
    digits = buffer.astype(np.int32) - ord("0")
    lengths = ends - starts + 1
    values = digits[ends] + np.where(lengths >= 2, 10 * digits[ends - 1], 0)
    values += np.where(lengths >= 3, 100 * digits[ends - 2], 0)
    if values.max() > 255:
        return None
    return values.astype(np.uint8)


def ferplus_majority(votes: np.ndarray) -> int | None:
    """Column of the FER+ majority label (0..9, 8 = unknown, 9 = NF), or None when there is none.

    Microsoft's FER+ "majority" rule: a column with a single vote is an outlier and is zeroed; the label is
    the column that then holds more than half of the remaining votes.
    """
    kept = np.where(votes > 1, votes, 0)
    total = kept.sum()
    if total == 0:
        return None
    top = int(np.argmax(kept))
    return top if kept[top] > 0.5 * total else None


def ferplus_plurality(votes: np.ndarray) -> int | None:
    """Column with strictly the most votes (0..9), or None on a tie."""
    top = int(np.argmax(votes))
    return top if np.count_nonzero(votes == votes[top]) == 1 else None


def find_file(root: Path, name: str) -> Path | None:
    """``root/name``, else ``root/<folder>/name`` (Kaggle unpacks to ``fer2013/fer2013.csv``, FER+ ships
    ``FERPlus/fer2013new.csv``)."""
    listing = DirectoryIndex()
    if name in listing.files(root):
        return listing.files(root)[name]
    for folder in sorted(listing.subfolders(root).values()):
        if name in listing.files(folder):
            return listing.files(folder)[name]
    return None


class FER2013DataModule(FERDataModule):
    """FER2013 48×48 faces with FER2013 labels (7 classes) or FER+ labels (8 classes).

    Splits follow ``Usage``: Training → train, PublicTest → val, PrivateTest → test (``test_usage``
    swaps the two). Grey pixels are repeated into 3 channels.

    With ``labels="ferplus"`` the label is the FER+ majority of each row's ten votes; rows without a
    valid majority (Microsoft's rule, or a tie under ``ferplus_label="plurality"``), whose majority is
    ``unknown`` or ``NF``, or without an image name (faces FER+ excluded) are dropped and counted. Each
    kept image's vote distribution over the 8 emotions (votes / their sum; ``unknown`` and ``NF`` left
    out) is kept for the F-PDLS loss: :meth:`vote_distributions` and :meth:`prior_matrix`.

    Args:
        labels: ``fer2013`` (the ``emotion`` column) or ``ferplus`` (needs ``fer2013new.csv``).
        test_usage: the Usage reported as test; the other held-out Usage is the validation split.
        ferplus_label: ``majority`` (Microsoft's FER+ rule, the default of the FER+ papers) or
            ``plurality`` (the class with the most votes, ties dropped).
        return_votes: FER+ only: samples are ``(image, label, votes)`` instead of ``(image, label)``.
        upsample_to: side in pixels each 48×48 face is enlarged to, with bicubic interpolation, before
            the augmentation (the Neural-Resizer recipe trains on 384×384 faces its authors super-resolved
            offline with a face SR network; bicubic is the stand-in). ``None``: faces stay 48×48 until
            the transform resizes them to ``img_size`` (bilinear).
        super_resolution: ``"package.module:function"`` of your own super-resolution callable, applied to
            each face (RGB uint8 48×48×3 in, RGB uint8 H×W×3 out) before ``upsample_to`` resizes its
            output; imported in every DataLoader worker.
        **kwargs: the shared options of :class:`~fer_lightning.data.base.FERDataModule`.
    """

    DATASET_NAME = "FER2013"
    CLASS_NAMES = FER2013_CLASS_NAMES
    SYNTHETIC_FORMAT = "fer2013"
    ROOT_MARKERS = (FER2013_FILE,)

    def __init__(
        self,
        root: str | None = None,
        labels: Literal["fer2013", "ferplus"] = "fer2013",
        test_usage: Literal["PrivateTest", "PublicTest"] = "PrivateTest",
        ferplus_label: Literal["majority", "plurality"] = "majority",
        return_votes: bool = False,
        upsample_to: int | None = None,
        super_resolution: str | None = None,
        **kwargs: Any,
    ) -> None:
        if labels not in ("fer2013", "ferplus"):
            raise ValueError(f"FER2013: data.labels must be 'fer2013' or 'ferplus', got {labels!r}")
        if test_usage not in ("PrivateTest", "PublicTest"):
            raise ValueError(
                f"FER2013: data.test_usage must be 'PrivateTest' or 'PublicTest', got {test_usage!r}"
            )
        if ferplus_label not in ("majority", "plurality"):
            raise ValueError(
                f"FER2013: data.ferplus_label must be 'majority' or 'plurality', got {ferplus_label!r}"
            )
        if return_votes and labels != "ferplus":
            raise ValueError("FER2013: data.return_votes needs data.labels=ferplus (FER2013 has no votes)")
        if upsample_to is not None and upsample_to < IMAGE_SIDE:
            raise ConfigurationError(
                f"FER2013: data.upsample_to={upsample_to}: expected a side of at least {IMAGE_SIDE} pixels "
                "(e.g. 384, the Neural-Resizer input) or null"
            )
        if super_resolution is not None:
            _import_callable(super_resolution)  # a wrong path fails now, not in a DataLoader worker
        super().__init__(root=root, **kwargs)
        # Split tables as read from the files, before setup's label noise; read early when the F-PDLS
        # prior is asked for at instantiation (the CLI), and then reused by setup.
        self._tables_as_read: dict[str, SplitTable] | None = None
        self._super_resolution: Callable[[np.ndarray], np.ndarray] | None = None
        if labels == "ferplus":
            self.DATASET_NAME = "FER+"
            self.class_names = list(FERPLUS_CLASS_NAMES)
            self.num_classes = len(FERPLUS_CLASS_NAMES)
            self.SYNTHETIC_FORMAT = "ferplus"
        held_out = {"PublicTest", "PrivateTest"}
        self.usage_to_split = {
            "Training": "train",
            test_usage: "test",
            (held_out - {test_usage}).pop(): "val",
        }

    def layout_hint(self) -> str:
        ferplus = f" and {FERPLUS_FILE} (FER+ votes)" if self.hparams.labels == "ferplus" else ""
        return f"expected {FER2013_FILE} (emotion,pixels,Usage){ferplus} in the root or one folder below"

    def has_root_markers(self, root: Path) -> bool:
        return find_file(root, FER2013_FILE) is not None

    def load_image(self, source: np.ndarray) -> np.ndarray:
        image = cv2.cvtColor(source, cv2.COLOR_GRAY2RGB)
        if self.hparams.super_resolution is not None:
            image = self._apply_super_resolution(image)
        side = self.hparams.upsample_to
        if side is not None and image.shape[:2] != (side, side):
            image = cv2.resize(image, (side, side), interpolation=cv2.INTER_CUBIC)
        return image

    def _apply_super_resolution(self, image: np.ndarray) -> np.ndarray:
        if self._super_resolution is None:  # once per process: workers import it themselves
            self._super_resolution = _import_callable(self.hparams.super_resolution)
        enlarged = np.asarray(self._super_resolution(image))
        if enlarged.dtype != np.uint8 or enlarged.ndim != 3 or enlarged.shape[2] != 3:
            raise ConfigurationError(
                f"FER2013: data.super_resolution {self.hparams.super_resolution} returned a "
                f"{enlarged.dtype} array of shape {enlarged.shape}; expected RGB uint8 H×W×3"
            )
        return enlarged

    def sample_extras(self) -> tuple[str, ...]:
        return ("votes",) if self.hparams.return_votes else ()

    # ---- FER+ votes ---------------------------------------------------------------------------
    def vote_distributions(self, split: str) -> np.ndarray:
        """(N, 8) FER+ vote distributions of ``split``'s samples, in its sample order; rows sum to 1."""
        if self.hparams.labels != "ferplus":
            raise ValueError("FER2013: vote distributions exist only with data.labels=ferplus")
        return self._read_tables()[split].extras["votes"]

    def prior_matrix(self) -> np.ndarray:
        """F-PDLS prior D (K×K): row y = mean vote distribution of the training images labelled y.

        Rows sum to 1; a class without training images gets the one-hot row of itself. Computed from the
        labels as the files give them (before ``label_noise``), without setting up the datamodule.
        """
        train = self._read_tables()["train"]
        return prior_from_votes(train.extras["votes"], train.labels, self.num_classes)

    def vote_prior(self) -> np.ndarray | None:
        return self.prior_matrix() if self.hparams.labels == "ferplus" else None

    # ---- reading ------------------------------------------------------------------------------
    def _read_tables(self) -> dict[str, SplitTable]:
        if self._tables_as_read is None:
            root = self.root
            self.check_root(root)
            self._tables_as_read = self._read_files(root)
        return self._tables_as_read

    def read_splits(self, root: Path) -> dict[str, SplitTable]:
        if self._tables_as_read is None:
            self._tables_as_read = self._read_files(root)
        return dict(self._tables_as_read)

    def _read_files(self, root: Path) -> dict[str, SplitTable]:
        fer_path = find_file(root, FER2013_FILE)
        if fer_path is None:
            raise DatasetNotFoundError(
                f"FER2013: {FER2013_FILE} not found under {root} ({self.layout_hint()})"
            )
        builders = {split: self.new_split(split) for split in ("train", "val", "test")}
        fer_rows = _read_csv_rows(fer_path, ("emotion", "pixels", "Usage"))
        if self.hparams.labels == "fer2013":
            for line, row in fer_rows:
                self._add_fer2013_row(builders, fer_path, line, row)
        else:
            ferplus_path = find_file(root, FERPLUS_FILE)
            if ferplus_path is None:
                raise DatasetNotFoundError(
                    f"FER+: {FERPLUS_FILE} not found under {root} (data.labels=ferplus; {self.layout_hint()})"
                )
            columns = ("Usage", "Image name", *FERPLUS_CLASS_NAMES, *FERPLUS_EXTRA_COLUMNS)
            ferplus_rows = _read_csv_rows(ferplus_path, columns)
            if len(ferplus_rows) != len(fer_rows):
                raise BadSampleError(
                    f"{ferplus_path} has {len(ferplus_rows)} rows but {fer_path} has {len(fer_rows)}; FER+ rows "
                    "pair with FER2013 rows by position, so both files must be complete",
                    reason="row count mismatch",
                )
            for (fer_line, fer_row), (line, row) in zip(fer_rows, ferplus_rows):
                self._add_ferplus_row(builders, fer_path, fer_line, fer_row, ferplus_path, line, row)
        return {split: builder.build() for split, builder in builders.items()}

    def _pixels_and_split(
        self, builders: dict[str, SplitBuilder], where: str, row: dict[str, str] | None
    ) -> tuple[np.ndarray, SplitBuilder] | None:
        if row is None:
            builders["train"].bad("malformed row", f"{where}: fewer fields than the header names")
            return None
        split = self.usage_to_split.get(row["Usage"].strip())
        if split is None:
            builders["train"].bad(
                "malformed row", f"{where}: Usage {row['Usage']!r} is not one of {', '.join(USAGES)}"
            )
            return None
        pixels = parse_pixels(row["pixels"])
        if pixels is None:
            builders[split].bad(
                "malformed pixels", f"{where}: pixels are not {IMAGE_SIDE * IMAGE_SIDE} integers in 0..255"
            )
            return None
        return pixels.reshape(IMAGE_SIDE, IMAGE_SIDE), builders[split]

    def _add_fer2013_row(
        self, builders: dict[str, SplitBuilder], path: Path, line: int, row: dict[str, str] | None
    ) -> None:
        where = f"{path}:{line}"
        parsed = self._pixels_and_split(builders, where, row)
        if parsed is None:
            return
        pixels, builder = parsed
        try:
            label = int(row["emotion"])
        except ValueError:
            builder.bad("malformed row", f"{where}: emotion {row['emotion']!r} is not an integer")
            return
        builder.add(pixels, label, f"{path.name}:{line}")

    def _add_ferplus_row(
        self,
        builders: dict[str, SplitBuilder],
        fer_path: Path,
        fer_line: int,
        fer_row: dict[str, str] | None,
        path: Path,
        line: int,
        row: dict[str, str] | None,
    ) -> None:
        where = f"{path}:{line}"
        parsed = self._pixels_and_split(builders, f"{fer_path}:{fer_line}", fer_row)
        if parsed is None:
            return
        pixels, builder = parsed
        if row is None:
            builder.bad("malformed row", f"{where}: fewer fields than the header names")
            return
        if row["Usage"].strip() != fer_row["Usage"].strip():
            builder.bad(
                "usage mismatch",
                f"{where}: Usage {row['Usage']!r} differs from {fer_row['Usage']!r} in {fer_path.name}:{fer_line}",
            )
            return
        image_name = row["Image name"].strip()
        if not image_name:
            builder.drop("no image name (excluded by FER+)", where)
            return
        try:
            votes = np.array([float(row[name]) for name in (*FERPLUS_CLASS_NAMES, *FERPLUS_EXTRA_COLUMNS)])
        except ValueError:
            builder.bad("malformed row", f"{where}: votes are not numbers")
            return
        if (votes < 0).any() or not np.isfinite(votes).all():
            builder.bad("malformed row", f"{where}: votes must be non-negative numbers")
            return
        rule = ferplus_majority if self.hparams.ferplus_label == "majority" else ferplus_plurality
        column = rule(votes)
        if column is None:
            builder.drop(f"no {self.hparams.ferplus_label} label", where)
            return
        if column >= len(FERPLUS_CLASS_NAMES):
            extra_column = FERPLUS_EXTRA_COLUMNS[column - len(FERPLUS_CLASS_NAMES)]
            builder.drop(f"{self.hparams.ferplus_label} label is {extra_column}", where)
            return
        emotion_votes = votes[: len(FERPLUS_CLASS_NAMES)]
        builder.add(
            pixels, column, f"{path.name}:{line} {image_name}", votes=emotion_votes / emotion_votes.sum()
        )


def _import_callable(path: str) -> Callable:
    """The callable named ``"package.module:function"``; a one-line error when it cannot be found."""
    module_name, _, attribute = path.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attribute) if attribute else None
    except (ImportError, AttributeError) as error:
        raise ConfigurationError(
            f"FER2013: data.super_resolution {path!r} cannot be imported: {error}"
        ) from error
    if not callable(function):
        raise ConfigurationError(
            f"FER2013: data.super_resolution {path!r}: expected 'package.module:function' naming a callable"
        )
    return function


def _read_csv_rows(path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str] | None]]:
    """``(line number, {column: value})`` of every data row; the header must name ``columns``.

    A row with fewer fields than the header gets ``None`` instead of its values (a malformed row).
    """
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = [name.strip() for name in next(reader, [])]
        missing = [name for name in columns if name not in header]
        if missing:
            raise BadSampleError(
                f"{path}:1: header lacks column(s) {', '.join(missing)} (got {', '.join(header) or 'nothing'})",
                reason="bad header",
            )
        positions = {name: header.index(name) for name in columns}
        for row in reader:
            if not any(field.strip() for field in row):
                continue
            values = (
                {name: row[index] for name, index in positions.items()} if len(row) >= len(header) else None
            )
            rows.append((reader.line_num, values))
    return rows
