"""Figures written into run folders and used by the notebooks (matplotlib, no display needed)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import numpy as np
from matplotlib import font_manager, ft2font, rcParams
from matplotlib.figure import Figure


def font_can_render(texts: Sequence[str]) -> bool:
    """Whether the default matplotlib font has a glyph for every character (no Hangul in DejaVu Sans)."""
    path = font_manager.findfont(font_manager.FontProperties(family=rcParams["font.family"]))
    charmap = ft2font.FT2Font(path).get_charmap()
    return all(ord(character) in charmap for text in texts for character in text)


def drawable_names(names: Sequence[str], glosses: Sequence[str] | None = None) -> list[str]:
    """``names`` if the default font can draw them, else ``glosses`` (e.g. English for AI-Hub's Korean)."""
    if glosses is not None and len(glosses) == len(names) and not font_can_render(names):
        return list(glosses)
    return list(names)


def plot_confusion_matrix(
    confusion: np.ndarray, class_names: Sequence[str], path: str | os.PathLike, title: str = ""
) -> None:
    """Save a row-normalised confusion matrix (rows = true class) with the raw counts in each cell.

    Rows are normalised because FER test sets are heavily imbalanced (RAF-DB: 1,185 Happiness vs 74
    Fear); the diagonal then reads directly as per-class accuracy.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    row_totals = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(confusion, row_totals, out=np.zeros(confusion.shape), where=row_totals > 0)
    size = max(4.0, 0.75 * len(class_names) + 2.0)
    figure = Figure(figsize=(size + 1.0, size))
    axes = figure.subplots()
    image = axes.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of true class")
    for (row, column), count in np.ndenumerate(confusion):
        colour = "white" if normalised[row, column] > 0.5 else "black"
        axes.text(
            column,
            row,
            f"{normalised[row, column]:.2f}\n({count})",
            ha="center",
            va="center",
            fontsize=8,
            color=colour,
        )
    ticks = np.arange(len(class_names))
    axes.set_xticks(ticks, labels=class_names, rotation=45, ha="right")
    axes.set_yticks(ticks, labels=class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    accuracy = np.trace(confusion) / max(confusion.sum(), 1)
    recall = normalised.diagonal()[row_totals[:, 0] > 0]
    mean_class = recall.mean() if recall.size else 0.0
    axes.set_title(f"{title}\nacc {accuracy:.3f} · mean class acc {mean_class:.3f}".strip())
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def per_class_accuracy(confusion: np.ndarray) -> np.ndarray:
    """Recall of each true class (diagonal / row total) of a confusion matrix; NaN for a class with no samples."""
    confusion = np.asarray(confusion, dtype=np.float64)
    totals = confusion.sum(axis=1)
    return np.divide(confusion.diagonal(), totals, out=np.full(len(totals), np.nan), where=totals > 0)


def plot_per_class_accuracy(
    confusion: np.ndarray, class_names: Sequence[str], path: str | os.PathLike, title: str = ""
) -> np.ndarray:
    """Save a bar chart of each class's accuracy (recall), with its sample count and the mean class
    accuracy as a line; returns the per-class accuracies (NaN where a class has no samples)."""
    confusion = np.asarray(confusion, dtype=np.int64)
    accuracies = per_class_accuracy(confusion)
    figure = Figure(figsize=(max(4.0, 0.8 * len(class_names) + 2.0), 3.8))
    axes = figure.subplots()
    positions = np.arange(len(class_names))
    bars = axes.bar(positions, np.nan_to_num(accuracies), color="tab:blue")
    for bar, accuracy, count in zip(bars, accuracies, confusion.sum(axis=1)):
        label = "n/a" if np.isnan(accuracy) else f"{accuracy:.2f}"
        axes.annotate(
            f"{label}\n(n={count})",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    mean_class = float(np.nanmean(accuracies)) if not np.isnan(accuracies).all() else 0.0
    axes.axhline(mean_class, color="tab:orange", ls="--", lw=1.0, label=f"mean class acc {mean_class:.3f}")
    axes.set_xticks(positions, labels=class_names, rotation=45, ha="right")
    axes.set_ylim(0.0, 1.15)
    axes.set_ylabel("accuracy (recall)")
    axes.legend(fontsize=8, loc="upper right")
    if title:
        axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return accuracies


def majority_baseline(train_labels: Sequence[int], eval_labels: Sequence[int]) -> float | None:
    """Accuracy on ``eval_labels`` (a validation or test split) of always predicting the most frequent
    training class (None without labels)."""
    train, evaluated = np.asarray(train_labels, dtype=np.int64), np.asarray(eval_labels, dtype=np.int64)
    if train.size == 0 or evaluated.size == 0:
        return None
    return float(np.mean(evaluated == np.bincount(train).argmax()))


def majority_baseline_from_splits(path: str | os.PathLike, split: str = "val") -> float | None:
    """:func:`majority_baseline` on ``split`` from a run folder's ``data_splits.csv`` (split, sample,
    label, …)."""
    labels: dict[str, list[int]] = {"train": [], split: []}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["split"] in labels:
                labels[row["split"]].append(int(row["label"]))
    return majority_baseline(labels["train"], labels[split])


def read_metrics_csv(path: str | os.PathLike) -> dict[str, list[tuple[int, int, float]]]:
    """A Lightning ``CSVLogger`` ``metrics.csv`` → {column: [(epoch, step, value), ...]} (empty cells skipped).

    The CSV logger writes one sparse row per logging call, so every column is read on its own.
    """
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise ValueError(f"{path}: no metrics rows")
    series: dict[str, list[tuple[int, int, float]]] = {}
    for line, row in enumerate(rows, start=2):
        try:
            epoch, step = int(row["epoch"]), int(row["step"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}:{line}: expected integer 'epoch' and 'step' columns") from None
        for column, text in row.items():
            if column in ("epoch", "step") or text in ("", None):
                continue
            series.setdefault(column, []).append((epoch, step, float(text)))
    return series


# Validation curves drawn on the accuracy panel, in this order, when the run logged them.
_ACCURACY_CURVES = {
    "val/acc": ("val acc (selection metric)", "-", 2.0),
    "val/mean_class_acc": ("val mean class acc", "-", 1.2),
    "val/macro_f1": ("val macro F1", "-", 1.2),
    "train/acc": ("train acc (augmented, train mode)", ":", 1.2),
}


def plot_training_curves(
    metrics_csv: str | os.PathLike,
    path: str | os.PathLike,
    title: str = "",
    majority_fraction: float | None = None,
) -> dict[str, float]:
    """Save loss and accuracy curves of one run (its ``metrics.csv``) as a two-panel figure.

    Left: training loss per logged step and per epoch, validation loss per epoch. Right: validation
    accuracy, mean class accuracy and macro F1 per epoch, every ``val/heads/acc_*`` a model logged (BTN's
    three heads), training accuracy, chance (1 / number of classes, from the ``val/class_acc/*``
    columns) and, when given, the majority-class rate; the epoch with the best ``val/acc`` (the one the
    checkpoint callback selects) is marked.

    Returns:
        ``{"best_epoch", "best_val_acc", "chance"}`` (chance is NaN when the classes are unknown).
    """
    series = read_metrics_csv(metrics_csv)
    if "val/acc" not in series:
        raise ValueError(f"{metrics_csv}: no 'val/acc' column: was validation run?")
    figure = Figure(figsize=(13.5, 4.4))
    loss_axes, accuracy_axes = figure.subplots(1, 2)

    steps_per_epoch = _steps_per_epoch(series)
    for column, label, style in (
        (
            "train/loss_step",
            "train loss (training objective, per step)",
            dict(lw=0.6, alpha=0.45, color="tab:blue"),
        ),
        ("train/loss_epoch", "train loss (epoch mean)", dict(lw=1.6, marker=".", color="tab:blue")),
        (
            "val/loss",
            "val loss (the configured loss of the predictions)",
            dict(lw=1.6, marker=".", color="tab:orange"),
        ),
    ):
        if column in series:
            points = series[column]
            loss_axes.plot(
                [step / steps_per_epoch for _, step, _ in points],
                [v for *_, v in points],
                label=label,
                **style,
            )
    loss_axes.set_xlabel("epochs trained")
    loss_axes.set_ylabel("loss")
    loss_axes.legend(fontsize=8)
    loss_axes.grid(alpha=0.3)

    for column, (label, style, width) in _ACCURACY_CURVES.items():
        if column in series:
            accuracy_axes.plot(*_by_epoch(series[column]), style, lw=width, marker=".", label=label)
    for column in sorted(c for c in series if c.startswith("val/heads/acc_")):
        head = column.removeprefix("val/heads/acc_")
        accuracy_axes.plot(*_by_epoch(series[column]), "--", lw=1.0, label=f"val acc, head {head}")
    num_classes = sum(1 for column in series if column.startswith("val/class_acc/"))
    chance = 1.0 / num_classes if num_classes else float("nan")
    if num_classes:
        accuracy_axes.axhline(chance, color="grey", ls=":", lw=1.0, label=f"chance (1/{num_classes})")
    if majority_fraction is not None:
        accuracy_axes.axhline(majority_fraction, color="black", ls="-.", lw=0.8, label="majority class")
    epochs, values = _by_epoch(series["val/acc"])
    best = int(np.argmax(values))
    accuracy_axes.axvline(epochs[best], color="tab:green", lw=0.8, alpha=0.6)
    accuracy_axes.plot(epochs[best], values[best], "o", ms=9, mfc="none", color="tab:green")
    accuracy_axes.set_title(
        f"selected checkpoint: epoch={epochs[best] - 1}, val acc {values[best]:.3f}", fontsize=10
    )
    accuracy_axes.set_xlabel("epochs trained")
    accuracy_axes.set_ylabel("accuracy")
    accuracy_axes.set_ylim(0.0, 1.0)
    accuracy_axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    accuracy_axes.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    summary = {"best_epoch": float(epochs[best] - 1), "best_val_acc": float(values[best]), "chance": chance}
    if majority_fraction is not None:
        summary["majority"] = majority_fraction
    return summary


def _by_epoch(points: list[tuple[int, int, float]]) -> tuple[list[int], list[float]]:
    """Values against epochs trained: the row of epoch index e is logged after e + 1 epochs."""
    return [epoch + 1 for epoch, _, _ in points], [value for *_, value in points]


def _steps_per_epoch(series: dict[str, list[tuple[int, int, float]]]) -> float:
    """Optimiser steps per epoch, from the step of the epoch-level rows (the loss x axis is in epochs)."""
    ends = {epoch: step for epoch, step, _ in series.get("train/loss_epoch", series.get("val/acc", []))}
    if len(ends) >= 2:
        first, last = min(ends), max(ends)
        if last > first:
            return max((ends[last] - ends[first]) / (last - first), 1.0)
    return float(max(ends.values(), default=0) + 1)
