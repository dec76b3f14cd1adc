"""Vision transformer with a Neural Resizer (Hwang et al. 2022), usually trained with F-PDLS.

FER images are small (FER+: 48×48 grey) while pretrained transformers expect their own input size. The
paper's pipeline enlarges the faces offline (a face super-resolution network, 48 → 384), then lets a
learnable resizer bring them down to the backbone's 224, so the downscaling is trained with the
classifier instead of fixed interpolation:

    image (384) → [spatial transformer] → Neural Resizer (×0.584 → 224) → timm backbone → head

The official code uses Swin-B (``swin_base_patch4_window7_224``); any timm ViT or Swin works, and a tiny
one trains on CPU. The loss of the paper is F-PDLS (``loss: fpdls``, :class:`fer_lightning.losses.FPDLS`).
Deviations from the official code are listed in docs/models.md#neural-resizer-vit.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fer_lightning.errors import ConfigurationError, WeightsError
from fer_lightning.models.backbones.checkpoint import load_renamed, read_state_dict
from fer_lightning.models.base import FERClassifier

#: The resizer's slope for negative inputs (LeakyReLU), as in the learnable resizer it builds on.
NEGATIVE_SLOPE = 0.2


class ResizerResidualBlock(nn.Module):
    """conv3×3 → BN → LeakyReLU → conv3×3 → BN, plus the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.bn1(self.conv1(x)), NEGATIVE_SLOPE)
        return x + self.bn2(self.conv2(y))


class NeuralResizer(nn.Module):
    """A learnable resizer: a bilinear resize of the image plus a CNN correction learnt from the data.

    ``out = conv7×7(BN(conv3×3(R(b))) + b) + ↓x`` with ``b = ↓BN(LReLU(conv1×1(LReLU(conv7×7(x)))))``,
    ``↓`` the bilinear resize and ``R`` ``residual_blocks`` residual blocks at the output resolution. The
    activation of the 1×1 convolution comes *before* its BatchNorm, as in the official code.

    Args:
        scale_factor: output side = ⌊input side × scale_factor⌋ (the official 0.584 turns 384 into 224;
            the interpolation grid uses the factor itself, exactly like the official call).
        target_size: output side in pixels instead (whatever the input size). Give exactly one of the two.
        channels: feature channels (n, 16 in the paper).
        residual_blocks: residual blocks (r, 1 in the paper).
        in_channels: image channels in and out.
    """

    def __init__(
        self,
        scale_factor: float | None = 0.584,
        target_size: int | None = None,
        channels: int = 16,
        residual_blocks: int = 1,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if (scale_factor is None) == (target_size is None):
            raise ConfigurationError(
                f"Neural Resizer: give exactly one of scale_factor ({scale_factor}) and target_size "
                f"({target_size}); set the other to null"
            )
        if scale_factor is not None and scale_factor <= 0:
            raise ConfigurationError(f"Neural Resizer: scale_factor={scale_factor} must be positive")
        if target_size is not None and target_size < 1:
            raise ConfigurationError(
                f"Neural Resizer: target_size={target_size} must be a side in pixels >= 1"
            )
        self.scale_factor = scale_factor
        self.target_size = target_size
        self.stem = nn.Conv2d(in_channels, channels, kernel_size=7, padding=3)
        self.mix = nn.Conv2d(channels, channels, kernel_size=1)
        self.mix_bn = nn.BatchNorm2d(channels)
        self.blocks = nn.Sequential(*(ResizerResidualBlock(channels) for _ in range(residual_blocks)))
        self.fuse = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.fuse_bn = nn.BatchNorm2d(channels)
        self.to_image = nn.Conv2d(channels, in_channels, kernel_size=7, padding=3)

    def output_side(self, input_side: int) -> int:
        """The output side for a square input of ``input_side`` pixels (F.interpolate's floor rule)."""
        if self.target_size is not None:
            return self.target_size
        return math.floor(input_side * self.scale_factor)

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        if self.target_size is not None:
            return F.interpolate(
                x, size=(self.target_size, self.target_size), mode="bilinear", align_corners=False
            )
        return F.interpolate(x, scale_factor=self.scale_factor, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image_skip = self.resize(x)
        features = F.leaky_relu(self.stem(x), NEGATIVE_SLOPE)
        features = self.mix_bn(F.leaky_relu(self.mix(features), NEGATIVE_SLOPE))
        resized = self.resize(features)
        features = self.fuse_bn(self.fuse(self.blocks(resized))) + resized
        return self.to_image(features) + image_skip


def stn_feature_side(img_size: int) -> int:
    """Side of the localisation network's output for a square input: conv7 → pool2 → conv5 → pool2."""
    return ((img_size - 6) // 2 - 4) // 2


class SpatialTransformer(nn.Module):
    """An affine spatial transformer (PyTorch tutorial layout) that starts as the identity.

    A small CNN regresses the 2×3 affine matrix; the image is resampled on that grid
    (``align_corners=True``). The fully connected input size follows from ``img_size``, so the module is
    built for one input size and refuses others.
    """

    def __init__(self, img_size: int, in_channels: int = 3) -> None:
        super().__init__()
        side = stn_feature_side(img_size)
        if side < 1:
            raise ConfigurationError(
                f"spatial transformer: a {img_size}×{img_size} input is too small for its localisation "
                "network (at least 18 px); use a larger image or stn: false"
            )
        self.img_size = img_size
        self.localization = nn.Sequential(
            nn.Conv2d(in_channels, 8, kernel_size=7),
            nn.MaxPool2d(2, stride=2),
            nn.ReLU(),
            nn.Conv2d(8, 10, kernel_size=5),
            nn.MaxPool2d(2, stride=2),
            nn.ReLU(),
        )
        self.regressor = nn.Sequential(nn.Linear(10 * side * side, 32), nn.ReLU(), nn.Linear(32, 6))
        # Zero weights and the identity as bias: training starts from the untransformed image.
        nn.init.zeros_(self.regressor[2].weight)
        with torch.no_grad():
            self.regressor[2].bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ConfigurationError(
                f"spatial transformer built for {self.img_size}×{self.img_size} images got "
                f"{x.shape[-2]}×{x.shape[-1]}; set model.init_args.img_size to data.init_args.img_size"
            )
        theta = self.regressor(self.localization(x).flatten(1)).view(-1, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=True)
        return F.grid_sample(x, grid, align_corners=True)


class ResizerTransformer(FERClassifier):
    """[spatial transformer] → Neural Resizer → timm ViT/Swin → MLP head (Hwang et al. 2022).

    Args:
        backbone: timm model name: ``swin_base_patch4_window7_224`` reproduces the paper; any timm ViT or
            Swin works (its classifier is replaced by the head).
        backbone_weights: a local weights file for the backbone (timm's ``.safetensors`` or ``.pth`` from
            the Hugging Face hub, or the architecture's original release where timm converts it), loaded
            strictly: every backbone tensor must be matched, the classifier's are left out. Nothing is
            downloaded; without a file the backbone starts from random weights (with one warning).
        backbone_kwargs: further ``timm.create_model`` arguments, e.g. ``img_size``, ``embed_dim``,
            ``depth`` for a tiny CPU model.
        img_size: side of the input images (``data.img_size``); sizes the spatial transformer.
        resizer_scale_factor, resizer_target_size: how the Neural Resizer scales (exactly one; the output
            must be the backbone's input size): the official 0.584 (384 → 224), or a side in pixels.
        resizer_channels, resizer_blocks: the resizer's feature channels (16) and residual blocks (1).
        stn: put the spatial transformer in front (the official config does).
        head_hidden, head_dropout: the head ``Linear(features → head_hidden) → BN → ReLU → Dropout →
            Linear(head_hidden → num_classes)`` (official: 512, 0.5).
        **kwargs: :class:`~fer_lightning.models.base.FERClassifier` arguments (``loss: fpdls``, optimiser, …).
    """

    def __init__(
        self,
        backbone: str = "swin_base_patch4_window7_224",
        backbone_weights: str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        img_size: int = 384,
        resizer_scale_factor: float | None = 0.584,
        resizer_target_size: int | None = None,
        resizer_channels: int = 16,
        resizer_blocks: int = 1,
        stn: bool = True,
        head_hidden: int = 512,
        head_dropout: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # Imported here: timm (and the wandb it imports) cost every CLI start, --help included.
        import timm

        self.img_size = img_size
        self.stn = SpatialTransformer(img_size) if stn else None
        self.resizer = NeuralResizer(
            scale_factor=resizer_scale_factor,
            target_size=resizer_target_size,
            channels=resizer_channels,
            residual_blocks=resizer_blocks,
        )
        try:
            self.backbone = timm.create_model(
                backbone, pretrained=False, num_classes=0, **(backbone_kwargs or {})
            )
        except RuntimeError as error:  # timm's "Unknown model (...)"
            raise ConfigurationError(
                f"model backbone={backbone!r}: {error}; see timm.list_models()"
            ) from error
        _check_backbone_input(self.backbone, backbone, self.resizer.output_side(img_size))
        if backbone_weights is not None:
            load_timm_weights(self.backbone, backbone_weights, backbone)
        else:
            warnings.warn(
                f"ResizerTransformer: backbone {backbone} starts from random weights (no "
                "model.init_args.backbone_weights file given)",
                UserWarning,
                stacklevel=2,
            )
        self.head = nn.Sequential(
            nn.Linear(self.backbone.num_features, head_hidden),
            nn.BatchNorm1d(head_hidden),
            nn.ReLU(),
            nn.Dropout(head_dropout),
            nn.Linear(head_hidden, self.num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.stn is not None:
            images = self.stn(images)
        return self.head(self.backbone(self.resizer(images)))


def _check_backbone_input(backbone: nn.Module, name: str, resizer_side: int) -> None:
    """The resizer must hand a fixed-size ViT/Swin exactly the size it was built for."""
    patch_embed = getattr(backbone, "patch_embed", None)
    expected = getattr(patch_embed, "img_size", None)
    if expected is None or not getattr(patch_embed, "strict_img_size", True):
        return
    if tuple(expected) != (resizer_side, resizer_side):
        raise ConfigurationError(
            f"model: the Neural Resizer outputs {resizer_side}×{resizer_side} images but backbone {name} takes "
            f"{expected[0]}×{expected[1]}; set model.init_args.resizer_target_size: {expected[0]} (or "
            "resizer_scale_factor, img_size, or backbone_kwargs.img_size) so they agree"
        )


def load_timm_weights(backbone: nn.Module, path: str, name: str) -> None:
    """Load a local weights file into a timm backbone built without classifier, strictly.

    The architecture's own timm converter (``checkpoint_filter_fn``: original-release key names, position
    embeddings resized to the model's size) runs first; classifier tensors are then left out on purpose,
    and everything else must match by name and shape.
    """
    if not os.path.isfile(path):
        raise WeightsError(
            f"model backbone_weights: {path} not found; give a local weights file of {name} (nothing is downloaded)"
        )
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            state_dict, source = read_state_dict(load_file(path))[0], path
        except Exception as error:
            raise WeightsError(f"{path}: not a readable safetensors file ({type(error).__name__})") from error
    else:
        state_dict, source = read_state_dict(path)
    convert = getattr(sys.modules[type(backbone).__module__], "checkpoint_filter_fn", None)
    if convert is not None:
        try:
            state_dict = convert(state_dict, backbone)
        except Exception as error:
            raise WeightsError(
                f"{path}: timm could not convert it for {name} ({type(error).__name__}: {error}); is it a "
                f"checkpoint of {name}?"
            ) from error
    own = backbone.state_dict()
    classifier = {"head", "fc", "classifier", "head_dist", "head.fc"}
    ignored = [key for key in state_dict if key not in own and key.rsplit(".", 1)[0] in classifier]
    kept = {key: value for key, value in state_dict.items() if key not in ignored}
    load_renamed(backbone, kept, network=name, source=source, key_format="timm", ignored=ignored)
