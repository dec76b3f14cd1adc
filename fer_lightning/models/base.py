"""The LightningModule every paper model subclasses: loss, metrics per split, optimiser wiring."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)

from fer_lightning.errors import ConfigurationError, NonFiniteLossError
from fer_lightning.losses import build_classification_loss
from fer_lightning.optim import all_finite, sam_perturb, sam_restore

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

    Training loss is the configured ``loss`` on ``forward``'s logits unless a subclass overrides
    :meth:`training_loss`. Evaluation always uses :meth:`forward` in eval mode, so a sample's
    prediction depends on that sample only. Validation metrics drive checkpoint selection; test metrics
    are logged under ``test/`` and never used for selection.

    Args:
        num_classes, class_names: linked from the datamodule by the CLI.
        optimizer: a callable building the optimiser from parameters (``class_path`` in YAML).
        scheduler: optional callable building an LR scheduler from the optimiser, stepped per epoch.
        label_smoothing: cross-entropy label smoothing.
        loss: what training minimises and ``val/loss``/``test/loss`` report (BTN: each of its terms):
            ``cross_entropy``, ``fpdls`` (focal prior-distribution label smoothing,
            :class:`~fer_lightning.losses.FPDLS`) or ``pdls`` (its non-focal variant).
        loss_alpha, loss_gamma: F-PDLS's one-hot weight α and focal exponent γ; unset: the official
            values (``fpdls`` 0.8 and 2, ``pdls`` 0.5 and 0).
        loss_prior: the F-PDLS prior D: ``null`` takes the dataset's (the CLI computes it from the FER+
            votes, or remaps FER+'s by class name for datasets without votes and logs what it did);
            ``uniform`` (uniform label smoothing); or a K×K matrix in the dataset's class order, rows
            summing to 1.
        dataset_prior: the dataset's prior, linked from the datamodule by the CLI (not set by hand).
        sam_rho: wrap the optimiser in SAM with this radius (POSTER++/BTN use 0.05 around Adam); each
            step then makes two forward/backward passes through manual optimisation. ``None``: plain.
        sam_adaptive: adaptive SAM (perturbation scaled by |w|).
        max_nonfinite_steps: a training step whose loss or gradients are NaN/inf is skipped (no weight
            update, BatchNorm running statistics left as before it) and counted in
            ``train/nonfinite_steps``; this many skipped steps in a row stop training with
            :class:`~fer_lightning.errors.NonFiniteLossError`. ``1`` stops at the first; ``None`` never
            stops. Under fp16 an overflow the grad scaler handles (it skips the step and lowers its
            scale) is not counted. Under DDP a step that is not finite on one process is skipped by all
            of them, so they keep the same weights, count the same streak and stop together. With
            ``trainer.accumulate_grad_batches`` > 1, a micro-batch with a non-finite loss adds nothing
            and the rest of its window is applied; non-finite gradients drop the whole window.

    Gradient clipping under SAM: Lightning refuses ``Trainer(gradient_clip_val=...)`` with manual
    optimisation, so :meth:`take_over_gradient_clipping` moves the trainer's setting into the model (the
    ``fer-lightning`` CLI does this before ``fit``), which then clips the second-pass gradients.
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
        max_nonfinite_steps: int | None = 5,
        loss: str = "cross_entropy",
        loss_alpha: float | None = None,
        loss_gamma: float | None = None,
        loss_prior: str | list[list[float]] | None = None,
        dataset_prior: list[list[float]] | None = None,
    ) -> None:
        super().__init__()
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
        if max_nonfinite_steps is not None and max_nonfinite_steps < 1:
            raise ConfigurationError(
                f"model max_nonfinite_steps={max_nonfinite_steps}: expected a number of steps >= 1 "
                "(1 stops training at the first non-finite step) or null (skip them and never stop)"
            )
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.label_smoothing = label_smoothing
        self.criterion = build_classification_loss(
            loss,
            num_classes,
            label_smoothing=label_smoothing,
            alpha=loss_alpha,
            gamma=loss_gamma,
            loss_prior=loss_prior,
            dataset_prior=dataset_prior,
        )
        self.sam_rho = sam_rho
        self.sam_adaptive = sam_adaptive
        # SAM needs two backward passes between optimiser steps, which automatic optimisation cannot do.
        self.automatic_optimization = sam_rho is None
        self.max_nonfinite_steps = max_nonfinite_steps
        # Set by take_over_gradient_clipping (SAM only).
        self.sam_gradient_clip_val: float | None = None
        self.sam_gradient_clip_algorithm: str = "norm"
        # The named parts of the latest training loss (see record_loss_terms), for the divergence message.
        self.loss_terms: dict[str, torch.Tensor] = {}
        self._nonfinite_streak = 0
        self._skip_reason: str | None = None  # why the current step is skipped, None while it is not
        # Micro-batches whose gradients are in the current accumulation window (trainer.accumulate_grad_batches).
        self._microbatches_accumulated = 0
        self._running_stats_before: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._batch_idx = 0
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

    def classification_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The configured ``loss`` of ``logits`` against ``labels`` (batch mean, computed in fp32)."""
        return self.criterion(logits, labels)

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, logits used for the training accuracy). A loss made of several terms names them with
        :meth:`record_loss_terms`, so that a divergence message says which one went non-finite."""
        logits = self(images)
        return self.classification_loss(logits, labels), logits

    def record_loss_terms(self, **terms: torch.Tensor) -> None:
        """Keep the named parts of the training loss just computed (detached; read only on divergence)."""
        self.loss_terms = {name: term.detach() for name, term in terms.items()}

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._skip_reason = None
        self._batch_idx = batch_idx
        self.loss_terms = {}
        # A forward pass in training mode updates BatchNorm running statistics even when the step is
        # then skipped; one NaN batch would otherwise poison them for the rest of the run.
        self._running_stats_before = [(buffer, buffer.clone()) for buffer in _running_statistics(self)]

    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        images, labels = batch
        if self.sam_rho is None:
            loss, logits = self.training_loss(images, labels)
            loss_of_every_rank, reason = self._check_loss_on_every_rank(loss, "the loss")
            if reason is not None:
                self._skip_step(reason)
                # Automatic optimisation, one process: None means no backward and no update. Lightning
                # refuses None under DDP, so there every rank backpropagates a zero instead (its gradient
                # all-reduce then runs on all of them alike) and on_before_optimizer_step drops the result.
                return self._loss_that_changes_nothing() if self.trainer.world_size > 1 else None
            self._microbatches_accumulated += 1
        else:
            result = self._sam_step(images, labels)
            if result is None:
                return None
            loss, loss_of_every_rank, logits = result
        self.train_acc(logits.detach(), labels)
        # The step value is the mean over the ranks' equally sized batches, which the finiteness check
        # already gathered: no all-reduce of its own per step. The epoch mean is synced once, at the end.
        self.log("train/loss_step", loss_of_every_rank.mean(), on_step=True, on_epoch=False, prog_bar=True)
        self.log(
            "train/loss_epoch", loss.detach(), on_step=False, on_epoch=True, prog_bar=True, sync_dist=True
        )
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True)
        # The same on every rank and within an epoch (schedulers step per epoch): max is exact and quiet.
        groups = self.optimizers().param_groups
        self.log("train/lr", groups[0]["lr"], on_step=False, on_epoch=True, sync_dist=True, reduce_fx="max")
        if len(groups) > 1:  # per-group rates (ARBEx's body/head/anchors/attention): train/lr is the first
            for index, group in enumerate(groups):
                name = f"train/lr_{group.get('name', index)}"
                self.log(name, group["lr"], on_step=False, on_epoch=True, sync_dist=True, reduce_fx="max")
        return loss

    def _sam_step(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """One SAM step: gradient at w, perturb to w + e, gradient there, restore w, base step.

        Both passes see the same batch (so BTN's batch attention is defined in both) and BatchNorm
        statistics are updated twice per step, as in the official POSTER++ code. Returns the first-pass
        loss, that loss on every rank and the logits, or ``None`` when the step is skipped because a loss
        or the first-pass gradients are not finite.
        """
        optimizer = self.optimizers()
        loss, logits = self.training_loss(images, labels)
        loss_of_every_rank, reason = self._check_loss_on_every_rank(loss, "the loss")
        if reason is not None:
            self._skip_step(reason)
            return None
        self.manual_backward(loss)
        # Under DDP these gradients are already averaged over the ranks, so every rank decides alike.
        if not all_finite(self._gradients(optimizer)):
            if self._grad_scaler() is not None:
                # An fp16 overflow of the scaled gradients: stepping now hands them to the grad scaler,
                # which finds the inf, skips the update and lowers its scale, as for any overflowed step.
                optimizer.step()
                optimizer.zero_grad()
                return loss.detach(), loss_of_every_rank, logits
            name = self._first_nonfinite_gradient(optimizer)
            optimizer.zero_grad()
            self._skip_step(
                f"the gradient of {name} at SAM's first pass was not finite ({self._describe_loss(loss)})"
            )
            return None
        perturbations = sam_perturb(optimizer.optimizer, self.sam_rho, self.sam_adaptive)
        optimizer.zero_grad()
        perturbed_loss, _ = self.training_loss(images, labels)
        _, reason = self._check_loss_on_every_rank(perturbed_loss, "SAM's perturbed loss")
        if reason is not None:
            sam_restore(perturbations)  # before _skip_step, which may raise
            self._skip_step(reason)
            return None
        self.manual_backward(perturbed_loss)
        sam_restore(perturbations)
        optimizer.step()  # on_before_optimizer_step checks and clips the second-pass gradients
        optimizer.zero_grad()
        return loss.detach(), loss_of_every_rank, logits

    def take_over_gradient_clipping(self, trainer: L.Trainer) -> None:
        """Under SAM, clip gradients as ``trainer.gradient_clip_val``/``gradient_clip_algorithm`` say.

        Lightning's configuration check refuses trainer-level clipping with manual optimisation, so the
        setting moves into the model before ``trainer.fit`` (the trainer's value is cleared); the model
        then clips SAM's second-pass gradients, after AMP unscaling, right before the base step. Does
        nothing without SAM or without clipping.
        """
        if self.automatic_optimization or not trainer.gradient_clip_val:
            return
        self.sam_gradient_clip_val = float(trainer.gradient_clip_val)
        algorithm = trainer.gradient_clip_algorithm  # an enum (or None), kept on the trainer: they must agree
        self.sam_gradient_clip_algorithm = algorithm.value if algorithm is not None else "norm"
        trainer.gradient_clip_val = None

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Runs after backward (and AMP unscaling), right before the optimiser's update, in both modes.
        # Under DDP the gradients here are averaged over the ranks (a NaN or inf on one rank reaches all
        # of them), so every rank takes the same decision without a collective of its own.
        accumulated, self._microbatches_accumulated = self._microbatches_accumulated, 0
        if self._skip_reason is not None and not accumulated:
            self._drop_gradients(optimizer)  # none after a None from training_step, zeros under DDP
            return
        # With gradient accumulation, a skipped last micro-batch added nothing (no backward, or a zero one
        # under DDP): the window's other micro-batches are applied as if it had not been in the data.
        if not all_finite(self._gradients(optimizer)):
            if self._grad_scaler() is not None:
                return  # the scaler skips this update and lowers its scale
            name = self._first_nonfinite_gradient(optimizer)
            self._drop_gradients(optimizer)
            self._skip_step(f"the gradient of {name} was not finite")
            return
        self._nonfinite_streak = 0
        if self.sam_gradient_clip_val is not None:
            self.clip_gradients(
                optimizer,
                gradient_clip_val=self.sam_gradient_clip_val,
                gradient_clip_algorithm=self.sam_gradient_clip_algorithm,
            )

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # Summed per epoch: how many steps of the epoch were skipped. Every DDP rank skips the same steps,
        # so rank 0 alone counts them and the sum over ranks (once, at the epoch end) counts each once.
        skipped = float(self._skip_reason is not None and self.global_rank == 0)
        self.log(
            "train/nonfinite_steps", skipped, on_step=False, on_epoch=True, reduce_fx="sum", sync_dist=True
        )

    @staticmethod
    def _drop_gradients(optimizer) -> None:
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.grad = None  # torch optimisers leave parameters without a gradient untouched

    def _loss_that_changes_nothing(self) -> torch.Tensor:
        """Zero, with a zero gradient for every trainable parameter (the weights are finite)."""
        zero = torch.zeros((), device=self.device)
        return sum((param.sum() * 0.0 for param in self.parameters() if param.requires_grad), zero)

    def _check_loss_on_every_rank(self, loss: torch.Tensor, what: str) -> tuple[torch.Tensor, str | None]:
        """(the loss of every DDP rank, why the step is skipped or ``None``): the same on every rank.

        A rank that skipped a step alone would leave the others waiting in DDP's gradient all-reduce
        (or pair it with its own next step's), so the decision is collective: each rank puts its loss in
        its own slot of a vector that one all-reduce sums. Adding zeros keeps every value, NaN and inf
        included, exactly. One process: no collective.
        """
        world_size = self.trainer.world_size
        loss_of_every_rank = loss.detach().float().reshape(1)
        if world_size > 1:
            slots = torch.zeros(world_size, device=loss_of_every_rank.device)
            slots[self.global_rank] = loss_of_every_rank[0]
            loss_of_every_rank = self.trainer.strategy.reduce(slots, reduce_op="sum")
        values = loss_of_every_rank.tolist()
        nonfinite_ranks = [rank for rank, value in enumerate(values) if not math.isfinite(value)]
        if not nonfinite_ranks:
            return loss_of_every_rank, None
        if world_size == 1:
            return loss_of_every_rank, f"{what} was not finite ({self._describe_loss(loss)})"
        where = ("rank " if len(nonfinite_ranks) == 1 else "ranks ") + ", ".join(map(str, nonfinite_ranks))
        # The named loss parts are known on the rank that computed them only.
        described = (
            self._describe_loss(loss)
            if self.global_rank in nonfinite_ranks
            else f"loss={values[nonfinite_ranks[0]]:.4g}"
        )
        return loss_of_every_rank, f"{what} was not finite on {where} of {world_size} processes ({described})"

    def _skip_step(self, reason: str) -> None:
        """Skip the current step (the caller makes sure nothing is applied); stop after too many in a row."""
        self._skip_reason = reason
        with torch.no_grad():
            for buffer, before in self._running_stats_before:
                buffer.copy_(before)
        self._nonfinite_streak += 1
        if self.max_nonfinite_steps is not None and self._nonfinite_streak >= self.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"training stopped at epoch {self.current_epoch}, batch {self._batch_idx} "
                f"(global step {self.global_step}): {self._nonfinite_streak} step(s) in a row skipped, the last "
                f"because {reason}; lower the learning rate (model.init_args.optimizer.init_args.lr), clip "
                "gradients (trainer.gradient_clip_val) or allow more skipped steps "
                "(model.init_args.max_nonfinite_steps)"
            )
        warnings.warn(
            "a training step with a non-finite loss or gradients was skipped (counted in train/nonfinite_steps; "
            f"training stops after {self.max_nonfinite_steps} in a row)",
            RuntimeWarning,
            stacklevel=2,
        )

    def _describe_loss(self, loss: torch.Tensor) -> str:
        terms = ", ".join(f"{name}={float(term):.4g}" for name, term in self.loss_terms.items())
        return f"loss={float(loss.detach()):.4g}" + (f"; {terms}" if terms else "")

    def _grad_scaler(self):
        return getattr(self.trainer.precision_plugin, "scaler", None)

    @staticmethod
    def _gradients(optimizer) -> list[torch.Tensor | None]:
        return [param.grad for group in optimizer.param_groups for param in group["params"]]

    def _first_nonfinite_gradient(self, optimizer) -> str:
        names = {param: name for name, param in self.named_parameters()}
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.grad is not None and not all_finite([param.grad]):
                    return names.get(param, "a parameter")
        return "a parameter"

    def on_train_epoch_end(self) -> None:
        # Under manual optimisation Lightning does not step schedulers; ours are per epoch.
        if self.sam_rho is not None and self.scheduler_factory is not None:
            self.lr_schedulers().step()

    def _evaluation_step(self, split: str, batch) -> None:
        images, labels = batch
        self.update_evaluation(split, self(images), labels)

    def update_evaluation(self, split: str, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Accumulate the reported metrics of ``split`` from the model's predictions on one batch."""
        self.eval_loss[split].update(self.classification_loss(logits, labels), weight=labels.shape[0])
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

    def parameter_groups(self) -> list[dict] | Iterator[nn.Parameter]:
        """What the optimiser callable receives: all parameters (default), or a list of torch param
        groups (dicts with ``params`` and per-group options such as ``lr``, which override the
        optimiser's own ``init_args`` for that group). A model with per-part learning rates overrides it."""
        return self.parameters()

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameter_groups())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer)}}


def _running_statistics(module: nn.Module) -> list[torch.Tensor]:
    """Buffers a training-mode forward pass changes: BatchNorm/InstanceNorm running statistics."""
    return [
        buffer
        for child in module.modules()
        if child.training and getattr(child, "track_running_stats", False)
        for buffer in child.buffers(recurse=False)
    ]
