"""Write the confusion matrix of the selected validation epoch and of the test run into the run folder."""

from __future__ import annotations

import csv
import os

import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer

from fer_lightning.callbacks.wandb_media import log_figures
from fer_lightning.plots import drawable_names, plot_confusion_matrix, plot_per_class_accuracy


class ConfusionMatrixPlot(Callback):
    """Save ``confusion_matrix_{val,test}.png`` (and the counts as ``.csv``) and the bar chart
    ``per_class_accuracy_{val,test}.png`` (and its numbers as ``.csv``) under the run folder, and log both figures to W&B when a
    :class:`~lightning.pytorch.loggers.WandbLogger` is among the loggers (``val/confusion_matrix``, …).

    The validation figure is rewritten only when ``monitor`` improves, so it shows the epoch that the
    checkpoint callback (same monitor) selects. Needs a model exposing ``last_confusion`` and
    ``class_names`` (every :class:`~fer_lightning.models.base.FERClassifier` does). Class names the
    default font cannot draw are replaced in the figure by the datamodule's ``DISPLAY_NAMES``.
    """

    def __init__(self, monitor: str = "val/acc", mode: str = "max") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.monitor = monitor
        self.mode = mode
        self.best: float | None = None

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def _write(self, trainer: Trainer, pl_module: LightningModule, split: str) -> None:
        # trainer.log_dir is a broadcast from rank 0 under DDP: every rank must ask, and only once.
        log_dir = trainer.log_dir
        confusion = getattr(pl_module, "last_confusion", {}).get(split)
        if confusion is None or log_dir is None or not trainer.is_global_zero:
            return
        os.makedirs(log_dir, exist_ok=True)
        stem = os.path.join(log_dir, f"confusion_matrix_{split}")
        counts = confusion.numpy()
        names = list(pl_module.class_names)
        # The figure falls back to the datamodule's glosses where the font has no glyphs (AI-Hub's
        # Hangul); the CSV keeps the dataset's own names.
        glosses = (
            getattr(trainer.datamodule, "DISPLAY_NAMES", None) if trainer.datamodule is not None else None
        )
        title = f"{split} (epoch {trainer.current_epoch})" if split == "val" else split
        drawn_names = drawable_names(names, glosses)
        plot_confusion_matrix(counts, drawn_names, f"{stem}.png", title=title)
        header = "true\\predicted," + ",".join(names)
        rows = [f"{name}," + ",".join(str(int(c)) for c in row) for name, row in zip(names, counts)]
        with open(f"{stem}.csv", "w") as handle:
            handle.write("\n".join([header, *rows]) + "\n")
        accuracy_png = os.path.join(log_dir, f"per_class_accuracy_{split}.png")
        accuracies = plot_per_class_accuracy(counts, drawn_names, accuracy_png, title=title)
        write_per_class_accuracy(
            os.path.join(log_dir, f"per_class_accuracy_{split}.csv"), names, counts, accuracies
        )
        log_figures(
            trainer,
            {f"{split}/confusion_matrix": f"{stem}.png", f"{split}/per_class_accuracy": accuracy_png},
            caption=title,
        )

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        value = float(value)
        if np.isfinite(value) and self._improved(value):
            self.best = value
            self._write(trainer, pl_module, "val")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer, pl_module, "test")

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = state_dict.get("best")


def write_per_class_accuracy(path: str, names: list[str], counts: np.ndarray, accuracies: np.ndarray) -> None:
    """The per-class accuracy table papers publish: class, accuracy (recall, blank for a class with no
    samples), correct predictions and samples of the class."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "accuracy", "correct", "samples"])
        for index, (name, accuracy) in enumerate(zip(names, accuracies)):
            value = "" if np.isnan(accuracy) else f"{accuracy:.6f}"
            writer.writerow([name, value, int(counts[index, index]), int(counts[index].sum())])
