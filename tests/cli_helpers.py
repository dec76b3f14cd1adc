"""Shared by the CLI tests: the CLI run in-process, handing back what it built, and a
``fit --trainer.fast_dev_run`` of a quickstart config."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

from fer_lightning.cli import main

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


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
        return run_cli(
            [
                "fit",
                "--config",
                str(EXPERIMENTS / config),
                "--data.batch_size=4",
                "--data.num_workers=0",
                "--data.img_size=32",
                f"--trainer.logger.init_args.save_dir={save_dir}",
                "--trainer.enable_model_summary=false",
                "--trainer.enable_progress_bar=false",
                "--trainer.fast_dev_run=true",
                *overrides,
            ],
            before_fit,
        )
    finally:
        os.chdir(previous)
