"""LightningCLI for ``fit``/``validate``/``test``/``predict``: run folders, argument links, default callbacks.

Imported only when one of those subcommands runs (see :mod:`fer_lightning.cli`).
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

import yaml
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, WandbLogger

# Every datamodule and model class is imported, so that subclass mode knows them by short name too.
import fer_lightning.data.affectnet
import fer_lightning.data.aihub
import fer_lightning.data.fer2013
import fer_lightning.data.rafdb
import fer_lightning.models  # noqa: F401
from fer_lightning.callbacks import (
    ConfusionMatrixPlot,
    InterruptCheckpoint,
    TrainingCurvesPlot,
    ValidationCheckpoint,
)
from fer_lightning.callbacks.random_state import EpochSeededRandomState
from fer_lightning.cli import EXTRA_COMMANDS_HELP, run_folders
from fer_lightning.data import FERDataModule
from fer_lightning.errors import ConfigurationError
from fer_lightning.models import FERClassifier

SELECTION_METRIC = "val/acc"
#: What ``selection_metric`` can name: every model logs these on the validation split.
SELECTION_METRICS = ("val/acc", "val/mean_class_acc", "val/macro_f1", "val/loss")

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
        parser.add_argument(
            "--selection_metric",
            type=str,
            default=SELECTION_METRIC,
            help=(
                "validation metric that selects the best checkpoint and the validation confusion matrix: "
                f"{', '.join(SELECTION_METRICS)} (or val/class_acc/<class>); losses are minimised, the rest "
                "maximised. On an imbalanced validation split, val/mean_class_acc does not favour the "
                "majority classes."
            ),
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        check_selection_metric(config.selection_metric)
        # One run, one folder: a run's checkpoint brings its own folder (see run_folders).
        self._continued_run = None
        run = run_folders.run_folder_of_checkpoint(config.get("ckpt_path"))
        if run is None or self.subcommand == "predict":
            return
        folder = run if self.subcommand == "fit" else run / self.subcommand
        if self.subcommand != "fit":
            # The checkpoint callback of an evaluation saves nothing; its note that the folder moved is noise.
            warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
        if run_folders.point_csv_logger_at(config.trainer.logger, folder) and self.subcommand == "fit":
            self._continued_run = run
            # Lightning's note about writing into a non-empty checkpoint folder: here that is the point.
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")

    def instantiate_trainer(self, **kwargs):
        # The default callbacks watch the selection metric, known only now that the config is parsed.
        selection_metric = self.config[self.subcommand].selection_metric
        self.trainer_defaults["callbacks"] = trainer_defaults(selection_metric)["callbacks"]
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        # Under SAM the model clips gradients itself: Lightning refuses trainer-level clipping with
        # manual optimisation, so the trainer's gradient_clip_val moves into the model here.
        self.model.take_over_gradient_clipping(self.trainer)
        if self._continued_run is None or not self.trainer.is_global_zero:
            return
        csv_logger = next((lg for lg in self.trainer.loggers if isinstance(lg, CSVLogger)), None)
        if csv_logger is None:
            return
        ckpt_path = self.config[self.subcommand].ckpt_path
        rows = run_folders.metrics_rows_before(
            self._continued_run / "metrics.csv", run_folders.checkpoint_global_step(ckpt_path)
        )
        run_folders.continue_metrics_history(csv_logger, rows)

    def _run_subcommand(self, subcommand: str) -> None:
        # A folder this process creates and leaves without a checkpoint (the run failed before training
        # produced one) is removed, so failed attempts do not pile up as empty version_N folders.
        log_dir = self.trainer.log_dir  # a broadcast under DDP: every rank must ask
        created_here = log_dir is not None and not os.path.isdir(log_dir)
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            if created_here and self.trainer.is_global_zero:
                run_folders.remove_if_empty_run(Path(log_dir))
            raise

    def init_parser(self, **kwargs):
        kwargs.setdefault("epilog", EXTRA_COMMANDS_HELP)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        return super().init_parser(**kwargs)

    def after_fit(self) -> None:
        checkpoint = self.trainer.checkpoint_callback
        run_folder = self.trainer.log_dir  # a broadcast under DDP: every rank must ask
        if not self.trainer.is_global_zero or checkpoint is None:
            return
        if not checkpoint.best_model_path:
            self._explain_missing_best_checkpoint(checkpoint)
            return
        score = checkpoint.best_model_score
        score_text = f"{float(score):.4f}" if score is not None else "n/a"
        print(
            f"\nrun folder: {run_folder}\n"
            f"best checkpoint ({checkpoint.monitor} = {score_text}): {checkpoint.best_model_path}\n"
            f"test it with: fer-lightning test --config <same config> --ckpt_path {checkpoint.best_model_path}"
        )

    def _explain_missing_best_checkpoint(self, checkpoint) -> None:
        trainer = self.trainer
        if trainer.fast_dev_run or trainer.interrupted:
            return
        if trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
            print(
                f"\nno best checkpoint: training stopped at trainer.max_steps={trainer.max_steps} before any "
                f"validation measured {checkpoint.monitor} (an epoch has {trainer.num_training_batches} "
                "training batches); raise --trainer.max_steps past an epoch, or validate sooner with "
                "--trainer.val_check_interval N (every N training batches)"
            )


def check_selection_metric(metric: str) -> None:
    """Checkpoints are selected on validation metrics only; anything else is a configuration mistake."""
    if metric in SELECTION_METRICS or metric.startswith("val/class_acc/"):
        return
    raise ConfigurationError(
        f"selection_metric={metric!r} is not a validation metric; choose one of "
        f"{', '.join(SELECTION_METRICS)} or val/class_acc/<class> (test metrics never select checkpoints)"
    )


def selection_mode(metric: str) -> str:
    """Losses are minimised, accuracies and F1 maximised."""
    return "min" if metric.endswith("loss") else "max"


def trainer_defaults(selection_metric: str = SELECTION_METRIC) -> dict:
    """Defaults every run gets: a CSV log per run, the best-on-validation checkpoint, confusion and curve plots.

    ``selection_metric`` picks the best checkpoint (its file name says which metric, e.g.
    ``best-epoch03-val_mean_class_acc0.4123.ckpt``) and the epoch of the validation confusion matrix.
    """
    mode = selection_mode(selection_metric)
    metric_in_name = selection_metric.replace("/", "_")
    return {
        "logger": {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": "runs", "name": "default"},
        },
        "callbacks": [
            ValidationCheckpoint(
                monitor=selection_metric,
                mode=mode,
                filename=f"best-epoch{{epoch:02d}}-{metric_in_name}{{{selection_metric}:.4f}}",
                auto_insert_metric_name=False,
                save_last=True,
            ),
            ConfusionMatrixPlot(monitor=selection_metric, mode=mode),
            TrainingCurvesPlot(),
            InterruptCheckpoint(),
            EpochSeededRandomState(),
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
