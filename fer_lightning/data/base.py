"""The datamodule every dataset shares: split tables, validation carve, transforms, sampler, loaders.

A dataset module only says how to read its annotations into :class:`SplitTable` objects (through a
:class:`SplitBuilder`, which also counts what it leaves out) and how to load one sample's pixels;
everything a researcher tunes (batch size, workers, image size, recipe, sampler, validation carve, what
to do with bad input) lives here once.

Bad input has two kinds, both counted per split and reason:

* **known-invalid rows** a dataset ships with (AffectNet's None/Uncertain/No-Face rows, its missing
  images, FER+ rows without a majority): always dropped, and logged at setup;
* **bad input** (a malformed row, a label out of range, a listed file that is missing, an image that
  does not decode): by default a one-line :class:`~fer_lightning.data.io.BadSampleError` naming the file
  or row; with ``on_bad_sample="skip"`` left out and reported: annotation problems as a warning at
  setup, images that only fail when a DataLoader worker decodes them in a file of the run folder
  (``bad_samples.tsv``) that :meth:`FERDataModule.teardown` sums up in a warning.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import signal
import tempfile
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from fer_lightning.data.io import BadSampleError, DirectoryIndex, FaceCrop, FaceCropper, read_rgb
from fer_lightning.data.label_noise import LABEL_NOISE_FILE, LabelNoise, apply_label_noise
from fer_lightning.data.resumable import EpochKeyedSampler, SampleKey, sample_generators
from fer_lightning.data.samplers import (
    EpochShuffleSampler,
    EvaluationShardSampler,
    ImbalancedDatasetSampler,
    run_seed,
)
from fer_lightning.data.synthetic import default_cache_dir, ensure_synthetic_dataset
from fer_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform
from fer_lightning.errors import ConfigurationError, DatasetNotFoundError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
BAD_SAMPLE_POLICIES = ("raise", "skip")
BAD_SAMPLES_FILE = "bad_samples.tsv"


class BadSampleWarning(UserWarning):
    """Samples were skipped because of ``on_bad_sample="skip"``; the message counts them per reason."""


@dataclass
class SplitTable:
    """One split, in dataset order: what to load for each sample, its label, and a name for messages.

    ``sources[i]`` is whatever the dataset's ``load_image`` takes (a path, a face crop, pixels, …);
    ``names[i]`` is the file or annotation row a user would look up when sample i is bad; ``extras`` holds
    further per-sample arrays (FER+ vote distributions), kept aligned through :meth:`subset`.
    ``dropped`` counts known-invalid rows per reason, ``bad`` counts bad input per reason, and
    ``examples`` keeps the first message of each reason.
    """

    sources: list[Any]
    labels: np.ndarray
    names: list[str]
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    dropped: Counter = field(default_factory=Counter)
    bad: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if not len(self.sources) == len(self.labels) == len(self.names):
            raise ValueError("sources, labels and names must have the same length")
        for key, values in self.extras.items():
            if len(values) != len(self.labels):
                raise ValueError(f"extra {key!r} has {len(values)} rows for {len(self.labels)} samples")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int]) -> SplitTable:
        """The samples at ``indices`` (counts of left-out rows stay with the official split)."""
        indices = list(indices)
        return SplitTable(
            [self.sources[i] for i in indices],
            self.labels[indices],
            [self.names[i] for i in indices],
            {key: values[indices] for key, values in self.extras.items()},
        )


class SplitBuilder:
    """Collects one official split while a reader parses its annotations, and counts what it leaves out.

    Readers call :meth:`add` for every usable sample, :meth:`drop` for rows the dataset is known to ship
    invalid, and :meth:`bad` for bad input; the datamodule decides at setup whether bad input raises.
    """

    def __init__(self, split: str, num_classes: int) -> None:
        self.split = split
        self.num_classes = num_classes
        self._sources: list[Any] = []
        self._labels: list[int] = []
        self._names: list[str] = []
        self._extras: dict[str, list[Any]] = {}
        self._dropped: Counter = Counter()
        self._bad: Counter = Counter()
        self._examples: dict[str, str] = {}

    def add(self, source: Any, label: int, name: str, **extras: Any) -> None:
        """Keep a sample; a label outside ``0..num_classes-1`` is bad input, never a silent wrong label."""
        if not 0 <= label < self.num_classes:
            self.bad("label out of range", f"{name}: label {label} is outside 0..{self.num_classes - 1}")
            return
        self._sources.append(source)
        self._labels.append(int(label))
        self._names.append(name)
        for key, value in extras.items():
            self._extras.setdefault(key, []).append(value)

    def drop(self, reason: str, example: str) -> None:
        """Leave out a row the dataset is known to contain (always; counted under ``reason``)."""
        self._dropped[reason] += 1
        self._examples.setdefault(reason, example)

    def bad(self, reason: str, message: str) -> None:
        """Record bad input: ``message`` is the one-line error naming the file or row."""
        self._bad[reason] += 1
        self._examples.setdefault(reason, message)

    def __len__(self) -> int:
        return len(self._labels)

    def build(self) -> SplitTable:
        extras = {key: np.asarray(values) for key, values in self._extras.items()}
        return SplitTable(
            self._sources, self._labels, self._names, extras, self._dropped, self._bad, self._examples
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
    """Samples of one split: ``(image float32 [3, H, W], label int64, *extras)``.

    With ``on_bad_sample="skip"`` a sample whose pixels cannot be loaded is returned as ``None`` (dropped
    from its batch by :func:`collate_skipping_bad`) and one line naming it is appended to
    ``bad_sample_log``. Appending from each worker process, instead of counting in memory, is what makes
    the count survive worker processes, which share no memory with the datamodule.

    Given a :class:`~fer_lightning.data.resumable.SampleKey` (what the training sampler yields) and a
    ``sample_seed``, the augmentation of that sample is drawn from generators seeded by
    ``(sample_seed, epoch, index)``: the same in every worker layout and in a resumed run.
    """

    def __init__(
        self,
        table: SplitTable,
        load_image: Callable[[Any], np.ndarray],
        transform: Callable,
        split: str = "",
        on_bad_sample: Literal["raise", "skip"] = "raise",
        bad_sample_log: str | os.PathLike | None = None,
        extras: Sequence[str] = (),
        sample_seed: int | None = None,
    ) -> None:
        if on_bad_sample not in BAD_SAMPLE_POLICIES:
            raise ValueError(f"on_bad_sample must be 'raise' or 'skip', got {on_bad_sample!r}")
        self.table = table
        self.load_image = load_image
        self.transform = transform
        self.split = split
        self.on_bad_sample = on_bad_sample
        self.bad_sample_log = bad_sample_log
        self.extras = tuple(extras)
        self.sample_seed = sample_seed

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, key: int | SampleKey) -> tuple | None:
        index = key.index if isinstance(key, SampleKey) else key
        if isinstance(key, SampleKey) and self.sample_seed is not None:
            set_random_state = getattr(self.transform, "set_random_state", None)
            if callable(set_random_state):
                set_random_state(*sample_generators(self.sample_seed, key.epoch, key.index))
        try:
            image = self.load_image(self.table.sources[index])
        except Exception as error:
            if isinstance(error, BadSampleError):
                bad = error
            else:  # a decoder's own message rarely names the file
                bad = BadSampleError(f"{self.table.names[index]}: {error}", reason="unreadable image")
            if self.on_bad_sample == "raise":
                if bad is error:
                    raise
                raise bad from error
            self._record_bad(index, bad)
            return None
        sample = (self.transform(image=image)["image"], int(self.table.labels[index]))
        return sample + tuple(torch.as_tensor(self.table.extras[key][index]) for key in self.extras)

    def _record_bad(self, index: int, error: BadSampleError) -> None:
        if self.bad_sample_log is None:
            return
        fields = (self.split, error.reason, self.table.names[index], str(error))
        line = "\t".join(" ".join(str(value).split()) for value in fields) + "\n"
        # One short O_APPEND write per line: lines from concurrent workers do not interleave.
        with open(self.bad_sample_log, "a", encoding="utf-8") as handle:
            handle.write(line)


def collate_skipping_bad(batch: list[tuple | None]) -> Any:
    """``default_collate`` of the samples that loaded; the batch is smaller by the number skipped."""
    kept = [sample for sample in batch if sample is not None]
    if not kept:
        raise BadSampleError(
            f"all {len(batch)} samples of a batch failed to load (data.on_bad_sample=skip); the dataset "
            f"needs repair: see {BAD_SAMPLES_FILE} in the run folder",
            reason="whole batch bad",
        )
    return default_collate(kept)


def read_bad_sample_log(path: str | os.PathLike) -> dict[str, Counter]:
    """Split → reason → number of *distinct* samples in a ``bad_samples.tsv`` (each epoch re-logs them)."""
    seen: set[tuple[str, str]] = set()
    counts: dict[str, Counter] = {}
    if not os.path.isfile(path):
        return counts
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            fields = line.rstrip("\n").split("\t")
            if len(fields) < 3 or (fields[0], fields[2]) in seen:
                continue
            seen.add((fields[0], fields[2]))
            counts.setdefault(fields[0], Counter())[fields[1]] += 1
    return counts


def face_crop_cache_dir(folder: str | os.PathLike | None = None) -> Path:
    """Where face crops are cached: ``folder`` if given, else ``$FER_LIGHTNING_CACHE/face_crops``."""
    return Path(folder).expanduser() if folder is not None else default_cache_dir() / "face_crops"


def augmentation_seed(*keys: int) -> int:
    """Seed for an augmentation pipeline's generator in this process.

    Mixes torch's seed of the process (``seed_everything``'s in the main process; in a DataLoader worker
    the loader's base seed + worker id, drawn anew from the main process's generator each time workers
    start), the global rank and ``keys``: repeatable under one seed, different per worker and per rank.
    """
    entropy = [torch.initial_seed(), rank_zero_only.rank or 0, *keys]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _leave_stopping_to_the_main_process() -> None:
    """Make this DataLoader worker outlive the signals sent to the run's whole process group.

    A cluster's time limit, ``kill -- -PGID`` and a terminal's Ctrl-C signal every process of the
    group, workers included. PyTorch's worker dies of a SIGTERM and ends on a SIGINT, so the main
    process could lose its data before it has finished its step and saved. The parent's own SIGTERM
    must still end the worker at once: the DataLoader's shutdown and multiprocessing's exit handler
    terminate workers with it and then wait for them (ignoring SIGTERM outright hangs the run at exit).
    A Python handler cannot see who sent a signal, so SIGTERM is blocked here, before any other thread
    of the worker starts (threads inherit the mask), and one thread takes it with ``sigwaitinfo``,
    which names the sender.

    This needs the worker to have one thread here, as a forked worker has (Linux's default start
    method up to Python 3.13); a worker started by forkserver or spawn already runs a second thread,
    which would take the signal unblocked, so PyTorch's SIGTERM handling stays there, as it does on
    macOS and Windows (no ``sigwaitinfo``).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # nothing in PyTorch sends it to a worker
    if not hasattr(signal, "sigwaitinfo") or _thread_count() != 1:
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def wait_for_the_parents_sigterm() -> None:
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != os.getppid():
            pass
        os._exit(0)  # what PyTorch's own handler does on the parent's SIGTERM

    threading.Thread(target=wait_for_the_parents_sigterm, name="sigterm-from-parent", daemon=True).start()


def _thread_count() -> int | None:
    """Threads of this process (Linux); None where the system does not say."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def _worker_init(_: int) -> None:
    _leave_stopping_to_the_main_process()
    # OpenCV's own thread pool inside each DataLoader worker oversubscribes the cores.
    cv2.setNumThreads(0)
    # Every worker starts with a copy of the main process's augmentation generator; without a reseed all
    # workers would draw the same flips and erasing boxes, in the same order.
    transform = getattr(torch.utils.data.get_worker_info().dataset, "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(augmentation_seed())


def _format_counts(counts: Counter) -> str:
    return ", ".join(f"{count} {reason}" for reason, count in counts.most_common())


class FERDataModule(L.LightningDataModule):
    """Base datamodule; subclasses set ``CLASS_NAMES`` and implement :meth:`read_splits`.

    Args:
        root: dataset folder as the dataset ships it. Leave it unset and give ``synthetic_size`` to
            train on generated faces written in this dataset's format (cached; no download).
        batch_size: per device.
        drop_last: training drops the last incomplete batch of each epoch (the default; BTN's batch
            attention needs full batches: attending over the 1-2 images left over says nothing). Other
            models may set it false to train on every image.
        num_workers: DataLoader worker processes.
        img_size: square side images are resized to.
        augment: training augmentation recipe (:mod:`fer_lightning.data.transforms`): ``none`` (resize
            and normalise only), ``flip`` (horizontal flip), ``btn_rafdb`` (flip + random erasing of
            scale 0.02–0.1 with p 0.5; BTN and POSTER++ on RAF-DB), ``btn_affectnet`` (the same
            erasing on every image; BTN on AffectNet), ``posterpp_affectnet`` (flip + erasing of scale
            0.05 on every image; POSTER++ code on AffectNet), ``resizer_ferplus`` (flip, rotation, affine
            zoom and colour jitter; Neural-Resizer code on FER+), ``lhcnet_rotate`` (rotation ±30° and
            flip; LHC-Net's first phase), ``lhcnet_shift`` (rotation ±10°, shift and zoom 0.1, flip;
            LHC-Net's second phase). Evaluation only resizes and normalises.
        sampler: ``shuffle`` or ``imbalanced`` (1 / class-frequency weights, seeded, DDP-safe).
        val_fraction: share of each training class carved out for validation when the dataset has no
            official validation split. Checkpoints are selected on it; test is reported separately.
        split_seed: seed of that carve. The training order (shuffled, or the imbalanced draw) is a
            function of ``seed_everything``'s seed and the epoch, so a resumed run and every DDP rank
            see the same one; under DDP validation and test see each sample exactly once.
        mean, std: normalisation statistics.
        synthetic_size, synthetic_seed: size and seed of the generated dataset used when root is unset.
        on_bad_sample: what bad input does (a malformed annotation row, a label out of range, a listed
            file that is missing, an image that does not decode): ``raise`` a one-line error naming the
            file or row, or ``skip`` it, counting and reporting what was skipped. Rows a dataset is known
            to ship invalid (AffectNet's None/Uncertain/No-Face rows, …) are dropped and counted either way.
            A skipped image makes its batch one smaller.
        label_noise: ``{rate, kind, seed}``: flip ``rate`` of each class's *training* labels (after the
            validation carve; validation and test stay clean), ``kind`` ``symmetric`` (to any other class)
            or ``asymmetric`` (to the expression it is most often confused with, by class name:
            :mod:`fer_lightning.data.label_noise`). The flipped samples are listed in the run folder's
            ``label_noise.csv``. Unset or rate 0: labels as the dataset ships them.
    """

    CLASS_NAMES: tuple[str, ...] = ()
    DATASET_NAME = "dataset"
    SYNTHETIC_FORMAT: str | None = None
    #: Paths relative to the root (``/``-separated), at least one of which exists in the dataset's root
    #: folder: how setup tells a wrong ``data.root`` from a broken dataset (empty: no such check).
    ROOT_MARKERS: tuple[str, ...] = ()

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
        on_bad_sample: Literal["raise", "skip"] = "raise",
        label_noise: LabelNoise | None = None,
        drop_last: bool = True,
    ) -> None:
        super().__init__()
        if root is None and synthetic_size <= 0:
            raise ConfigurationError(
                f"{self.DATASET_NAME}: set data.root to the dataset folder, or data.synthetic_size to a "
                "number of generated images"
            )
        if sampler not in ("shuffle", "imbalanced"):
            raise ValueError(f"data.sampler must be 'shuffle' or 'imbalanced', got {sampler!r}")
        if on_bad_sample not in BAD_SAMPLE_POLICIES:
            raise ValueError(f"data.on_bad_sample must be 'raise' or 'skip', got {on_bad_sample!r}")
        # Stored as plain values: checkpoints keep these hyperparameters, and a dataclass in them would
        # stop a weights_only read of the checkpoint.
        self.label_noise = LabelNoise.parse(label_noise)
        self.save_hyperparameters(ignore=["label_noise"])
        self.hparams["label_noise"] = self.label_noise.as_dict()
        # Set here, not in setup(): the CLI links them into the model right after __init__.
        self.class_names: list[str] = list(self.CLASS_NAMES)
        self.num_classes: int = len(self.class_names)
        self.tables: dict[str, SplitTable] = {}
        self.datasets: dict[str, FERImageDataset] = {}
        #: Per official split: rows left out while reading annotations (known-invalid, and skipped bad input).
        self.dropped_rows: dict[str, Counter] = {}
        self.skipped_rows: dict[str, Counter] = {}
        self.bad_sample_log: Path | None = None
        #: Indices into the training table of the labels ``label_noise`` flipped (set at setup).
        self.flipped_train_indices = np.zeros(0, dtype=np.int64)
        self._reported_load_failures = 0
        # (processes, batch size) of a restored checkpoint's training: how its consumed batches map to samples.
        self._restored_layout: tuple[int, int] | None = None
        #: How :class:`~fer_lightning.data.io.FaceCrop` sources are cut; datasets with face boxes configure it.
        self.face_cropper = FaceCropper()

    # ---- what a dataset module provides -------------------------------------------------------
    def read_splits(self, root: Path) -> dict[str, SplitTable]:
        """Read the annotations under ``root`` into tables for ``train``, ``test`` and, if official, ``val``."""
        raise NotImplementedError

    def load_image(self, source: Any) -> np.ndarray:
        """RGB uint8 HWC pixels of one sample: an image path, or a face box in a picture (:class:`FaceCrop`)."""
        if isinstance(source, FaceCrop):
            return self.face_cropper(source)
        return read_rgb(source)

    def layout_hint(self) -> str:
        """One line saying which files the dataset expects, for error messages."""
        return "see the README for the expected layout"

    def sample_extras(self) -> tuple[str, ...]:
        """Names of ``SplitTable.extras`` appended to every sample after the label (none by default)."""
        return ()

    def vote_prior(self) -> np.ndarray | None:
        """The F-PDLS prior from the dataset's own annotator votes (K×K, row y = mean vote distribution
        of the training images labelled y), or None for a dataset without votes (all but FER+)."""
        return None

    # ---- helpers for readers ------------------------------------------------------------------
    def new_split(self, split: str) -> SplitBuilder:
        """A builder for one official split of this dataset's classes."""
        return SplitBuilder(split, self.num_classes)

    def configure_face_crops(
        self, crop_margin: float, crop_size: int | None, crop_cache: bool, crop_cache_dir: str | None
    ) -> None:
        """Set up :attr:`face_cropper` from a dataset's ``data.crop_*`` options (datasets shipped as full
        pictures with face boxes: AffectNet's CSV release, AI-Hub)."""
        if crop_margin < 0:
            raise ConfigurationError(f"{self.DATASET_NAME}: data.crop_margin must be ≥ 0, got {crop_margin}")
        if crop_size is not None and crop_size < 1:
            raise ConfigurationError(
                f"{self.DATASET_NAME}: data.crop_size must be a side in pixels ≥ 1 (or null), got {crop_size}"
            )
        self.face_cropper = FaceCropper(
            margin=crop_margin,
            size=crop_size,
            cache_dir=face_crop_cache_dir(crop_cache_dir) if crop_cache else None,
        )

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
        self.check_root(root)
        tables = self.read_splits(root)
        self._report_left_out_rows(tables)
        for split, table in tables.items():
            if len(table) == 0:
                raise ConfigurationError(
                    f"{self.DATASET_NAME}: split '{split}' is empty under {root} ({self.layout_hint()})"
                )
        self._check_training_classes(tables["train"], root)
        if "val" not in tables:
            train = tables["train"]
            kept, carved = stratified_split(train.labels, self.hparams.val_fraction, self.hparams.split_seed)
            if len(carved) == 0 or len(kept) == 0:
                raise ConfigurationError(
                    f"{self.DATASET_NAME}: carving data.val_fraction={self.hparams.val_fraction} out of "
                    f"{len(train)} training images under {root} leaves an empty train or val split"
                )
            tables["train"], tables["val"] = train.subset(kept), train.subset(carved)
        # After the carve: validation is carved from clean labels and stays clean, and the carve does not
        # depend on the noise, so runs at different noise rates share their splits.
        tables["train"] = self._add_label_noise(tables["train"])
        self.tables = {split: tables[split] for split in SPLITS}
        self._warn_about_empty_evaluation_classes(root)
        if self.hparams.on_bad_sample == "skip":
            self.bad_sample_log = self._bad_sample_log_path()
        for split, table in self.tables.items():
            transform = build_transform(
                self.hparams.augment,
                self.hparams.img_size,
                train=split == "train",
                mean=self.hparams.mean,
                std=self.hparams.std,
                seed=augmentation_seed(SPLITS.index(split)),
            )
            self.datasets[split] = FERImageDataset(
                table,
                self.load_image,
                transform,
                split=split,
                on_bad_sample=self.hparams.on_bad_sample,
                bad_sample_log=self.bad_sample_log,
                extras=self.sample_extras(),
                sample_seed=run_seed() if split == "train" else None,
            )
        self._save_split_index()

    def check_root(self, root: Path) -> None:
        """Raise one line when ``root`` is not this dataset's folder, saying what was expected and, when
        the dataset sits one level below or above, which folder was probably meant."""
        if not root.is_dir():
            raise DatasetNotFoundError(
                f"{self.DATASET_NAME} root not found: {root} does not exist ({self.layout_hint()})"
            )
        if not self.ROOT_MARKERS or self.has_root_markers(root):
            return
        listing = DirectoryIndex()
        below = [
            folder for _, folder in sorted(listing.subfolders(root).items()) if self.has_root_markers(folder)
        ]
        if below:
            hint = f"; it contains {below[0].name}/: did you mean --data.root {below[0]}?"
        elif root.parent != root and self.has_root_markers(root.parent):
            hint = f"; it is inside the dataset: did you mean --data.root {root.parent}?"
        else:
            entries = sorted(listing.listing(root).items())
            shown = [f"{name}/" if entry.is_dir() else name for name, entry in entries[:6]]
            more = f", … ({len(entries)} entries)" if len(entries) > len(shown) else ""
            hint = f"; it contains {', '.join(shown)}{more}" if shown else "; it is empty"
        raise DatasetNotFoundError(f"{self.DATASET_NAME} not found under {root} ({self.layout_hint()}){hint}")

    def has_root_markers(self, root: Path) -> bool:
        """Whether ``root`` holds one of :attr:`ROOT_MARKERS`; datasets found below their root override it."""
        return any((root / marker).exists() for marker in self.ROOT_MARKERS)

    def _check_training_classes(self, train: SplitTable, root: Path) -> None:
        """A class without training images cannot be learnt: one line naming it, not a silent 0 % class."""
        counts = np.bincount(train.labels, minlength=self.num_classes)
        empty = [f"{self.class_names[label]} (id {label})" for label in np.flatnonzero(counts == 0)]
        if empty:
            raise ConfigurationError(
                f"{self.DATASET_NAME}: no training images of class {', '.join(empty)} under {root}; every "
                "class needs training images: check that the copy of the dataset is complete"
            )

    def _warn_about_empty_evaluation_classes(self, root: Path) -> None:
        for split in ("val", "test"):
            counts = np.bincount(self.tables[split].labels, minlength=self.num_classes)
            empty = [self.class_names[label] for label in np.flatnonzero(counts == 0)]
            if empty:
                warnings.warn(
                    f"{self.DATASET_NAME}: the {split} split under {root} has no images of class "
                    f"{', '.join(empty)}; its per-class accuracy is undefined and mean class accuracy "
                    "averages over the other classes",
                    UserWarning,
                    stacklevel=3,
                )

    def _report_left_out_rows(self, tables: dict[str, SplitTable]) -> None:
        """Raise on bad input (default), else warn; log known-invalid rows. Counts are kept for summaries."""
        if self.hparams.on_bad_sample == "raise":
            for split, table in tables.items():
                if table.bad:
                    reason, _ = table.bad.most_common(1)[0]
                    total = sum(table.bad.values())
                    more = (
                        f" ({total} bad rows in {split}: {_format_counts(table.bad)}; " if total > 1 else " ("
                    )
                    raise BadSampleError(
                        f"{table.examples[reason]}{more}data.on_bad_sample=skip leaves them out)",
                        reason=reason,
                    )
        for split, table in tables.items():
            self.dropped_rows[split] = Counter(table.dropped)
            self.skipped_rows[split] = Counter(table.bad)
            for reason, count in table.dropped.items():
                log.warning(
                    "%s %s: dropped %d rows (%s), e.g. %s",
                    self.DATASET_NAME,
                    split,
                    count,
                    reason,
                    table.examples.get(reason, ""),
                )
            if table.bad:
                first = table.examples[table.bad.most_common(1)[0][0]]
                warnings.warn(
                    f"{self.DATASET_NAME} {split}: skipped {sum(table.bad.values())} bad rows "
                    f"({_format_counts(table.bad)}), e.g. {first}",
                    BadSampleWarning,
                    stacklevel=3,
                )

    def run_folder(self) -> Path | None:
        """The trainer's log folder; None outside a Trainer or when it logs nowhere (``fast_dev_run``)."""
        trainer = self.trainer
        if trainer is None or trainer.fast_dev_run or trainer.logger is None:
            return None
        # A broadcast from rank 0 under DDP: every rank calls run_folder() (in setup), and asks once.
        log_dir = trainer.log_dir
        return None if log_dir is None else Path(log_dir)

    def _bad_sample_log_path(self) -> Path:
        """``bad_samples.tsv`` in the run folder (one per DDP rank), else a temporary file."""
        folder = self.run_folder()
        if folder is not None:
            rank = self.trainer.global_rank
            path = folder / (BAD_SAMPLES_FILE if rank == 0 else f"bad_samples_rank{rank}.tsv")
            path.parent.mkdir(parents=True, exist_ok=True)
        else:
            handle, scratch = tempfile.mkstemp(prefix="fer_lightning_bad_samples_", suffix=".tsv")
            os.close(handle)
            path = Path(scratch)
        path.write_text("")  # a fresh run starts with an empty list
        return path

    def load_failures(self) -> dict[str, Counter]:
        """Split → reason → distinct samples skipped so far because their image failed to load."""
        if self.bad_sample_log is None:
            return {}
        return read_bad_sample_log(self.bad_sample_log)

    def teardown(self, stage: str) -> None:
        """Report images skipped while loading (``on_bad_sample="skip"``) since the last report."""
        failures = self.load_failures()
        total = sum(sum(counts.values()) for counts in failures.values())
        if total > self._reported_load_failures:
            self._reported_load_failures = total
            per_split = "; ".join(f"{split}: {_format_counts(counts)}" for split, counts in failures.items())
            warnings.warn(
                f"{self.DATASET_NAME}: skipped {total} images that failed to load ({per_split}); "
                f"they are listed in {self.bad_sample_log}",
                BadSampleWarning,
                stacklevel=2,
            )

    def _add_label_noise(self, train: SplitTable) -> SplitTable:
        """``train`` with ``data.label_noise`` applied; the flipped samples listed in the run folder."""
        noise = self.label_noise
        if noise.rate == 0.0:
            return train
        noisy_labels, flipped = apply_label_noise(train.labels, self.class_names, noise)
        self.flipped_train_indices = flipped
        folder = self.run_folder()
        where = ""
        if folder is not None and self.trainer.is_global_zero:
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / LABEL_NOISE_FILE, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(
                    ["index", "sample", "clean_label", "clean_class", "noisy_label", "noisy_class"]
                )
                for index in flipped:
                    clean, wrong = int(train.labels[index]), int(noisy_labels[index])
                    names = self.class_names[clean], self.class_names[wrong]
                    writer.writerow([int(index), train.names[index], clean, names[0], wrong, names[1]])
            where = f"; listed in {folder / LABEL_NOISE_FILE}"
        rank_zero_info(
            f"{self.DATASET_NAME}: label noise ({noise.kind}, rate {noise.rate:g}, seed {noise.seed}) flipped "
            f"{len(flipped)} of {len(train)} training labels; validation and test labels are clean{where}"
        )
        return dataclasses.replace(train, labels=noisy_labels)

    def _save_split_index(self) -> None:
        """Write which sample went to which split into the run folder, so runs can be compared."""
        folder = self.run_folder()
        if folder is None or not self.trainer.is_global_zero:
            return
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "data_splits.csv", "w", newline="") as handle:
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
        drop_last = train and self.hparams.drop_last
        if drop_last and len(dataset) < batch_size:
            raise ConfigurationError(
                f"{self.DATASET_NAME}: the training split has {len(dataset)} images, fewer than one batch "
                f"of {batch_size} (training drops incomplete batches); set data.batch_size to {len(dataset)} or less"
            )
        workers = self.hparams.num_workers
        # Training yields SampleKeys (index, epoch), which fix each sample's augmentation (data/resumable.py).
        sampler = (
            EpochKeyedSampler(self._train_sampler(dataset), **self._shard())
            if train
            else self._evaluation_sampler(dataset)
        )
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=workers,
            persistent_workers=workers > 0,
            worker_init_fn=_worker_init,
            # Worker seeds drawn from the loader's own generator leave the global RNG (dropout, drop
            # path) to the training steps, so a resumed run's steps see the same random numbers.
            generator=torch.Generator().manual_seed(run_seed()),
            pin_memory=torch.cuda.is_available(),
            collate_fn=collate_skipping_bad if self.hparams.on_bad_sample == "skip" else None,
        )

    def _train_sampler(self, dataset: FERImageDataset) -> Sampler:
        """This epoch's order, a function of (seed_everything's seed, epoch) only (see data/samplers.py).

        Every DDP rank computes the same order; ``EpochKeyedSampler`` gives each its share of it.
        """
        if self.hparams.sampler == "imbalanced":
            return ImbalancedDatasetSampler(dataset.table.labels, seed=run_seed())
        return EpochShuffleSampler(dataset, seed=run_seed())

    def _shard(self) -> dict[str, int]:
        """This process's ``num_replicas`` and ``rank`` (1 and 0 without DDP)."""
        shard = self.trainer.distributed_sampler_kwargs if self.trainer is not None else None
        if not shard:
            return {"num_replicas": 1, "rank": 0}
        return {"num_replicas": shard["num_replicas"], "rank": shard["rank"]}

    def _evaluation_sampler(self, dataset: FERImageDataset) -> Sampler | None:
        """Under DDP, each rank's share of the split with every sample exactly once; else in order."""
        shard = self._shard()
        if shard["num_replicas"] <= 1:
            return None
        return EvaluationShardSampler(dataset, **shard)

    def train_dataloader(self) -> DataLoader:
        loader = self._loader("train", train=True)
        self._continue_restored_epoch(loader.sampler)
        return loader

    def _continue_restored_epoch(self, sampler: EpochKeyedSampler) -> None:
        """Start the training order at the epoch, and position, a restored fit continues from.

        Lightning builds the training loader's iterator before it calls ``set_epoch`` on a restored run
        (with workers, the first indices are drawn right then), so the epoch is set here from the
        restored progress. A checkpoint written inside an epoch (``processed`` one behind ``started``)
        leaves ``batch_progress.current.processed`` batches of it consumed; Lightning runs only the
        remaining batches but from a fresh iterator, so the sampler skips what was consumed (under DDP,
        of this process's share).
        """
        trainer = self.trainer
        if trainer is None or not isinstance(sampler, EpochKeyedSampler):
            return
        epochs = trainer.fit_loop.epoch_progress.current
        sampler.set_epoch(epochs.processed)
        consumed = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if not (epochs.started == epochs.processed + 1 and consumed > 0):
            return
        warnings.filterwarnings("ignore", message=r"You're resuming from a checkpoint that ended before")
        layout = (sampler.num_replicas, self.hparams.batch_size)
        written_by = self._restored_layout or layout
        # The first `trained` positions of the epoch's order were trained on, whatever the layout was;
        # in the same layout this is `consumed` batches of this process's share.
        trained = consumed * written_by[0] * written_by[1]
        sampler.skip_next(math.ceil(max(0, trained - sampler.rank) / sampler.num_replicas))
        if written_by != layout and sampler.rank == 0:
            warnings.warn(
                f"resuming inside epoch {epochs.processed} with {layout[0]} process(es) × batch {layout[1]}; "
                f"the checkpoint was written by {written_by[0]} × {written_by[1]}. The {trained} samples of "
                "that epoch already trained on are skipped, but the epoch's remaining batches are counted "
                "in the old layout, so some of its samples may be left out; later epochs are unaffected",
                UserWarning,
                stacklevel=2,
            )

    def state_dict(self) -> dict[str, int]:
        """The training layout, for a checkpoint written inside an epoch to be resumed in another one."""
        return {"processes": self._shard()["num_replicas"], "batch_size": self.hparams.batch_size}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if "processes" in state_dict and "batch_size" in state_dict:
            self._restored_layout = (int(state_dict["processes"]), int(state_dict["batch_size"]))

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
