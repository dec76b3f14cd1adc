"""Batch-size bookkeeping: what one training step sees, per device, over all devices, and in BTN's CBA.

Batch size is a hyperparameter BTN's results depend on (the class batch attention of eqs. 3–7 attends
over the other images of the batch), and under DDP "the batch" can mean three different numbers. This
callback says them once at the start of training and logs them at every step.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn


def cba_batch_size(pl_module: LightningModule, per_device: int, world_size: int) -> int | None:
    """The number of images BTN's CBA attends over in one step; None for a model without CBA."""
    scope = pl_module.hparams.get("cba_scope")
    if scope is None:
        return None
    return per_device * world_size if scope == "global" else per_device


class BatchSizeLog(Callback):
    """Log ``batch/per_device``, ``batch/global`` and (BTN) ``batch/cba`` at every training step, and say
    at the start of training how the batch is made up and what the last incomplete batch does.

    The per-step values are the batch that step actually had (smaller than ``data.batch_size`` for a
    last incomplete batch, or when ``data.on_bad_sample=skip`` left out an image); ``batch/global``
    assumes every device had as many, which holds for DDP's equal shards.
    """

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loader = trainer.train_dataloader
        per_device = getattr(loader, "batch_size", None)
        if per_device is None:  # a custom batch sampler: nothing to say beyond the per-step values
            return
        world_size = trainer.world_size
        accumulate = trainer.accumulate_grad_batches
        per_rank = len(loader.sampler) if hasattr(loader.sampler, "__len__") else None
        parts = [
            f"batch size: {per_device} per device × {world_size} device{'s' if world_size > 1 else ''} = {per_device * world_size}"
        ]
        if accumulate > 1:
            parts.append(
                f"× {accumulate} accumulated = {per_device * world_size * accumulate} per optimiser step"
            )
        cba = cba_batch_size(pl_module, per_device, world_size)
        if cba is not None:
            parts.append(f"CBA attends over {cba} images (cba_scope {pl_module.hparams.get('cba_scope')})")
        parts.append(f"{trainer.num_training_batches} training batches per epoch")
        if per_rank is not None:
            leftover = per_rank % per_device
            if loader.drop_last and leftover:
                parts.append(
                    f"the last {leftover} of the {per_rank} training images are left out of each epoch "
                    "(data.drop_last; a different few each epoch)"
                )
            elif leftover:
                parts.append(f"the last batch of each epoch has {leftover} images (data.drop_last=false)")
            if cba is not None and not loader.drop_last and leftover:
                rank_zero_warn(
                    f"data.drop_last=false with BTN: each epoch ends with a batch of {leftover} images, over "
                    "which CBA's batch attention means little; data.drop_last=true (the default) leaves it out"
                )
        rank_zero_info("; ".join(parts))

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        per_device = int(images.shape[0])
        world_size = trainer.world_size
        sizes = {"batch/per_device": per_device, "batch/global": per_device * world_size}
        cba = cba_batch_size(pl_module, per_device, world_size)
        if cba is not None:
            sizes["batch/cba"] = cba
        # No sync: the values are known on every rank, and an all-reduce per step would cost every run.
        pl_module.log_dict(
            {key: float(value) for key, value in sizes.items()},
            on_step=True,
            on_epoch=False,
            batch_size=per_device,
        )
