"""Global random generators that a resumed run continues exactly."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from fer_lightning.data.samplers import derive_seed, run_seed


def seed_global_generators(seed: int, device: torch.device | None = None) -> None:
    """Seed Python's, NumPy's and torch's global generators: the CPU one, and that of ``device``.

    ``torch.manual_seed`` would seed every device type's generators, at about 200 µs a call (it
    queries each backend), too much to pay before every batch; the CPU generator and the one device a
    process trains on are what its dropout draws from.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the global generator is the one to reseed
    torch.default_generator.manual_seed(seed)
    if device is None or device.type == "cpu":
        return
    if device.type == "cuda":
        torch.cuda.default_generators[device.index or 0].manual_seed(seed)
    else:
        torch.manual_seed(seed)


class StepSeededRandomState(Callback):
    """Global generators reseeded from ``(seed, epoch, rank, batch)`` before every training batch.

    What draws from the global generators during training (dropout, drop path, anything a model does
    with ``torch.rand``) then depends on the position in training, not on everything that ran before it
    (evaluation passes, data-loader start-ups, a restore). A run resumed from any checkpoint, at an
    epoch's end or inside an epoch, on one process or several, therefore draws what the uninterrupted
    run drew, with nothing to save in the checkpoint: each process reseeds its own generators, also
    when a checkpoint written by process 0 is restored on all of them. Reseeding costs about 40 µs per
    batch.
    """

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Halved into the 63 bits every one of the generators accepts.
        key = derive_seed(run_seed(), trainer.current_epoch, trainer.global_rank, batch_idx)
        seed_global_generators(key >> 1, pl_module.device if pl_module is not None else None)
