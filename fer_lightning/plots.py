"""Figures written into run folders and used by the notebooks (matplotlib, no display needed)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure


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
