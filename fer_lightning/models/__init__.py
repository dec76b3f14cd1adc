"""LightningModules, one module per paper; shared networks in ``backbones/``."""

from fer_lightning.models.base import FERClassifier
from fer_lightning.models.timm_classifier import TimmClassifier

__all__ = ["FERClassifier", "TimmClassifier"]
