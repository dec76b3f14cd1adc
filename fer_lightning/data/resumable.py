"""Training samples keyed by (index, epoch): augmentations that survive worker counts and resumes.

Each training sample's augmentation is drawn from a generator seeded by ``(run seed, epoch, sample
index)``, instead of from one stream per DataLoader worker. The flips and erasing boxes a sample gets
in an epoch therefore depend neither on the number of workers nor on which worker loads it, nor on
whether the run was interrupted and resumed: a resumed run draws exactly what the uninterrupted one
would have. Reseeding costs a few microseconds per sample (a ``SeedSequence`` hash and two generator
constructions), next to the hundreds a decode and the augmentation take.

:class:`EpochKeyedSampler` wraps the training sampler (whose order is itself a function of seed and
epoch): it hands the dataset :class:`SampleKey` s, shards the order under DDP, and after a mid-epoch
restore it skips the samples that the interrupted epoch had already consumed on this process.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
from torch.utils.data import DistributedSampler, Sampler


class SampleKey(NamedTuple):
    """What the training sampler yields: the sample's index in the split and the epoch it is drawn in."""

    index: int
    epoch: int


def sample_generators(seed: int, epoch: int, index: int) -> tuple[np.random.Generator, random.Random]:
    """NumPy and Python generators determined by ``(seed, epoch, index)`` alone (albumentations uses both)."""
    numpy_state, python_state = np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(2)
    return np.random.default_rng(int(numpy_state)), random.Random(int(python_state))


class EpochKeyedSampler(DistributedSampler):
    """Yield ``SampleKey(index, epoch)`` for this process's share of ``sampler``'s order.

    ``set_epoch`` is forwarded to the wrapped sampler (Lightning's fit loop calls it each epoch).

    Under DDP (``num_replicas`` > 1) it shards the order itself: process ``rank`` takes positions
    ``rank, rank + R, rank + 2R, …`` of the epoch's order, padded (by repeating its start) to a multiple
    of ``R`` so that every process runs as many batches. Being a ``DistributedSampler``, it is left in
    place by Lightning, which would otherwise put its own sharding around it; sharding here is what lets
    a resumed run skip the right samples on every process.

    :meth:`skip_next` drops the first ``n`` positions of this process's share in the next pass only: a
    run resumed from a checkpoint written ``n`` samples into an epoch continues with the samples that
    epoch had left. The length stays that of the full share, which is what Lightning's progress
    counting after a mid-epoch restore expects.
    """

    def __init__(self, sampler: Sampler[int], num_replicas: int = 1, rank: int = 0) -> None:
        # As in Lightning's own DDP sharding: ceil(N / R) positions per process, the last ones padded.
        super().__init__(sampler, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
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

    def __iter__(self) -> Iterator[SampleKey]:
        skip, self._skip = self._skip, 0
        epoch = self.epoch
        order = [int(index) for index in self.sampler]
        if self.num_replicas > 1:
            padding = self.total_size - len(order)
            if padding:
                order += (order * math.ceil(padding / len(order)))[:padding]
            order = order[self.rank : self.total_size : self.num_replicas]
        for index in order[skip:]:
            yield SampleKey(index, epoch)
