"""AI-Hub "한국인 감정인식을 위한 복합 영상" (Korean emotion images, dataSetSn=82), as shipped.

Layout and options: docs/datasets.md#ai-hub.

The JSON-per-class release::

    Training/[라벨]EMOIMG_<감정>_TRAIN/img_emotion_training_data(<감정>).json
    Training/[원천]EMOIMG_<감정>_TRAIN_01/<images>          (_01, _02, … parts)
    Validation/[라벨]EMOIMG_<감정>_VALID/img_emotion_validation_data(<감정>).json
    Validation/[원천]EMOIMG_<감정>_VALID/<images>

Each JSON is a list of records ``{filename, faceExp_uploader, annot_A, annot_B, annot_C, …}`` with
``annot_X = {boxes: {minX, minY, maxX, maxY}, faceExp, bg}``. Pictures are full frames with one face,
which is cropped with an annotator's box.

What real copies do to a naive loader, and what happens here instead:

* folder names contain ``[`` and ``]``, glob metacharacters: files are found by walking the folders
  (``os.walk``/``os.scandir``), never by ``glob``;
* copies unpacked on macOS have **NFD** Hangul names on disk while the JSON is NFC: every folder name,
  file name and label string is NFC-normalised, and files are matched through an NFC-keyed listing;
* some records store ``boxes`` as a one-element list; some file names hold ``&`` where the file on
  disk has ``_``; some JSON files are ``utf-8-sig`` or ``euc-kr``: all accepted.

The image files are looked up anywhere below the split folder, so the other unpacked form
(``…/1.Training/원천데이터/<감정>/…`` beside ``…/1.Training/라벨링데이터/<감정>/*.json``) reads too.
When one file name occurs in several folders, the copy in a folder of the label file's own class is
the record's (both layouts name the class in the image folder); if that does not single out one file,
the record is bad input naming every copy, never a silent pick.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

from fer_lightning.data.base import FERDataModule, SplitBuilder, SplitTable
from fer_lightning.data.formats import AIHUB_CLASS_NAMES
from fer_lightning.data.io import IMAGE_SUFFIXES, DirectoryIndex, FaceCrop, box_is_valid, nfc
from fer_lightning.errors import DatasetNotFoundError

#: English glosses, for figures whose font has no Hangul (당황 is "Panic" in the slides).
AIHUB_ENGLISH_NAMES = ("joy", "panic", "anger", "anxiety", "hurt", "sadness", "neutral")
ANNOTATORS = ("A", "B", "C")
#: Our split → the folder it ships in (``Validation`` is reported as test; val is carved from Training).
SPLIT_FOLDERS = {"train": "Training", "test": "Validation"}
JSON_ENCODINGS = ("utf-8-sig", "euc-kr", "cp949")

_BOX_KEYS = ("minX", "minY", "maxX", "maxY")


def decode_json_bytes(raw: bytes) -> str:
    """Text of a label file: UTF-8 (with or without BOM), else EUC-KR / CP949, as some copies have."""
    for encoding in JSON_ENCODINGS:
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise UnicodeDecodeError("utf-8-sig/euc-kr/cp949", raw, 0, len(raw), "not valid in any of them")


def parse_box(boxes: Any) -> tuple[float, float, float, float] | None:
    """``{minX, minY, maxX, maxY}`` (or a list holding one such dict) → (x_min, y_min, x_max, y_max)."""
    if isinstance(boxes, list):
        if len(boxes) != 1:
            return None
        boxes = boxes[0]
    if not isinstance(boxes, dict):
        return None
    try:
        box = tuple(float(boxes[key]) for key in _BOX_KEYS)
    except (KeyError, TypeError, ValueError):
        return None
    return box if box_is_valid(box) else None


def closest_pair_box(boxes: list[tuple[float, float, float, float]]) -> tuple[float, float, float, float]:
    """Mean of the two boxes that agree best (least summed corner distance): one annotator's outlier
    box does not move the crop."""
    first, second = min(
        combinations(boxes, 2), key=lambda pair: sum(abs(a - b) for a, b in zip(pair[0], pair[1]))
    )
    return tuple((a + b) / 2 for a, b in zip(first, second))


def find_split_folder(root: Path, name: str, depth: int = 3) -> Path | None:
    """The folder called ``name`` (or ``<n>.<name>``, as in ``1.Training``) at most ``depth`` levels below root."""
    pattern = re.compile(rf"^(\d+\.)?{re.escape(name)}$")
    listing = DirectoryIndex()
    level = [root]
    for _ in range(depth):
        following = []
        for folder in level:
            for folder_name, path in sorted(listing.subfolders(folder).items()):
                if pattern.match(folder_name):
                    return path
                following.append(path)
        level = following
    return None


class AIHubKoreanDataModule(FERDataModule):
    """AI-Hub Korean emotion images, 7 classes: 기쁨 당황 분노 불안 상처 슬픔 중립 (ids 0..6 in that order).

    ``Training`` as shipped is our training data (validation carved from it, stratified and seeded) and
    ``Validation`` is our test split. Faces are cropped from the full frames with the box of ``annotator``
    grown by ``crop_margin``, made square, resized to ``crop_size`` and **cached on disk** (keyed by file,
    box, margin and size), so only the first epoch decodes the multi-megapixel frames.

    Args:
        annotator: whose face box to crop with: ``A``, ``B``, ``C``, or ``closest_pair`` (the mean of
            the two annotators' boxes that agree best).
        label_source: ``majority_uploader_tiebreak`` (the label at least two of the three annotators
            gave, else the uploader's intended emotion), ``majority`` (records without such a label are
            dropped and counted), ``uploader`` (``faceExp_uploader``), or ``annotator`` (that
            annotator's ``faceExp``; needs annotator A, B or C).
        crop_margin: fraction of the box side added on every side before cropping.
        crop_size: side of the cached crops (None keeps each crop's own size).
        crop_cache: write crops to ``crop_cache_dir`` and read them back on later epochs.
        crop_cache_dir: default ``$FER_LIGHTNING_CACHE/face_crops``.
        **kwargs: the shared options of :class:`~fer_lightning.data.base.FERDataModule`.
    """

    DATASET_NAME = "AI-Hub"
    CLASS_NAMES = AIHUB_CLASS_NAMES
    SYNTHETIC_FORMAT = "aihub"
    DISPLAY_NAMES = AIHUB_ENGLISH_NAMES
    ROOT_MARKERS = (SPLIT_FOLDERS["train"],)

    def __init__(
        self,
        root: str | None = None,
        annotator: Literal["A", "B", "C", "closest_pair"] = "A",
        label_source: Literal["majority_uploader_tiebreak", "majority", "uploader", "annotator"] = (
            "majority_uploader_tiebreak"
        ),
        crop_margin: float = 0.1,
        crop_size: int | None = 256,
        crop_cache: bool = True,
        crop_cache_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        if annotator not in (*ANNOTATORS, "closest_pair"):
            raise ValueError(f"AI-Hub: data.annotator must be A, B, C or closest_pair, got {annotator!r}")
        sources = ("majority_uploader_tiebreak", "majority", "uploader", "annotator")
        if label_source not in sources:
            raise ValueError(
                f"AI-Hub: data.label_source must be one of {', '.join(sources)}, got {label_source!r}"
            )
        if label_source == "annotator" and annotator not in ANNOTATORS:
            raise ValueError("AI-Hub: data.label_source=annotator needs data.annotator A, B or C")
        super().__init__(root=root, **kwargs)
        self.configure_face_crops(crop_margin, crop_size, crop_cache, crop_cache_dir)
        self._class_ids = {name: index for index, name in enumerate(AIHUB_CLASS_NAMES)}

    def layout_hint(self) -> str:
        return (
            "expected Training/[라벨]EMOIMG_<감정>_TRAIN/*.json with images in Training/[원천]EMOIMG_<감정>_TRAIN_NN/, "
            "and the same under Validation/ (…_VALID)"
        )

    def has_root_markers(self, root: Path) -> bool:
        return find_split_folder(root, SPLIT_FOLDERS["train"]) is not None

    def read_splits(self, root: Path) -> dict[str, SplitTable]:
        tables = {}
        for split, folder_name in SPLIT_FOLDERS.items():
            folder = find_split_folder(root, folder_name)
            if folder is None:
                raise DatasetNotFoundError(
                    f"AI-Hub: no {folder_name}/ folder under {root} ({self.layout_hint()})"
                )
            builder = self.new_split(split)
            label_files, images = _index_split_folder(folder)
            if not label_files:
                raise DatasetNotFoundError(
                    f"AI-Hub: no .json label files under {folder} ({self.layout_hint()})"
                )
            for label_file in label_files:
                self._read_label_file(label_file, images, folder, builder)
            tables[split] = builder.build()
        return tables

    def _read_label_file(
        self, path: Path, images: dict[str, list[Path]], folder: Path, builder: SplitBuilder
    ) -> None:
        try:
            records = json.loads(decode_json_bytes(path.read_bytes()))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            builder.bad("malformed JSON", f"{path}: cannot read the JSON ({' '.join(str(error).split())})")
            return
        if not isinstance(records, list):
            builder.bad("malformed JSON", f"{path}: expected a list of records, got {type(records).__name__}")
            return
        for position, record in enumerate(records):
            self._read_record(record, path, position, images, folder, builder)

    def _read_record(
        self,
        record: Any,
        path: Path,
        position: int,
        images: dict[str, list[Path]],
        folder: Path,
        builder: SplitBuilder,
    ) -> None:
        if not isinstance(record, dict) or not isinstance(record.get("filename"), str):
            builder.bad("malformed record", f"{path}[{position}]: expected a record with a 'filename' string")
            return
        filename = nfc(record["filename"].strip())
        where = f"{path}[{position}] {filename}"
        copies = images.get(filename) or images.get(filename.replace("&", "_"))
        if not copies:
            builder.bad("missing image", f"{where}: no such image file under {folder}")
            return
        image = _copy_of_label_file_class(copies, path, folder)
        if image is None:
            listed = " and ".join(str(copy) for copy in copies)
            builder.bad(
                "ambiguous image",
                f"{where}: {len(copies)} files have this name: {listed}; "
                "remove or rename the copies that do not belong to this record",
            )
            return
        label = self._label(record, where, builder)
        if label is None:
            return
        box = self._box(record, where, builder)
        if box is None:
            return
        builder.add(FaceCrop(image, box), label, f"{image} ({path.name}[{position}])")

    def _class_id(self, value: Any, field: str, where: str, builder: SplitBuilder) -> int | None:
        name = nfc(value.strip()) if isinstance(value, str) else None
        if name not in self._class_ids:
            builder.bad(
                "unknown emotion label",
                f"{where}: {field} {value!r} is not one of {' '.join(AIHUB_CLASS_NAMES)}",
            )
            return None
        return self._class_ids[name]

    def _label(self, record: dict, where: str, builder: SplitBuilder) -> int | None:
        source = self.hparams.label_source
        if source == "uploader":
            return self._class_id(record.get("faceExp_uploader"), "faceExp_uploader", where, builder)
        if source == "annotator":
            annotation = record.get(f"annot_{self.hparams.annotator}")
            value = annotation.get("faceExp") if isinstance(annotation, dict) else None
            return self._class_id(value, f"annot_{self.hparams.annotator}.faceExp", where, builder)
        votes = []
        for annotator in ANNOTATORS:
            annotation = record.get(f"annot_{annotator}")
            value = annotation.get("faceExp") if isinstance(annotation, dict) else None
            label = self._class_id(value, f"annot_{annotator}.faceExp", where, builder)
            if label is None:
                return None
            votes.append(label)
        label, count = Counter(votes).most_common(1)[0]
        if count >= 2:
            return label
        if source == "majority":
            builder.drop("no annotator majority", where)
            return None
        return self._class_id(record.get("faceExp_uploader"), "faceExp_uploader", where, builder)

    def _box(
        self, record: dict, where: str, builder: SplitBuilder
    ) -> tuple[float, float, float, float] | None:
        annotators = ANNOTATORS if self.hparams.annotator == "closest_pair" else (self.hparams.annotator,)
        boxes = []
        for annotator in annotators:
            annotation = record.get(f"annot_{annotator}")
            box = parse_box(annotation.get("boxes")) if isinstance(annotation, dict) else None
            if box is not None:
                boxes.append(box)
            elif self.hparams.annotator != "closest_pair":
                raw = annotation.get("boxes") if isinstance(annotation, dict) else None
                builder.bad(
                    "invalid face box", f"{where}: annot_{annotator}.boxes {raw!r} is not a valid box"
                )
                return None
        if len(boxes) == 1:
            return boxes[0]
        if len(boxes) < 2:
            builder.bad("invalid face box", f"{where}: fewer than two annotators have a valid box")
            return None
        return closest_pair_box(boxes)


def _classes_named_in(path: Path, folder: Path) -> set[str]:
    """The class names that occur in ``path`` below ``folder`` (NFC), e.g. 기쁨 in ``[원천]EMOIMG_기쁨_TRAIN_01``."""
    relative = nfc(path.relative_to(folder).as_posix())
    return {name for name in AIHUB_CLASS_NAMES if name in relative}


def _copy_of_label_file_class(copies: list[Path], label_file: Path, folder: Path) -> Path | None:
    """The one image among same-named ``copies`` that belongs to the label file's class; None if not one."""
    if len(copies) == 1:
        return copies[0]
    label_classes = _classes_named_in(label_file, folder)
    if len(label_classes) != 1:
        return None
    matching = [copy for copy in copies if _classes_named_in(copy.parent, folder) == label_classes]
    return matching[0] if len(matching) == 1 else None


def _index_split_folder(folder: Path) -> tuple[list[Path], dict[str, list[Path]]]:
    """Label files (sorted by NFC path) and an NFC file name → paths map of the images below ``folder``.

    A name maps to every file carrying it, in walk order. ``os.walk`` lists directories without
    interpreting their names, so ``[라벨]`` folders are safe.
    """
    label_files: list[tuple[str, Path]] = []
    images: dict[str, list[Path]] = {}
    for directory, subdirectories, files in os.walk(folder):
        subdirectories.sort()
        for name in sorted(files):
            key = nfc(name)
            lower = key.lower()
            if lower.endswith(".json"):
                label_files.append((nfc(os.path.join(directory, name)), Path(directory) / name))
            elif lower.endswith(IMAGE_SUFFIXES):
                images.setdefault(key, []).append(Path(directory) / name)
    return [path for _, path in sorted(label_files)], images
