"""LightningDataModules, one module per on-disk dataset format, plus the synthetic face generator.

The datamodules are imported on first use (PEP 562), so that ``fer_lightning.data.synthetic`` — numpy
and OpenCV only — can be used without importing torch and Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "AffectNetDataModule": "fer_lightning.data.affectnet",
    "AIHubKoreanDataModule": "fer_lightning.data.aihub",
    "FERDataModule": "fer_lightning.data.base",
    "SplitTable": "fer_lightning.data.base",
    "FER2013DataModule": "fer_lightning.data.fer2013",
    "RAFDBDataModule": "fer_lightning.data.rafdb",
}

__all__ = [
    "AIHubKoreanDataModule",
    "AffectNetDataModule",
    "FER2013DataModule",
    "FERDataModule",
    "RAFDBDataModule",
    "SplitTable",
]

if TYPE_CHECKING:
    from fer_lightning.data.affectnet import AffectNetDataModule
    from fer_lightning.data.aihub import AIHubKoreanDataModule
    from fer_lightning.data.base import FERDataModule, SplitTable
    from fer_lightning.data.fer2013 import FER2013DataModule
    from fer_lightning.data.rafdb import RAFDBDataModule


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
