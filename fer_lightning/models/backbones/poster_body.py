"""The POSTER++ two-branch body, shared by POSTER++ and BTN (Mao et al., arXiv 2301.12149).

    images (B, 3, 224, 224) ─ resize to 112 ─┬─ IR-50 stages ─ conv1/2/3 (3×3, s2) ─→ F₁, F₂, F₃   (image)
                                             └─ MobileFaceNet (frozen) ─→ L₁, L₂, last_face_conv(·) = L₃
    S_l = CrossAttentionBlock_l(F_l, L_l)            key/value from the image, query = landmark map
    tokens = [embed₁(S₁), embed₂(S₂), embed₃(S₃)]   3 × 49 tokens of width D
    logits = head(SE(ViT([CLS; tokens] + pos)[CLS]))

Shapes of the paper variant: F_l, L_l, S_l = (B, 64, 28, 28), (B, 128, 14, 14), (B, 256, 7, 7);
tokens (B, 147, 768), with CLS (B, 148, 768); logits (B, N).

The official code's dead modules (IR-50 ``output_layer``, the GDC landmark head, the ViT's
``patch_embed``/``CON1``/``IRLinear1/2``/``eca_block``/per-block ``conv``) are not built, so the
parameter count here is the count of what runs (see :mod:`fer_lightning.models.complexity`).
Options, shapes and deviations from the official code: docs/models.md#the-poster-body.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from fer_lightning.errors import WeightsError
from fer_lightning.models.backbones.checkpoint import LoadReport
from fer_lightning.models.backbones.ir50 import IR50, load_ir50_weights
from fer_lightning.models.backbones.mobilefacenet import (
    BNMode,
    FrozenLandmarkNet,
    MobileFaceNet,
    load_mobilefacenet_weights,
)

log = logging.getLogger(__name__)

INTERPOLATE_MODES = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")


class CrossAttentionBlock(nn.Module):
    """Global cross-attention of a query map into an image map, then an MLP (docs/models.md#the-poster-body).

    Upstream calls it window attention (``WindowAttentionGlobal`` + ``feedforward``), but the window is
    the whole map, so every query attends to every image position. Per sample, with X the image tokens
    and Y the query tokens, both (T, C) with T = window_size²:

        X̂ = LayerNorm(X);  K, V = Linear(C → 2C)(X̂)
        Q = Y                                   raw query features: no projection, no norm  [code]
        Z = Linear(C → C)(concat_h softmax(Q_h K_hᵀ / √d_h + B_h) V_h)     B_h: Swin relative-position bias
        U = X̂ + DropPath(γ₁ ⊙ Z)                 the shortcut is the *normalised* map  [code]
        S = U + DropPath(γ₂ ⊙ MLP(LayerNorm(U)))  MLP ratio 4, GELU; γ₁, γ₂ layer scales

    Convention: both inputs and the output are maps (B, C, H, W) with H = W = ``window_size``. In
    POSTER++ the image side is F_l and the query side L_l; BTN's MLA (eqs. 1–2) calls it with the image
    side conv_a(S₁) and the query side S₂.

    Args:
        dim: channels C (image and query side alike).
        num_heads: heads; head dim = C / num_heads (32 in POSTER++).
        window_size: side of the (square) maps; sets the (2w−1)² × heads bias table.
        drop_path: stochastic-depth rate of both residual branches.
        mlp_ratio: MLP hidden width / C.
        layer_scale_init: initial value of γ₁ and γ₂ (1e-5 upstream, so each block starts near X̂).
        qkv_bias: bias of the key/value projection.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        drop_path: float = 0.0,
        mlp_ratio: float = 4.0,
        layer_scale_init: float = 1e-5,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.window_size = window_size
        self.norm_image = nn.LayerNorm(dim)
        self.key_value = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # Derived from window_size, so not saved in checkpoints.
        self.register_buffer(
            "relative_position_index", _relative_position_index(window_size), persistent=False
        )
        self.proj = nn.Linear(dim, dim)
        self.gamma_attention = nn.Parameter(torch.full((dim,), layer_scale_init))
        # timm is imported where used: at module level it costs every CLI start, --help included.
        from timm.layers import DropPath, Mlp

        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.gamma_mlp = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def relative_position_bias(self) -> torch.Tensor:
        """(heads, T, T) additive attention bias, looked up from the table."""
        tokens = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(tokens, tokens, self.num_heads).permute(2, 0, 1)

    def forward(self, image: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """image (B, C, w, w), query (B, C, w, w) → (B, C, w, w)."""
        batch, channels, height, width = image.shape
        if query.shape != image.shape or height != self.window_size or width != self.window_size:
            raise ValueError(
                f"CrossAttentionBlock(dim={self.dim}, window_size={self.window_size}) expects image and query "
                f"maps of shape (B, {self.dim}, {self.window_size}, {self.window_size}); got {tuple(image.shape)} "
                f"and {tuple(query.shape)}"
            )
        tokens = height * width
        head_dim = channels // self.num_heads
        x = self.norm_image(image.flatten(2).transpose(1, 2))  # X̂, (B, T, C)
        key, value = (
            self.key_value(x)
            .reshape(batch, tokens, 2, self.num_heads, head_dim)
            .permute(2, 0, 3, 1, 4)
            .unbind(0)
        )  # each (B, heads, T, d)
        q = query.flatten(2).transpose(1, 2).reshape(batch, tokens, self.num_heads, head_dim).transpose(1, 2)
        # SDPA's default scale 1/√d equals upstream's pre-scaled query.
        attended = F.scaled_dot_product_attention(
            q.to(key.dtype), key, value, attn_mask=self.relative_position_bias().to(key.dtype)
        )
        attended = self.proj(attended.transpose(1, 2).reshape(batch, tokens, channels))
        x = x + self.drop_path(self.gamma_attention * attended)
        x = x + self.drop_path(self.gamma_mlp * self.mlp(self.norm_mlp(x)))
        return x.transpose(1, 2).reshape(batch, channels, height, width)


def _relative_position_index(window_size: int) -> torch.Tensor:
    """(T, T) index into the (2w−1)² bias table for every pair of positions (Swin Transformer)."""
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
    coords = coords.flatten(1)  # (2, T): row, column of each token
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)  # (T, T, 2) ≥ 0
    return relative[..., 0] * (2 * window_size - 1) + relative[..., 1]


class PyramidTokenEmbedding(nn.Module):
    """Each level map S_l → tokens on the coarsest level's grid, concatenated on the token axis.

    A level whose map is 2^k times the coarsest side gets k 3×3 stride-2 convs (padding 1, no
    activation between them); the coarsest level gets a 1×1 conv (upstream's ``PatchEmbed``). Paper:
    S₁ 28 → 14 → 7, S₂ 14 → 7, S₃ 1×1; each (B, 768, 7, 7) → 49 tokens; concatenated (B, 147, 768).
    """

    def __init__(self, level_dims: tuple[int, ...], level_sizes: tuple[int, ...], embed_dim: int) -> None:
        super().__init__()
        grid = level_sizes[-1]
        self.levels = nn.ModuleList()
        for dim, size in zip(level_dims, level_sizes):
            steps = math.log2(size / grid)
            if steps != int(steps):
                raise ValueError(f"level size {size} is not a power-of-two multiple of the grid {grid}")
            if steps == 0:
                self.levels.append(nn.Sequential(nn.Conv2d(dim, embed_dim, 1)))
            else:
                convs = [
                    nn.Conv2d(dim if i == 0 else embed_dim, embed_dim, 3, stride=2, padding=1)
                    for i in range(int(steps))
                ]
                self.levels.append(nn.Sequential(*convs))
        self.num_tokens = len(level_dims) * grid * grid

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """[S₁, S₂, S₃] maps → (B, num_tokens, D)."""
        return torch.cat(
            [embed(level).flatten(2).transpose(1, 2) for embed, level in zip(self.levels, levels)], dim=1
        )


class SEGate(nn.Module):
    """Squeeze-and-excitation on a vector: x ⊙ σ(W₂ ReLU(W₁ x)), W₁, W₂ ∈ ℝ^{D×D} (upstream ``SE_block``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(x))))


class FusionViT(nn.Module):
    """CLS + learned positions → pre-norm ViT blocks → LayerNorm → CLS → SE gate → Linear.

    Upstream: depth 2, 8 heads (head dim 96), MLP ratio 4, qkv bias, LayerNorm eps 1e-6, no dropout or
    drop-path; returns logits. Shapes: tokens (B, T, D) → logits (B, N).
    """

    def __init__(
        self,
        num_tokens: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        num_classes: int,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens + 1, embed_dim))
        self.blocks = nn.Sequential(
            *[
                Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
                for _ in range(depth)
            ]
        )
        self.norm = norm_layer(embed_dim)
        self.se = SEGate(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # The official ViT's init (timm's legacy ViT recipe, Linear std 0.01).
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)

    def forward_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, D) → SE-gated CLS feature (B, D)."""
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        x = self.blocks(torch.cat([cls, tokens], dim=1) + self.pos_embed)
        return self.se(self.norm(x)[:, 0])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(tokens))


@dataclass(frozen=True)
class PosterBodyConfig:
    """Sizes of a :class:`PosterBody` variant. ``ir_widths`` are also the level dims C₁..C₃, so the
    landmark net's first two widths must equal ``ir_widths[:2]`` (the queries are its raw maps)."""

    ir_depths: tuple[int, int, int]
    ir_widths: tuple[int, int, int]
    landmark_channels: tuple[int, int, int]
    landmark_depths: tuple[int, int, int]
    level_heads: tuple[int, int, int]
    embed_dim: int
    vit_depth: int
    vit_heads: int
    mlp_ratio: float = 4.0
    layer_scale_init: float = 1e-5
    # Upstream: torch.linspace(0, 0.5, 5)[:3] = (0, 0.125, 0.25) for levels 1..3.
    drop_path_max: float = 0.5
    drop_path_steps: int = 5
    input_size: int = 112


POSTER_BODY_VARIANTS: dict[str, PosterBodyConfig] = {
    # The official POSTER++ sizes (docs/models.md#the-poster-body).
    "paper": PosterBodyConfig(
        ir_depths=(3, 4, 14),
        ir_widths=(64, 128, 256),
        landmark_channels=(64, 128, 512),
        landmark_depths=(4, 6, 2),
        level_heads=(2, 4, 8),
        embed_dim=768,
        vit_depth=2,
        vit_heads=8,
    ),
    # Same modules, narrow and shallower, at 64×64 (levels 16/8/4, 3 × 16 tokens): a training step at
    # batch 32 takes a fraction of a second on two CPU cores, for runs on synthetic data. Never a
    # substitute for the paper model in results. The IR stages keep 13 of IR-50's 21 units: an IR unit
    # has a single PReLU (initial slope 0.25, nearly linear), and with (1, 1, 2) units a randomly
    # initialised body stayed at majority-class accuracy on the synthetic faces for 1,200 steps, while
    # (3, 4, 6) reached 58 % test accuracy in the same steps (Adam 3e-4, batch 32).
    "tiny": PosterBodyConfig(
        ir_depths=(3, 4, 6),
        ir_widths=(16, 32, 64),
        landmark_channels=(16, 32, 128),
        landmark_depths=(1, 1, 1),
        level_heads=(1, 2, 4),
        embed_dim=96,
        vit_depth=1,
        vit_heads=4,
        input_size=64,
    ),
}


class PosterBody(nn.Module):
    """The POSTER++ network minus the loss: images → levels S₁..S₃ → logits (docs/models.md#the-poster-body).

    Args:
        num_classes: N, the size of the ViT head.
        variant: a key of :data:`POSTER_BODY_VARIANTS` (``paper`` or ``tiny``).
        ir50_weights: path to an IR-50 checkpoint (face.evoLVe ``body.N`` or POSTER V2 ``body1/2/3`` keys),
            loaded strictly by :func:`~fer_lightning.models.backbones.ir50.load_ir50_weights`.
        mobilefacenet_weights: path to ``mobilefacenet_model_best.pth.tar``, loaded strictly.
            Without either: random initialisation and one warning (nothing is downloaded).
        landmark_bn_mode: ``eval`` (default) keeps the frozen landmark net in eval mode; ``train_upstream``
            reproduces the official code's drifting BatchNorm statistics (see :class:`FrozenLandmarkNet`).
        interpolate_mode: ``F.interpolate`` mode for resizing inputs to 112×112 (``nearest`` as upstream,
            which keeps every second pixel of a 224 input). Inputs already 112×112 pass unchanged.

    Attributes:
        level_dims: (C₁, C₂, C₃), (64, 128, 256) for the paper variant.
        level_sizes: (H₁, H₂, H₃) of the square level maps, (28, 14, 7).
        load_reports: what was loaded, by backbone name.
    """

    def __init__(
        self,
        num_classes: int,
        variant: str = "paper",
        ir50_weights: str | None = None,
        mobilefacenet_weights: str | None = None,
        landmark_bn_mode: BNMode = "eval",
        interpolate_mode: str = "nearest",
    ) -> None:
        super().__init__()
        if variant not in POSTER_BODY_VARIANTS:
            raise ValueError(
                f"unknown PosterBody variant {variant!r}; choose from {sorted(POSTER_BODY_VARIANTS)}"
            )
        if interpolate_mode not in INTERPOLATE_MODES:
            raise ValueError(f"interpolate_mode must be one of {INTERPOLATE_MODES}, got {interpolate_mode!r}")
        config = POSTER_BODY_VARIANTS[variant]
        if tuple(config.landmark_channels[:2]) != tuple(config.ir_widths[:2]):
            raise ValueError(
                "landmark_channels[:2] must equal ir_widths[:2]: the landmark maps are the queries"
            )
        self.config = config
        self.variant = variant
        self.num_classes = num_classes
        self.interpolate_mode = interpolate_mode
        self.input_size = config.input_size
        self.level_dims: tuple[int, int, int] = tuple(config.ir_widths)
        self.level_sizes: tuple[int, int, int] = tuple(
            config.input_size // 2 ** (level + 2) for level in range(3)
        )
        self.embed_dim = config.embed_dim

        self.ir50 = IR50(config.ir_depths, config.ir_widths)
        # conv1/2/3 upstream: 3×3 stride-2 convs giving F₁..F₃ at half the stage resolution.
        self.image_convs = nn.ModuleList(
            [nn.Conv2d(dim, dim, 3, stride=2, padding=1) for dim in self.level_dims]
        )
        self.landmark_net = FrozenLandmarkNet(
            MobileFaceNet(config.landmark_channels, config.landmark_depths), bn_mode=landmark_bn_mode
        )
        # Trainable 512 → 256 conv turning conv_6_sep into the level-3 query L₃.
        self.last_face_conv = nn.Conv2d(config.landmark_channels[2], self.level_dims[2], 3, padding=1)
        drop_path = torch.linspace(0, config.drop_path_max, config.drop_path_steps)[:3].tolist()
        self.cross_attention = nn.ModuleList(
            [
                CrossAttentionBlock(
                    dim,
                    heads,
                    size,
                    drop_path=rate,
                    mlp_ratio=config.mlp_ratio,
                    layer_scale_init=config.layer_scale_init,
                )
                for dim, heads, size, rate in zip(
                    self.level_dims, config.level_heads, self.level_sizes, drop_path
                )
            ]
        )
        self.token_embedding = PyramidTokenEmbedding(self.level_dims, self.level_sizes, config.embed_dim)
        self.vit = FusionViT(
            self.token_embedding.num_tokens,
            config.embed_dim,
            config.vit_depth,
            config.vit_heads,
            num_classes,
            config.mlp_ratio,
        )
        self.load_reports: dict[str, LoadReport] = {}
        self._load_backbones(ir50_weights, mobilefacenet_weights)

    def _load_backbones(self, ir50_weights: str | None, mobilefacenet_weights: str | None) -> None:
        for name, display_name, path, module, load in (
            ("ir50", "IR-50", ir50_weights, self.ir50, load_ir50_weights),
            (
                "mobilefacenet",
                "MobileFaceNet",
                mobilefacenet_weights,
                self.landmark_net,
                load_mobilefacenet_weights,
            ),
        ):
            if path is None:
                continue
            try:
                self.load_reports[name] = load(module, path)
            except WeightsError as error:
                # The loaders know the file, not which option named it.
                raise type(error)(f"model.init_args.{name}_weights: {error}") from error
            log.info("%s: %s", display_name, self.load_reports[name])
        unloaded = [
            f"{name} ({argument}=None)"
            for name, argument, path in (
                ("IR-50", "ir50_weights", ir50_weights),
                ("MobileFaceNet", "mobilefacenet_weights", mobilefacenet_weights),
            )
            if path is None
        ]
        if unloaded:
            warnings.warn(
                f"PosterBody(variant={self.variant!r}): no pretrained weights loaded for {', '.join(unloaded)}; "
                "starting from random initialisation (the frozen landmark branch then gives random features). "
                "Nothing is downloaded: pass checkpoint paths, e.g. model.init_args.ir50_weights in the YAML.",
                UserWarning,
                stacklevel=3,
            )

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → (B, 3, 112, 112) with ``interpolate_mode``; 112×112 input is returned as is."""
        size = (self.input_size, self.input_size)
        if tuple(images.shape[-2:]) == size:
            return images
        align = {"align_corners": False} if self.interpolate_mode in ("bilinear", "bicubic") else {}
        return F.interpolate(images, size=size, mode=self.interpolate_mode, **align)

    def image_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Resized images (B, 3, 112, 112) → [F₁, F₂, F₃] (image branch)."""
        return [conv(stage) for conv, stage in zip(self.image_convs, self.ir50(x))]

    def landmark_queries(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Resized images (B, 3, 112, 112) → [L₁, L₂, L₃] (landmark branch)."""
        tap3, tap4, features = self.landmark_net(x)
        return [tap3, tap4, self.last_face_conv(features)]

    def extract_levels(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Images (B, 3, H, W) → [S₁, S₂, S₃], each (B, C_l, H_l, H_l)."""
        x = self.resize(images)
        features, queries = self.image_features(x), self.landmark_queries(x)
        return [block(f, q) for block, f, q in zip(self.cross_attention, features, queries)]

    def classify(self, levels: list[torch.Tensor]) -> torch.Tensor:
        """[S₁, S₂, S₃] → logits (B, N) (P_VIT in the BTN paper)."""
        return self.vit(self.token_embedding(levels))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) → the SE-gated CLS feature (B, D) that the linear head would classify
        (ARBEx's embedding; D = 768 in the paper variant)."""
        return self.vit.forward_features(self.token_embedding(self.extract_levels(images)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) → logits (B, N)."""
        return self.classify(self.extract_levels(images))
