"""With a W&B logger among the loggers, the run's figures reach W&B as images (offline run folder), and
the final training-curve figure includes the last epoch's training loss."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import yaml
from cli_helpers import quickstart_args, run_cli, write_tiny_rafdb
from wandb.proto import wandb_internal_pb2

from fer_lightning.callbacks import training_curves
from fer_lightning.plots import read_metrics_csv

MAX_EPOCHS = 2
BLOCK = 32768


def _finish_wandb(cli) -> Path:
    """End the run's W&B run (as the process exit would) and return its offline run folder."""
    [wandb_logger] = [logger for logger in cli.trainer.loggers if type(logger).__name__ == "WandbLogger"]
    run = wandb_logger.experiment
    run_folder = Path(run.dir).parent  # <save_dir>/wandb/offline-run-*/files
    run.finish()
    return run_folder


@pytest.fixture(scope="module")
def wandb_runs(tmp_path_factory):
    """A tiny fit and a test of its best checkpoint, logging to CSV and to W&B (offline)."""
    tmp = tmp_path_factory.mktemp("wandb_runs")
    data = write_tiny_rafdb(tmp / "rafdb", num_images=60, seed=4)
    loggers = tmp / "loggers.yaml"
    loggers.write_text(
        yaml.safe_dump(
            {
                "trainer": {
                    "logger": [
                        {
                            "class_path": "lightning.pytorch.loggers.CSVLogger",
                            "init_args": {"save_dir": str(tmp / "runs"), "name": "wb"},
                        },
                        {
                            "class_path": "lightning.pytorch.loggers.WandbLogger",
                            "init_args": {"project": "fer_lightning_test", "save_dir": str(tmp / "runs")},
                        },
                    ]
                }
            }
        )
    )
    args = quickstart_args(
        data,
        None,  # the loggers come from the second config
        "--config",
        str(loggers),
        f"--trainer.max_epochs={MAX_EPOCHS}",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.log_every_n_steps=1",
        batch_size=8,
    )
    drawn = []  # the metrics each training-curve drawing was made from

    def recording_plot(metrics_csv, *plot_args, **kwargs):
        drawn.append(read_metrics_csv(metrics_csv))
        return plot_training_curves(metrics_csv, *plot_args, **kwargs)

    plot_training_curves = training_curves.plot_training_curves
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp)
        patch.setattr(training_curves, "plot_training_curves", recording_plot)
        fit = run_cli(["fit", *args])
        fit_wandb = _finish_wandb(fit)
        best = fit.trainer.checkpoint_callback.best_model_path
        tested = run_cli(["test", *args, f"--ckpt_path={best}"])
        test_wandb = _finish_wandb(tested)
    return {
        "fit": (fit, fit_wandb),
        "test": (tested, test_wandb),
        "drawn": drawn,
    }


def _wandb_records(path: Path):
    """The protobuf records of an offline ``run-*.wandb`` file: a 7-byte header, then 32 KiB blocks of
    chunks (CRC32, length, kind: 1 whole record, 2/3/4 first/middle/last piece), as W&B writes it."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    position, pieces = 7, b""
    while position + 7 <= len(data):
        if BLOCK - position % BLOCK < 7:  # a block's tail too short for a chunk header is padding
            position += BLOCK - position % BLOCK
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 2):
            pieces = b""
        pieces += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            yield record
        elif kind == 0:
            break


def _logged_images(run_folder: Path) -> dict[str, list[Path]]:
    """Image keys in the W&B run's history → the PNG files logged under each, in logging order."""
    [run_file] = run_folder.glob("run-*.wandb")
    images: dict[str, list[Path]] = {}
    for record in _wandb_records(run_file):
        if record.WhichOneof("record_type") != "history":
            continue
        for item in record.history.item:
            key = "/".join(item.nested_key) if item.nested_key else item.key
            if key.endswith("/filenames"):
                files = [run_folder / "files" / name for name in json.loads(item.value_json)]
                images.setdefault(key.removesuffix("/filenames"), []).extend(files)
    return images


def test_fit_logs_confusion_matrix_per_class_accuracy_and_curves_to_wandb(wandb_runs):
    fit, run_folder = wandb_runs["fit"]
    images = _logged_images(run_folder)
    assert set(images) == {"val/confusion_matrix", "val/per_class_accuracy", "training_curves"}
    for paths in images.values():
        for path in paths:
            assert path.parent.is_relative_to(run_folder / "files" / "media" / "images")
            assert path.suffix == ".png" and path.stat().st_size > 1000
    # The curves after each validation and once more at the end of training.
    assert len(images["training_curves"]) == MAX_EPOCHS + 1
    log_dir = Path(fit.trainer.log_dir)  # the same figures are in the CSV run folder
    for name in ("confusion_matrix_val.png", "per_class_accuracy_val.png", "training_curves.png"):
        assert (log_dir / name).stat().st_size > 1000


def test_test_run_logs_its_figures_to_wandb(wandb_runs):
    tested, run_folder = wandb_runs["test"]
    images = _logged_images(run_folder)
    assert set(images) == {"test/confusion_matrix", "test/per_class_accuracy"}
    assert all(len(paths) == 1 and paths[0].stat().st_size > 1000 for paths in images.values())
    assert (Path(tested.trainer.log_dir) / "per_class_accuracy_test.png").stat().st_size > 1000


def test_final_training_curves_include_the_last_epochs_training_loss(wandb_runs):
    fit, _ = wandb_runs["fit"]
    last_drawing = wandb_runs["drawn"][-1]
    assert [epoch for epoch, _, _ in last_drawing["train/loss_epoch"]] == list(range(MAX_EPOCHS))
    assert [epoch for epoch, _, _ in last_drawing["val/acc"]] == list(range(MAX_EPOCHS))
    # What was drawn is what the run logged.
    on_disk = read_metrics_csv(Path(fit.trainer.log_dir) / "metrics.csv")
    assert last_drawing["train/loss_epoch"] == on_disk["train/loss_epoch"]
