"""Samplers: the imbalanced draw and the training shuffle (seeded per epoch, disjoint DDP shares, the
skip of a resumed epoch), and the DDP evaluation shards (each sample exactly once)."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch
from torch.utils.data import DistributedSampler, SequentialSampler

from fer_lightning.data import RAFDBDataModule
from fer_lightning.data.resumable import EpochKeyedSampler
from fer_lightning.data.samplers import EpochShuffleSampler, EvaluationShardSampler, ImbalancedDatasetSampler
from fer_lightning.data.synthetic import write_synthetic
from fer_lightning.errors import ConfigurationError

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


def _positions(keys) -> list[int]:
    return [key.index for key in keys]


def test_ddp_shares_are_disjoint_and_cover_the_draw():
    """Each simulated rank builds its own sampler, as under DDP: rank r takes positions r, r + 2, ... of
    the epoch's draw (which repeats indices), so the shares split the draw between them."""
    reference = ImbalancedDatasetSampler(SKEWED_LABELS, seed=0)
    reference.set_epoch(2)
    full = list(reference)
    shares = []
    for rank in range(2):
        sampler = EpochKeyedSampler(
            ImbalancedDatasetSampler(SKEWED_LABELS, seed=0), num_replicas=2, rank=rank
        )
        sampler.set_epoch(2)
        shares.append(_positions(sampler))
        assert len(sampler) == len(full) // 2
    assert shares == [full[0::2], full[1::2]]


def test_labels_are_not_reread_and_bad_labels_fail():
    sampler = ImbalancedDatasetSampler(torch.tensor([0, 0, 1]), seed=0)
    assert sampler.weights.tolist() == [0.5, 0.5, 1.0]
    with pytest.raises(ValueError, match="non-negative"):
        ImbalancedDatasetSampler([0, -1])


# ---- training order: a function of (seed, epoch) only --------------------------------------------


def _epoch_order(sampler, epoch):
    sampler.set_epoch(epoch)
    return list(sampler)


def test_shuffle_order_depends_on_seed_and_epoch_only():
    sampler = EpochShuffleSampler(range(50), seed=7)
    epoch0 = _epoch_order(sampler, 0)
    assert sorted(epoch0) == list(range(50))
    torch.manual_seed(123)  # the global RNG does not enter: a resumed run or another rank sees the same
    assert _epoch_order(EpochShuffleSampler(range(50), seed=7), 0) == epoch0
    assert _epoch_order(sampler, 1) != epoch0
    assert _epoch_order(sampler, 0) == epoch0  # set_epoch back: the same order again
    # Seed and epoch are hashed, not added: seed 8 at epoch 0 is not seed 7 at epoch 1.
    assert _epoch_order(EpochShuffleSampler(range(50), seed=8), 0) != _epoch_order(sampler, 1)
    assert len(sampler) == 50


SAMPLERS = {
    "shuffle": lambda: EpochShuffleSampler(range(41), seed=3),
    "imbalanced": lambda: ImbalancedDatasetSampler(SKEWED_LABELS[::100], seed=3),
}


@pytest.mark.parametrize("make_sampler", SAMPLERS.values(), ids=SAMPLERS.keys())
def test_ddp_shares_are_new_each_epoch_and_padded_to_even_length(make_sampler):
    """What each rank does under DDP. Lightning leaves a DistributedSampler in place; its fit loop
    calls set_epoch on it."""
    orders = {}
    for epoch in (0, 1):
        full = _epoch_order(make_sampler(), epoch)
        padded = full + full[: len(full) % 2]  # every rank gets as many samples (as Lightning pads)
        shares = []
        for rank in range(2):
            sampler = EpochKeyedSampler(make_sampler(), num_replicas=2, rank=rank)
            assert isinstance(sampler, DistributedSampler)
            sampler.set_epoch(epoch)
            assert sampler.sampler.epoch == epoch  # set_epoch reaches the order
            shares.append(_positions(sampler))
            assert len(sampler) == len(padded) // 2 == len(shares[-1])
            assert {key.epoch for key in sampler} == {epoch}
        assert shares == [padded[0::2], padded[1::2]]
        orders[epoch] = shares
    assert orders[0] != orders[1]


@pytest.mark.parametrize("num_replicas", [1, 2])
def test_a_skip_drops_the_start_of_this_ranks_share_in_the_next_pass_only(num_replicas):
    """A run resumed inside an epoch: each rank skips the samples it had consumed of its own share."""
    sampler = EpochKeyedSampler(SAMPLERS["shuffle"](), num_replicas=num_replicas, rank=num_replicas - 1)
    sampler.set_epoch(1)
    share = _positions(sampler)
    sampler.skip_next(6)
    assert _positions(sampler) == share[6:]
    assert _positions(sampler) == share  # the next epoch starts from the beginning again
    sampler.skip_next(6)
    sampler.set_epoch(2)  # a skip belongs to the restored epoch only
    assert len(_positions(sampler)) == len(share) and len(sampler) == len(share)


# ---- evaluation under DDP: every sample exactly once -----------------------------------------------


def test_evaluation_shards_cover_the_split_exactly_once():
    shards = [list(EvaluationShardSampler(range(9), num_replicas=2, rank=rank)) for rank in range(2)]
    assert shards == [[0, 2, 4, 6, 8], [1, 3, 5, 7]]
    assert [len(EvaluationShardSampler(range(9), num_replicas=2, rank=rank)) for rank in range(2)] == [5, 4]
    three = [list(EvaluationShardSampler(range(10), num_replicas=3, rank=rank)) for rank in range(3)]
    assert sorted(index for shard in three for index in shard) == list(range(10))


def test_evaluation_split_smaller_than_world_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="1 samples cannot give each of 2 processes"):
        EvaluationShardSampler(range(1), num_replicas=2, rank=0)


def test_datamodule_loaders_use_the_seeded_and_sharded_samplers(tmp_path, monkeypatch):
    write_synthetic("rafdb", tmp_path, num_images=45, seed=0, progress=False)
    datamodule = RAFDBDataModule(root=str(tmp_path), batch_size=4, num_workers=0, img_size=32)
    monkeypatch.setenv("PL_GLOBAL_SEED", "11")  # what seed_everything(11) exports
    train_loader = datamodule.train_dataloader()
    # The loader's sampler may wrap ours (the resume wrapper of data/resumable.py keys samples by epoch).
    order = getattr(train_loader.sampler, "sampler", train_loader.sampler)
    assert isinstance(order, EpochShuffleSampler) and order.seed == 11
    _set_sampler_epoch(train_loader, 3)  # what Lightning's fit loop calls before each epoch
    assert order.epoch == 3
    assert train_loader.drop_last
    assert isinstance(datamodule.test_dataloader().sampler, SequentialSampler)  # one process: in order

    rank1 = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 2, "rank": 1})
    datamodule.trainer = rank1
    datamodule._continue_restored_epoch = lambda sampler: None  # no fit loop to restore from here
    train_sampler = datamodule.train_dataloader().sampler
    assert (train_sampler.num_replicas, train_sampler.rank) == (2, 1)
    assert len(train_sampler) == math.ceil(len(datamodule.datasets["train"]) / 2)
    test_loader = datamodule.test_dataloader()
    assert isinstance(test_loader.sampler, EvaluationShardSampler)
    assert list(test_loader.sampler) == list(range(1, len(datamodule.datasets["test"]), 2))
    assert not test_loader.drop_last
