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


def _lhcnet_affine(rotate: float, shift: float, zoom: float) -> TransformFactory:
    # Keras' ImageDataGenerator as LHC-Net's phases configure it: every image gets a random rotation
    # (degrees), shift (fraction of the side) and zoom (x and y drawn independently), edge pixels
    # repeated outside the image ("nearest" fill), and a horizontal flip half of the time.
    return lambda: [
        A.Affine(
            rotate=(-rotate, rotate),
            translate_percent=(-shift, shift),
            scale={"x": (1 - zoom, 1 + zoom), "y": (1 - zoom, 1 + zoom)},
            interpolation=cv2.INTER_LINEAR,
            border_mode=cv2.BORDER_REPLICATE,
            p=1.0,
        ),
        A.HorizontalFlip(p=0.5),
    ]


def _resizer_ferplus() -> list[A.BasicTransform]:
    # The Neural-Resizer code's torchvision pipeline: flip, rotation up to 45 degrees, then an affine of up
    # to 15 degrees at a fixed 1.2 zoom (both nearest-neighbour with black corners, torchvision's
    # defaults) and brightness/contrast/saturation jitter of 0.4.
    return [
        A.HorizontalFlip(p=0.5),
        A.Rotate(limit=45, interpolation=cv2.INTER_NEAREST, border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0),
        A.Affine(
            rotate=(-15, 15),
            scale=1.2,
            interpolation=cv2.INTER_NEAREST,
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            p=1.0,
        ),
        A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.0, p=1.0),
    ]


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
    # Neural-Resizer code on FER+ (its test set got the same random pipeline; ours evaluates without).
    "resizer_ferplus": (_resizer_ferplus, list),
    # LHC-Net's first training phase: rotation up to 30 degrees and flip.
    "lhcnet_rotate": (_lhcnet_affine(rotate=30, shift=0.0, zoom=0.0), list),
    # LHC-Net's second phase: rotation 10 degrees, shift 0.1, zoom 0.1 and flip.
    "lhcnet_shift": (_lhcnet_affine(rotate=10, shift=0.1, zoom=0.1), list),
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
