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


def global_generator_states() -> dict[str, Any]:
    """The generators' states as tensors, ints and tuples: what ``torch.load(weights_only=True)`` reads."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()  # noqa: NPY002
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_global_generators(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    kind, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))  # noqa: NPY002
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class EpochSeededRandomState(Callback):
    """Global generators reseeded from ``(seed, epoch, rank)`` at each training epoch's start, and restored
    from the checkpoint when a run resumes inside an epoch.

    What draws from the global generators during training (dropout, drop path, anything a model does
    with ``torch.rand``) then depends on the epoch, not on everything that ran before it — evaluation
    passes, data-loader start-ups, a restore — so a run resumed at an epoch boundary draws what the
    uninterrupted run drew. For a checkpoint written inside an epoch, the generator states saved in it
    are put back just before the first batch the resumed run trains.
    """

    def __init__(self) -> None:
        self._states_to_restore: dict[str, Any] | None = None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._states_to_restore = None
        # Halved into the 63 bits every one of the generators accepts.
        seed_global_generators(derive_seed(run_seed(), trainer.current_epoch, trainer.global_rank) >> 1)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Lightning does not call on_train_epoch_start when it resumes inside an epoch.
        if self._states_to_restore is not None:
            restore_global_generators(self._states_to_restore)
            self._states_to_restore = None

    def state_dict(self) -> dict[str, Any]:
        return {"generators": global_generator_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._states_to_restore = state_dict.get("generators")
