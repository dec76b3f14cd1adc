"""Dataset folders a user gets wrong: each is one error line naming the path, or a correct reading.

AI-Hub images that share a file name, a training class without images, and a root that is not the
dataset's (or is one level above it), through the CLI in-process and on the datamodules directly.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cli_helpers import fast_dev_run

from fer_lightning.data import AffectNetDataModule, AIHubKoreanDataModule, FER2013DataModule, RAFDBDataModule
from fer_lightning.data.formats import RAFDB_CLASS_NAMES, RAFDB_LIST_FILE
from fer_lightning.data.io import BadSampleError, nfc
from fer_lightning.data.synthetic import read_manifest, write_synthetic
from fer_lightning.errors import ConfigurationError, DatasetNotFoundError


def _one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    return lines[0]


def _fails_through_the_cli(capsys, tmp_path: Path, config: str, *overrides: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        fast_dev_run(config, tmp_path, *overrides)
    assert exit_info.value.code != 0
    return _one_error_line(capsys)


# ------------------------------------------------------------------------------ AI-Hub duplicate names


@pytest.fixture
def aihub_root(tmp_path) -> Path:
    root = tmp_path / "aihub"
    options = dict(frame_size=(96, 80), face_size_range=(40, 60), validation_fraction=0.25, train_parts=2)
    write_synthetic("aihub", root, num_images=42, seed=1, progress=False, **options)
    return root


def _training_images(root: Path, class_name: str) -> list[Path]:
    return [
        root / file["file"]
        for file in read_manifest(root)["files"]
        if file["split"] == "Training" and f"EMOIMG_{class_name}_" in file["file"]
    ]


def _aihub(root: Path) -> AIHubKoreanDataModule:
    datamodule = AIHubKoreanDataModule(
        root=str(root), num_workers=0, val_fraction=0.2, crop_cache=False, label_source="uploader"
    )
    datamodule.setup("fit")
    return datamodule


def test_aihub_same_name_in_another_class_folder_reads_the_label_files_own_class(aihub_root, tmp_path):
    """당황's image copied, with other pixels, into 기쁨's folder (walked first) under the same name."""
    panic_image = _training_images(aihub_root, "당황")[0]
    impostor = _training_images(aihub_root, "기쁨")[0].parent / panic_image.name
    shutil.copyfile(_training_images(aihub_root, "기쁨")[0], impostor)

    datamodule = _aihub(aihub_root)
    sources = [source.path for split in ("train", "val") for source in datamodule.tables[split].sources]
    assert panic_image in sources
    assert impostor not in sources


def test_aihub_same_name_in_two_folders_of_one_class_is_an_error_naming_both(aihub_root, tmp_path, capsys):
    first_part = _training_images(aihub_root, "기쁨")[0]
    other_part = next(
        path for path in _training_images(aihub_root, "기쁨") if path.parent != first_part.parent
    )
    duplicate = other_part.parent / first_part.name
    shutil.copyfile(other_part, duplicate)

    with pytest.raises(BadSampleError, match="2 files have this name") as error:
        _aihub(aihub_root)
    assert str(first_part) in str(error.value) and str(duplicate) in str(error.value)

    message = _fails_through_the_cli(capsys, tmp_path, "quickstart_aihub.yaml", f"--data.root={aihub_root}")
    assert nfc(str(first_part)) in nfc(message) and nfc(str(duplicate)) in nfc(message)
    assert "remove or rename the copies" in message


# ------------------------------------------------------------------------------ a class without images


def _rafdb(root: Path, **options) -> RAFDBDataModule:
    datamodule = RAFDBDataModule(root=str(root), num_workers=0, **options)
    datamodule.setup("fit")
    return datamodule


def _drop_list_lines(root: Path, split: str, label: int) -> None:
    """Remove ``split``'s lines of RAF-DB ``label`` (0-based) from the list file."""
    list_file = root / RAFDB_LIST_FILE
    kept = [
        line
        for line in list_file.read_text().splitlines()
        if not (line.startswith(f"{split}_") and line.split()[1] == str(label + 1))
    ]
    list_file.write_text("\n".join(kept) + "\n")


@pytest.fixture
def rafdb_root(tmp_path) -> Path:
    root = tmp_path / "RAF-DB" / "basic"
    write_synthetic("rafdb", root, num_images=70, seed=3, image_size=32, imbalance=1.0, progress=False)
    return root


def test_a_training_class_without_images_is_one_error_line(rafdb_root, tmp_path, capsys):
    _drop_list_lines(rafdb_root, "train", RAFDB_CLASS_NAMES.index("Fear"))
    with pytest.raises(ConfigurationError, match=r"RAF-DB: no training images of class Fear \(id 1\) under"):
        _rafdb(rafdb_root)
    message = _fails_through_the_cli(capsys, tmp_path, "quickstart.yaml", f"--data.root={rafdb_root}")
    assert "RAF-DB" in message and "class Fear" in message and str(rafdb_root) in message


def test_a_test_class_without_images_is_a_warning(rafdb_root):
    _drop_list_lines(rafdb_root, "test", RAFDB_CLASS_NAMES.index("Anger"))
    with pytest.warns(UserWarning, match=r"RAF-DB: the test split under .* has no images of class Anger"):
        datamodule = _rafdb(rafdb_root)
    assert RAFDB_CLASS_NAMES.index("Anger") not in datamodule.tables["test"].labels


# ------------------------------------------------------------------------------ a wrong data.root


def test_missing_root_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"RAF-DB root not found: .*does-not-exist"):
        _rafdb(tmp_path / "does-not-exist")


def test_root_one_level_above_the_dataset_says_which_folder_was_meant(rafdb_root, tmp_path, capsys):
    outer = rafdb_root.parent
    message = _fails_through_the_cli(capsys, tmp_path, "quickstart.yaml", f"--data.root={outer}")
    assert message == (
        f"error: RAF-DB not found under {outer} (expected EmoLabel/list_patition_label.txt and "
        "Image/aligned/<name>_aligned.jpg, or train/1..7/ and valid/1..7/); it contains basic/: "
        f"did you mean --data.root {rafdb_root}?"
    )


def test_root_inside_the_dataset_points_to_its_parent(rafdb_root):
    with pytest.raises(DatasetNotFoundError, match=rf"did you mean --data.root {rafdb_root}\?$"):
        _rafdb(rafdb_root / "Image")


def test_unrelated_root_lists_what_it_holds(tmp_path):
    folder = tmp_path / "photos"
    (folder / "holiday").mkdir(parents=True)
    (folder / "notes.txt").write_text("")
    with pytest.raises(
        DatasetNotFoundError, match=r"RAF-DB not found under .*; it contains holiday/, notes\.txt$"
    ):
        _rafdb(folder)
    with pytest.raises(DatasetNotFoundError, match=r"; it is empty$"):
        _rafdb(folder / "holiday")


@pytest.mark.parametrize(
    ("fmt", "datamodule_class", "options", "depth"),
    [
        ("affectnet_csv", AffectNetDataModule, {}, 1),
        ("affectnet_npy", AffectNetDataModule, {"num_classes": 8}, 1),
        ("fer2013", FER2013DataModule, {}, 2),  # fer2013.csv is also found one folder below the root
    ],
)
def test_every_dataset_says_when_its_root_is_one_level_down(tmp_path, fmt, datamodule_class, options, depth):
    meant = tmp_path / "outer" / "inner"
    write_synthetic(fmt, meant / "data" if depth == 2 else meant, num_images=120, seed=0, progress=False)
    datamodule = datamodule_class(root=str(tmp_path / "outer"), num_workers=0, **options)
    with pytest.raises(
        DatasetNotFoundError, match=rf"it contains inner/: did you mean --data.root {meant}\?$"
    ):
        datamodule.setup("fit")
    datamodule_class(root=str(meant), num_workers=0, val_fraction=0.3, **options).setup("fit")


# ------------------------------------------------------------------------------ face-crop options


@pytest.mark.parametrize("datamodule_class", [AffectNetDataModule, AIHubKoreanDataModule])
@pytest.mark.parametrize(
    ("option", "message"),
    [({"crop_margin": -0.1}, "data.crop_margin must be ≥ 0"), ({"crop_size": 0}, "data.crop_size")],
)
def test_crop_options_are_checked_for_every_dataset_with_face_boxes(datamodule_class, option, message):
    with pytest.raises(ConfigurationError, match=rf"{datamodule_class.DATASET_NAME}: {message}"):
        datamodule_class(synthetic_size=10, **option)
    cropper = datamodule_class(
        synthetic_size=10, crop_margin=0.3, crop_size=40, crop_cache=False
    ).face_cropper
    assert (cropper.margin, cropper.size, cropper.cache_dir) == (0.3, 40, None)
