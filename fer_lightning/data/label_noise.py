"""Controlled label noise on the training split: a known fraction of training labels replaced by others.

Real FER datasets carry unknown annotation noise; flipping a chosen fraction of the training labels of
a (clean, synthetic or real) dataset lets a study measure how accuracy falls with the noise rate.
Validation and test labels are never touched, so selection and reported numbers stay on clean labels.

Two kinds, both applied per class (``round(rate · n_c)`` of the ``n_c`` training images of class c are
flipped, chosen without replacement), so every class is corrupted at the same rate:

* ``symmetric``: a flipped label becomes one of the *other* classes, uniformly at random;
* ``asymmetric``: a flipped label becomes the class its expression is most often confused with
  (:data:`CONFUSED_WITH`), as human annotators and FER models confuse them: fear and surprise, disgust
  and anger, sadness and neutral. The map is written by expression *name*, so it applies to every
  dataset whatever its class order or spelling (RAF-DB's ``Happiness``, AffectNet's ``Happy``, FER+'s
  ``happiness``, AI-Hub's ``기쁨``).

The noise is a function of ``(labels, class names, rate, kind, seed)`` only: the same ``seed`` gives the
same noisy labels whatever the training seed, so runs with several training seeds share one corruption.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from fer_lightning.errors import ConfigurationError

NOISE_KINDS = ("symmetric", "asymmetric")
LABEL_NOISE_FILE = "label_noise.csv"

#: Canonical expression → the expressions a label of it is flipped to under asymmetric noise, in order
#: of preference; the first one the dataset has is used. Pairs are the off-diagonal cells that dominate
#: published FER confusion matrices (fear↔surprise, disgust↔anger, sadness↔neutral); happiness, rarely
#: confused, goes to neutral, its nearest low-intensity neighbour. AI-Hub's panic, anxiety and hurt
#: are mapped onto their closest neighbours in that set.
CONFUSED_WITH: dict[str, tuple[str, ...]] = {
    "surprise": ("fear", "panic"),
    "fear": ("surprise", "anxiety"),
    "disgust": ("anger", "contempt"),
    "anger": ("disgust", "hurt"),
    "sadness": ("neutral", "hurt"),
    "neutral": ("sadness",),
    "happiness": ("neutral",),
    "contempt": ("disgust", "neutral"),
    "panic": ("anxiety", "surprise"),
    "anxiety": ("panic", "fear"),
    "hurt": ("sadness",),
}

#: Spellings of the datasets' class names (lower-cased) → the canonical names of :data:`CONFUSED_WITH`.
EXPRESSION_ALIASES: dict[str, str] = {
    "happy": "happiness",
    "joy": "happiness",
    "sad": "sadness",
    "angry": "anger",
    "surprised": "surprise",
    "fearful": "fear",
    "disgusted": "disgust",
    # AI-Hub Korean emotion images
    "기쁨": "happiness",
    "당황": "panic",
    "분노": "anger",
    "불안": "anxiety",
    "상처": "hurt",
    "슬픔": "sadness",
    "중립": "neutral",
}


@dataclass(frozen=True)
class LabelNoise:
    """``data.label_noise``: flip ``rate`` of each class's training labels, ``symmetric`` or ``asymmetric``.

    ``seed`` picks which labels flip and (symmetric) to what; it is independent of ``seed_everything``.
    """

    rate: float = 0.0
    kind: Literal["symmetric", "asymmetric"] = "symmetric"
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ConfigurationError(
                f"data.label_noise.rate must be a fraction in [0, 1] (e.g. 0.2 for 20 %), got {self.rate}"
            )
        if self.kind not in NOISE_KINDS:
            raise ConfigurationError(
                f"data.label_noise.kind must be 'symmetric' or 'asymmetric', got {self.kind!r}"
            )

    @classmethod
    def parse(cls, value: LabelNoise | Mapping[str, Any] | None) -> LabelNoise:
        """The option as jsonargparse or a Python caller gives it: a LabelNoise, a mapping, or None (no noise)."""
        if value is None:
            return cls()
        if isinstance(value, LabelNoise):
            return value
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {"rate", "kind", "seed"})
            if unknown:
                raise ConfigurationError(
                    f"data.label_noise has no option {unknown[0]!r}; its options are rate, kind, seed"
                )
            return cls(**dict(value))
        # jsonargparse may hand a Namespace-like object with the same attributes.
        return cls(**{key: getattr(value, key) for key in ("rate", "kind", "seed") if hasattr(value, key)})

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for hyperparameters (a checkpoint read with ``weights_only`` takes no dataclass)."""
        return asdict(self)


def canonical_expression(name: str) -> str:
    """The name :data:`CONFUSED_WITH` knows a class by (``Happy`` → ``happiness``)."""
    key = name.strip().lower()
    return EXPRESSION_ALIASES.get(key, key)


def confusion_targets(class_names: Sequence[str]) -> np.ndarray:
    """Class id → the class id its labels flip to under asymmetric noise, for this class order.

    One line naming the class when an expression is not in the map or none of its confusions is a class
    of this dataset.
    """
    canonical = [canonical_expression(name) for name in class_names]
    unknown = [name for name, expression in zip(class_names, canonical) if expression not in CONFUSED_WITH]
    if unknown:
        raise ConfigurationError(
            f"data.label_noise.kind=asymmetric: class {unknown[0]!r} is not an expression the confusion map "
            f"knows ({', '.join(sorted(CONFUSED_WITH))}); use kind: symmetric for this dataset"
        )
    targets = []
    for name, expression in zip(class_names, canonical):
        present = [target for target in CONFUSED_WITH[expression] if target in canonical]
        if not present:
            raise ConfigurationError(
                f"data.label_noise.kind=asymmetric: class {name!r} is confused with "
                f"{', '.join(CONFUSED_WITH[expression])}, none of which this dataset has; use kind: symmetric"
            )
        targets.append(canonical.index(present[0]))
    return np.asarray(targets, dtype=np.int64)


def apply_label_noise(
    labels: np.ndarray, class_names: Sequence[str], noise: LabelNoise
) -> tuple[np.ndarray, np.ndarray]:
    """``(noisy labels, indices of the flipped samples in ascending order)``; ``labels`` is left unchanged.

    Every flipped label differs from its original one, so ``len(indices)`` is the number of wrong labels.
    """
    labels = np.asarray(labels, dtype=np.int64)
    noisy = labels.copy()
    num_classes = len(class_names)
    if noise.rate == 0.0 or len(labels) == 0:
        return noisy, np.zeros(0, dtype=np.int64)
    if num_classes < 2:
        raise ConfigurationError("data.label_noise needs at least two classes to flip labels between")
    targets = confusion_targets(class_names) if noise.kind == "asymmetric" else None
    rng = np.random.default_rng(noise.seed)
    flipped: list[np.ndarray] = []
    for class_id in range(num_classes):
        members = np.flatnonzero(labels == class_id)
        chosen = np.sort(rng.choice(members, size=round(noise.rate * len(members)), replace=False))
        if targets is not None:
            noisy[chosen] = targets[class_id]
        else:  # a uniform shift of 1..C-1 classes: any other class, never the same one
            noisy[chosen] = (class_id + rng.integers(1, num_classes, size=len(chosen))) % num_classes
        flipped.append(chosen)
    return noisy, np.sort(np.concatenate(flipped))
