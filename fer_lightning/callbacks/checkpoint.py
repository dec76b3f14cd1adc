"""The checkpoint callback every run gets: best on validation, plus ``last.ckpt`` for resuming."""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint


class ValidationCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that also honours ``fast_dev_run`` at the end of training.

    Lightning 2.6 skips checkpoints under ``fast_dev_run`` except the ``save_last`` one written in
    ``on_train_end``, which then lands in ``./checkpoints`` (the logger is disabled, so there is no
    run folder) of whatever directory a smoke test ran from.
    """

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.fast_dev_run:
            return
        super().on_train_end(trainer, pl_module)
