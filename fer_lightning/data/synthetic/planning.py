"""Which image gets which class, split and (possibly noisy) label: one implementation for all formats.

Also the seeded random streams: every image draws from its own generator seeded with
``(seed, stream, image index)``, so the bytes on disk do not depend on generation order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

# Most → least frequent classes in each real training set, so the imbalance falls where it does upstream.
FREQUENCY_ORDER = {
    # RAF-DB basic train: Happiness 4772, Neutral 2524, Sadness 1982, Surprise 1290, Disgust 717,
    # Anger 705, Fear 281.
    "rafdb": ("happiness", "neutral", "sadness", "surprise", "disgust", "anger", "fear"),
    # AffectNet manual train: Happy ≫ Neutral ≫ Sad ≈ Anger > Surprise > Fear > Disgust ≈ Contempt.
    "affectnet": ("happiness", "neutral", "sadness", "anger", "surprise", "fear", "disgust", "contempt"),
    # FER2013: Happy 8989, Neutral 6198, Sad 6077, Fear 5121, Angry 4953, Surprise 4002, Disgust 547.
    "fer2013": ("happiness", "neutral", "sadness", "fear", "anger", "surprise", "disgust"),
    # FER+ majority labels: neutral, happiness, surprise, sadness, anger, fear, disgust, contempt.
    "ferplus": ("neutral", "happiness", "surprise", "sadness", "anger", "fear", "disgust", "contempt"),
    # AI-Hub is collected per class and roughly balanced; the order only matters when imbalance > 1.
    "aihub": ("happiness", "neutral", "sadness", "anger", "fear", "surprise", "disgust"),
}


@dataclasses.dataclass(frozen=True)
class PlannedImage:
    """One image to generate: which split, what is drawn, and which label is written."""

    index: int  # position in the whole dataset; seeds the image, so order of generation is irrelevant
    split: str
    expression: str  # canonical expression drawn (the clean class)
    clean_label: int  # id of the drawn class in the format's own class order
    label: int  # id written to disk; differs from clean_label for label-noise samples

    @property
    def is_noisy(self) -> bool:
        return self.label != self.clean_label


def class_frequencies(
    class_expressions: Sequence[str], frequency_order: Sequence[str], imbalance: float
) -> np.ndarray:
    """Relative class frequencies: geometric from the most frequent (1) to the least (1/imbalance).

    ``class_expressions`` are the format's classes in its own label order; ``frequency_order`` ranks them.
    """
    if imbalance < 1.0:
        raise ValueError(
            f"imbalance is the ratio of the most to the least frequent class; got {imbalance} < 1"
        )
    ranked = [expression for expression in frequency_order if expression in class_expressions]
    if sorted(ranked) != sorted(class_expressions):
        raise ValueError(f"frequency order {frequency_order} does not cover classes {class_expressions}")
    steps = max(len(ranked) - 1, 1)
    rank = {expression: position for position, expression in enumerate(ranked)}
    return np.array([imbalance ** (-rank[expression] / steps) for expression in class_expressions])


def allocate_counts(total: int, weights: Sequence[float], minimum: int = 0) -> list[int]:
    """Split ``total`` into integer counts proportional to ``weights`` (largest remainders win).

    Each count is at least ``minimum`` when ``total`` allows it, so a tiny dataset still has every class.
    """
    weights = np.asarray(weights, dtype=np.float64)
    floor_total = minimum * len(weights)
    if total < floor_total:
        minimum, floor_total = 0, 0
    shares = weights / weights.sum() * (total - floor_total)
    counts = np.floor(shares).astype(int)
    remainder = total - floor_total - int(counts.sum())
    # Stable tie-breaking by class position keeps the result independent of floating-point noise.
    order = sorted(range(len(weights)), key=lambda i: (-(shares[i] - counts[i]), i))
    for i in order[:remainder]:
        counts[i] += 1
    return [int(count) + minimum for count in counts]


def plan_dataset(
    num_images: int,
    seed: int,
    class_expressions: Sequence[str],
    frequency_order: Sequence[str],
    imbalance: float,
    label_noise: float,
    train_split: str,
    eval_splits: dict[str, float],
    balanced_eval: bool = False,
    noisy_splits: Iterable[str] | None = None,
) -> list[PlannedImage]:
    """Decide, for every image, its split, its drawn class and the label written to disk.

    ``eval_splits`` maps each held-out split to its fraction of ``num_images``. Held-out splits are
    stratified (the same class mix as training) or, with ``balanced_eval``, equal per class (AffectNet's
    validation set). ``label_noise`` is the fraction of labels in ``noisy_splits`` (default: the training
    split only, so evaluation measures the generator, not the noise) replaced by a different class.
    Images are numbered split by split in the order train, then ``eval_splits``; within a split the
    classes are shuffled.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, got {num_images}")
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise is a fraction in [0, 1], got {label_noise}")
    if sum(eval_splits.values()) >= 1.0 or any(fraction < 0 for fraction in eval_splits.values()):
        raise ValueError(f"held-out fractions must be non-negative and sum below 1, got {eval_splits}")
    num_classes = len(class_expressions)
    weights = class_frequencies(class_expressions, frequency_order, imbalance)
    rng = np.random.default_rng([seed, _PLAN_STREAM])

    counts_per_split: dict[str, list[int]] = {}
    if balanced_eval:
        for split, fraction in eval_splits.items():
            counts_per_split[split] = [round(fraction * num_images / num_classes)] * num_classes
        held_out = sum(sum(counts) for counts in counts_per_split.values())
        counts_per_split = {
            train_split: allocate_counts(num_images - held_out, weights, 1),
            **counts_per_split,
        }
    else:
        class_totals = allocate_counts(num_images, weights, 1)
        remaining = list(class_totals)
        for split, fraction in eval_splits.items():
            counts_per_split[split] = [round(fraction * total) for total in class_totals]
            remaining = [left - taken for left, taken in zip(remaining, counts_per_split[split])]
        counts_per_split = {train_split: remaining, **counts_per_split}

    noisy = set(noisy_splits) if noisy_splits is not None else {train_split}
    plan: list[PlannedImage] = []
    for split, counts in counts_per_split.items():
        clean_labels = np.repeat(np.arange(num_classes), counts)
        rng.shuffle(clean_labels)
        labels = clean_labels.copy()
        if split in noisy and len(labels):
            num_noisy = round(label_noise * len(labels))
            flipped = rng.choice(len(labels), size=num_noisy, replace=False)
            # Adding 1..K-1 modulo K picks a uniformly random *different* class.
            labels[flipped] = (labels[flipped] + rng.integers(1, num_classes, size=num_noisy)) % num_classes
        for clean, label in zip(clean_labels, labels):
            plan.append(PlannedImage(len(plan), split, class_expressions[int(clean)], int(clean), int(label)))
    return plan


# Independent random streams derived from the dataset seed.
_PLAN_STREAM = 0
_IMAGE_STREAM = 1
EXTRA_STREAM = 2  # rows that are not labelled images: AffectNet's invalid rows, FER+ no-face rows


def image_rng(seed: int, index: int, stream: int = _IMAGE_STREAM) -> np.random.Generator:
    """The generator of image ``index``: depends only on (seed, index), never on generation order."""
    return np.random.default_rng([seed, stream, index])
