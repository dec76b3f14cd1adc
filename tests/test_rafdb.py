"""RAF-DB datamodule: reads what the generator wrote, carves validation, fails clearly on bad input."""

import json

import numpy as np
import pytest

from fer_lightning.data import RAFDBDataModule
from fer_lightning.data.base import stratified_split
from fer_lightning.data.io import BadSampleError
from fer_lightning.data.synthetic import MANIFEST_NAME, write_synthetic


@pytest.fixture(scope="module")
def rafdb_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("rafdb")
    write_synthetic("rafdb", root, num_images=140, seed=5, progress=False)
    return root


def _datamodule(root, **kwargs):
    options = dict(batch_size=4, num_workers=0, img_size=32, val_fraction=0.2, split_seed=1)
    options.update(kwargs)
    datamodule = RAFDBDataModule(root=str(root), **options)
    datamodule.setup("fit")
    return datamodule


def test_round_trip_labels_order_and_split_sizes(rafdb_root):
    manifest = json.loads((rafdb_root / MANIFEST_NAME).read_text())
    datamodule = _datamodule(rafdb_root)
    assert datamodule.class_names == manifest["class_names"]
    assert datamodule.num_classes == 7
    tables = datamodule.tables
    written = {split: [f for f in manifest["files"] if f["split"] == split] for split in ("train", "test")}
    # Test keeps the list file's order and labels exactly.
    assert [str(p) for p in tables["test"].sources] == [str(rafdb_root / f["image"]) for f in written["test"]]
    assert tables["test"].labels.tolist() == [f["label"] for f in written["test"]]
    # Train + val partition the official training list, labels preserved.
    by_path = {str(rafdb_root / f["image"]): f["label"] for f in written["train"]}
    carved = [*tables["train"].sources, *tables["val"].sources]
    assert sorted(map(str, carved)) == sorted(by_path)
    for split in ("train", "val"):
        assert [by_path[str(p)] for p in tables[split].sources] == tables[split].labels.tolist()
    assert len(tables["val"]) == pytest.approx(0.2 * len(written["train"]), abs=7)


def test_validation_carve_is_stratified_and_seeded(rafdb_root):
    first, again, other = (_datamodule(rafdb_root, split_seed=s) for s in (1, 1, 2))
    assert first.tables["val"].names == again.tables["val"].names
    assert first.tables["val"].names != other.tables["val"].names
    train_counts = np.bincount(first.tables["train"].labels, minlength=7)
    val_counts = np.bincount(first.tables["val"].labels, minlength=7)
    assert (val_counts >= 1).all()  # every class is validated
    assert np.allclose(val_counts / (train_counts + val_counts), 0.2, atol=0.12)


def test_stratified_split_partitions_indices():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 1)
    kept, carved = stratified_split(labels, 0.3, seed=0)
    assert sorted([*kept, *carved]) == list(range(14))
    assert np.bincount(labels[carved], minlength=3).tolist() == [3, 1, 0]


def test_samples_are_rgb_tensors_with_labels(rafdb_root):
    datamodule = _datamodule(rafdb_root)
    image, label = datamodule.datasets["test"][0]
    assert image.shape == (3, 32, 32) and image.dtype.is_floating_point
    assert label == datamodule.tables["test"].labels[0]
    images, labels = next(iter(datamodule.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and labels.shape == (4,)


def test_missing_root_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"RAF-DB root not found: .*nowhere .*list_patition_label"):
        _datamodule(tmp_path / "nowhere")


def test_neither_root_nor_synthetic_is_an_error():
    with pytest.raises(ValueError, match=r"set data\.root"):
        RAFDBDataModule()


def _copy_list(tmp_path, rafdb_root, lines):
    (tmp_path / "EmoLabel").mkdir()
    (tmp_path / "Image").symlink_to(rafdb_root / "Image")
    (tmp_path / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("train_00002.jpg 9", r"list_patition_label.txt:2: label 9 is outside 1..7"),
        ("train_00002.jpg", r"list_patition_label.txt:2: expected '<name>.jpg <label 1..7>'"),
        ("valid_0001.jpg 3", r"list_patition_label.txt:2: cannot tell the split"),
        ("train_99999.jpg 3", r"list_patition_label.txt:2 lists train_99999.jpg, but .* does not exist"),
    ],
)
def test_bad_list_lines_name_the_line(tmp_path, rafdb_root, bad_line, message):
    root = _copy_list(tmp_path, rafdb_root, ["train_00001.jpg 1", bad_line, "test_0001.jpg 2"])
    with pytest.raises(BadSampleError, match=message):
        _datamodule(root)


def test_empty_split_is_an_error(tmp_path, rafdb_root):
    root = _copy_list(tmp_path, rafdb_root, ["train_00001.jpg 1", "train_00002.jpg 2"])
    with pytest.raises(ValueError, match=r"RAF-DB: split 'test' is empty under .*list_patition_label"):
        _datamodule(root)


def test_explicit_split_column_wins(tmp_path, rafdb_root):
    root = _copy_list(
        tmp_path,
        rafdb_root,
        [f"train_{i:05d}.jpg\t{1 + i % 7}\ttrain" for i in range(1, 30)] + ["train_00030.jpg\t4\ttest"],
    )
    datamodule = _datamodule(root)
    assert [name.split(" ")[0].rsplit("/", 1)[1] for name in datamodule.tables["test"].names] == [
        "train_00030_aligned.jpg"
    ]
