"""LightningCLI for ``fit``/``validate``/``test``/``predict``: run folders, argument links, default callbacks.

Imported only when one of those subcommands runs (see :mod:`fer_lightning.cli`).
"""

from __future__ import annotations

import argparse
import warnings

import yaml
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

# Every datamodule and model class is imported, so that subclass mode knows them by short name too.
import fer_lightning.data.affectnet
import fer_lightning.data.aihub
import fer_lightning.data.fer2013
import fer_lightning.data.rafdb
import fer_lightning.models  # noqa: F401
from fer_lightning.callbacks import ConfusionMatrixPlot, TrainingCurvesPlot, ValidationCheckpoint
from fer_lightning.cli import EXTRA_COMMANDS_HELP
from fer_lightning.data import FERDataModule
from fer_lightning.models import FERClassifier

SELECTION_METRIC = "val/acc"

# Lightning 2.6 + torch 2.14 print this on every step; it is theirs to fix and says nothing about the run.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
# POSTER++/BTN keep their frozen landmark network in eval mode on purpose
# (docs/models.md#deviations-from-the-official-code).
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


class FERSaveConfigCallback(SaveConfigCallback):
    """Save ``config.yaml`` into the run folder and, when a W&B logger is active, into the W&B run too.

    The CSV logger comes first in our defaults, so ``trainer.log_dir`` is a fresh ``version_N`` folder
    per run; with W&B first it would be ``.`` and a second run would clash (docs/design.md#wb-offline).
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
        run_folder = self.trainer.log_dir  # a broadcast under DDP: every rank must ask
        if not self.trainer.is_global_zero or checkpoint is None or not checkpoint.best_model_path:
            return
        score = checkpoint.best_model_score
        score_text = f"{float(score):.4f}" if score is not None else "n/a"
        print(
            f"\nrun folder: {run_folder}\n"
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


def run_lightning_cli(argv: list[str]) -> None:
    """``fer-lightning fit|validate|test|predict ...`` (``argv`` without the program name)."""
    FERCLI(
        FERClassifier,
        FERDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_callback=FERSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        trainer_defaults=trainer_defaults(),
        args=argv,
    )
