"""Training samples keyed by (index, epoch): augmentations that survive worker counts and resumes.

Each training sample's augmentation is drawn from a generator seeded by ``(run seed, epoch, sample
index)``, instead of from one stream per DataLoader worker. The flips and erasing boxes a sample gets
in an epoch therefore depend neither on the number of workers nor on which worker loads it, nor on
whether the run was interrupted and resumed: a resumed run draws exactly what the uninterrupted one
would have. Reseeding costs a few microseconds per sample (a ``SeedSequence`` hash and two generator
constructions), next to the hundreds a decode and the augmentation take.

:class:`EpochKeyedSampler` wraps the training sampler (whose order is itself a function of seed and
epoch): it hands the dataset :class:`SampleKey` s, and after a mid-epoch restore it skips the samples
that the interrupted epoch had already consumed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
from torch.utils.data import Sampler


class SampleKey(NamedTuple):
    """What the training sampler yields: the sample's index in the split and the epoch it is drawn in."""

    index: int
    epoch: int


def sample_generators(seed: int, epoch: int, index: int) -> tuple[np.random.Generator, random.Random]:
    """NumPy and Python generators determined by ``(seed, epoch, index)`` alone (albumentations uses both)."""
    numpy_state, python_state = np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(2)
    return np.random.default_rng(int(numpy_state)), random.Random(int(python_state))


class EpochKeyedSampler(Sampler[SampleKey]):
    """Yield ``SampleKey(index, epoch)`` for the indices of ``sampler``, in its order.

    ``set_epoch`` is forwarded to the wrapped sampler (Lightning calls it each epoch, also through its
    DDP wrapper). :meth:`skip_next` drops the first ``n`` positions of the next pass only: a run
    resumed from a checkpoint written ``n`` samples into an epoch continues with the samples that epoch
    had left. The length stays that of the full epoch, which is what Lightning's progress counting
    after a mid-epoch restore expects.
    """

    def __init__(self, sampler: Sampler[int]) -> None:
        self.sampler = sampler
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._skip = 0  # a skip belongs to the restored epoch only
        self.epoch = epoch
        if callable(getattr(self.sampler, "set_epoch", None)):
            self.sampler.set_epoch(epoch)

    def skip_next(self, num_samples: int) -> None:
        self._skip = max(0, int(num_samples))

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[SampleKey]:
        skip, self._skip = self._skip, 0
        epoch = self.epoch
        for position, index in enumerate(self.sampler):
            if position >= skip:
                yield SampleKey(int(index), epoch)
