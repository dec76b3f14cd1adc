"""Augmentation randomness: different in every DataLoader worker, repeatable under one seed."""

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from fer_lightning.data import RAFDBDataModule
from fer_lightning.data.base import FERImageDataset, SplitTable, _worker_init
from fer_lightning.data.transforms import build_transform


def test_workers_draw_different_augmentations():
    """One image, erased at random (p = 1) in two workers: the k-th draws of the workers differ."""
    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    table = SplitTable(sources=list(range(16)), labels=[0] * 16, names=[str(i) for i in range(16)])
    dataset = FERImageDataset(
        table, lambda _: image, build_transform("btn_affectnet", 32, train=True, seed=0)
    )
    torch.manual_seed(0)
    loader = DataLoader(dataset, batch_size=1, num_workers=2, worker_init_fn=_worker_init)
    images = [batch[0][0] for batch in loader]  # item i comes from worker i % 2
    same = [torch.equal(images[i], images[i + 1]) for i in range(0, 16, 2)]
    assert not any(same), same


def _first_batches(root, seed, workers):
    L.seed_everything(seed, verbose=False)
    datamodule = RAFDBDataModule(
        root=str(root), batch_size=8, num_workers=workers, img_size=32, augment="btn_affectnet"
    )
    datamodule.setup("fit")
    loader = iter(datamodule.train_dataloader())
    return [next(loader)[0] for _ in range(3)]


def test_same_seed_same_augmented_batches(tmp_path):
    from fer_lightning.data.synthetic import write_synthetic

    write_synthetic("rafdb", tmp_path, num_images=80, seed=2, progress=False)
    for workers in (0, 2):
        first, again, other = (_first_batches(tmp_path, seed, workers) for seed in (0, 0, 1))
        assert all(torch.equal(a, b) for a, b in zip(first, again)), workers
        assert not torch.equal(first[0], other[0]), workers
