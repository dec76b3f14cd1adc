"""AffectNet: both releases read as shipped, invalid rows dropped and counted, face boxes cropped."""

import logging
import os
from collections import Counter

import numpy as np
import pytest
from cli_helpers import EXPERIMENTS, fast_dev_run, finite_metrics

from fer_lightning.data import AffectNetDataModule
from fer_lightning.data.affectnet import CSV_IMAGE_DIR, CSV_LIST_DIR, ExpressionCache
from fer_lightning.data.io import BadSampleError, FaceCrop, read_rgb
from fer_lightning.data.samplers import ImbalancedDatasetSampler
from fer_lightning.data.synthetic import read_manifest, write_synthetic

# What each kind of invalid row the writer plants is counted as.
INVALID_ROW_REASONS = {
    "none": "expression 8 (None)",
    "uncertain": "expression 9 (Uncertain)",
    "no_face": "expression 10 (No-Face)",
    "zero_width_box": "invalid face box",
    "negative_width_box": "invalid face box",
}
CSV_SPLITS = {"training": "train", "validation": "test"}


@pytest.fixture(scope="module")
def csv_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("affectnet_csv")
    write_synthetic("affectnet_csv", root, num_images=90, seed=2, invalid_rows=5, progress=False)
    return root


def _datamodule(root, **kwargs):
    options = dict(batch_size=4, num_workers=0, img_size=32, val_fraction=0.2, split_seed=1)
    options.update(kwargs)
    datamodule = AffectNetDataModule(root=str(root), **options)
    datamodule.setup("fit")
    return datamodule


def _csv_key(root, source: FaceCrop):
    return source.path.relative_to(root / CSV_IMAGE_DIR).as_posix(), source.box


def _manifest_key(file):
    x, y, width, height = file["box"]
    return file["file"], (x, y, x + width, y + height)


@pytest.mark.parametrize("num_classes", [7, 8])
def test_csv_release_round_trip(csv_root, num_classes):
    manifest = read_manifest(csv_root)
    datamodule = _datamodule(csv_root, num_classes=num_classes)
    assert datamodule.class_names == manifest["class_names"][:num_classes]
    assert datamodule.num_classes == num_classes
    kept = [f for f in manifest["files"] if f["label"] < num_classes]
    # The official validation CSV is the test split, in file order, with its labels and face boxes.
    test = [f for f in kept if f["split"] == "validation"]
    table = datamodule.tables["test"]
    assert [_csv_key(csv_root, s) for s in table.sources] == [_manifest_key(f) for f in test]
    assert table.labels.tolist() == [f["label"] for f in test]
    # train + val partition the training CSV, labels preserved.
    training = {_manifest_key(f): f["label"] for f in kept if f["split"] == "training"}
    carved = {
        _csv_key(csv_root, source): int(label)
        for split in ("train", "val")
        for source, label in zip(datamodule.tables[split].sources, datamodule.tables[split].labels)
    }
    assert carved == training
    assert len(datamodule.tables["train"]) + len(datamodule.tables["val"]) == len(training)


def test_csv_invalid_rows_dropped_and_counted(csv_root, caplog):
    manifest = read_manifest(csv_root)
    with caplog.at_level(logging.WARNING):
        datamodule = _datamodule(csv_root, num_classes=8)
    for csv_split, split in CSV_SPLITS.items():
        planted = Counter(
            INVALID_ROW_REASONS[row["reason"]]
            for row in manifest["invalid_rows"]
            if row["split"] == csv_split
        )
        assert sum(planted.values()) == 5
        assert datamodule.dropped_rows[split] == planted
    assert "AffectNet train: dropped 1 rows (expression 8 (None))" in caplog.text
    assert "training.csv:" in caplog.text  # the log names an example row


def test_seven_classes_drop_contempt(csv_root):
    manifest = read_manifest(csv_root)
    datamodule = _datamodule(csv_root, num_classes=7)
    for csv_split, split in CSV_SPLITS.items():
        contempt = sum(f["label"] == 7 for f in manifest["files"] if f["split"] == csv_split)
        # A broken-box row whose expression is Contempt is dropped as Contempt: the label is checked first.
        contempt += sum(
            r["expression_id"] == 7 and r["reason"].endswith("box")
            for r in manifest["invalid_rows"]
            if r["split"] == csv_split
        )
        assert datamodule.dropped_rows[split]["expression 7 (Contempt, 7-class setting)"] == contempt > 0
    assert all(label < 7 for table in datamodule.tables.values() for label in table.labels)


def test_csv_release_crops_the_face_box(csv_root):
    datamodule = _datamodule(csv_root, num_classes=8)
    source = datamodule.tables["test"].sources[0]
    x0, y0, x1, y1 = map(int, source.box)
    expected = read_rgb(source.path)[y0:y1, x0:x1]
    assert np.array_equal(datamodule.load_image(source), expected)
    # A margin grows the crop on every side.
    wider = _datamodule(csv_root, num_classes=8, crop_margin=0.25)
    assert wider.load_image(source).shape[:2] == (round(1.5 * (y1 - y0)), round(1.5 * (x1 - x0)))


@pytest.mark.parametrize(("val_dir_name", "exp_dtype"), [("val_set", "str"), ("valid_set", "int")])
def test_npy_release_round_trip(tmp_path, val_dir_name, exp_dtype):
    write_synthetic(
        "affectnet_npy",
        tmp_path,
        num_images=60,
        seed=4,
        val_dir_name=val_dir_name,
        exp_dtype=exp_dtype,
        progress=False,
    )
    manifest = read_manifest(tmp_path)
    datamodule = _datamodule(tmp_path, num_classes=8)
    assert datamodule.detect_release(tmp_path) == "npy"
    test = [f for f in manifest["files"] if f["split"] == "val"]
    table = datamodule.tables["test"]
    # Ids in numeric order (2 before 10), as the writer numbers them.
    assert [p.relative_to(tmp_path).as_posix() for p in table.sources] == [f["file"] for f in test]
    assert table.labels.tolist() == [f["label"] for f in test]
    training = {f["file"]: f["label"] for f in manifest["files"] if f["split"] == "train"}
    carved = {
        p.relative_to(tmp_path).as_posix(): int(label)
        for split in ("train", "val")
        for p, label in zip(datamodule.tables[split].sources, datamodule.tables[split].labels)
    }
    assert carved == training
    seven = _datamodule(tmp_path, num_classes=7)
    assert seven.dropped_rows["test"]["expression 7 (Contempt, 7-class setting)"] == sum(
        f["label"] == 7 for f in test
    )


def test_release_detection(tmp_path, csv_root):
    with pytest.raises(FileNotFoundError, match=r"AffectNet not found under .*Manually_Annotated_file_lists"):
        _datamodule(tmp_path)
    both = tmp_path / "both"
    (both / "train_set" / "annotations").mkdir(parents=True)
    (both / CSV_LIST_DIR).mkdir()
    with pytest.raises(ValueError, match="holds both releases"):
        _datamodule(both)


def _valid_rows(source, count):
    """``count`` valid training rows covering all 8 classes (a class without training images is an
    error), rows of the frequent classes first."""
    valid = [line for line in source[1:] if line.split(",")[6] in "01234567"]
    first_of_each_class = list({line.split(",")[6]: line for line in reversed(valid)}.values())
    others = [line for line in valid if line not in first_of_each_class]
    return others[: count - len(first_of_each_class)] + first_of_each_class


def _write_csv(root, csv_root, training_rows):
    """A CSV release under ``root`` whose images are the fixture's; validation is copied unchanged."""
    (root / CSV_LIST_DIR).mkdir(parents=True)
    os.symlink(csv_root / CSV_IMAGE_DIR, root / CSV_IMAGE_DIR)
    source = (csv_root / CSV_LIST_DIR / "training.csv").read_text().splitlines()
    (root / CSV_LIST_DIR / "training.csv").write_text("\n".join([source[0], *training_rows(source)]) + "\n")
    validation = (csv_root / CSV_LIST_DIR / "validation.csv").read_text()
    (root / CSV_LIST_DIR / "validation.csv").write_text(validation)
    return root


def test_missing_images_are_dropped_by_default(tmp_path, csv_root):
    def rows(source):
        good = _valid_rows(source, 20)
        missing = good[0].replace(".jpg,", "-gone.jpg,", 1)
        return [*good, missing]

    root = _write_csv(tmp_path, csv_root, rows)
    datamodule = _datamodule(root, num_classes=8)
    assert datamodule.dropped_rows["train"] == Counter({"image file missing": 1})
    assert len(datamodule.tables["train"]) + len(datamodule.tables["val"]) == 20


def test_validation_csv_without_header(tmp_path, csv_root):
    root = _write_csv(tmp_path, csv_root, lambda source: source[1:])
    validation = root / CSV_LIST_DIR / "validation.csv"
    validation.write_text("\n".join(validation.read_text().splitlines()[1:]) + "\n")
    datamodule = _datamodule(root, num_classes=8)
    assert len(datamodule.tables["test"]) == len(_datamodule(csv_root, num_classes=8).tables["test"])


@pytest.mark.parametrize(
    ("bad_row", "message", "reason"),
    [
        (
            lambda row: [*row[:6], "happy", *row[7:]],
            r"training\.csv:3: expression 'happy' is not an integer",
            "malformed row",
        ),
        (
            lambda row: [*row[:6], "12", *row[7:]],
            r"training\.csv:3: expression 12 is outside 0\.\.10",
            "label out of range",
        ),
        (lambda row: row[:4], r"training\.csv:3: expected 9 comma-separated fields, got 4", "malformed row"),
        (
            lambda row: [*row[:1], "x", "1", "2", "3", *row[5:]],
            r"training\.csv:3: face box .* is not numeric",
            "malformed row",
        ),
    ],
)
def test_bad_csv_rows_name_the_row(tmp_path, csv_root, bad_row, message, reason):
    import csv

    def rows(source):
        good = _valid_rows(source, 20)
        [parsed] = list(csv.reader([good[1]]))
        return [good[0], ",".join(bad_row(parsed)), *good[2:]]

    root = _write_csv(tmp_path, csv_root, rows)
    with pytest.raises(BadSampleError, match=message):
        _datamodule(root, num_classes=8)
    with pytest.warns(UserWarning, match=rf"AffectNet train: skipped 1 bad rows \(1 {reason}\)"):
        skipping = _datamodule(root, num_classes=8, on_bad_sample="skip")
    assert skipping.skipped_rows["train"] == Counter({reason: 1})
    assert len(skipping.tables["train"]) + len(skipping.tables["val"]) == 19


def test_corrupt_npy_annotation_names_the_file(tmp_path):
    write_synthetic("affectnet_npy", tmp_path, num_images=60, seed=5, progress=False)
    (tmp_path / "train_set" / "annotations" / "3_exp.npy").write_bytes(b"not a numpy file")
    with pytest.raises(BadSampleError, match=r"annotations/3_exp\.npy: cannot read an expression id"):
        _datamodule(tmp_path, num_classes=8)
    with pytest.warns(UserWarning, match=r"skipped 1 bad rows \(1 malformed annotation\)"):
        skipping = _datamodule(tmp_path, num_classes=8, on_bad_sample="skip")
    assert skipping.skipped_rows["train"] == Counter({"malformed annotation": 1})


def test_npy_expressions_are_cached_until_a_file_changes(tmp_path):
    """Second setup reads no .npy file; an edited, removed or corrupted file is noticed."""
    write_synthetic("affectnet_npy", tmp_path / "data", num_images=40, seed=6, progress=False)
    folder = tmp_path / "data" / "train_set" / "annotations"
    files = sorted(folder.glob("*_exp.npy"))

    def read_all():
        cache = ExpressionCache(folder, cache_dir=tmp_path / "cache")
        values = {path.name: cache.read(path) for path in sorted(folder.glob("*_exp.npy"))}
        cache.save()
        return cache.reads, values

    reads, first = read_all()
    assert reads == len(files) and all(isinstance(value, int) for value in first.values())
    reads, second = read_all()
    assert (reads, second) == (0, first)

    edited = files[0]
    new_label = (first[edited.name] + 1) % 8
    np.save(edited, np.array(str(new_label)))
    os.utime(edited, ns=(edited.stat().st_atime_ns, edited.stat().st_mtime_ns + 10**9))  # clock-tick safe
    files[1].unlink()
    files[2].write_bytes(b"not a numpy file")
    reads, third = read_all()
    assert reads == 2
    assert third[edited.name] == new_label and files[1].name not in third
    assert isinstance(third[files[2].name], str)  # the reason, reported as a bad row by the reader
    assert read_all() == (0, third)


def test_npy_release_setup_uses_the_cache(tmp_path, monkeypatch):
    write_synthetic("affectnet_npy", tmp_path / "data", num_images=60, seed=7, progress=False)
    monkeypatch.setenv("FER_LIGHTNING_CACHE", str(tmp_path / "cache"))
    first = _datamodule(tmp_path / "data", num_classes=8)
    monkeypatch.setattr(
        "fer_lightning.data.affectnet._read_npy_int", lambda path: pytest.fail(f"read {path}")
    )
    second = _datamodule(tmp_path / "data", num_classes=8)
    for split in ("train", "val", "test"):
        assert second.tables[split].labels.tolist() == first.tables[split].labels.tolist()


@pytest.mark.parametrize("release", ["csv", "npy"])
def test_fit_fast_dev_run_on_synthetic_data(tmp_path, release):
    cli = fast_dev_run(
        "quickstart_affectnet.yaml", tmp_path, "--data.synthetic_size=80", f"--data.release={release}"
    )
    finite_metrics(cli, "train/loss_epoch", "val/loss", "val/acc", "val/class_acc/Contempt")
    # The release asked for was generated and read: face boxes cropped from pictures only in the CSV one.
    train_sources = cli.datamodule.tables["train"].sources
    assert all(isinstance(source, FaceCrop) == (release == "csv") for source in train_sources)
    assert cli.model.num_classes == 8 and cli.model.class_names[7] == "Contempt"
    # the config's sampler, inside the wrapper that keys each sample by epoch for its augmentation
    assert isinstance(cli.trainer.train_dataloader.sampler.sampler, ImbalancedDatasetSampler)


@pytest.mark.parametrize(
    ("config", "model", "lr", "augment", "num_classes"),
    [
        ("btn_affectnet7.yaml", "BTN", 0.8e-6, "btn_affectnet", 7),
        ("btn_affectnet8.yaml", "BTN", 1e-6, "btn_affectnet", 8),
        ("posterpp_affectnet7.yaml", "POSTERPP", 1e-6, "posterpp_affectnet", 7),
        ("posterpp_affectnet8.yaml", "POSTERPP", 1e-6, "posterpp_affectnet", 8),
    ],
)
def test_paper_configs_resolve(config, model, lr, augment, num_classes, capsys):
    """The AffectNet paper recipes parse against the real classes (running them is the paper-config suite's job)."""
    import yaml

    from fer_lightning.cli import main

    with pytest.raises(SystemExit):
        main(["fit", "--config", str(EXPERIMENTS / config), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == f"fer_lightning.models.{model}"
    assert printed["model"]["init_args"]["optimizer"]["init_args"]["lr"] == lr
    assert printed["model"]["init_args"]["sam_rho"] == 0.05
    assert printed["model"]["init_args"]["scheduler"]["init_args"]["gamma"] == 0.98
    data = printed["data"]["init_args"]
    assert printed["data"]["class_path"] == "fer_lightning.data.AffectNetDataModule"
    assert (data["num_classes"], data["batch_size"], data["img_size"]) == (num_classes, 144, 224)
    assert (data["augment"], data["sampler"]) == (augment, "imbalanced")
