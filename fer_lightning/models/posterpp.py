"""POSTER++ (POSTER V2; Mao et al., arXiv 2301.12149), the baseline of BTN (docs/models.md#posterpp).

The network is the shared :class:`~fer_lightning.models.backbones.PosterBody`: IR-50 image features and
frozen MobileFaceNet landmark queries at three levels, global cross-attention per level, the
147-token 2-block ViT, SE gate and linear head, trained with plain cross-entropy. The official
recipe's SAM around Adam and ExponentialLR are :class:`~fer_lightning.models.base.FERClassifier`
options (``sam_rho``, ``optimizer``, ``scheduler``), set in the ``posterpp_*`` configs.

Deviations from the official code, each with the upstream behaviour behind a flag
(docs/models.md#deviations-from-the-official-code):
the landmark net stays in eval mode (``landmark_bn_mode="train_upstream"`` for upstream); the IR-50
checkpoint must load completely (upstream silently loads only its stem); dead modules are not built.
"""

from __future__ import annotations

import torch

from fer_lightning.models.backbones.mobilefacenet import BNMode
from fer_lightning.models.backbones.poster_body import PosterBody
from fer_lightning.models.base import FERClassifier


class POSTERPP(FERClassifier):
    """POSTER++ as a LightningModule.

    Args:
        variant: ``paper`` (official sizes, ≈8.59 GMACs per image) or ``tiny`` (same modules, narrow, at
            64×64; for CPU runs on synthetic data only).
        ir50_weights: path to the MS-Celeb-1M IR-50 checkpoint (face.evoLVe ``body.N`` or POSTER V2
            ``body1/2/3`` keys); loaded strictly.
        mobilefacenet_weights: path to ``mobilefacenet_model_best.pth.tar``; loaded strictly. Without
            weights both backbones start from random initialisation, with one warning.
        landmark_bn_mode: ``eval`` (our fix) or ``train_upstream`` (frozen landmark net whose BatchNorm
            statistics drift, as in the official code).
        interpolate_mode: resize mode from the input size to the body's (``nearest`` as upstream).
        **kwargs: :class:`~fer_lightning.models.base.FERClassifier` arguments (``num_classes`` and
            ``class_names`` come from the datamodule; optimiser, scheduler, SAM, label smoothing).
    """

    def __init__(
        self,
        variant: str = "paper",
        ir50_weights: str | None = None,
        mobilefacenet_weights: str | None = None,
        landmark_bn_mode: BNMode = "eval",
        interpolate_mode: str = "nearest",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.body = PosterBody(
            self.num_classes,
            variant=variant,
            ir50_weights=ir50_weights,
            mobilefacenet_weights=mobilefacenet_weights,
            landmark_bn_mode=landmark_bn_mode,
            interpolate_mode=interpolate_mode,
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W), normalised like ImageNet → logits (B, N)."""
        return self.body(images)
