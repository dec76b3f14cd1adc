"""FER2013 and FER+: pixel strings, Usage splits, FER+ majority labels, vote distributions and the prior."""

import csv
from collections import Counter

import numpy as np
import pytest
from cli_helpers import fast_dev_run, finite_metrics

from fer_lightning.data import FER2013DataModule
from fer_lightning.data.fer2013 import FERPLUS_CLASS_NAMES, ferplus_majority, ferplus_plurality, parse_pixels
from fer_lightning.data.synthetic import read_manifest, write_synthetic

USAGE_SPLITS = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}


@pytest.fixture(scope="module")
def fer2013_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fer2013")
    write_synthetic("fer2013", root, num_images=80, seed=6, progress=False)
    return root


@pytest.fixture(scope="module")
def ferplus_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ferplus")
    write_synthetic("ferplus", root, num_images=80, seed=7, not_face_rows=3, unknown_rows=2, progress=False)
    return root


def _datamodule(root, **kwargs):
    options = dict(batch_size=4, num_workers=0, img_size=32)
    options.update(kwargs)
    datamodule = FER2013DataModule(root=str(root), **options)
    datamodule.setup("fit")
    return datamodule


def _row_of(name: str) -> int:
    """Data-row index (0-based) of a sample name ``fer2013.csv:<line>`` / ``fer2013new.csv:<line> <image>``."""
    return int(name.split(":")[1].split()[0]) - 2


def test_parse_pixels():
    values = np.arange(48 * 48) % 256
    assert np.array_equal(parse_pixels(" ".join(map(str, values))), values)
    assert parse_pixels(" ".join(map(str, values[:-1]))) is None  # 2,303 values
    assert parse_pixels(" ".join(["256", *map(str, values[1:])])) is None  # out of range
    assert parse_pixels(" ".join(["1000", *map(str, values[1:])])) is None  # four digits
    assert parse_pixels(" ".join(["-1", *map(str, values[1:])])) is None
    assert parse_pixels(" ".join(["1.5", *map(str, values[1:])])) is None
    assert parse_pixels("") is None


def test_fer2013_round_trip(fer2013_root):
    manifest = read_manifest(fer2013_root)
    datamodule = _datamodule(fer2013_root)
    assert (
        datamodule.class_names
        == manifest["class_names"]
        == ["Angry", "Disgust", "Fear", "Happy", "Sad", "Surprise", "Neutral"]
    )
    with open(fer2013_root / "fer2013.csv") as handle:
        pixel_rows = [row["pixels"] for row in csv.DictReader(handle)]
    for usage, split in USAGE_SPLITS.items():
        table = datamodule.tables[split]
        written = [f for f in manifest["files"] if f["split"] == usage]
        assert [_row_of(name) for name in table.names] == [f["row"] for f in written]
        assert table.labels.tolist() == [f["label"] for f in written]
    # Pixels: row-major 48×48 grey, repeated into three identical channels.
    table = datamodule.tables["test"]
    grey = np.array(pixel_rows[_row_of(table.names[0])].split(), dtype=np.uint8).reshape(48, 48)
    image = datamodule.load_image(table.sources[0])
    assert image.shape == (48, 48, 3) and all(np.array_equal(image[..., c], grey) for c in range(3))
    tensor, label = datamodule.datasets["test"][0]
    assert tensor.shape == (3, 32, 32) and label == table.labels[0]


def test_test_usage_swaps_public_and_private(fer2013_root):
    default, swapped = _datamodule(fer2013_root), _datamodule(fer2013_root, test_usage="PublicTest")
    assert swapped.tables["test"].names == default.tables["val"].names
    assert swapped.tables["val"].names == default.tables["test"].names


def test_ferplus_vote_rules():
    def votes(*values):
        return np.array([*values, *[0] * (10 - len(values))])

    # Single votes are outliers; the label needs more than half of what is left.
    assert ferplus_majority(votes(4, 3, 1, 1, 1)) == 0
    assert ferplus_majority(votes(3, 3, 2, 1, 1)) is None
    assert ferplus_majority(votes(2, 0, 0, 0, 0, 0, 0, 0, 7, 1)) == 8  # unknown
    assert ferplus_majority(votes(1, 1, 1, 1, 1, 1, 1, 1, 1, 1)) is None
    assert ferplus_plurality(votes(3, 3, 2, 1, 1)) is None
    assert ferplus_plurality(votes(4, 3, 2, 1)) == 0


def test_ferplus_plurality_round_trip_with_votes(ferplus_root):
    """The writer gives every planned face a strict plurality: plurality labels round-trip exactly."""
    manifest = read_manifest(ferplus_root)
    datamodule = _datamodule(ferplus_root, labels="ferplus", ferplus_label="plurality")
    assert datamodule.class_names == list(FERPLUS_CLASS_NAMES) == manifest["class_names"]
    assert datamodule.num_classes == 8
    for usage, split in USAGE_SPLITS.items():
        written = [f for f in manifest["files"] if f["split"] == usage]
        table = datamodule.tables[split]
        assert [_row_of(name) for name in table.names] == [f["row"] for f in written]
        assert table.labels.tolist() == [f["label"] for f in written]
        expected_votes = np.array([f["votes"][:8] for f in written], dtype=float)
        expected_votes /= expected_votes.sum(axis=1, keepdims=True)
        assert np.allclose(datamodule.vote_distributions(split), expected_votes)
    # The planted invalid rows are dropped and counted (all in Training).
    assert datamodule.dropped_rows["train"] == Counter(
        {"no image name (excluded by FER+)": 3, "plurality label is unknown": 2}
    )


def test_ferplus_majority_drops_rows_without_one(ferplus_root):
    manifest = read_manifest(ferplus_root)
    datamodule = _datamodule(ferplus_root, labels="ferplus")
    kept_rows = {_row_of(name) for table in datamodule.tables.values() for name in table.names}
    for file in manifest["files"]:
        label = ferplus_majority(np.array(file["votes"]))
        if label is None:
            assert file["row"] not in kept_rows
        else:
            assert file["row"] in kept_rows and label == file["label"]
    no_majority = sum(ferplus_majority(np.array(f["votes"])) is None for f in manifest["files"])
    assert sum(counts["no majority label"] for counts in datamodule.dropped_rows.values()) == no_majority > 0


def _write_ferplus_fixture(root, rows):
    """fer2013.csv + fer2013new.csv from ``(usage, image name, votes)`` rows (flat grey faces)."""
    pixels = " ".join(["128"] * 48 * 48)
    with open(root / "fer2013.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["emotion", "pixels", "Usage"])
        writer.writerows([[0, pixels, usage] for usage, _, _ in rows])
    with open(root / "fer2013new.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Usage", "Image name", *FERPLUS_CLASS_NAMES, "unknown", "NF"])
        writer.writerows([[usage, name, *votes] for usage, name, votes in rows])


def test_prior_matrix_from_known_votes(tmp_path):
    rows = [
        ("Training", "fer0000000.png", [8, 2, 0, 0, 0, 0, 0, 0, 0, 0]),  # neutral
        ("Training", "fer0000001.png", [6, 0, 4, 0, 0, 0, 0, 0, 0, 0]),  # neutral
        ("Training", "fer0000002.png", [0, 10, 0, 0, 0, 0, 0, 0, 0, 0]),  # happiness
        ("Training", "fer0000003.png", [0, 0, 0, 7, 0, 0, 0, 2, 1, 0]),  # sadness; unknown vote left out
        ("Training", "fer0000004.png", [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]),  # not a face: dropped
        # Unanimous rows of the other classes (each class needs training images): one-hot prior rows.
        *(
            ("Training", f"fer000001{k}.png", [10 if column == k else 0 for column in range(10)])
            for k in (2, 4, 5, 6, 7)
        ),
        ("PublicTest", "fer0000005.png", [0, 0, 9, 0, 0, 0, 0, 0, 1, 0]),
        ("PrivateTest", "fer0000006.png", [0, 0, 0, 0, 10, 0, 0, 0, 0, 0]),
    ]
    _write_ferplus_fixture(tmp_path, rows)
    datamodule = _datamodule(tmp_path, labels="ferplus", return_votes=True)
    assert datamodule.tables["train"].labels.tolist() == [0, 0, 1, 3, 2, 4, 5, 6, 7]
    assert datamodule.dropped_rows["train"] == Counter({"majority label is NF": 1})
    expected = np.eye(8)
    expected[0] = [0.7, 0.1, 0.2, 0, 0, 0, 0, 0]
    expected[3] = [0, 0, 0, 7 / 9, 0, 0, 0, 2 / 9]
    prior = datamodule.prior_matrix()
    assert np.allclose(prior, expected)
    assert np.allclose(prior.sum(axis=1), 1.0)
    assert np.allclose(datamodule.vote_distributions("val"), [[0, 0, 1, 0, 0, 0, 0, 0]])
    image, label, votes = datamodule.datasets["train"][0]
    assert image.shape == (3, 32, 32) and label == 0
    assert np.allclose(votes.numpy(), [0.8, 0.2, 0, 0, 0, 0, 0, 0])


def test_vote_distributions_need_ferplus(fer2013_root):
    with pytest.raises(ValueError, match=r"only with data\.labels=ferplus"):
        _datamodule(fer2013_root).vote_distributions("train")
    with pytest.raises(ValueError, match=r"return_votes needs data\.labels=ferplus"):
        FER2013DataModule(root=str(fer2013_root), return_votes=True)
    with pytest.raises(FileNotFoundError, match=r"fer2013new\.csv not found"):
        _datamodule(fer2013_root, labels="ferplus")


def test_files_one_folder_down(tmp_path, fer2013_root):
    (tmp_path / "fer2013").mkdir()
    (tmp_path / "fer2013" / "fer2013.csv").symlink_to(fer2013_root / "fer2013.csv")
    assert len(_datamodule(tmp_path).tables["test"]) == len(_datamodule(fer2013_root).tables["test"])


@pytest.mark.parametrize("config", ["quickstart_fer2013.yaml", "quickstart_ferplus.yaml"])
def test_fit_fast_dev_run_on_synthetic_data(tmp_path, config):
    cli = fast_dev_run(config, tmp_path, "--data.synthetic_size=80")
    ferplus = config == "quickstart_ferplus.yaml"
    assert cli.datamodule.hparams.labels == ("ferplus" if ferplus else "fer2013")
    expected = ("neutral", 8) if ferplus else ("Angry", 7)  # each label set's class 0 and size
    assert (cli.model.class_names[0], cli.model.num_classes) == expected
    finite_metrics(cli, "train/loss_epoch", "val/loss", "val/acc", f"val/class_acc/{expected[0]}")
