"""Class-balanced sampling, seeded and DDP-safe (data.md §9).

POSTER++ and BTN train AffectNet with ``torchsampler.ImbalancedDatasetSampler``; this is our own
version of that rule (weight = 1 / class frequency, drawn with replacement) without its defects: it
takes the labels the datamodule already holds instead of re-reading the dataset, it is seeded, it draws
anew each epoch through ``set_epoch``, and every DDP rank draws the *same* list so that Lightning's
``DistributedSamplerWrapper`` hands each rank a disjoint share of it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class ImbalancedDatasetSampler(Sampler[int]):
    """Draw indices with probability proportional to 1 / count(label), with replacement.

    Args:
        labels: the class id of every sample, in dataset order.
        num_samples: indices per epoch; defaults to ``len(labels)`` (same epoch length as shuffling).
        seed: the draw of epoch ``e`` uses a generator seeded with ``seed + e`` — never the global RNG,
            which differs between DDP ranks.
    """

    def __init__(self, labels: Sequence[int], num_samples: int | None = None, seed: int = 0) -> None:
        labels_tensor = torch.as_tensor(list(labels), dtype=torch.long)
        if labels_tensor.numel() == 0:
            raise ValueError("ImbalancedDatasetSampler needs at least one label")
        if labels_tensor.min() < 0:
            raise ValueError(f"labels must be non-negative class ids, got {int(labels_tensor.min())}")
        class_counts = torch.bincount(labels_tensor).double()
        self.weights = 1.0 / class_counts[labels_tensor]
        self.num_samples = len(labels_tensor) if num_samples is None else int(num_samples)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        draw = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator)
        return iter(draw.tolist())
