"""data.label_noise: the requested fraction of each class's training labels flipped, reproducibly, by class
name for asymmetric noise, and never a validation or test label."""

import csv
import glob
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import quickstart_args, write_tiny_rafdb

from fer_lightning.cli import main
from fer_lightning.data import RAFDBDataModule
from fer_lightning.data.formats import AFFECTNET_CLASS_NAMES, RAFDB_CLASS_NAMES
from fer_lightning.data.label_noise import LabelNoise, apply_label_noise, confusion_targets
from fer_lightning.errors import ConfigurationError

# 7 classes of very different sizes, in RAF-DB's order.
LABELS = np.repeat(np.arange(7), [40, 11, 23, 100, 57, 9, 64])


def flipped_per_class(labels, noisy):
    return Counter(int(label) for label in labels[labels != noisy])


@pytest.mark.parametrize("kind", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_the_requested_fraction_of_every_class_is_flipped(kind, rate):
    noisy, flipped = apply_label_noise(LABELS, RAFDB_CLASS_NAMES, LabelNoise(rate, kind, seed=3))
    counts = np.bincount(LABELS)
    assert flipped_per_class(LABELS, noisy) == {
        c: round(rate * n) for c, n in enumerate(counts) if round(rate * n)
    }
    # the returned indices are exactly the changed labels, and nothing else changed
    assert np.array_equal(flipped, np.flatnonzero(noisy != LABELS))
    assert abs(len(flipped) / len(LABELS) - rate) < 0.01


def test_noise_is_a_function_of_its_seed():
    noise = LabelNoise(0.2, "symmetric", seed=5)
    first, _ = apply_label_noise(LABELS, RAFDB_CLASS_NAMES, noise)
    again, _ = apply_label_noise(LABELS, RAFDB_CLASS_NAMES, noise)
    other, _ = apply_label_noise(LABELS, RAFDB_CLASS_NAMES, LabelNoise(0.2, "symmetric", seed=6))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    # symmetric noise reaches every other class, not a fixed one
    assert len(set(first[(LABELS == 3) & (first != 3)])) > 2


def test_asymmetric_noise_goes_by_class_name_whatever_the_class_order():
    def confusions(names):
        return {names[source]: names[target] for source, target in enumerate(confusion_targets(names))}

    rafdb = confusions(RAFDB_CLASS_NAMES)
    assert rafdb["Fear"] == "Surprise" and rafdb["Surprise"] == "Fear"
    assert rafdb["Disgust"] == "Anger" and rafdb["Sadness"] == "Neutral"
    affectnet = confusions(AFFECTNET_CLASS_NAMES)  # another order and spelling (Happy, Sad), plus Contempt
    assert (
        affectnet["Fear"] == "Surprise" and affectnet["Sad"] == "Neutral" and affectnet["Happy"] == "Neutral"
    )
    assert affectnet["Contempt"] == "Disgust"
    reversed_names = tuple(reversed(RAFDB_CLASS_NAMES))
    assert confusions(reversed_names) == rafdb

    labels = np.repeat(np.arange(7), 20)
    noisy, flipped = apply_label_noise(labels, RAFDB_CLASS_NAMES, LabelNoise(0.25, "asymmetric"))
    fear, surprise = RAFDB_CLASS_NAMES.index("Fear"), RAFDB_CLASS_NAMES.index("Surprise")
    assert set(noisy[flipped][labels[flipped] == fear]) == {surprise}


def test_asymmetric_noise_names_a_class_it_cannot_map():
    with pytest.raises(ConfigurationError, match="class 'Boredom' is not an expression"):
        apply_label_noise(np.arange(3), ("Happy", "Neutral", "Boredom"), LabelNoise(0.5, "asymmetric"))
    with pytest.raises(ConfigurationError, match="class 'Happy' is confused with neutral, none of which"):
        apply_label_noise(np.arange(2), ("Happy", "Fear"), LabelNoise(0.5, "asymmetric"))
    with pytest.raises(ConfigurationError, match=r"label_noise.rate must be a fraction in \[0, 1\]"):
        LabelNoise(1.5)
    with pytest.raises(ConfigurationError, match="has no option 'rat'"):
        LabelNoise.parse({"rat": 0.1})


@pytest.fixture(scope="module")
def tiny_rafdb(tmp_path_factory):
    return write_tiny_rafdb(tmp_path_factory.mktemp("tiny_rafdb"), num_images=150, seed=1)


def test_only_training_labels_change(tiny_rafdb):
    clean = RAFDBDataModule(root=str(tiny_rafdb), num_workers=0, img_size=32)
    noisy = RAFDBDataModule(
        root=str(tiny_rafdb), num_workers=0, img_size=32, label_noise={"rate": 0.3, "kind": "symmetric"}
    )
    clean.setup()
    noisy.setup()
    for split in ("val", "test"):
        assert clean.tables[split].names == noisy.tables[split].names
        assert np.array_equal(clean.tables[split].labels, noisy.tables[split].labels), split
    # the same training samples (the carve ignores the noise), 30 % of each class relabelled
    assert clean.tables["train"].names == noisy.tables["train"].names
    clean_labels, noisy_labels = clean.tables["train"].labels, noisy.tables["train"].labels
    assert np.array_equal(np.flatnonzero(clean_labels != noisy_labels), noisy.flipped_train_indices)
    counts = np.bincount(clean_labels)
    assert len(noisy.flipped_train_indices) == sum(round(0.3 * n) for n in counts) > 0
    # what the loaders hand out is the noisy label
    index = int(noisy.flipped_train_indices[0])
    assert noisy.datasets["train"][index][1] == noisy_labels[index] != clean_labels[index]


def test_fit_lists_the_flipped_samples_in_the_run_folder(tiny_rafdb, tmp_path, caplog):
    args = quickstart_args(
        tiny_rafdb,
        tmp_path,
        "--trainer.max_epochs=1",
        "--trainer.log_every_n_steps=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=2",
        "--data.label_noise.rate=0.2",
        "--data.label_noise.kind=asymmetric",
    )
    main(["fit", *args])
    [run] = [Path(p) for p in glob.glob(str(tmp_path / "quickstart" / "version_*"))]
    with open(run / "label_noise.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(row["clean_label"] != row["noisy_label"] for row in rows)
    assert {(row["clean_class"], row["noisy_class"]) for row in rows if row["clean_class"] == "Fear"} <= {
        ("Fear", "Surprise")
    }
    # the flipped samples are training samples, and data_splits.csv shows the labels training used
    with open(run / "data_splits.csv") as handle:
        splits = {row["sample"]: row for row in csv.DictReader(handle)}
    assert all(splits[row["sample"]]["split"] == "train" for row in rows)
    assert all(splits[row["sample"]]["label"] == row["noisy_label"] for row in rows)
    assert f"flipped {len(rows)} of " in caplog.text


def test_the_label_noise_sweep_runs_both_models_at_every_rate(monkeypatch, capsys):
    from fer_lightning import sweep

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)  # the command names experiments/ relative to the repository
    config, _ = sweep.validate_sweep(repo / "sweeps" / "label_noise.yaml")
    points = sweep.sweep_points(config, max_runs=None)
    models = {"fer_lightning.models.BTN", "fer_lightning.models.POSTERPP"}
    cells = {(p["model.class_path"], p["data.init_args.label_noise.rate"]) for p in points}
    assert cells == {(model, rate) for model in models for rate in (0.0, 0.1, 0.2, 0.3)}
    command = sweep.expand_command(config, points[-1], [])
    with pytest.raises(SystemExit):
        main([*command[1:], "--print_config"])
    printed = capsys.readouterr().out
    assert "class_path: fer_lightning.models.POSTERPP" in printed and "lambda_vit" not in printed
    assert "      rate: 0.3" in printed.splitlines()
