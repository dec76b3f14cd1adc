"""The LightningModule every paper model subclasses: loss, metrics per split, optimiser wiring."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)

from fer_lightning.optim import sam_perturb, sam_restore

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
        sam_rho: wrap the optimiser in SAM with this radius (POSTER++/BTN use 0.05 around Adam); each
            step then makes two forward/backward passes through manual optimisation. ``None``: plain.
        sam_adaptive: adaptive SAM (perturbation scaled by |w|).
    """

    def __init__(
        self,
        num_classes: int = 7,
        class_names: Sequence[str] | None = None,
        optimizer: OptimizerCallable = default_optimizer,
        scheduler: LRSchedulerCallable | None = None,
        label_smoothing: float = 0.0,
        sam_rho: float | None = None,
        sam_adaptive: bool = False,
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
        self.sam_rho = sam_rho
        self.sam_adaptive = sam_adaptive
        # SAM needs two backward passes between optimiser steps, which automatic optimisation cannot do.
        self.automatic_optimization = sam_rho is None
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.eval_metrics = nn.ModuleDict(
            {split: classification_metrics(num_classes) for split in EVAL_SPLITS}
        )
        # Sum of per-sample losses and the sample count, synced over DDP ranks at the epoch end: the
        # logged val/test loss is the mean over every sample, however unevenly the ranks' shares split.
        self.eval_loss = nn.ModuleDict({split: MeanMetric() for split in EVAL_SPLITS})
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
        if self.sam_rho is None:
            loss, logits = self.training_loss(images, labels)
        else:
            loss, logits = self._sam_step(images, labels)
        self.train_acc(logits.detach(), labels)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=False, on_epoch=True)
        return loss

    def _sam_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One SAM step: gradient at w, perturb to w + e, gradient there, restore w, base step.

        Both passes see the same batch (so BTN's batch attention is defined in both) and BatchNorm
        statistics are updated twice per step, as in the official POSTER++ code.
        """
        optimizer = self.optimizers()
        loss, logits = self.training_loss(images, labels)
        self.manual_backward(loss)
        perturbations = sam_perturb(optimizer.optimizer, self.sam_rho, self.sam_adaptive)
        optimizer.zero_grad()
        perturbed_loss, _ = self.training_loss(images, labels)
        self.manual_backward(perturbed_loss)
        sam_restore(perturbations)
        optimizer.step()
        optimizer.zero_grad()
        return loss.detach(), logits

    def on_train_epoch_end(self) -> None:
        # Under manual optimisation Lightning does not step schedulers; ours are per epoch.
        if self.sam_rho is not None and self.scheduler_factory is not None:
            self.lr_schedulers().step()

    def on_fit_start(self) -> None:
        if self.sam_rho is not None and self.trainer.accumulate_grad_batches != 1:
            raise ValueError(
                "SAM (model.sam_rho) steps after every batch; gradient accumulation "
                f"(trainer.accumulate_grad_batches={self.trainer.accumulate_grad_batches}) is not supported with it"
            )

    def _evaluation_step(self, split: str, batch) -> None:
        images, labels = batch
        self.update_evaluation(split, self(images), labels)

    def update_evaluation(self, split: str, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Accumulate the reported metrics of ``split`` from the model's predictions on one batch."""
        self.eval_loss[split].update(self.cross_entropy(logits, labels), weight=labels.shape[0])
        self.eval_metrics[split].update(logits, labels)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluation_step("val", batch)

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluation_step("test", batch)

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, list | tuple) else batch
        return self(images).softmax(dim=-1)

    def _log_evaluation_epoch(self, split: str) -> None:
        # torchmetrics sums the states (confusion counts, loss sum and count) of all DDP ranks here, so
        # every rank holds the metrics of the whole split, each sample counted once (the datamodule's
        # evaluation sampler does not pad the ranks' shares).
        values = self.eval_metrics[split].compute()
        self.eval_metrics[split].reset()
        loss = self.eval_loss[split].compute()
        self.eval_loss[split].reset()
        self.last_confusion[split] = values.pop("confusion").cpu()
        per_class = values.pop("class_acc")
        self._log_synced(f"{split}/loss", loss, prog_bar=split == "val")
        for name, value in values.items():
            self._log_synced(f"{split}/{name}", value, prog_bar=split == "val" and name == "acc")
        for class_name, value in zip(self.class_names, per_class):
            self._log_synced(f"{split}/class_acc/{class_name}", value)

    def _log_synced(self, name: str, value: torch.Tensor, prog_bar: bool = False) -> None:
        """Log a value that is already the same on every DDP rank.

        ``sync_dist`` stops Lightning's warning that epoch-level values are not synced; ``max`` of equal
        values is exact, where Lightning's default mean would round them.
        """
        self.log(name, value, prog_bar=prog_bar, sync_dist=True, reduce_fx="max")

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_evaluation_epoch("test")

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer)}}
