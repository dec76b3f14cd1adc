"""RAF-DB (basic emotion subset) as it ships: a list file and aligned 100×100 faces (docs/datasets.md#raf-db).

Also reads the ``ImageFolder`` re-arrangement POSTER V2 asks for (``train/1..7/``, ``valid/1..7/``),
so a copy already sorted by hand need not be undone.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from fer_lightning.data.base import FERDataModule, SplitBuilder, SplitTable
from fer_lightning.data.formats import RAFDB_CLASS_NAMES, RAFDB_IMAGE_DIR, RAFDB_LIST_FILE
from fer_lightning.data.io import IMAGE_SUFFIXES, DirectoryIndex, nfc
from fer_lightning.errors import DatasetNotFoundError

LIST_FILE = Path(RAFDB_LIST_FILE)
ALIGNED_DIR = Path(RAFDB_IMAGE_DIR)
#: ImageFolder layout: split folder names (POSTER V2 calls the test split ``valid``) holding folders 1..7.
IMAGEFOLDER_SPLITS = {"train": ("train",), "test": ("valid", "test")}


def read_rafdb_list(
    list_file: Path, on_bad_line: Callable[[str, str], None]
) -> list[tuple[str, str, int, int]]:
    """Parse the label list into ``(split, file name, label 0..6, line number)`` records.

    Lines look like ``train_00001.jpg 5``: the split is the file-name prefix and labels are 1..7 in
    the file. A mirror with tabs and an explicit train/test column exists, so any whitespace separates
    fields and a ``train``/``test`` field, if present, wins over the prefix. A line that cannot be used is
    passed to ``on_bad_line(reason, message)`` and left out.
    """
    records = []
    with open(list_file, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{list_file}:{line_number}"
            explicit_split = [f.lower() for f in fields[2:] if f.lower() in ("train", "test")]
            if len(fields) < 2 or not fields[1].lstrip("-").isdigit():
                on_bad_line(
                    "malformed row", f"{where}: expected '<name>.jpg <label 1..7>', got {line.strip()!r}"
                )
                continue
            name, raw_label = fields[0], int(fields[1])
            if not 1 <= raw_label <= len(RAFDB_CLASS_NAMES):
                on_bad_line(
                    "label out of range", f"{where}: label {raw_label} is outside 1..{len(RAFDB_CLASS_NAMES)}"
                )
                continue
            split = explicit_split[0] if explicit_split else name.split("_", 1)[0].lower()
            if split not in ("train", "test"):
                on_bad_line(
                    "unknown split", f"{where}: cannot tell the split of {name!r} (expected train_*/test_*)"
                )
                continue
            records.append((split, name, raw_label - 1, line_number))
    return records


class RAFDBDataModule(FERDataModule):
    """RAF-DB basic: official train/test lists; validation is a seeded, stratified carve of train.

    Expects ``root/EmoLabel/list_patition_label.txt`` and ``root/Image/aligned/<stem>_aligned.jpg``
    (``layout="raf_list"``), or POSTER V2's ``root/train/<1..7>/*.jpg`` and ``root/valid/<1..7>/*.jpg``
    (``layout="imagefolder"``; ``test/`` is accepted for ``valid/``). ``auto`` picks whichever exists.
    Class ids follow RAF-DB's own order (file label − 1, folder name − 1): Surprise, Fear, Disgust,
    Happiness, Sadness, Anger, Neutral.
    """

    CLASS_NAMES = RAFDB_CLASS_NAMES
    DATASET_NAME = "RAF-DB"
    SYNTHETIC_FORMAT = "rafdb"
    ROOT_MARKERS = (RAFDB_LIST_FILE, "train")

    def __init__(
        self,
        root: str | None = None,
        layout: Literal["auto", "raf_list", "imagefolder"] = "auto",
        **kwargs: Any,
    ) -> None:
        if layout not in ("auto", "raf_list", "imagefolder"):
            raise ValueError(
                f"RAF-DB: data.layout must be 'auto', 'raf_list' or 'imagefolder', got {layout!r}"
            )
        super().__init__(root=root, **kwargs)

    def layout_hint(self) -> str:
        return f"expected {LIST_FILE} and {ALIGNED_DIR}/<name>_aligned.jpg, or train/1..7/ and valid/1..7/"

    def read_splits(self, root: Path) -> dict[str, SplitTable]:
        layout = self.hparams.layout
        if layout == "auto":
            has_folders = "train" in DirectoryIndex().subfolders(root) and not (root / LIST_FILE).is_file()
            layout = "imagefolder" if has_folders else "raf_list"
        if layout == "imagefolder":
            return self._read_image_folders(root)
        return self._read_list(root)

    def _read_image_folders(self, root: Path) -> dict[str, SplitTable]:
        index = DirectoryIndex()
        tables = {}
        for split, names in IMAGEFOLDER_SPLITS.items():
            folder = next(
                (index.subfolders(root)[name] for name in names if name in index.subfolders(root)), None
            )
            if folder is None:
                raise DatasetNotFoundError(
                    f"RAF-DB ImageFolder layout: no {' or '.join(names)}/ under {root}"
                )
            builder = self.new_split(split)
            class_folders = index.subfolders(folder)
            if not class_folders:
                raise DatasetNotFoundError(f"RAF-DB ImageFolder layout: no class folders 1..7 in {folder}")
            for name, class_folder in sorted(class_folders.items()):
                self._add_class_folder(builder, name, class_folder, index)
            tables[split] = builder.build()
        return tables

    def _add_class_folder(
        self, builder: SplitBuilder, name: str, folder: Path, index: DirectoryIndex
    ) -> None:
        if not (name.isdigit() and 1 <= int(name) <= len(RAFDB_CLASS_NAMES)):
            builder.bad(
                "unknown class folder", f"{folder}: class folders are named 1..7 (RAF-DB ids), not {name!r}"
            )
            return
        for file_name, path in sorted(index.files(folder).items()):
            if file_name.lower().endswith(IMAGE_SUFFIXES):
                builder.add(path, int(name) - 1, str(path))

    def _read_list(self, root: Path) -> dict[str, SplitTable]:
        list_file = root / LIST_FILE
        if not list_file.is_file():
            raise DatasetNotFoundError(f"RAF-DB label list not found: {list_file} ({self.layout_hint()})")
        builders = {split: self.new_split(split) for split in ("train", "test")}
        # A line whose split is unknown is counted with train, the split most lines belong to.
        records = read_rafdb_list(list_file, builders["train"].bad)
        images = DirectoryIndex().files(root / ALIGNED_DIR)  # one listing instead of a stat per line
        for split, name, label, line_number in records:
            image_name = f"{Path(name).stem}_aligned.jpg"
            image_path = images.get(nfc(image_name))
            if image_path is None:
                builders[split].bad(
                    "missing image",
                    f"{list_file}:{line_number} lists {name}, but {root / ALIGNED_DIR / image_name} does not exist",
                )
                continue
            builders[split].add(image_path, label, f"{image_path} ({list_file.name}:{line_number})")
        return {split: builder.build() for split, builder in builders.items()}
