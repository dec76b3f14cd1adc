"""Keep ``training_curves.png`` (loss and validation accuracy per epoch) up to date in the run folder (and in W&B)."""

from __future__ import annotations

import os

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger

from fer_lightning.callbacks.wandb_media import log_figures
from fer_lightning.plots import majority_baseline, plot_training_curves


class TrainingCurvesPlot(Callback):
    """Redraw ``<run folder>/training_curves.png`` from the CSV logger's ``metrics.csv`` after every
    validation and once more at the end of training (then it has the last epoch's training loss too);
    each drawing is also logged to W&B (key ``training_curves``) when a W&B logger is active.

    The accuracy panel also shows chance and the majority-class baseline on the validation split
    (always predicting the most frequent *training* class), read from the datamodule's split tables
    when it has them, so that "beats chance" can be judged at a glance. Needs a
    :class:`~lightning.pytorch.loggers.CSVLogger` among the loggers; does nothing without one.
    """

    def __init__(self, filename: str = "training_curves.png") -> None:
        self.filename = filename
        self._drawn = False

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._redraw(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning logs an epoch's train/loss_epoch after that epoch's validation, so the last redraw
        # above misses the last epoch's training loss: draw once more when training is over.
        if self._drawn:
            self._redraw(trainer, pl_module)

    def _redraw(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        csv_logger = next((logger for logger in trainer.loggers if isinstance(logger, CSVLogger)), None)
        if csv_logger is None:
            return
        csv_logger.save()  # the CSV logger buffers rows; flush them before reading the file back
        metrics_path = csv_logger.experiment.metrics_file_path
        if not os.path.isfile(metrics_path):
            return
        title = f"{type(pl_module).__name__}: {os.path.basename(os.path.dirname(csv_logger.log_dir))}"
        figure_path = os.path.join(csv_logger.log_dir, self.filename)
        plot_training_curves(
            metrics_path, figure_path, title=title, majority_fraction=majority_class_fraction(trainer)
        )
        self._drawn = True
        log_figures(trainer, {"training_curves": figure_path}, caption=f"step {trainer.global_step}")


def majority_class_fraction(trainer: Trainer) -> float | None:
    """Validation accuracy of always predicting the most frequent training class, if the splits are known."""
    tables = getattr(trainer.datamodule, "tables", None) if trainer.datamodule is not None else None
    if not tables or "train" not in tables or "val" not in tables:
        return None
    return majority_baseline(tables["train"].labels, tables["val"].labels)
