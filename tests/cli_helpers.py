"""Shared by the dataset tests: a ``fit --trainer.fast_dev_run`` of a quickstart config, in-process."""

from __future__ import annotations

import os
from pathlib import Path

from fer_lightning.cli import main

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def fast_dev_run(config: str, save_dir: Path, *overrides: str) -> None:
    """One training and one validation batch of ``experiments/<config>``: tiny images, batch 4, no workers.

    Runs inside ``save_dir``: under ``fast_dev_run`` Lightning replaces the logger, and the checkpoint
    callback's ``save_last`` then writes ``checkpoints/`` into the working directory.
    """
    previous = os.getcwd()
    os.chdir(save_dir)
    try:
        main(
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
            ]
        )
    finally:
        os.chdir(previous)
