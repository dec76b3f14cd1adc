"""``fer-lightning data-summary``: counts per split and class, drops, and the class histogram PNG."""

import re
from pathlib import Path

import pytest

from fer_lightning.cli import EXTRA_COMMANDS_HELP, main
from fer_lightning.cli.data_summary import build_datamodule
from fer_lightning.data import AffectNetDataModule, AIHubKoreanDataModule
from fer_lightning.data.summary import display_class_names
from fer_lightning.data.synthetic import read_manifest, write_synthetic

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture(scope="module")
def affectnet_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("affectnet")
    write_synthetic("affectnet_csv", root, num_images=80, seed=12, invalid_rows=5, progress=False)
    return root


def test_summary_prints_counts_and_drops_and_writes_the_histogram(affectnet_root, tmp_path, capsys):
    png = tmp_path / "classes.png"
    main(
        [
            "data-summary",
            "--config",
            str(EXPERIMENTS / "btn_affectnet8.yaml"),
            f"--data.root={affectnet_root}",
            "--data.num_workers=0",
            "--out",
            str(png),
            "--check-images",
        ]
    )
    out = capsys.readouterr().out
    manifest = read_manifest(affectnet_root)
    test_counts = manifest["class_counts"]["validation"]
    # One line per class: id, name, then train / val / test counts; test is the official validation CSV.
    for class_id, name in enumerate(manifest["class_names"]):
        [line] = [line for line in out.splitlines() if line.startswith(f"{class_id} {name} ")]
        assert int(line.split()[-1]) == test_counts[class_id]
    train_total = sum(manifest["class_counts"]["training"])
    assert re.search(rf"^total\s+(\d+)\s+(\d+)\s+{sum(test_counts)}$", out, re.MULTILINE)
    totals = re.search(r"^total\s+(\d+)\s+(\d+)", out, re.MULTILINE)
    assert int(totals[1]) + int(totals[2]) == train_total
    assert re.search(r"train\s+dropped\s+2\s+invalid face box", out)
    assert re.search(r"test\s+dropped\s+1\s+expression 10 \(No-Face\)", out)
    assert "images that fail to decode:\n  none" in out
    assert f"class histogram: {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_overrides_and_later_configs_win(affectnet_root, tmp_path):
    override = tmp_path / "seven.yaml"
    override.write_text("data:\n  init_args:\n    num_classes: 7\n")
    datamodule = build_datamodule(
        [EXPERIMENTS / "btn_affectnet8.yaml", override],
        [f"--data.root={affectnet_root}", "--data.val_fraction=0.3"],
    )
    assert isinstance(datamodule, AffectNetDataModule)
    assert datamodule.num_classes == 7 and datamodule.hparams.val_fraction == 0.3
    assert datamodule.hparams.sampler == "imbalanced"  # from the first config


def test_default_output_path_and_bad_arguments(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(
        ["data-summary", "--config", str(EXPERIMENTS / "quickstart_fer2013.yaml"), "--data.synthetic_size=60"]
    )
    assert "class histogram: runs/data_summary/quickstart_fer2013_classes.png" in capsys.readouterr().out
    assert (tmp_path / "runs" / "data_summary" / "quickstart_fer2013_classes.png").is_file()
    with pytest.raises(SystemExit):
        main(["data-summary", "--config", str(EXPERIMENTS / "quickstart_fer2013.yaml"), "--max-epochs=1"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as missing_config:
        main(["data-summary"])
    error = capsys.readouterr().err.strip()
    assert missing_config.value.code == 1 and "\n" not in error and "usage:" not in error
    assert error.startswith("error: data-summary:") and "--config" in error
    assert "data-summary" in EXTRA_COMMANDS_HELP


def test_hangul_classes_fall_back_to_english_without_a_hangul_font(monkeypatch):
    from fer_lightning import plots

    datamodule = AIHubKoreanDataModule(synthetic_size=10)
    monkeypatch.setattr(plots, "font_can_render", lambda texts: False)
    assert display_class_names(datamodule) == [
        "joy",
        "panic",
        "anger",
        "anxiety",
        "hurt",
        "sadness",
        "neutral",
    ]
    monkeypatch.setattr(plots, "font_can_render", lambda texts: True)
    assert display_class_names(datamodule) == ["기쁨", "당황", "분노", "불안", "상처", "슬픔", "중립"]


def test_confusion_matrix_figure_uses_the_glosses_and_the_csv_keeps_the_names(monkeypatch, tmp_path):
    from types import SimpleNamespace

    import torch

    from fer_lightning import plots
    from fer_lightning.callbacks import confusion_matrix

    datamodule = AIHubKoreanDataModule(synthetic_size=10)
    drawn = {}
    monkeypatch.setattr(plots, "font_can_render", lambda texts: False)
    monkeypatch.setattr(
        confusion_matrix,
        "plot_confusion_matrix",
        lambda counts, names, path, title: drawn.update(names=names),
    )
    trainer = SimpleNamespace(
        log_dir=str(tmp_path), is_global_zero=True, datamodule=datamodule, current_epoch=0, loggers=[]
    )
    module = SimpleNamespace(
        last_confusion={"test": torch.eye(7, dtype=torch.long)}, class_names=datamodule.class_names
    )
    confusion_matrix.ConfusionMatrixPlot()._write(trainer, module, "test")
    assert drawn["names"] == list(datamodule.DISPLAY_NAMES)
    assert (tmp_path / "confusion_matrix_test.csv").read_text().splitlines()[1].startswith("기쁨,1,0")
