"""RAF-DB in POSTER V2's ImageFolder re-arrangement (train/1..7, valid/1..7), auto-detected."""

import os

import pytest

from fer_lightning.data import RAFDBDataModule
from fer_lightning.data.io import BadSampleError
from fer_lightning.data.synthetic import read_manifest, write_synthetic


@pytest.fixture(scope="module")
def image_folders(tmp_path_factory):
    """The synthetic RAF-DB list layout, re-arranged by hand as POSTER V2's README asks."""
    base = tmp_path_factory.mktemp("rafdb_folders")
    write_synthetic("rafdb", base / "list", num_images=60, seed=13, progress=False)
    manifest = read_manifest(base / "list")
    for file in manifest["files"]:
        split = "train" if file["split"] == "train" else "valid"
        target = base / "folders" / split / str(file["label"] + 1) / os.path.basename(file["image"])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(base / "list" / file["image"])
    return base / "folders", manifest


def test_image_folders_round_trip(image_folders):
    root, manifest = image_folders
    datamodule = RAFDBDataModule(root=str(root), batch_size=4, num_workers=0, img_size=32, val_fraction=0.2)
    datamodule.setup("fit")
    written = {os.path.basename(f["image"]): (f["split"], f["label"]) for f in manifest["files"]}
    read = {
        path.name: ("test" if split == "test" else "train", int(label))
        for split, table in datamodule.tables.items()
        for path, label in zip(table.sources, table.labels)
    }
    assert read == written


def test_unknown_class_folder_is_bad_input(image_folders, tmp_path):
    root, _ = image_folders
    (tmp_path / "valid").symlink_to(root / "valid")
    (tmp_path / "train").mkdir()
    for name in os.listdir(root / "train"):
        (tmp_path / "train" / name).symlink_to(root / "train" / name)
    (tmp_path / "train" / "Happiness").mkdir()  # named by class instead of RAF-DB id
    with pytest.raises(BadSampleError, match=r"train/Happiness: class folders are named 1\.\.7"):
        RAFDBDataModule(root=str(tmp_path), layout="imagefolder", num_workers=0).setup("fit")
