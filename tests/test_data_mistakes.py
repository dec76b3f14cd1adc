"""Dataset folders a user gets wrong: each is one error line naming the path, or a correct reading.

AI-Hub images that share a file name, a training class without images, and a root that is not the
dataset's (or is one level above it), through the CLI in-process and on the datamodules directly.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cli_helpers import fast_dev_run

from fer_lightning.data import AIHubKoreanDataModule
from fer_lightning.data.io import BadSampleError, nfc
from fer_lightning.data.synthetic import read_manifest, write_synthetic


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


def _aihub(root: Path, tmp_path: Path) -> AIHubKoreanDataModule:
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

    datamodule = _aihub(aihub_root, tmp_path)
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
        _aihub(aihub_root, tmp_path)
    assert str(first_part) in str(error.value) and str(duplicate) in str(error.value)

    message = _fails_through_the_cli(capsys, tmp_path, "quickstart_aihub.yaml", f"--data.root={aihub_root}")
    assert nfc(str(first_part)) in nfc(message) and nfc(str(duplicate)) in nfc(message)
    assert "remove or rename the copies" in message
