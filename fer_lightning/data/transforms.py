"""Named augmentation recipes (albumentations 2.0.x), one per paper, chosen in YAML by name.

Every pipeline takes an RGB uint8 HWC array and returns a float32 CHW tensor. Erasing sits after
Normalize (so its fill of 0 is the dataset mean, as torchvision's RandomErasing after Normalize) and
before ToTensorV2 (albumentations' dropout transforms fail on tensors; docs/datasets.md#augmentation-recipes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


TransformFactory = Callable[[], list[A.BasicTransform]]


def _flip() -> list[A.BasicTransform]:
    return [A.HorizontalFlip(p=0.5)]


def _flip_then_erasing(scale: tuple[float, float], p: float) -> tuple[TransformFactory, TransformFactory]:
    return _flip, lambda: [A.Erasing(scale=scale, ratio=(0.3, 3.3), fill=0, p=p)]


# recipe name -> (augmentations before Normalize, augmentations after Normalize), training only.
_RECIPES: dict[str, tuple[TransformFactory, TransformFactory]] = {
    "none": (list, list),
    "flip": (_flip, list),
    # BTN paper / POSTER++ code on RAF-DB: flip + RandomErasing(scale=(0.02, 0.1)), default p = 0.5.
    "btn_rafdb": _flip_then_erasing((0.02, 0.1), 0.5),
    # BTN paper on AffectNet: the same erasing scale, always applied.
    "btn_affectnet": _flip_then_erasing((0.02, 0.1), 1.0),
    # POSTER++ code on AffectNet: erasing always applied with a fixed scale of 0.05.
    "posterpp_affectnet": _flip_then_erasing((0.05, 0.05), 1.0),
}

RECIPES: tuple[str, ...] = tuple(_RECIPES)


def build_transform(
    recipe: str,
    img_size: int,
    train: bool,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    seed: int | None = None,
) -> A.Compose:
    """The pipeline of ``recipe`` for training, or the plain resize + normalise for evaluation.

    ``seed`` seeds the pipeline's own random generator (albumentations ignores numpy's and Python's
    global seeds); ``None`` draws one from the OS, so runs are not repeatable.
    """
    if recipe not in _RECIPES:
        raise ValueError(f"unknown augmentation recipe {recipe!r}; known: {', '.join(RECIPES)}")
    before_normalize, after_normalize = _RECIPES[recipe] if train else (list, list)
    return A.Compose(
        [
            A.Resize(img_size, img_size, interpolation=cv2.INTER_LINEAR),
            *before_normalize(),
            A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0),
            *after_normalize(),
            ToTensorV2(),
        ],
        seed=seed,
    )
