"""The datamodule every dataset shares: split tables, validation carve, transforms, sampler, loaders.

A dataset module only says how to read its annotations into :class:`SplitTable` objects and how to
load one sample's pixels; everything a researcher tunes (batch size, workers, image size, recipe,
sampler, validation carve) lives here once.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fer_lightning.data.io import BadSampleError, read_rgb
from fer_lightning.data.samplers import ImbalancedDatasetSampler
from fer_lightning.data.synthetic import ensure_synthetic_dataset
from fer_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class SplitTable:
    """One split, in dataset order: what to load for each sample, its label, and a name for messages.

    ``sources[i]`` is whatever the dataset's ``load_image`` takes (a path, a path and a face box, …);
    ``names[i]`` is the file or annotation row a user would look up when sample i is bad.
    """

    sources: list[Any]
    labels: np.ndarray
    names: list[str]
    dropped: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if not len(self.sources) == len(self.labels) == len(self.names):
            raise ValueError("sources, labels and names must have the same length")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int]) -> SplitTable:
        return SplitTable(
            [self.sources[i] for i in indices], self.labels[list(indices)], [self.names[i] for i in indices]
        )


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, carved) with ``fraction`` of every class carved out, chosen by ``seed``.

    Each class with at least two samples gives at least one, so every class is validated.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    carved: list[np.ndarray] = []
    for class_id in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == class_id))
        take = round(fraction * len(members))
        if len(members) >= 2:
            take = min(max(take, 1), len(members) - 1)
        carved.append(members[:take])
    carved_idx = np.sort(np.concatenate(carved)) if carved else np.zeros(0, dtype=np.int64)
    kept_idx = np.setdiff1d(np.arange(len(labels)), carved_idx)
    return kept_idx, carved_idx


class FERImageDataset(Dataset):
    """Samples of one split: ``(image float32 [3, H, W], label int64)``."""

    def __init__(self, table: SplitTable, load_image: Callable[[Any], np.ndarray], transform: Callable) -> None:
        self.table = table
        self.load_image = load_image
        self.transform = transform

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        try:
            image = self.load_image(self.table.sources[index])
        except BadSampleError:
            raise
        except Exception as error:  # a decoder's own message rarely names the file
            raise BadSampleError(f"{self.table.names[index]}: {error}") from error
        return self.transform(image=image)["image"], int(self.table.labels[index])


def _worker_init(_: int) -> None:
    # OpenCV's own thread pool inside each DataLoader worker oversubscribes the cores.
    cv2.setNumThreads(0)


class FERDataModule(L.LightningDataModule):
    """Base datamodule; subclasses set ``CLASS_NAMES`` and implement :meth:`read_splits`.

    Args:
        root: dataset folder as the dataset ships it. Leave it unset and give ``synthetic_size`` to
            train on generated faces written in this dataset's format (cached; no download).
        batch_size: per device. Training drops the last incomplete batch (BTN's batch attention needs
            full batches).
        num_workers: DataLoader worker processes.
        img_size: square side images are resized to.
        augment: training recipe name from :mod:`fer_lightning.data.transforms`.
        sampler: ``shuffle`` or ``imbalanced`` (1 / class-frequency weights, seeded, DDP-safe).
        val_fraction: share of each training class carved out for validation when the dataset has no
            official validation split. Checkpoints are selected on it; test is reported separately.
        split_seed: seed of that carve and of the sampler.
        mean, std: normalisation statistics.
        synthetic_size, synthetic_seed: size and seed of the generated dataset used when root is unset.
    """

    CLASS_NAMES: tuple[str, ...] = ()
    DATASET_NAME = "dataset"
    SYNTHETIC_FORMAT: str | None = None

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 64,
        num_workers: int = 2,
        img_size: int = 112,
        augment: str = "flip",
        sampler: Literal["shuffle", "imbalanced"] = "shuffle",
        val_fraction: float = 0.1,
        split_seed: int = 0,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        synthetic_size: int = 0,
        synthetic_seed: int = 0,
    ) -> None:
        super().__init__()
        if root is None and synthetic_size <= 0:
            raise ValueError(
                f"{self.DATASET_NAME}: set data.root to the dataset folder, or data.synthetic_size to a "
                "number of generated images"
            )
        if sampler not in ("shuffle", "imbalanced"):
            raise ValueError(f"data.sampler must be 'shuffle' or 'imbalanced', got {sampler!r}")
        self.save_hyperparameters()
        # Set here, not in setup(): the CLI links them into the model right after __init__.
        self.class_names: list[str] = list(self.CLASS_NAMES)
        self.num_classes: int = len(self.class_names)
        self.tables: dict[str, SplitTable] = {}
        self.datasets: dict[str, FERImageDataset] = {}

    # ---- what a dataset module provides -------------------------------------------------------
    def read_splits(self, root: Path) -> dict[str, SplitTable]:
        """Read the annotations under ``root`` into tables for ``train``, ``test`` and, if official, ``val``."""
        raise NotImplementedError

    def load_image(self, source: Any) -> np.ndarray:
        """RGB uint8 HWC pixels of one sample; by default ``source`` is an image path."""
        return read_rgb(source)

    # ---- shared machinery ---------------------------------------------------------------------
    @property
    def root(self) -> Path:
        if self.hparams.root is not None:
            return Path(self.hparams.root).expanduser()
        return ensure_synthetic_dataset(
            self.SYNTHETIC_FORMAT, self.hparams.synthetic_size, seed=self.hparams.synthetic_seed
        )

    def prepare_data(self) -> None:
        # Generating the synthetic set here runs it once per node before any rank reads it.
        if self.hparams.root is None:
            _ = self.root

    def setup(self, stage: str | None = None) -> None:
        if self.tables:
            return
        root = self.root
        if not root.is_dir():
            raise FileNotFoundError(f"{self.DATASET_NAME} root not found: {root} ({self.layout_hint()})")
        tables = self.read_splits(root)
        for split, table in tables.items():
            if len(table) == 0:
                raise ValueError(f"{self.DATASET_NAME}: split '{split}' is empty under {root} ({self.layout_hint()})")
            for reason, count in table.dropped.items():
                log.warning("%s %s: dropped %d rows (%s)", self.DATASET_NAME, split, count, reason)
        if "val" not in tables:
            train = tables["train"]
            kept, carved = stratified_split(train.labels, self.hparams.val_fraction, self.hparams.split_seed)
            if len(carved) == 0 or len(kept) == 0:
                raise ValueError(
                    f"{self.DATASET_NAME}: carving data.val_fraction={self.hparams.val_fraction} out of "
                    f"{len(train)} training images under {root} leaves an empty train or val split"
                )
            tables["train"], tables["val"] = train.subset(kept), train.subset(carved)
        self.tables = tables
        for split, table in tables.items():
            transform = build_transform(
                self.hparams.augment, self.hparams.img_size, train=split == "train",
                mean=self.hparams.mean, std=self.hparams.std,
            )
            self.datasets[split] = FERImageDataset(table, self.load_image, transform)
        self._save_split_index()

    def layout_hint(self) -> str:
        """One line saying which files the dataset expects, for error messages."""
        return "see the README for the expected layout"

    def _save_split_index(self) -> None:
        """Write which sample went to which split into the run folder, so runs can be compared."""
        trainer = self.trainer
        if trainer is None or trainer.log_dir is None or not trainer.is_global_zero:
            return
        os.makedirs(trainer.log_dir, exist_ok=True)
        with open(os.path.join(trainer.log_dir, "data_splits.csv"), "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["split", "sample", "label", "class_name"])
            for split, table in self.tables.items():
                for name, label in zip(table.names, table.labels):
                    writer.writerow([split, name, int(label), self.class_names[label]])

    def _loader(self, split: str, train: bool) -> DataLoader:
        if not self.datasets:
            self.setup()
        dataset = self.datasets[split]
        batch_size = self.hparams.batch_size
        sampler = None
        if train and self.hparams.sampler == "imbalanced":
            sampler = ImbalancedDatasetSampler(dataset.table.labels, seed=self.hparams.split_seed)
        if train and len(dataset) < batch_size:
            raise ValueError(
                f"{self.DATASET_NAME}: the training split has {len(dataset)} images, fewer than one batch "
                f"of {batch_size} (training drops incomplete batches); lower data.batch_size"
            )
        workers = self.hparams.num_workers
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=train,
            num_workers=workers,
            persistent_workers=workers > 0,
            worker_init_fn=_worker_init,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
