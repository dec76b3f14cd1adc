"""RAF-DB (basic emotion subset) as it ships: a list file and aligned 100×100 faces (data.md §2)."""

from __future__ import annotations

from pathlib import Path

from fer_lightning.data.base import FERDataModule, SplitTable
from fer_lightning.data.io import BadSampleError

LIST_FILE = Path("EmoLabel") / "list_patition_label.txt"  # sic: the dataset's own spelling
ALIGNED_DIR = Path("Image") / "aligned"
RAFDB_CLASS_NAMES = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")


def read_rafdb_list(list_file: Path) -> list[tuple[str, str, int, int]]:
    """Parse the label list into ``(split, file name, label 0..6, line number)`` records.

    Lines look like ``train_00001.jpg 5``: the split is the file-name prefix and labels are 1..7 in
    the file. A mirror with tabs and an explicit train/test column exists, so any whitespace separates
    fields and a ``train``/``test`` field, if present, wins over the prefix.
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
                raise BadSampleError(f"{where}: expected '<name>.jpg <label 1..7>', got {line.strip()!r}")
            name, raw_label = fields[0], int(fields[1])
            if not 1 <= raw_label <= len(RAFDB_CLASS_NAMES):
                raise BadSampleError(f"{where}: label {raw_label} is outside 1..{len(RAFDB_CLASS_NAMES)}")
            split = explicit_split[0] if explicit_split else name.split("_", 1)[0].lower()
            if split not in ("train", "test"):
                raise BadSampleError(f"{where}: cannot tell the split of {name!r} (expected train_*/test_*)")
            records.append((split, name, raw_label - 1, line_number))
    return records


class RAFDBDataModule(FERDataModule):
    """RAF-DB basic: official train/test lists; validation is a seeded, stratified carve of train.

    Expects ``root/EmoLabel/list_patition_label.txt`` and ``root/Image/aligned/<stem>_aligned.jpg``.
    Class ids follow RAF-DB's own order (file label − 1): Surprise, Fear, Disgust, Happiness,
    Sadness, Anger, Neutral.
    """

    CLASS_NAMES = RAFDB_CLASS_NAMES
    DATASET_NAME = "RAF-DB"
    SYNTHETIC_FORMAT = "rafdb"

    def layout_hint(self) -> str:
        return f"expected {LIST_FILE} and {ALIGNED_DIR}/<name>_aligned.jpg"

    def read_splits(self, root: Path) -> dict[str, SplitTable]:
        list_file = root / LIST_FILE
        if not list_file.is_file():
            raise FileNotFoundError(f"RAF-DB label list not found: {list_file} ({self.layout_hint()})")
        columns: dict[str, tuple[list, list, list]] = {"train": ([], [], []), "test": ([], [], [])}
        missing: list[str] = []
        for split, name, label, line_number in read_rafdb_list(list_file):
            image_path = root / ALIGNED_DIR / f"{Path(name).stem}_aligned.jpg"
            if not image_path.is_file():
                missing.append(f"{list_file}:{line_number} lists {name}, but {image_path} does not exist")
                continue
            sources, labels, names = columns[split]
            sources.append(image_path)
            labels.append(label)
            names.append(f"{image_path} ({list_file.name}:{line_number})")
        if missing:
            raise BadSampleError(f"{missing[0]} ({len(missing)} listed images missing in all)")
        return {split: SplitTable(*cols) for split, cols in columns.items()}
