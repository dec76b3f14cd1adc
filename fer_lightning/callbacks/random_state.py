"""Global random generators that a resumed run continues exactly."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from fer_lightning.data.samplers import derive_seed, run_seed


def seed_global_generators(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (torch's on every CUDA device too)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the global generator is the one to reseed
    torch.manual_seed(seed)


class StepSeededRandomState(Callback):
    """Global generators reseeded from ``(seed, epoch, rank, batch)`` before every training batch.

    What draws from the global generators during training (dropout, drop path, anything a model does
    with ``torch.rand``) then depends on the position in training, not on everything that ran before it
    (evaluation passes, data-loader start-ups, a restore). A run resumed from any checkpoint, at an
    epoch's end or inside an epoch, on one process or several, therefore draws what the uninterrupted
    run drew, with nothing to save in the checkpoint: each process reseeds its own generators, also
    when a checkpoint written by process 0 is restored on all of them. Reseeding costs tens of
    microseconds per batch.
    """

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Halved into the 63 bits every one of the generators accepts.
        key = derive_seed(run_seed(), trainer.current_epoch, trainer.global_rank, batch_idx)
        seed_global_generators(key >> 1)
