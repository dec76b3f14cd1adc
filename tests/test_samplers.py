"""ImbalancedDatasetSampler: balanced, seeded, new each epoch, disjoint DDP shares."""

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

from fer_lightning.data.samplers import ImbalancedDatasetSampler

# 7 classes, heavily skewed like AffectNet (Happy ≫ Disgust).
SKEWED_LABELS = np.repeat(np.arange(7), [3000, 1500, 600, 300, 150, 60, 30])


def test_draw_is_class_balanced():
    sampler = ImbalancedDatasetSampler(SKEWED_LABELS, num_samples=70_000, seed=0)
    frequencies = np.bincount(SKEWED_LABELS[list(sampler)], minlength=7) / 70_000
    assert np.allclose(frequencies, 1 / 7, atol=0.01), frequencies


def test_same_seed_same_draw_and_epochs_differ():
    first, second = (ImbalancedDatasetSampler(SKEWED_LABELS, seed=3) for _ in range(2))
    assert list(first) == list(second)
    epoch0 = list(first)
    first.set_epoch(1)
    assert list(first) != epoch0
    assert list(ImbalancedDatasetSampler(SKEWED_LABELS, seed=4)) != epoch0
    assert len(first) == len(SKEWED_LABELS)


@pytest.mark.parametrize("shuffle", [False, True])
def test_ddp_shares_are_disjoint_and_cover_the_draw(shuffle):
    """Each simulated rank builds its own sampler, as under DDP; Lightning wraps it like this."""
    reference = ImbalancedDatasetSampler(SKEWED_LABELS, seed=0)
    reference.set_epoch(2)
    full = list(reference)
    positions = []
    for rank in range(2):
        inner = ImbalancedDatasetSampler(SKEWED_LABELS, seed=0)
        wrapper = DistributedSamplerWrapper(inner, num_replicas=2, rank=rank, shuffle=shuffle)
        wrapper.set_epoch(2)
        # Positions in the epoch's draw that this rank receives (the draw repeats indices).
        positions.append(list(super(DistributedSamplerWrapper, wrapper).__iter__()))
        assert list(wrapper) == [full[p] for p in positions[-1]]
    assert set(positions[0]).isdisjoint(positions[1])
    assert sorted(positions[0] + positions[1]) == list(range(len(full)))


def test_labels_are_not_reread_and_bad_labels_fail():
    sampler = ImbalancedDatasetSampler(torch.tensor([0, 0, 1]), seed=0)
    assert sampler.weights.tolist() == [0.5, 0.5, 1.0]
    with pytest.raises(ValueError, match="non-negative"):
        ImbalancedDatasetSampler([0, -1])
