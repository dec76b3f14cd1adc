"""LightningDataModules, one module per on-disk dataset format, plus the synthetic face generator."""

from fer_lightning.data.affectnet import AffectNetDataModule
from fer_lightning.data.aihub import AIHubKoreanDataModule
from fer_lightning.data.base import FERDataModule, SplitTable
from fer_lightning.data.fer2013 import FER2013DataModule
from fer_lightning.data.rafdb import RAFDBDataModule

__all__ = [
    "AIHubKoreanDataModule",
    "AffectNetDataModule",
    "FER2013DataModule",
    "FERDataModule",
    "RAFDBDataModule",
    "SplitTable",
]
