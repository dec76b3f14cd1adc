"""Shared by the CLI tests: a tiny synthetic RAF-DB folder, a run folder's data_splits.csv, the arguments of
a small quickstart run, the CLI run in-process handing back what it built, and a
``fit --trainer.fast_dev_run`` of an experiment config."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable
from pathlib import Path

from fer_lightning.cli import main

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
QUICKSTART = str(EXPERIMENTS / "quickstart.yaml")


def write_tiny_rafdb(folder: Path, num_images: int, seed: int) -> Path:
    """``fer-lightning make-synthetic`` of a RAF-DB folder with ``num_images`` images into ``folder``;
    returns ``folder``."""
    size = ["--num-images", str(num_images), "--seed", str(seed)]
    main(["make-synthetic", "--format", "rafdb", "--out", str(folder), *size])
    return folder


def write_data_splits(folder: Path, rows: list[tuple[str, int]]) -> None:
    """A run folder's ``data_splits.csv`` (as the datamodules write it) with one row per (split, label)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "data_splits.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["split", "sample", "label", "class_name"])
        writer.writerows([split, f"img{i}.png", label, f"c{label}"] for i, (split, label) in enumerate(rows))


def quickstart_args(
    root: Path | None,
    save_dir: Path | None,
    *extra: str,
    batch_size: int = 4,
    num_workers: int = 0,
    config: str | Path = QUICKSTART,
) -> list[str]:
    """The arguments after the subcommand for a small, quiet run of ``config``: 32 px images, no model
    summary or progress bar, then ``extra`` (later arguments override earlier ones). ``root`` None keeps
    the config's data (its synthetic set); ``save_dir`` None keeps the config's logger as written."""
    args = ["--config", str(config)]
    if root is not None:
        args.append(f"--data.root={root}")
    args += [f"--data.batch_size={batch_size}", f"--data.num_workers={num_workers}", "--data.img_size=32"]
    if save_dir is not None:
        args.append(f"--trainer.logger.init_args.save_dir={save_dir}")
    return [*args, "--trainer.enable_model_summary=false", "--trainer.enable_progress_bar=false", *extra]


def run_cli(args: list[str], before_fit: Callable | None = None):
    """``main(args)``, returning the LightningCLI object (``.trainer``, ``.model``, ``.datamodule``) so a
    test can check what the run did. ``before_fit(cli)`` runs after the classes exist, before training."""
    from fer_lightning.cli import lightning_cli

    built = []

    class RecordedCLI(lightning_cli.FERCLI):
        def __init__(self, *cli_args, **kwargs):
            built.append(self)
            super().__init__(*cli_args, **kwargs)

        def before_fit(self) -> None:
            super().before_fit()
            if before_fit is not None:
                before_fit(self)

    original, lightning_cli.FERCLI = lightning_cli.FERCLI, RecordedCLI
    try:
        main(args)
    finally:
        lightning_cli.FERCLI = original
    return built[-1]


def count_training_loss_calls(cli) -> list[int]:
    """Install on ``cli.model`` a counter of forward passes through the training objective; returns the
    count (one list item per call), filled as the run trains. SAM makes two per optimiser step."""
    calls: list[int] = []
    training_loss = cli.model.training_loss

    def counted(*args, **kwargs):
        calls.append(1)
        return training_loss(*args, **kwargs)

    cli.model.training_loss = counted
    return calls


def finite_metrics(cli, *names: str) -> dict[str, float]:
    """The logged values of ``names`` at the end of the run; each must exist and be finite."""
    metrics = {name: float(value) for name, value in cli.trainer.callback_metrics.items()}
    missing = [name for name in names if name not in metrics]
    assert not missing, f"not logged: {missing}; logged: {sorted(metrics)}"
    assert all(math.isfinite(metrics[name]) for name in names), {name: metrics[name] for name in names}
    return {name: metrics[name] for name in names}


def fast_dev_run(config: str, save_dir: Path, *overrides: str, before_fit: Callable | None = None):
    """One training and one validation batch of ``experiments/<config>``: tiny images, batch 4, no workers.

    Runs inside ``save_dir``: under ``fast_dev_run`` Lightning replaces the logger, and the checkpoint
    callback's ``save_last`` then writes ``checkpoints/`` into the working directory. Returns the CLI
    object (see :func:`run_cli`).
    """
    previous = os.getcwd()
    os.chdir(save_dir)
    try:
        args = quickstart_args(
            None, save_dir, "--trainer.fast_dev_run=true", *overrides, config=EXPERIMENTS / config
        )
        return run_cli(["fit", *args], before_fit)
    finally:
        os.chdir(previous)
