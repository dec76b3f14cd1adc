"""The LightningModule every paper model subclasses: loss, metrics per split, optimiser wiring."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)

EVAL_SPLITS = ("val", "test")


def classification_metrics(num_classes: int) -> MetricCollection:
    """The numbers FER papers report: overall accuracy, mean class accuracy (macro recall), macro F1,
    per-class accuracy (recall) and the confusion matrix (rows = true class, columns = predicted)."""
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro"),
            "mean_class_acc": MulticlassAccuracy(num_classes, average="macro"),
            "macro_f1": MulticlassF1Score(num_classes, average="macro"),
            "class_acc": MulticlassAccuracy(num_classes, average="none"),
            "confusion": MulticlassConfusionMatrix(num_classes),
        },
        compute_groups=False,
    )


def default_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)


class FERClassifier(L.LightningModule):
    """Base classifier. Subclasses build their network and implement :meth:`forward` (images → logits).

    Training loss is cross-entropy on ``forward``'s logits unless a subclass overrides
    :meth:`training_loss`. Evaluation always uses :meth:`forward` in eval mode, so a sample's
    prediction depends on that sample only. Validation metrics drive checkpoint selection; test metrics
    are logged under ``test/`` and never used for selection.

    Args:
        num_classes, class_names: linked from the datamodule by the CLI.
        optimizer: a callable building the optimiser from parameters (``class_path`` in YAML).
        scheduler: optional callable building an LR scheduler from the optimiser, stepped per epoch.
        label_smoothing: cross-entropy label smoothing.
    """

    def __init__(
        self,
        num_classes: int = 7,
        class_names: Sequence[str] | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.label_smoothing = label_smoothing
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.eval_metrics = nn.ModuleDict({split: classification_metrics(num_classes) for split in EVAL_SPLITS})
        # Filled at each evaluation epoch end, read by callbacks (confusion-matrix plot).
        self.last_confusion: dict[str, torch.Tensor] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # In fp32: under bf16/fp16 autocast the log-sum-exp of the logits loses precision.
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits used for the training accuracy)."""
        logits = self(images)
        return self.cross_entropy(logits, labels), logits

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        loss, logits = self.training_loss(images, labels)
        self.train_acc(logits.detach(), labels)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        return loss

    def _evaluation_step(self, split: str, batch) -> None:
        images, labels = batch
        logits = self(images)
        self.log(f"{split}/loss", self.cross_entropy(logits, labels), on_epoch=True, prog_bar=split == "val")
        self.eval_metrics[split].update(logits, labels)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluation_step("val", batch)

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluation_step("test", batch)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, list | tuple) else batch
        return self(images).softmax(dim=-1)

    def _log_evaluation_epoch(self, split: str) -> None:
        values = self.eval_metrics[split].compute()
        self.eval_metrics[split].reset()
        self.last_confusion[split] = values.pop("confusion").cpu()
        per_class = values.pop("class_acc")
        for name, value in values.items():
            self.log(f"{split}/{name}", value, prog_bar=split == "val" and name == "acc")
        for class_name, value in zip(self.class_names, per_class):
            self.log(f"{split}/class_acc/{class_name}", value)

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_evaluation_epoch("test")

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer)}}
