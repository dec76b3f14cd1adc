"""The fer-lightning CLI, run in-process on a tiny synthetic RAF-DB folder."""

import csv
import glob
import os
import re
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import QUICKSTART, finite_metrics, quickstart_args, run_cli, write_tiny_rafdb
from lightning.pytorch.utilities.model_summary import ModelSummary

from fer_lightning.cli import main
from fer_lightning.data.formats import RAFDB_CLASS_NAMES
from fer_lightning.data.synthetic import MANIFEST_NAME


@pytest.fixture(scope="module")
def tiny_rafdb(tmp_path_factory):
    return write_tiny_rafdb(tmp_path_factory.mktemp("tiny_rafdb"), num_images=150, seed=1)


def _small_run_args(root, save_dir, *extra):
    return quickstart_args(root, save_dir, *extra, batch_size=8)


def test_make_synthetic_writes_rafdb(tiny_rafdb):
    assert (tiny_rafdb / "EmoLabel" / "list_patition_label.txt").is_file()
    assert (tiny_rafdb / MANIFEST_NAME).is_file()
    assert len(list((tiny_rafdb / "Image" / "aligned").glob("*_aligned.jpg"))) == 150


def test_make_synthetic_refuses_non_empty_folder(tiny_rafdb):
    with pytest.raises(SystemExit):
        main(["make-synthetic", "--format", "rafdb", "--out", str(tiny_rafdb), "--num-images", "5"])


def test_fit_fast_dev_run(tiny_rafdb, tmp_path):
    cli = run_cli(["fit", *_small_run_args(tiny_rafdb, tmp_path, "--trainer.fast_dev_run=true")])
    assert (cli.trainer.global_step, cli.trainer.num_val_batches) == (1, [1])  # one batch of each
    metrics = finite_metrics(
        cli, "train/loss_epoch", "val/loss", "val/acc", "val/macro_f1", "val/class_acc/Fear"
    )
    assert 0.0 <= metrics["val/acc"] <= 1.0
    # The dataset's classes reached the model (argument links), and the overrides took effect.
    assert cli.model.class_names == list(cli.datamodule.class_names) == list(RAFDB_CLASS_NAMES)
    assert (cli.datamodule.hparams.batch_size, cli.datamodule.hparams.img_size) == (8, 32)
    images, labels = next(iter(cli.datamodule.val_dataloader()))
    assert tuple(images.shape) == (8, 3, 32, 32) and labels.dtype == torch.int64
    # Lightning's model summary gets one image of the data's size, so it counts FLOPs instead of printing 0.
    assert tuple(cli.model.example_input_array.shape) == (1, 3, 32, 32)
    assert ModelSummary(cli.model).total_flops > 0


def test_fit_then_validate_and_test_the_selected_checkpoint(tiny_rafdb, tmp_path):
    args = _small_run_args(
        tiny_rafdb,
        tmp_path,
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=3",
        "--trainer.log_every_n_steps=1",
    )
    main(["fit", *args])
    [run_dir] = glob.glob(str(tmp_path / "quickstart" / "version_*"))
    run_dir = Path(run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["data"]["init_args"]["root"] == str(tiny_rafdb)
    with open(run_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    val_acc = [float(r["val/acc"]) for r in rows if r.get("val/acc")]
    assert len(val_acc) == 2  # one row per epoch
    for column in ("val/mean_class_acc", "val/macro_f1", "val/class_acc/Happiness", "train/loss_epoch"):
        assert any(r.get(column) for r in rows), column
    assert (run_dir / "confusion_matrix_val.png").stat().st_size > 1000
    assert (run_dir / "training_curves.png").stat().st_size > 1000
    assert (run_dir / "data_splits.csv").is_file()
    [best] = glob.glob(str(run_dir / "checkpoints" / "best-*.ckpt"))
    # The selected checkpoint is the epoch with the best validation accuracy.
    assert f"val_acc{max(val_acc):.4f}" in best

    for subcommand in ("validate", "test"):
        main([subcommand, *args, f"--ckpt_path={best}"])
    # Evaluating a run's checkpoint writes into that run's folder, next to the training results.
    assert glob.glob(str(tmp_path / "quickstart" / "version_*")) == [str(run_dir)]
    assert (run_dir / "validate" / "metrics.csv").is_file()
    assert (run_dir / "test" / "confusion_matrix_test.png").is_file()
    with open(run_dir / "test" / "metrics.csv") as handle:
        [test_row] = [r for r in csv.DictReader(handle) if r.get("test/acc")]
    assert 0.0 <= float(test_row["test/acc"]) <= 1.0


def test_missing_root_fails_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        main(["fit", *_small_run_args(tmp_path / "does-not-exist", tmp_path, "--trainer.fast_dev_run=true")])
    assert raised.value.code == 1
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert re.match(r"error: RAF-DB root not found: .*does-not-exist", line)


def test_print_config_links_nothing_and_resolves(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", QUICKSTART, "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "fer_lightning.models.TimmClassifier"
    assert printed["data"]["init_args"]["synthetic_size"] == 3000


def test_wandb_logger_offline_does_not_hang(tiny_rafdb, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    loggers = tmp_path / "wandb_logger.yaml"
    loggers.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "logger": [
                        {
                            "class_path": "lightning.pytorch.loggers.CSVLogger",
                            "init_args": {"save_dir": str(tmp_path), "name": "wb"},
                        },
                        {
                            "class_path": "lightning.pytorch.loggers.WandbLogger",
                            "init_args": {"project": "fer_lightning_test", "save_dir": str(tmp_path)},
                        },
                    ]
                }
            }
        )
    )
    args = _small_run_args(tiny_rafdb, None, "--trainer.max_steps=2", "--trainer.limit_val_batches=2")
    main(["fit", *args, "--config", str(loggers)])
    assert glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert os.path.isfile(tmp_path / "wb" / "version_0" / "config.yaml")


def test_lightnings_litlogger_advertisement_is_not_printed():
    import logging

    import fer_lightning.cli.lightning_cli  # noqa: F401  (installs the filter)

    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    tip = logger.makeRecord(
        logger.name, logging.INFO, __file__, 0, "💡 Tip: ... install [litlogger](...)", (), None
    )
    other = logger.makeRecord(logger.name, logging.INFO, __file__, 0, "GPU available: False", (), None)
    assert not logger.filter(tip) and logger.filter(other)
