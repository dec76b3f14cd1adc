"""The ``fer-lightning`` command: LightningCLI for fit/validate/test/predict, plus helper commands.

Usage::

    fer-lightning fit --config experiments/quickstart.yaml
    fer-lightning test --config experiments/quickstart.yaml --ckpt_path runs/.../checkpoints/best-....ckpt
    fer-lightning make-synthetic --format rafdb --out data/synthetic-rafdb --num-images 3000 --seed 0
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable

import yaml
from lightning.pytorch.cli import ArgsType, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

import fer_lightning.data
import fer_lightning.models  # noqa: F401
from fer_lightning.callbacks import ConfusionMatrixPlot, TrainingCurvesPlot, ValidationCheckpoint
from fer_lightning.data import FERDataModule
from fer_lightning.data.summary import data_summary
from fer_lightning.models import FERClassifier

SELECTION_METRIC = "val/acc"

# Lightning 2.6 + torch 2.14 print this on every step; it is theirs to fix and says nothing about the run.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
# POSTER++/BTN keep their frozen landmark network in eval mode on purpose (models.md §1.3).
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


class FERSaveConfigCallback(SaveConfigCallback):
    """Save ``config.yaml`` into the run folder and, when a W&B logger is active, into the W&B run too.

    The CSV logger comes first in our defaults, so ``trainer.log_dir`` is a fresh ``version_N`` folder
    per run; with W&B first it would be ``.`` and a second run would clash (tooling.md §2.6).
    """

    def save_config(self, trainer, pl_module, stage: str) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
                logger.log_hyperparams({"config": config})


class FERCLI(LightningCLI):
    """LightningCLI with the dataset's classes linked into the model and a per-run folder."""

    def add_arguments_to_parser(self, parser) -> None:
        # Fixed per dataset and set in the datamodule's __init__, so they exist at instantiation.
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.init_args.class_names", apply_on="instantiate")

    def init_parser(self, **kwargs):
        kwargs.setdefault("epilog", EXTRA_COMMANDS_HELP)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        return super().init_parser(**kwargs)

    def after_fit(self) -> None:
        checkpoint = self.trainer.checkpoint_callback
        if not self.trainer.is_global_zero or checkpoint is None or not checkpoint.best_model_path:
            return
        score = checkpoint.best_model_score
        score_text = f"{float(score):.4f}" if score is not None else "n/a"
        print(
            f"\nrun folder: {self.trainer.log_dir}\n"
            f"best checkpoint ({checkpoint.monitor} = {score_text}): {checkpoint.best_model_path}\n"
            f"test it with: fer-lightning test --config <same config> --ckpt_path {checkpoint.best_model_path}"
        )


def trainer_defaults() -> dict:
    """Defaults every run gets: a CSV log per run, the best-on-validation checkpoint, confusion and curve plots."""
    return {
        "logger": {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": "runs", "name": "default"},
        },
        "callbacks": [
            ValidationCheckpoint(
                monitor=SELECTION_METRIC,
                mode="max",
                filename="best-epoch{epoch:02d}-val_acc{val/acc:.4f}",
                auto_insert_metric_name=False,
                save_last=True,
            ),
            ConfusionMatrixPlot(monitor=SELECTION_METRIC, mode="max"),
            TrainingCurvesPlot(),
        ],
    }


def make_synthetic(argv: list[str]) -> None:
    """``fer-lightning make-synthetic``: write a generated dataset in a real dataset's on-disk format."""
    from fer_lightning.data.synthetic import WRITERS, write_synthetic

    parser = argparse.ArgumentParser(
        prog="fer-lightning make-synthetic",
        description="Write procedurally generated faces in the on-disk format of a real FER dataset.",
    )
    parser.add_argument("--format", required=True, choices=sorted(WRITERS), help="dataset format to write")
    parser.add_argument("--out", required=True, help="output folder (created; must be empty if it exists)")
    parser.add_argument("--num-images", type=int, default=3000, help="number of images (default 3000)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    args = parser.parse_args(argv)
    if os.path.isdir(args.out) and os.listdir(args.out):
        parser.error(f"--out {args.out} exists and is not empty")
    summary = write_synthetic(args.format, args.out, num_images=args.num_images, seed=args.seed)
    print(summary)


def complexity(argv: list[str]) -> None:
    """``fer-lightning complexity``: parameters and MACs of a config's model, per image."""
    from fer_lightning.models.complexity import count_macs, count_parameters

    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: fer-lightning complexity --config CONFIG [overrides]\n\n"
            + complexity.__doc__.split(": ", 1)[1]
            + " MACs = multiply-accumulates (FlopCounterMode FLOPs / 2), eval mode, batch 1; no data is read."
        )
        return
    # The datamodule is only instantiated (for the class count and image size); it reads nothing, so a
    # config whose data root is unset may stand in for one with synthetic data.
    cli = FERCLI(
        FERClassifier,
        FERDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults=trainer_defaults(),
        run=False,
        args=[*argv, "--data.synthetic_size=1"],
    )
    model, size = cli.model, cli.datamodule.hparams.img_size
    total, trainable = count_parameters(model), count_parameters(model, trainable_only=True)
    macs = count_macs(model, (1, 3, size, size))
    print(f"model: {type(model).__name__} ({cli.datamodule.num_classes} classes), input 3x{size}x{size}")
    print(f"parameters: {total:,} ({trainable:,} trainable)")
    print(f"compute: {macs / 1e9:.3f} GMACs per image (eval forward; 1 MAC = 2 FLOPs)")


def plot_curves(argv: list[str]) -> None:
    """``fer-lightning plot-curves``: draw a run's loss and accuracy curves from its metrics.csv."""
    from fer_lightning.plots import plot_training_curves

    parser = argparse.ArgumentParser(
        prog="fer-lightning plot-curves",
        description="Draw loss and validation accuracy per epoch of a run (its CSV logger metrics.csv).",
    )
    parser.add_argument("run", help="run folder (e.g. runs/quickstart/version_0) or a metrics.csv")
    parser.add_argument("--out", help="PNG to write (default: training_curves.png in the run folder)")
    parser.add_argument("--title", default="", help="figure title")
    parser.add_argument(
        "--majority", type=float, help="draw the majority-class rate of the validation split (a fraction)"
    )
    args = parser.parse_args(argv)
    metrics = args.run if args.run.endswith(".csv") else os.path.join(args.run, "metrics.csv")
    if not os.path.isfile(metrics):
        parser.error(f"{metrics} not found (a run folder written by the CSV logger holds metrics.csv)")
    out = args.out or os.path.join(os.path.dirname(metrics), "training_curves.png")
    summary = plot_training_curves(metrics, out, title=args.title, majority_fraction=args.majority)
    print(f"wrote {out} (best val acc {summary['best_val_acc']:.4f} at epoch={int(summary['best_epoch'])})")


EXTRA_COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "make-synthetic": make_synthetic,
    "complexity": complexity,
    "data-summary": data_summary,
    "plot-curves": plot_curves,
}
EXTRA_COMMANDS_HELP = "more commands:\n" + "\n".join(
    f"  {name:<16} {command.__doc__.split(':', 1)[1].strip()}" for name, command in EXTRA_COMMANDS.items()
)


def main(args: ArgsType = None) -> None:
    """Entry point of ``fer-lightning``; ``args`` lets tests run it in-process."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in EXTRA_COMMANDS:
        EXTRA_COMMANDS[argv[0]](argv[1:])
        return
    FERCLI(
        FERClassifier,
        FERDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_callback=FERSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        trainer_defaults=trainer_defaults(),
        args=None if args is None else argv,
    )


if __name__ == "__main__":
    main()
