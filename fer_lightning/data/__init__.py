"""LightningDataModules, one module per on-disk dataset format, plus the synthetic face generator."""

from fer_lightning.data.base import FERDataModule, SplitTable
from fer_lightning.data.rafdb import RAFDBDataModule

__all__ = ["FERDataModule", "RAFDBDataModule", "SplitTable"]
