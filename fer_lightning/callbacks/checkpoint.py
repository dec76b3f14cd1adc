"""The checkpoint callback every run gets: best on validation, plus ``last.ckpt`` for resuming."""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint


class ValidationCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is the end of the latest epoch, and quiet under ``fast_dev_run``.

    Lightning 2.6 writes ``last.ckpt`` only at a step where it also saved a top-k checkpoint, so with
    "best on validation" selection ``last.ckpt`` stayed at the last epoch that *improved*, and resuming
    from it silently repeated the epochs after. Here every training epoch's end writes ``last.ckpt``
    (after that epoch's validation, so the best-model tracking inside it is current).

    Lightning also skips checkpoints under ``fast_dev_run`` except the ``save_last`` one written in
    ``on_train_end``, which then lands in ``./checkpoints`` (the logger is disabled, so there is no
    run folder) of whatever directory a smoke test ran from.
    """

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        # Skipped when this step was already saved (a new best also rewrites last.ckpt) and under
        # fast_dev_run / outside fitting.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.fast_dev_run:
            return
        super().on_train_end(trainer, pl_module)
