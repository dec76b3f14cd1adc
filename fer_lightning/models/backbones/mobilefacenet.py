"""MobileFaceNet, the frozen landmark branch of POSTER++/BTN (docs/models.md#the-poster-body).

The network is ``MobileFaceNet([112, 112], 136)`` of the ``pytorch_face_landmark`` project (a 68-point
landmark regressor; Chen et al., MobileFaceNets), which POSTER++ uses only for three intermediate maps:
after ``conv_3`` (64, 28, 28), after ``conv_4`` (128, 14, 14) and ``conv_6_sep`` (512, 7, 7) at 112×112
input. Its GDC landmark head (``output_layer``: 7×7 depthwise conv, Linear 512→136, BN1d) is computed and
thrown away upstream; we do not build it, and the loader drops exactly those keys.

Module names follow the published checkpoint, except that the residual stages are plain
``nn.Sequential`` (published ``conv_3.model.i`` → our ``conv_3.i``).
"""

from __future__ import annotations

import re
from typing import Literal

import torch
from torch import nn

from fer_lightning.models.backbones.checkpoint import (
    CheckpointSource,
    LoadReport,
    load_renamed,
    read_state_dict,
)

MOBILEFACENET_CHANNELS = (64, 128, 512)
MOBILEFACENET_DEPTHS = (4, 6, 2)

BNMode = Literal["eval", "train_upstream"]


class ConvBNPReLU(nn.Module):
    """Conv (no bias) → BN → PReLU; upstream ``Conv_block``. ``groups == in == out`` makes it depthwise."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.prelu = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.bn(self.conv(x)))


class ConvBN(nn.Module):
    """1×1 conv (no bias) → BN, no activation (the linear bottleneck); upstream ``Linear_block``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class DepthwiseBottleneck(nn.Module):
    """Inverted residual: 1×1 expand to ``hidden`` → 3×3 depthwise (stride) → 1×1 linear projection.

    Upstream ``Depth_Wise`` (its ``groups`` argument is our ``hidden``). With ``residual`` (stride 1,
    in == out) the input is added back. Shapes: (B, in, H, W) → (B, out, H/stride, W/stride).
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int, stride: int, residual: bool) -> None:
        super().__init__()
        self.conv = ConvBNPReLU(in_channels, hidden)
        self.conv_dw = ConvBNPReLU(hidden, hidden, kernel_size=3, stride=stride, groups=hidden)
        self.project = ConvBN(hidden, out_channels)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.conv_dw(self.conv(x)))
        return x + out if self.residual else out


def _residual_stage(channels: int, hidden: int, depth: int) -> nn.Sequential:
    return nn.Sequential(
        *[DepthwiseBottleneck(channels, channels, hidden, 1, residual=True) for _ in range(depth)]
    )


class MobileFaceNet(nn.Module):
    """MobileFaceNet trunk up to ``conv_6_sep``, returning the three maps POSTER++ taps.

    Args:
        channels: (c₁, c₂, c₃) = widths of the 28- and 14/7-pixel stages and of ``conv_6_sep``;
            published (64, 128, 512). Expansion widths follow the published ratios (2·c₁, 2·c₂, 4·c₂).
        depths: residual units in ``conv_3``, ``conv_4``, ``conv_5``; published (4, 6, 2).

    Shapes (published sizes, 112×112 input): (B, 3, 112, 112) → conv1 (B, 64, 56, 56) → conv_23
    (B, 64, 28, 28) → **conv_3 (B, 64, 28, 28)** → conv_34 (B, 128, 14, 14) → **conv_4 (B, 128, 14, 14)**
    → conv_45, conv_5 (B, 128, 7, 7) → **conv_6_sep (B, 512, 7, 7)**.
    """

    def __init__(
        self,
        channels: tuple[int, int, int] = MOBILEFACENET_CHANNELS,
        depths: tuple[int, int, int] = MOBILEFACENET_DEPTHS,
    ) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.channels = tuple(channels)
        self.conv1 = ConvBNPReLU(3, c1, kernel_size=3, stride=2)
        self.conv2_dw = ConvBNPReLU(c1, c1, kernel_size=3, groups=c1)
        self.conv_23 = DepthwiseBottleneck(c1, c1, 2 * c1, stride=2, residual=False)
        self.conv_3 = _residual_stage(c1, 2 * c1, depths[0])
        self.conv_34 = DepthwiseBottleneck(c1, c2, 2 * c2, stride=2, residual=False)
        self.conv_4 = _residual_stage(c2, 2 * c2, depths[1])
        self.conv_45 = DepthwiseBottleneck(c2, c2, 4 * c2, stride=2, residual=False)
        self.conv_5 = _residual_stage(c2, 2 * c2, depths[2])
        self.conv_6_sep = ConvBNPReLU(c2, c3)
        self._init_weights()

    def _init_weights(self) -> None:
        # As upstream: only matters without a checkpoint, which the POSTER++ body warns about.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, 112, 112) → (after conv_3, after conv_4, conv_6_sep)."""
        x = self.conv_23(self.conv2_dw(self.conv1(x)))
        tap3 = self.conv_3(x)
        tap4 = self.conv_4(self.conv_34(tap3))
        features = self.conv_6_sep(self.conv_5(self.conv_45(tap4)))
        return tap3, tap4, features


class FrozenLandmarkNet(nn.Module):
    """A :class:`MobileFaceNet` with frozen parameters that stays in eval mode.

    Upstream bug (POSTER V2, reproduced with ``bn_mode="train_upstream"``): the landmark net's parameters
    get ``requires_grad=False`` but the module follows the parent into train mode, so its BatchNorm layers
    normalise with batch statistics and keep updating their running mean/variance on every training
    forward pass (twice per step under SAM). The "frozen" network therefore drifts away from the
    pretrained landmark model, and its training-time outputs depend on the rest of the batch.

    With ``bn_mode="eval"`` (default, our fix) :meth:`train` ignores the requested mode and keeps the
    network in eval mode, so its outputs and buffers never change during training.

    Args:
        net: the landmark network (its parameters are frozen here).
        bn_mode: ``"eval"`` or ``"train_upstream"``.

    Shapes: as :class:`MobileFaceNet`. Why: docs/models.md#deviations-from-the-official-code.
    """

    def __init__(self, net: MobileFaceNet, bn_mode: BNMode = "eval") -> None:
        super().__init__()
        if bn_mode not in ("eval", "train_upstream"):
            raise ValueError(f"bn_mode must be 'eval' or 'train_upstream', got {bn_mode!r}")
        self.net = net
        self.bn_mode = bn_mode
        self.net.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> FrozenLandmarkNet:
        return super().train(mode and self.bn_mode == "train_upstream")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.net(x)


# --- published checkpoint layout ------------------------------------------------------------------------
# ``mobilefacenet_model_best.pth.tar`` (pytorch_face_landmark): {'state_dict': {'module.conv1.conv.weight',
# …, 'module.conv_3.model.0.conv.conv.weight', …, 'module.output_layer.conv_6_dw.conv.weight',
# 'module.output_layer.linear.weight', 'module.output_layer.bn.*'}, …}.
_RESIDUAL_STAGE = re.compile(r"^(conv_[345])\.model\.(.+)$")
_LANDMARK_HEAD = "output_layer."


def mobilefacenet_filter(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Published names → ours: ``conv_N.model.i`` → ``conv_N.i``; the GDC head ``output_layer.*`` dropped.

    Returns:
        (renamed state dict, dropped published keys).
    """
    renamed: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, tensor in state_dict.items():
        if key.startswith(_LANDMARK_HEAD):
            dropped.append(key)
            continue
        renamed[_RESIDUAL_STAGE.sub(r"\1.\2", key)] = tensor
    return renamed, dropped


def load_mobilefacenet_weights(
    model: MobileFaceNet | FrozenLandmarkNet, checkpoint: CheckpointSource
) -> LoadReport:
    """Load the published landmark checkpoint into ``model`` strictly.

    Args:
        model: a :class:`MobileFaceNet` or the :class:`FrozenLandmarkNet` around one.
        checkpoint: a path or a mapping: the ``*.pth.tar`` form ``{'state_dict': {'module.…': …}}`` or a
            bare state dict, with or without ``module.`` prefixes.

    Raises:
        CheckpointMismatchError: unless every parameter and buffer of the trunk was matched by name and
            shape (BatchNorm counters optional) and the only other keys are the GDC head's.
    """
    net = model.net if isinstance(model, FrozenLandmarkNet) else model
    state_dict, source = read_state_dict(checkpoint)
    renamed, dropped = mobilefacenet_filter(state_dict)
    return load_renamed(
        net,
        renamed,
        network="MobileFaceNet",
        source=source,
        key_format="pytorch_face_landmark",
        ignored=dropped,
    )
