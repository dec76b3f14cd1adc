"""The class-confusion prior of a dataset: how annotators spread their votes, for the F-PDLS loss.

Row y of the prior D (K×K, rows sum to 1) is the mean annotator-vote distribution of the training images
labelled y. Only FER+ publishes votes; :meth:`FERDataModule.vote_prior` computes D from them. A dataset
without votes borrows FER+'s by expression name (:func:`remap_prior`): classes FER+ has and the dataset
lacks are dropped and each row renormalised; a class FER+ lacks (AI-Hub's panic, anxiety, hurt) gets a
one-hot row, i.e. no smoothing for its images. :func:`dataset_label_prior` picks the one that applies.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fer_lightning.data.formats import FERPLUS_CLASS_NAMES
from fer_lightning.data.label_noise import canonical_expression

#: The prior the Neural-Resizer authors computed from the FER+ training votes (hbin0701/VT_with_NR_for_FER,
#: six decimals), in FER+ class order. Datasets without votes of their own borrow it, remapped by name;
#: a FER+ run computes its prior from the votes of its own training split instead.
FERPLUS_RELEASED_PRIOR = (
    (0.777334, 0.03261, 0.017447, 0.114091, 0.026224, 0.007145, 0.004379, 0.020772),
    (0.042842, 0.917618, 0.023221, 0.004816, 0.004217, 0.001969, 0.001755, 0.003563),
    (0.058354, 0.035775, 0.787254, 0.01037, 0.014319, 0.003015, 0.088513, 0.0024),
    (0.170124, 0.013292, 0.008632, 0.747902, 0.022808, 0.011237, 0.015923, 0.010082),
    (0.074781, 0.02535, 0.060215, 0.031924, 0.740551, 0.034938, 0.023251, 0.008989),
    (0.08959, 0.017445, 0.016911, 0.088629, 0.125152, 0.620813, 0.007788, 0.033671),
    (0.042815, 0.012239, 0.169483, 0.072557, 0.027228, 0.013045, 0.658964, 0.003671),
    (0.147933, 0.022174, 0.00989, 0.042923, 0.033551, 0.059924, 0.005507, 0.678099),
)


def prior_from_votes(votes: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """D with row y = mean of the vote distributions ``votes`` (N×K) of the samples labelled y.

    A class without samples gets its one-hot row. Rows are renormalised, so raw vote counts work too.
    """
    prior = np.eye(num_classes)
    for label in range(num_classes):
        members = labels == label
        if members.any():
            prior[label] = votes[members].mean(axis=0)
    return prior / prior.sum(axis=1, keepdims=True)


def remap_prior(
    prior: np.ndarray | Sequence[Sequence[float]], source_names: Sequence[str], target_names: Sequence[str]
) -> tuple[np.ndarray, str]:
    """``prior`` (in ``source_names`` order) re-indexed to ``target_names`` by expression name.

    Names match through their canonical expression (``Happy`` = ``happiness`` = ``기쁨``). Source classes
    the target lacks are dropped and each row renormalised; a target class the source lacks gets a one-hot
    row and a zero column elsewhere. Returns the matrix and a sentence saying what was done.
    """
    prior = np.asarray(prior, dtype=np.float64)
    source_index = {canonical_expression(name): index for index, name in enumerate(source_names)}
    positions = [source_index.get(canonical_expression(name)) for name in target_names]
    matched = [index for index in positions if index is not None]
    remapped = np.eye(len(target_names))
    for row, source_row in enumerate(positions):
        if source_row is None:
            continue
        for column, source_column in enumerate(positions):
            remapped[row, column] = prior[source_row, source_column] if source_column is not None else 0.0
    remapped /= remapped.sum(axis=1, keepdims=True)
    dropped = [source_names[index] for index in range(len(source_names)) if index not in matched]
    unmatched = [name for name, index in zip(target_names, positions) if index is None]
    note = "remapped by class name"
    if dropped:
        note += f"; dropped {', '.join(dropped)} (not a class here) and renormalised each row"
    if unmatched:
        note += f"; {', '.join(unmatched)} have no counterpart, so their rows are one-hot (no smoothing)"
    return remapped, note


def dataset_label_prior(
    vote_prior: np.ndarray | None, class_names: Sequence[str], dataset_name: str
) -> tuple[list[list[float]], str]:
    """The F-PDLS prior of a dataset as plain lists (what the CLI hands the model) and a log line.

    ``vote_prior`` is the dataset's own (from its votes) or ``None``, in which case FER+'s released
    prior is remapped to ``class_names``.
    """
    if vote_prior is not None:
        return np.asarray(
            vote_prior
        ).tolist(), f"{dataset_name}: F-PDLS prior from the training split's votes"
    remapped, note = remap_prior(FERPLUS_RELEASED_PRIOR, FERPLUS_CLASS_NAMES, class_names)
    return (
        remapped.tolist(),
        f"{dataset_name}: no annotator votes; F-PDLS prior = FER+'s released prior, {note}",
    )
