"""LightningModules, one module per paper; shared networks in ``backbones/``."""

from fer_lightning.models.arbex import ARBEx
from fer_lightning.models.backbones import PosterBody
from fer_lightning.models.base import FERClassifier
from fer_lightning.models.btn import BTN
from fer_lightning.models.lhcnet import LHCNet
from fer_lightning.models.posterpp import POSTERPP
from fer_lightning.models.resizer_vit import ResizerTransformer
from fer_lightning.models.routing_vit import RoutingViT
from fer_lightning.models.timm_classifier import TimmClassifier

__all__ = [
    "BTN",
    "POSTERPP",
    "ARBEx",
    "FERClassifier",
    "LHCNet",
    "PosterBody",
    "ResizerTransformer",
    "RoutingViT",
    "TimmClassifier",
]
