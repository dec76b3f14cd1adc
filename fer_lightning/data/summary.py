"""What a datamodule reads, per split and class, and what it drops: the tables and figure of
``fer-lightning data-summary`` (the command itself is :mod:`fer_lightning.cli.data_summary`)."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
from matplotlib.figure import Figure

from fer_lightning.data.base import SPLITS, FERDataModule
from fer_lightning.data.io import BadSampleError
from fer_lightning.plots import drawable_names

_SPLIT_COLOURS = {"train": "#4C72B0", "val": "#DD8452", "test": "#55A868"}


def class_counts(datamodule: FERDataModule) -> dict[str, np.ndarray]:
    """Split → images per class id (after the validation carve)."""
    return {
        split: np.bincount(datamodule.tables[split].labels, minlength=datamodule.num_classes)
        for split in SPLITS
    }


def check_images(datamodule: FERDataModule) -> dict[str, Counter]:
    """Decode every sample once; split → reason → images that fail (slow on a full dataset)."""
    failures: dict[str, Counter] = {}
    for split in SPLITS:
        table = datamodule.tables[split]
        failures[split] = Counter()
        for source in table.sources:
            try:
                datamodule.load_image(source)
            except BadSampleError as error:
                failures[split][error.reason] += 1
    return failures


def format_summary(datamodule: FERDataModule, failures: dict[str, Counter] | None = None) -> str:
    """Plain-text tables: counts per split and class, then rows left out per split and reason."""
    counts = class_counts(datamodule)
    names = list(datamodule.class_names)
    width = max(8, *(len(name) + 2 for name in names))
    lines = [f"{datamodule.DATASET_NAME}: {datamodule.num_classes} classes, root {datamodule.root}", ""]
    lines.append(f"{'class':<{width}}" + "".join(f"{split:>10}" for split in SPLITS))
    for class_id, name in enumerate(names):
        lines.append(
            f"{class_id} {name:<{width - 2}}" + "".join(f"{counts[s][class_id]:>10}" for s in SPLITS)
        )
    lines.append(f"{'total':<{width}}" + "".join(f"{counts[s].sum():>10}" for s in SPLITS))
    lines += ["", "left out while reading the annotations (official split, reason):"]
    left_out = [
        (split, kind, reason, count)
        for kind, per_split in (("dropped", datamodule.dropped_rows), ("skipped", datamodule.skipped_rows))
        for split, reasons in per_split.items()
        for reason, count in reasons.most_common()
    ]
    lines += [f"  {split:<6} {kind:<8} {count:>8}  {reason}" for split, kind, reason, count in left_out] or [
        "  none"
    ]
    if failures is not None:
        lines += ["", "images that fail to decode:"]
        rows = [
            (split, reason, count) for split, reasons in failures.items() for reason, count in reasons.items()
        ]
        lines += [f"  {split:<6} {count:>8}  {reason}" for split, reason, count in rows] or ["  none"]
    return "\n".join(lines)


def display_class_names(datamodule: FERDataModule) -> list[str]:
    """Class names as they can be drawn: the dataset's own, else its English glosses (``DISPLAY_NAMES``)."""
    return drawable_names(datamodule.class_names, getattr(datamodule, "DISPLAY_NAMES", None))


def plot_class_histogram(datamodule: FERDataModule, path: str | os.PathLike) -> None:
    """Grouped bars: images per class for each split, with the count on each bar."""
    counts = class_counts(datamodule)
    names = display_class_names(datamodule)
    positions = np.arange(len(names))
    bar_width = 0.8 / len(SPLITS)
    figure = Figure(figsize=(max(6.0, 0.9 * len(names) + 2.0), 4.5))
    axes = figure.subplots()
    for offset, split in enumerate(SPLITS):
        bars = axes.bar(
            positions + (offset - (len(SPLITS) - 1) / 2) * bar_width,
            counts[split],
            bar_width,
            label=f"{split} ({counts[split].sum()})",
            color=_SPLIT_COLOURS[split],
        )
        axes.bar_label(bars, fontsize=7, padding=1)
    axes.set_xticks(positions, labels=names, rotation=30, ha="right")
    axes.set_ylabel("images")
    left_out = {
        split: sum(datamodule.dropped_rows.get(split, Counter()).values())
        + sum(datamodule.skipped_rows.get(split, Counter()).values())
        for split in datamodule.dropped_rows
    }
    subtitle = ", ".join(f"{count} {split}" for split, count in left_out.items() if count)
    title = f"{datamodule.DATASET_NAME}: images per class and split"
    axes.set_title(f"{title}\nrows left out: {subtitle}" if subtitle else title)
    axes.legend()
    axes.margins(y=0.12)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
