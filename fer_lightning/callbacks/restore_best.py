"""Keras' ``EarlyStopping(restore_best_weights=True)``: a fit ends with the best validation weights."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info


class RestoreBestWeights(Callback):
    """At the end of ``fit``, load the weights of the best checkpoint (the run's checkpoint callback,
    which selects on ``selection_metric``) into the model.

    Early stopping ends a fit ``patience`` epochs after the best one; without this the model left in
    memory is the last epoch's. Runs after the checkpoint callback has written ``last.ckpt`` (the end
    state, for resuming). Nothing happens under ``fast_dev_run``, after an interrupt, or before any
    best checkpoint exists.
    """

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        checkpoint = trainer.checkpoint_callback
        best = getattr(checkpoint, "best_model_path", "")
        if trainer.fast_dev_run or trainer.interrupted or not best:
            return
        saved = torch.load(best, map_location=pl_module.device, weights_only=True)
        pl_module.load_state_dict(saved["state_dict"])
        rank_zero_info(
            f"restored the best weights ({checkpoint.monitor} = {float(checkpoint.best_model_score):.4f}): {best}"
        )
