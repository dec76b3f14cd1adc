"""Samplers of the datamodule: seeded per-epoch training orders, and exact evaluation shards under DDP.

Training orders are a function of ``(seed, epoch)`` only, never of the global RNG, for two reasons: a
run resumed at epoch ``e`` sees the order it would have seen, and every DDP rank computes the *same*
order, of which :class:`~fer_lightning.data.resumable.EpochKeyedSampler` (around these samplers in
the training loader) hands each rank a disjoint share. Lightning's fit loop calls ``set_epoch`` on the
loader's sampler, which forwards it here.

Evaluation under DDP uses :class:`EvaluationShardSampler`: each sample exactly once over all ranks,
where Lightning's default ``DistributedSampler`` would repeat samples to make the shards even.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence, Sized

import numpy as np
import torch
from torch.utils.data import DistributedSampler, Sampler

from fer_lightning.errors import ConfigurationError


def run_seed() -> int:
    """The seed given to ``seed_everything`` in this process (Lightning exports it as ``PL_GLOBAL_SEED``), else 0.

    Lightning seeds its own ``DistributedSampler`` from the same variable.
    """
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def derive_seed(*keys: int) -> int:
    """A 64-bit seed determined by ``keys`` alone, hashed (NumPy's ``SeedSequence``) rather than added,
    so that e.g. seed 1 at epoch 0 and seed 0 at epoch 1 give unrelated streams."""
    return int(np.random.SeedSequence([int(key) for key in keys]).generate_state(1, dtype=np.uint64)[0])


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A torch generator determined by ``(seed, epoch)`` alone."""
    return torch.Generator().manual_seed(derive_seed(seed, epoch))


class EpochSeededSampler(Sampler[int]):
    """``num_samples`` indices per epoch, drawn by :meth:`draw` from a generator keyed on ``(seed, epoch)``.

    Call :meth:`set_epoch` before each epoch (Lightning's fit loop does, through ``EpochKeyedSampler``).
    """

    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        return iter(self.draw(epoch_generator(self.seed, self.epoch)).tolist())

    def draw(self, generator: torch.Generator) -> torch.Tensor:
        """This epoch's ``num_samples`` indices, drawn from ``generator`` and nothing else."""
        raise NotImplementedError


class EpochShuffleSampler(EpochSeededSampler):
    """A permutation of ``range(num_samples)`` that depends on ``(seed, epoch)`` only.

    Replaces ``DataLoader(shuffle=True)``, whose ``RandomSampler`` draws from the global RNG (so a
    resumed run, or another rank, would see another order). Under DDP each rank takes a disjoint share
    of the permutation (``EpochKeyedSampler``).

    Args:
        data_source: anything with ``len()`` (the dataset).
        seed: the run's seed (:func:`run_seed`).
    """

    def __init__(self, data_source: Sized, seed: int = 0) -> None:
        super().__init__(len(data_source), seed)

    def draw(self, generator: torch.Generator) -> torch.Tensor:
        return torch.randperm(self.num_samples, generator=generator)


class ImbalancedDatasetSampler(EpochSeededSampler):
    """Draw indices with probability proportional to 1 / count(label), with replacement.

    POSTER++ and BTN train AffectNet with ``torchsampler.ImbalancedDatasetSampler``; this is our own
    version of that rule without its defects: it takes the labels the datamodule already holds instead
    of re-reading the dataset, and the draw of each epoch depends on ``(seed, epoch)`` only, so every DDP
    rank draws the *same* list and takes a disjoint share of it (``EpochKeyedSampler``).

    Args:
        labels: the class id of every sample, in dataset order.
        num_samples: indices per epoch; defaults to ``len(labels)`` (same epoch length as shuffling).
        seed: the run's seed (:func:`run_seed`); never the global RNG, which differs between DDP ranks.
    """

    def __init__(self, labels: Sequence[int], num_samples: int | None = None, seed: int = 0) -> None:
        labels_tensor = torch.as_tensor(list(labels), dtype=torch.long)
        if labels_tensor.numel() == 0:
            raise ValueError("ImbalancedDatasetSampler needs at least one label")
        if labels_tensor.min() < 0:
            raise ValueError(f"labels must be non-negative class ids, got {int(labels_tensor.min())}")
        class_counts = torch.bincount(labels_tensor).double()
        self.weights = 1.0 / class_counts[labels_tensor]
        super().__init__(len(labels_tensor) if num_samples is None else int(num_samples), seed)

    def draw(self, generator: torch.Generator) -> torch.Tensor:
        return torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator)


class EvaluationShardSampler(DistributedSampler):
    """Rank ``r`` of ``R`` gets samples ``r, r + R, r + 2R, …`` in order: every sample exactly once.

    Lightning's ``DistributedSampler`` pads a split to a multiple of the world size by repeating
    samples, so distributed validation and test metrics counted some samples twice. Here shard sizes
    differ by at most one instead; the metrics' state sums (torchmetrics) then add up to exactly the
    one-process counts. Being a ``DistributedSampler``, it is left in place by Lightning.

    Every rank must get at least one sample (DDP synchronises buffers in the first forward pass of an
    evaluation, which each rank must take part in), so the split needs at least ``num_replicas`` samples.
    """

    def __init__(self, dataset: Sized, num_replicas: int, rank: int) -> None:
        if len(dataset) < num_replicas:
            raise ConfigurationError(
                f"an evaluation split of {len(dataset)} samples cannot give each of {num_replicas} "
                "processes a sample; run validate/test on fewer devices (trainer.devices)"
            )
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        self.num_samples = math.ceil((len(dataset) - rank) / num_replicas)
        self.total_size = len(dataset)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))
