"""The checkpoint callback every run gets: best on validation, plus ``last.ckpt`` for resuming."""

from __future__ import annotations

import os

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn

from fer_lightning.optim import all_finite


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

    # --- Never keep a diverged model: no file with NaN/inf weights, no non-finite score as "best". ---

    def _save_topk_checkpoint(self, trainer: Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        # Lightning would rank a NaN score as -inf, which still becomes "best" while nothing else is; and
        # a NaN validation loss means some predictions were NaN, whatever the accuracy says.
        for name in dict.fromkeys(filter(None, (self.monitor, "val/loss"))):
            value = monitor_candidates.get(name)
            if value is not None and not bool(torch.isfinite(value).all()):
                rank_zero_warn(
                    f"{name} = {float(value)} is not finite: this epoch is not a checkpoint candidate"
                )
                return
        if self._state_is_finite(trainer):
            super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _save_last_checkpoint(self, trainer: Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        if self._state_is_finite(trainer):
            super()._save_last_checkpoint(trainer, monitor_candidates)

    def save_latest(self, trainer: Trainer) -> str | None:
        """Write ``last.ckpt`` with the current state now (an interrupted run); its path, ``None`` if refused."""
        if not self._state_is_finite(trainer):
            return None
        if self.save_last is True:
            super()._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            return self.last_model_path
        # save_last off, or "link" (a link to the latest top-k file, which is not the current state).
        filepath = os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
        trainer.save_checkpoint(filepath)
        return filepath

    @staticmethod
    def _state_is_finite(trainer: Trainer) -> bool:
        if all_finite(trainer.lightning_module.state_dict().values()):
            return True
        rank_zero_warn(
            f"not saving a checkpoint at global step {trainer.global_step}: the model's weights or "
            "statistics hold NaN/inf values (training diverged)"
        )
        return False
