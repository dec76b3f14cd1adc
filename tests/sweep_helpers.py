"""Shared by the sweep, report and notebook tests: a real local λ sweep of the tiny BTN on synthetic faces."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAMBDA_SWEEP = REPO / "sweeps" / "btn_lambda.yaml"
#: The README's synthetic override of sweeps/btn_lambda.yaml, made tiny: 32 px, 2 training and 2
#: validation batches of 8 images, one epoch, W&B off. Each run still fits, tests its selected
#: checkpoint and appends its row.
TINY_BTN_OVERRIDES = (
    "--config",
    str(REPO / "experiments" / "btn_synthetic.yaml"),
    "--model.init_args.sam_rho=null",
    "--data.synthetic_size=120",
    "--data.img_size=32",
    "--data.batch_size=8",
    "--data.num_workers=0",
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
)


def run_tiny_lambda_sweep(out: Path, max_runs: int = 3) -> str:
    """``fer-lightning sweep run sweeps/btn_lambda.yaml --max-runs N --out OUT --wandb off`` with the tiny
    overrides, run from the repository root (the sweep's command names experiments/ relatively); returns
    what it printed."""
    import contextlib
    import io
    import os

    from fer_lightning.cli import main

    printed = io.StringIO()
    previous = os.getcwd()
    os.chdir(REPO)
    try:
        with contextlib.redirect_stdout(printed):
            main(
                [
                    "sweep",
                    "run",
                    str(LAMBDA_SWEEP),
                    "--max-runs",
                    str(max_runs),
                    "--out",
                    str(out),
                    "--wandb",
                    "off",
                    *TINY_BTN_OVERRIDES,
                ]
            )
    finally:
        os.chdir(previous)
    return printed.getvalue()
