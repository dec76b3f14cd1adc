"""Bi-level routing attention models: BiFormer (Zhu et al., CVPR 2023) and a region-routed ViT-B/16
(docs/models.md#bi-level-routing-attention-biformer-routed-vit).

Both use :func:`fer_lightning.ops.routing_attention` (BRA): every query region attends to the tokens of
the ``topk`` key regions whose mean key is closest to its mean query (the routing is computed from
detached region means and shared by all heads), plus a 5×5 depthwise "LePE" convolution of V.

- ``biformer_tiny|small|base``: the hierarchical BiFormer, laid out as the official code so that its
  published ImageNet checkpoints load and give the official logits: a two-conv stem, four stages
  (56/28/14/7 tokens per side at 224) of blocks ``x + dwconv3×3(x)`` → pre-norm BRA → pre-norm MLP
  (ratio 3), 3×3 stride-2 conv downsampling, and plain dense attention with LePE in the last stage
  (too small to split into 7×7 regions), BatchNorm before global average pooling.
- ``routed_vit_b16``: ViT-B/16 with every block's attention routed (S = 7 regions per side, k = 2 at
  224, as the slides this model comes from describe), global average pooling instead of the class
  token (which belongs to no region). A timm ViT-B/16 state dict initialises it: QKV and projection are
  reused and LePE starts at zero, so each block starts as the dense block restricted to its routed regions.
- ``tiny`` and ``routed_vit_tiny``: the same two networks, narrow and shallow, at 64 px, for CPU runs on
  synthetic data only.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import stochastic_depth

from fer_lightning.errors import ConfigurationError
from fer_lightning.models.backbones.checkpoint import (
    CheckpointSource,
    LoadReport,
    load_renamed,
    read_state_dict,
)
from fer_lightning.models.base import FERClassifier
from fer_lightning.ops import routing_attention

log = logging.getLogger(__name__)

AttentionBackend = Literal["auto", "fast", "triton", "reference"]
ScaleMode = Literal["full_dim", "head_dim"]
PatchStem = Literal["linear", "conv"]

#: ``topk`` of a stage that uses plain dense attention with LePE (BiFormer's last stage, official ``-2``).
DENSE_STAGE = -2
#: ``topk`` of a routed block that attends to every token (routing off, same weights; an ablation).
ALL_TOKENS = -1


@dataclass(frozen=True)
class RoutingVariant:
    """Sizes of one network.

    Hierarchical (BiFormer): ``depths``/``dims`` per stage, heads = dim / ``head_dim``, ``topks`` per stage.
    Isotropic (routed ViT): one entry in ``depths``/``dims``, ``patch_size``, ``num_heads`` fixed.
    """

    kind: Literal["hierarchical", "isotropic"]
    depths: tuple[int, ...]
    dims: tuple[int, ...]
    topks: tuple[int, ...]
    regions: int
    mlp_ratio: float
    img_size: int
    head_dim: int = 32
    patch_size: int = 16
    num_heads: int = 12


VARIANTS: dict[str, RoutingVariant] = {
    # Official sizes (models/biformer.py of rayleizhu/BiFormer).
    "biformer_tiny": RoutingVariant(
        "hierarchical", (2, 2, 8, 2), (64, 128, 256, 512), (1, 4, 16, -2), 7, 3, 224
    ),
    "biformer_small": RoutingVariant(
        "hierarchical", (4, 4, 18, 4), (64, 128, 256, 512), (1, 4, 16, -2), 7, 3, 224
    ),
    "biformer_base": RoutingVariant(
        "hierarchical", (4, 4, 18, 4), (96, 192, 384, 768), (1, 4, 16, -2), 7, 3, 224
    ),
    # 64 px: stage maps 16/8/4/2, regions of 4×4, 2×2 and 1×1 tokens; a quarter to half of them routed.
    "tiny": RoutingVariant("hierarchical", (1, 1, 2, 1), (32, 64, 128, 256), (4, 4, 8, -2), 4, 3, 64),
    "routed_vit_b16": RoutingVariant(
        "isotropic", (12,), (768,), (2,), 7, 4, 224, patch_size=16, num_heads=12
    ),
    # 64 px, 8-pixel patches: an 8×8 grid in 16 regions of 2×2 tokens, 4 routed; heads of 32 as BiFormer's.
    "routed_vit_tiny": RoutingVariant("isotropic", (4,), (96,), (4,), 4, 4, 64, patch_size=8, num_heads=3),
}


def _init_linear(module: nn.Module) -> None:
    # The initialisation of the official code and of timm's ViT.
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)


class RoutedAttention(nn.Module):
    """BRA on a (B, H, W, C) map: QKV projection (with bias), routed attention, + LePE(V), projection.

    Args:
        dim: C; q, k and v are each C wide (BiFormer's qk_dim = dim), split into ``num_heads`` heads.
        regions: S, regions per side; H and W must be divisible by it.
        topk: routed regions per query region, or :data:`ALL_TOKENS` for dense attention.
        scale_mode: ``full_dim`` scales logits by C^-½ as BiFormer does (its checkpoints need it);
            ``head_dim`` by (C / heads)^-½ as a dense ViT does (a routed ViT reusing dense weights).
        lepe_kernel: side of the depthwise convolution on V added to the output; 0 disables it.
        backend: :func:`~fer_lightning.ops.routing_attention` implementation.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        regions: int,
        topk: int,
        scale_mode: ScaleMode = "full_dim",
        lepe_kernel: int = 5,
        backend: AttentionBackend = "auto",
    ) -> None:
        super().__init__()
        self.num_heads, self.regions, self.topk, self.backend = num_heads, regions, topk, backend
        self.scale = (dim if scale_mode == "full_dim" else dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.lepe = (
            nn.Conv2d(dim, dim, lepe_kernel, padding=lepe_kernel // 2, groups=dim)
            if lepe_kernel > 0
            else None
        )
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, dim = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        # Heads are consecutive channel groups, as in BiFormer's "(m c)" layout: (B, heads, H, W, d).
        q, k, v = (t.unflatten(-1, (self.num_heads, -1)).permute(0, 3, 1, 2, 4) for t in (q, k, v))
        if self.topk == ALL_TOKENS:
            out = F.scaled_dot_product_attention(
                q.flatten(2, 3), k.flatten(2, 3), v.flatten(2, 3), scale=self.scale
            ).unflatten(2, (height, width))
        else:
            out = routing_attention(q, k, v, self.regions, self.topk, scale=self.scale, backend=self.backend)
        out = out.permute(0, 2, 3, 1, 4).reshape(batch, height, width, dim)
        if self.lepe is not None:
            # V as a channels-last map: the depthwise conv runs 1.5-4x faster in it on CPU (fwd + bwd), and
            # its output permuted back to (B, H, W, C) is contiguous, so adding it copies nothing.
            values = v.permute(0, 1, 4, 2, 3).flatten(1, 2).contiguous(memory_format=torch.channels_last)
            out = out + self.lepe(values).permute(0, 2, 3, 1)
        return self.proj(out)


class DenseAttentionLePE(nn.Module):
    """BiFormer's last-stage attention (official ``topk=-2``): dense, 8 heads of C/8, QKV without bias,
    logits scaled by (C/8)^-½, and the 5×5 depthwise LePE applied to the block input (not to V)."""

    def __init__(self, dim: int, num_heads: int = 8, lepe_kernel: int = 5) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.lepe = nn.Conv2d(dim, dim, lepe_kernel, padding=lepe_kernel // 2, groups=dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, dim = x.shape
        q, k, v = self.qkv(x.flatten(1, 2)).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # default scale: head dim^-½
        out = out.transpose(1, 2).reshape(batch, height, width, dim)
        out = out + self.lepe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.proj(out)


class RoutingBlock(nn.Module):
    """Pre-norm transformer block on a (B, H, W, C) map; ``positional_conv``: BiFormer's 3×3 depthwise
    conv added before attention (the block then takes and returns (B, C, H, W), as the official one)."""

    def __init__(
        self,
        dim: int,
        attention: nn.Module,
        mlp_ratio: float,
        drop_path: float,
        positional_conv: bool,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim) if positional_conv else None
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = attention
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(mlp_ratio * dim))
        self.drop_path = drop_path

    def _residual(self, x: torch.Tensor, branch: torch.Tensor) -> torch.Tensor:
        return x + stochastic_depth(branch, self.drop_path, "row", self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pos_embed is not None:
            x = (x + self.pos_embed(x)).permute(0, 2, 3, 1)
        x = self._residual(x, self.attn(self.norm1(x)))
        x = self._residual(x, self.mlp(self.norm2(x)))
        return x.permute(0, 3, 1, 2) if self.pos_embed is not None else x


def _drop_path_rates(depth: int, rate: float) -> list[float]:
    """Stochastic depth rising linearly from 0 to ``rate`` over all blocks (BiFormer's and timm's rule)."""
    return [rate * i / (depth - 1) for i in range(depth)] if depth > 1 else [0.0] * depth


class BiFormerNetwork(nn.Module):
    """The hierarchical BiFormer; module names are the official ones but for the renames in
    :func:`rename_official_biformer`."""

    def __init__(
        self, variant: RoutingVariant, num_classes: int, drop_path_rate: float, backend: AttentionBackend
    ) -> None:
        super().__init__()
        dims = variant.dims
        stem = nn.Sequential(
            nn.Conv2d(3, dims[0] // 2, 3, stride=2, padding=1),
            nn.BatchNorm2d(dims[0] // 2),
            nn.GELU(),
            nn.Conv2d(dims[0] // 2, dims[0], 3, stride=2, padding=1),
            nn.BatchNorm2d(dims[0]),
        )
        self.downsample_layers = nn.ModuleList(
            [stem]
            + [
                nn.Sequential(
                    nn.Conv2d(dims[i], dims[i + 1], 3, stride=2, padding=1), nn.BatchNorm2d(dims[i + 1])
                )
                for i in range(len(dims) - 1)
            ]
        )
        rates = iter(_drop_path_rates(sum(variant.depths), drop_path_rate))
        self.stages = nn.ModuleList()
        for depth, dim, topk in zip(variant.depths, dims, variant.topks):
            blocks = []
            for _ in range(depth):
                if topk == DENSE_STAGE:
                    attention: nn.Module = DenseAttentionLePE(dim)
                else:
                    attention = RoutedAttention(
                        dim, dim // variant.head_dim, variant.regions, topk, "full_dim", backend=backend
                    )
                blocks.append(
                    RoutingBlock(dim, attention, variant.mlp_ratio, next(rates), positional_conv=True)
                )
            self.stages.append(nn.Sequential(*blocks))
        self.norm = nn.BatchNorm2d(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes)
        self.apply(_init_linear)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Channels-last maps throughout: each block's (B, C, H, W) ↔ (B, H, W, C) permutes are then free
        # views rather than copies, and depthwise convolutions run 1.5-4x faster on CPU (fwd + bwd).
        x = images.contiguous(memory_format=torch.channels_last)
        for downsample, stage in zip(self.downsample_layers, self.stages):
            x = stage(downsample(x))
        return self.head(self.norm(x).mean(dim=(2, 3)))


class RoutedViTNetwork(nn.Module):
    """ViT with routed attention in every block and global average pooling; timm's module names."""

    def __init__(
        self,
        variant: RoutingVariant,
        num_classes: int,
        img_size: int,
        drop_path_rate: float,
        backend: AttentionBackend,
        patch_stem: PatchStem = "linear",
    ) -> None:
        super().__init__()
        dim, depth = variant.dims[0], variant.depths[0]
        self.grid = img_size // variant.patch_size
        self.patch_embed = nn.Module()
        if patch_stem == "conv":
            # Xiao et al. 2021, "Early convolutions help transformers see better": 3×3 stride-2 convs
            # (BatchNorm, ReLU), channels doubling up to dim/2, then a 1×1 conv to dim.
            steps = int(math.log2(variant.patch_size))
            widths = [3] + [max(dim // 2 ** (steps - i), 8) for i in range(1, steps + 1)]
            layers: list[nn.Module] = []
            for c_in, c_out in itertools.pairwise(widths):
                layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out)]
                layers.append(nn.ReLU(inplace=True))
            self.patch_embed.stem = nn.Sequential(*layers)
            self.patch_embed.proj = nn.Conv2d(widths[-1], dim, 1)
        else:
            self.patch_embed.stem = nn.Identity()
            self.patch_embed.proj = nn.Conv2d(3, dim, variant.patch_size, stride=variant.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(
            *[
                RoutingBlock(
                    dim,
                    RoutedAttention(
                        dim, variant.num_heads, variant.regions, variant.topks[0], "head_dim", backend=backend
                    ),
                    variant.mlp_ratio,
                    rate,
                    positional_conv=False,
                )
                for rate in _drop_path_rates(depth, drop_path_rate)
            ]
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        self.apply(_init_linear)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Channels-last, so that the (B, C, H, W) → (B, H·W, C) token view after the stem is free.
        patches = self.patch_embed.proj(
            self.patch_embed.stem(images.contiguous(memory_format=torch.channels_last))
        )
        tokens = patches.flatten(2).transpose(1, 2) + self.pos_embed
        x = self.blocks(tokens.unflatten(1, (self.grid, self.grid)))  # (B, grid, grid, C)
        return self.head(self.norm(x).mean(dim=(1, 2)))


# ------------------------------------------------------------------------------------------ weights

_OFFICIAL_BIFORMER_RENAMES = (
    (re.compile(r"\.attn\.qkv\.qkv\."), ".attn.qkv."),  # BRA's QKVLinear wrapper
    (re.compile(r"\.attn\.wo\."), ".attn.proj."),
    (re.compile(r"\.mlp\.0\."), ".mlp.fc1."),  # official mlp = Sequential(Linear, Identity, GELU, Linear)
    (re.compile(r"\.mlp\.3\."), ".mlp.fc2."),
)


def rename_official_biformer(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official BiFormer names (rayleizhu/BiFormer ``models/biformer.py``) → ours."""
    renamed = {}
    for key, value in state_dict.items():
        for pattern, replacement in _OFFICIAL_BIFORMER_RENAMES:
            key = pattern.sub(replacement, key)
        renamed[key] = value
    return renamed


def rename_timm_vit(
    state_dict: Mapping[str, torch.Tensor], grid: int
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """timm ViT names → ours: the class token is dropped, its position removed from ``pos_embed`` and the
    rest resized (bicubic) to ``grid``×``grid`` when the checkpoint was made at another size.

    Returns (renamed state dict, dropped keys).
    """
    renamed, dropped = {}, []
    for key, value in state_dict.items():
        if key in ("cls_token", "dist_token", "reg_token"):
            dropped.append(key)
            continue
        if key == "pos_embed":
            side = math.isqrt(value.shape[1])
            positions = value[:, value.shape[1] - side * side :]  # without the class token's position
            if side != grid:
                maps = positions.reshape(1, side, side, -1).permute(0, 3, 1, 2)
                maps = F.interpolate(maps.float(), size=(grid, grid), mode="bicubic", align_corners=False)
                positions = maps.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).to(value.dtype)
            value = positions
        renamed[key] = value
    return renamed, dropped


def load_routing_weights(
    network: nn.Module, checkpoint: CheckpointSource, variant_name: str
) -> tuple[LoadReport, list[str]]:
    """Load an official BiFormer checkpoint (``biformer_*``) or a timm ViT-B/16 state dict
    (``routed_vit_*``) into ``network``, strictly (see ``backbones/checkpoint.py``).

    A classifier head of another class count is dropped and ours kept as initialised; in a routed ViT
    the LePE convolutions (which a dense ViT has not) start at zero.

    Returns:
        (load report, what was kept as initialised, described for the log line).
    """
    state_dict, source = read_state_dict(checkpoint)
    own = network.state_dict()
    notes: list[str] = []
    initialised: list[str] = []
    if isinstance(network, RoutedViTNetwork):
        renamed, ignored = rename_timm_vit(state_dict, network.grid)
        key_format = "timm ViT"
        lepe = [key for key in own if ".attn.lepe." in key]
        if lepe and not any(key in renamed for key in lepe):
            for block in network.blocks:
                nn.init.zeros_(block.attn.lepe.weight)
                nn.init.zeros_(block.attn.lepe.bias)
            initialised += lepe
            notes.append(f"LePE convolutions ({len(lepe)} tensors) start at zero")
    else:
        renamed, ignored = rename_official_biformer(state_dict), []
        key_format = "official BiFormer"
    head = renamed.get("head.weight")
    if head is not None and head.shape != own["head.weight"].shape:
        ignored += [key for key in ("head.weight", "head.bias") if key in renamed]
        renamed = {key: value for key, value in renamed.items() if not key.startswith("head.")}
        initialised += ["head.weight", "head.bias"]
        notes.append(
            f"its {head.shape[0]}-class head dropped, a new {own['head.weight'].shape[0]}-class head initialised"
        )
    report = load_renamed(
        network,
        renamed,
        network=variant_name,
        source=source,
        key_format=key_format,
        ignored=ignored,
        initialised=initialised,
    )
    return report, notes


# ------------------------------------------------------------------------------------------ model


class RoutingViT(FERClassifier):
    """BiFormer or a region-routed ViT as a LightningModule.

    Args:
        variant: ``biformer_tiny|biformer_small|biformer_base`` (official sizes), ``routed_vit_b16``
            (ViT-B/16 with routed attention), or ``tiny`` / ``routed_vit_tiny`` (narrow, 64 px, for CPU
            runs on synthetic data).
        weights: checkpoint to start from. ``biformer_*``: the published ImageNet checkpoint
            (``biformer_tiny_in1k.pth``, ``{"model": state_dict}`` with the official names, or a bare
            state dict). ``routed_vit_*``: a timm ViT state dict of the same width and depth
            (``vit_base_patch16_224`` for ``routed_vit_b16``). Loaded strictly; a head of another class
            count is replaced by a new one. ``None``: random initialisation.
        img_size: input side the model is built for (default: the variant's); must equal
            ``data.init_args.img_size``. Every routed stage's token grid must be divisible by ``regions``.
        regions: S, regions per side of every routed stage (default: the variant's, 7 for the
            published sizes).
        topk: routed regions per query region: one number for every routed stage, or BiFormer's
            per-stage list (``-2``: that stage uses dense attention with LePE, official last stage).
            ``-1``: attend to every token (routing off, same weights). Default: the variant's.
        drop_path_rate: stochastic depth of the last block (linear from 0 over the blocks).
        attention_backend: ``auto`` | ``fast`` | ``triton`` | ``reference`` (BiFormer's gather), passed
            to :func:`~fer_lightning.ops.routing_attention`.
        patch_stem: routed ViTs only: ``linear`` (ViT's one patch-sized convolution, what timm ViT
            weights fit) or ``conv`` (ours: 3×3 stride-2 convolutions with BatchNorm and ReLU, then a
            1×1 convolution to the width; for training from random weights on little data).
        **kwargs: :class:`~fer_lightning.models.base.FERClassifier` arguments.
    """

    def __init__(
        self,
        variant: str = "biformer_tiny",
        weights: str | None = None,
        img_size: int | None = None,
        regions: int | None = None,
        topk: int | list[int] | None = None,
        drop_path_rate: float = 0.0,
        attention_backend: AttentionBackend = "auto",
        patch_stem: PatchStem = "linear",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        spec = self._resolve_variant(variant, img_size, regions, topk)
        if patch_stem not in ("linear", "conv"):
            raise ConfigurationError(f"model patch_stem={patch_stem!r}: expected 'linear' or 'conv'")
        if patch_stem == "conv":
            if spec.kind != "isotropic" or spec.patch_size & (spec.patch_size - 1):
                raise ConfigurationError(
                    f"model patch_stem=conv is for routed ViTs with a power-of-two patch size; {variant} "
                    + ("has BiFormer's own convolutional stem" if spec.kind != "isotropic" else "does not")
                )
            if weights is not None:
                raise ConfigurationError(
                    "model patch_stem=conv cannot load weights: timm ViT files hold a linear patch embedding"
                )
        self.variant = variant
        self.img_size = spec.img_size
        if spec.kind == "hierarchical":
            self.network: nn.Module = BiFormerNetwork(
                spec, self.num_classes, drop_path_rate, attention_backend
            )
        else:
            self.network = RoutedViTNetwork(
                spec, self.num_classes, spec.img_size, drop_path_rate, attention_backend, patch_stem
            )
        if weights is not None:
            report, notes = load_routing_weights(self.network, weights, variant)
            log.info("%s: %s", variant, "; ".join([str(report), *notes]))

    @staticmethod
    def _resolve_variant(
        variant: str, img_size: int | None, regions: int | None, topk: int | Sequence[int] | None
    ) -> RoutingVariant:
        """The variant with the overrides applied, after checking that its regions tile every routed grid."""
        if variant not in VARIANTS:
            raise ConfigurationError(f"model variant={variant!r}: expected one of {', '.join(VARIANTS)}")
        spec = VARIANTS[variant]
        if img_size is not None:
            spec = replace(spec, img_size=img_size)
        if regions is not None:
            spec = replace(spec, regions=regions)
        if topk is not None:
            topks = [topk] if isinstance(topk, int) else list(topk)
            if len(topks) == 1:  # one value for every routed stage; dense stages stay dense
                topks = [t if t == DENSE_STAGE else topks[0] for t in spec.topks]
            if len(topks) != len(spec.topks):
                raise ConfigurationError(
                    f"model topk={topk}: {variant} has {len(spec.topks)} stages, give one value or {len(spec.topks)}"
                )
            spec = replace(spec, topks=tuple(topks))
        for stage, grid in enumerate(_token_grids(spec)):
            topk_here = spec.topks[stage]
            if topk_here == DENSE_STAGE:
                if spec.kind == "isotropic":
                    raise ConfigurationError(
                        f"model topk={DENSE_STAGE} (dense stage) is for BiFormer stages only"
                    )
                continue
            if spec.regions < 1 or grid % spec.regions:
                raise ConfigurationError(
                    f"model regions={spec.regions} must divide the {grid}×{grid} token grid of "
                    f"{'stage ' + str(stage + 1) if spec.kind == 'hierarchical' else 'the ViT'} at img_size "
                    f"{spec.img_size}: choose regions among {_divisors(grid)} or another img_size"
                )
            if topk_here != ALL_TOKENS and not 1 <= topk_here <= spec.regions**2:
                raise ConfigurationError(
                    f"model topk={topk_here} must be in [1, regions²={spec.regions**2}] (or -1: every token)"
                )
        return spec

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, img_size, img_size), normalised like ImageNet → logits (B, num_classes)."""
        if images.shape[-2:] != (self.img_size, self.img_size):
            raise ConfigurationError(
                f"{self.variant} was built for {self.img_size}×{self.img_size} images, got "
                f"{images.shape[-2]}×{images.shape[-1]}: set model.init_args.img_size to data.init_args.img_size"
            )
        return self.network(images)


def _token_grids(spec: RoutingVariant) -> list[int]:
    """Tokens per side of every stage (one for a ViT); BiFormer's stride-2 convs round up."""
    if spec.kind == "isotropic":
        if spec.img_size % spec.patch_size:
            raise ConfigurationError(
                f"model img_size={spec.img_size} must be a multiple of the patch size {spec.patch_size}"
            )
        return [spec.img_size // spec.patch_size]
    grids, side = [], math.ceil(math.ceil(spec.img_size / 2) / 2)
    for _ in spec.dims:
        grids.append(side)
        side = math.ceil(side / 2)
    return grids


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


__all__ = ["VARIANTS", "RoutingViT", "load_routing_weights", "rename_official_biformer", "rename_timm_vit"]
