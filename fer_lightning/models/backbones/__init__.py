"""Networks shared by several models: the POSTER++ body and its backbones, with strict checkpoint loaders."""

from fer_lightning.models.backbones.checkpoint import CheckpointMismatchError, LoadReport
from fer_lightning.models.backbones.ir50 import IR50, load_ir50_weights
from fer_lightning.models.backbones.mobilefacenet import (
    FrozenLandmarkNet,
    MobileFaceNet,
    load_mobilefacenet_weights,
)
from fer_lightning.models.backbones.poster_body import (
    POSTER_BODY_VARIANTS,
    CrossAttentionBlock,
    PosterBody,
    PosterBodyConfig,
)

__all__ = [
    "IR50",
    "POSTER_BODY_VARIANTS",
    "CheckpointMismatchError",
    "CrossAttentionBlock",
    "FrozenLandmarkNet",
    "LoadReport",
    "MobileFaceNet",
    "PosterBody",
    "PosterBodyConfig",
    "load_ir50_weights",
    "load_mobilefacenet_weights",
]
