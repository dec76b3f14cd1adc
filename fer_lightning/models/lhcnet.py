"""LHC-Net: local multi-head channel self-attention on a ResNet-34 (Pecoraro, Basile, Bono, Gallo,
"Local Multi-Head Channel Self-Attention for Facial Expression Recognition", 2022; docs/models.md#lhc-net).

An LHC module attends over **channels**, and **locally**: head i sees a horizontal band of R/h whole
rows of the R×R map. Five modules sit after the ResNet's stem and after the last block of each of its
four stages. The modular training protocol trains the plain ResNet first (three fits), inserts the
modules (:attr:`LHCNet.init_from` copies the trained weights), trains everything, and finally trains
only one gate scalar per module (``trainable: gates_only``). Test-time augmentation averages the class
probabilities of 62 weighted views (:func:`tta_views`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from fer_lightning.errors import ConfigurationError
from fer_lightning.models.backbones.checkpoint import CheckpointSource, load_renamed, read_state_dict
from fer_lightning.models.base import FERClassifier

Trainable = Literal["all", "gates_only"]

#: The published configuration: heads and embedding size of each of the five modules (ResNet-34 at 224).
PAPER_HEADS = (8, 8, 7, 7, 1)
PAPER_EMBED_DIMS = (196, 196, 56, 14, 25)
#: Initial gate logits w of the controller stage (gate = 1 + tanh(w)), from the official code.
PAPER_CONTROLLER_INIT = (0.0, 0.0, 0.0, -1.0, -0.5)


class LHCModule(nn.Module):
    """One LHC module on a (B, C, R, R) map; the output has the same shape.

    For head i, with band_i the positions of rows [i·R/h, (i+1)·R/h) (row-major, r = R²/h of them):

        Q_i = W_i band_i(AvgPool₃(x)),  K_i = W_i band_i(MaxPool₃(x))      W_i: r → d, shared by Q and K
        S_i = Q_i K_iᵀ                                                     (C × C channel scores)
        g_i = sigmoid(W_p mean_row(S_i))                                   W_p: C → C, shared by the heads
        O_i = softmax(S_i / d^(norm_c + g_i)) band_i(AvgPool₃(Conv_k(x)))
        out = x + gate · O,   gate = 1 + tanh(w) with a controller, else 1

    Pooling is stride 1 with "same" padding (average pooling averages the in-image values only, as
    Keras does). The divisor d^(1 + g) ("dynamic scaling") lies between d and d², not √d. There is no
    output projection, normalisation or dropout.

    Args:
        channels: C.
        resolution: R (the map is R × R).
        heads: h; R² must be divisible by h (in every published configuration h divides R).
        embed_dim: d.
        pool_size: window of the query/key/value pooling.
        value_kernel: kernel of the value convolution.
        norm_c: the constant exponent of the scaling.
        gate_init: initial w of the controller gate; ``None``: no gate (plain residual).
    """

    def __init__(
        self,
        channels: int,
        resolution: int,
        heads: int,
        embed_dim: int,
        pool_size: int = 3,
        value_kernel: int = 3,
        norm_c: float = 1.0,
        gate_init: float | None = None,
    ) -> None:
        super().__init__()
        if heads < 1 or (resolution * resolution) % heads:
            raise ConfigurationError(
                f"LHC module on a {resolution}×{resolution} map: {heads} heads do not split its "
                f"{resolution * resolution} positions evenly; choose a head count that divides R² = "
                f"{resolution * resolution} (model.init_args.lhc_heads)"
            )
        if pool_size % 2 == 0 or value_kernel % 2 == 0:
            raise ConfigurationError(
                f"LHC module: pool_size {pool_size} and value_kernel {value_kernel} must be odd ('same' padding)"
            )
        self.channels, self.resolution, self.heads, self.embed_dim = channels, resolution, heads, embed_dim
        self.band_size = resolution * resolution // heads
        self.norm_c = norm_c
        self.pool_size = pool_size
        # One r → d map per head, stored stacked: (h, d, r) and (h, d).
        self.qk_weight = nn.Parameter(torch.empty(heads, embed_dim, self.band_size))
        self.qk_bias = nn.Parameter(torch.zeros(heads, embed_dim))
        self.score_gate = nn.Linear(channels, channels)  # W_p
        self.value_conv = nn.Conv2d(channels, channels, value_kernel, padding=value_kernel // 2)
        if gate_init is None:
            self.register_parameter("gate", None)
        else:
            self.gate = nn.Parameter(torch.tensor(float(gate_init)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Keras' Dense/Conv2D defaults: Glorot-uniform weights, zero biases.
        bound = math.sqrt(6.0 / (self.band_size + self.embed_dim))
        nn.init.uniform_(self.qk_weight, -bound, bound)
        nn.init.zeros_(self.qk_bias)
        nn.init.xavier_uniform_(self.score_gate.weight)
        nn.init.zeros_(self.score_gate.bias)
        nn.init.xavier_uniform_(self.value_conv.weight)
        nn.init.zeros_(self.value_conv.bias)

    def _bands(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, C, R, R) → (B, h, C, r): head i gets the row-major positions of its R/h rows."""
        batch = maps.shape[0]
        return maps.reshape(batch, self.channels, self.heads, self.band_size).transpose(1, 2)

    def _pool(self, maps: torch.Tensor, kind: str) -> torch.Tensor:
        padding = self.pool_size // 2
        if kind == "max":
            return F.max_pool2d(maps, self.pool_size, stride=1, padding=padding)
        return F.avg_pool2d(maps, self.pool_size, stride=1, padding=padding, count_include_pad=False)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """O of the docstring: the attended values, (B, C, R, R)."""
        if x.shape[1:] != (self.channels, self.resolution, self.resolution):
            raise ConfigurationError(
                f"LHC module built for ({self.channels}, {self.resolution}, {self.resolution}) maps got "
                f"{tuple(x.shape[1:])}; the model's input_size must equal data.img_size"
            )
        query = self._project(self._bands(self._pool(x, "avg")))
        key = self._project(self._bands(self._pool(x, "max")))
        value = self._bands(self._pool(self.value_conv(x), "avg"))
        scores = query @ key.transpose(-1, -2)  # (B, h, C, C)
        dynamic = torch.sigmoid(self.score_gate(scores.mean(dim=-1)))  # (B, h, C)
        divisor = torch.pow(float(self.embed_dim), self.norm_c + dynamic).unsqueeze(-1)
        attended = (scores / divisor).softmax(dim=-1) @ value  # (B, h, C, r)
        return attended.transpose(1, 2).reshape_as(x)

    def _project(self, bands: torch.Tensor) -> torch.Tensor:
        """(B, h, C, r) → (B, h, C, d) with each head's own W_i."""
        return torch.einsum("bhcr,hdr->bhcd", bands, self.qk_weight) + self.qk_bias.unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attended = self.attention(x)
        if self.gate is None:
            return x + attended
        return x + (1.0 + torch.tanh(self.gate)) * attended

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, resolution={self.resolution}, heads={self.heads} "
            f"({self.resolution // self.heads if self.resolution % self.heads == 0 else '-'} rows each), "
            f"embed_dim={self.embed_dim}, gated={self.gate is not None}"
        )


# ---- test-time augmentation ---------------------------------------------------------------------


@dataclass(frozen=True)
class TTAView:
    """One augmented view: horizontal flip, then a central crop of ``zoom`` resized back, then a shift
    by (``shift_x``, ``shift_y``) as a fraction of the side, then a rotation by ``rotation`` radians about
    the centre; ``weight`` in the weighted mean of the views' class probabilities."""

    zoom: float = 1.0
    rotation: float = 0.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    flip: bool = False
    weight: float = 1.0

    @property
    def is_plain(self) -> bool:
        return (
            self.zoom == 1.0
            and self.rotation == 0.0
            and self.shift_x == 0.0
            and self.shift_y == 0.0
            and not self.flip
        )


#: The official shifts are 10 px of a 224 px input; as a fraction of the side they apply at any size.
TTA_SHIFT = 10 / 224


def tta_views() -> list[TTAView]:
    """The official grid: the plain view (weight 3), 53 grid views (rotation {0, ±0.4} rad × x-shift
    {0, ±10 px} × y-shift {0, ±10 px} × flip, without the identity) and 6 crop views (central 0.9 crop,
    rotation {0, ±0.15} rad × flip), each of weight 1: 62 in all."""
    views = [TTAView(weight=3.0)]
    for rotation in (0.0, 0.4, -0.4):
        for shift_x in (0.0, TTA_SHIFT, -TTA_SHIFT):
            for shift_y in (0.0, TTA_SHIFT, -TTA_SHIFT):
                for flip in (False, True):
                    view = TTAView(rotation=rotation, shift_x=shift_x, shift_y=shift_y, flip=flip)
                    if not view.is_plain:
                        views.append(view)
    for rotation in (0.0, 0.15, -0.15):
        for flip in (False, True):
            views.append(TTAView(zoom=0.9, rotation=rotation, flip=flip))
    return views


def apply_view(images: torch.Tensor, view: TTAView) -> torch.Tensor:
    """``images`` (B, C, S, S) seen through ``view``: one bilinear resampling, edge pixels repeated
    outside the image (Keras' "nearest" fill)."""
    if view.is_plain:
        return images
    # The sampling grid maps each output position to its source, in [-1, 1] coordinates: the inverse of
    # flip → zoom → shift → rotate, i.e. rotate back, shift back, shrink towards the centre, flip.
    cos, sin = math.cos(view.rotation), math.sin(view.rotation)
    rotate_back = torch.tensor([[cos, sin, 0.0], [-sin, cos, 0.0], [0.0, 0.0, 1.0]])
    shift_back = torch.tensor([[1.0, 0.0, -2 * view.shift_x], [0.0, 1.0, -2 * view.shift_y], [0.0, 0.0, 1.0]])
    flip_x = -1.0 if view.flip else 1.0
    zoom_and_flip = torch.tensor([[flip_x * view.zoom, 0.0, 0.0], [0.0, view.zoom, 0.0], [0.0, 0.0, 1.0]])
    source_of_output = zoom_and_flip @ shift_back @ rotate_back
    theta = source_of_output[:2].to(images).expand(images.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def tta_probabilities(
    classify: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    views: Sequence[TTAView],
    plain_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted mean over ``views`` of softmax(``classify``(view of ``images``)), (B, classes).
    ``plain_logits``: the plain view's logits when already computed."""
    total = None
    for view in views:
        logits = (
            plain_logits if view.is_plain and plain_logits is not None else classify(apply_view(images, view))
        )
        weighted = view.weight * logits.float().softmax(dim=-1)
        total = weighted if total is None else total + weighted
    return total / sum(view.weight for view in views)


# ---- the network --------------------------------------------------------------------------------


@dataclass
class InitReport:
    """What ``init_from`` did: every tensor of the checkpoint loaded, and the model's tensors it did not
    have (LHC modules or gates inserted fresh) left as initialised."""

    source: str
    loaded: int
    expected: int
    new: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"init_from {self.source}: loaded {self.loaded}/{self.expected} tensors"
        if self.new:
            # Keys look like lhc.<module>.<tensor>: name the tensors once and the modules once.
            modules = sorted({".".join(key.split(".")[:2]) for key in self.new})
            tensors = sorted({key.split(".", 2)[2] for key in self.new})
            text += (
                f"; {len(self.new)} new, left as initialised ({', '.join(tensors)} of {', '.join(modules)})"
            )
        return text


#: The stages of a timm/torchvision ResNet, each followed by one LHC module (the stem comes first).
_STEM = ("conv1", "bn1", "act1", "maxpool")
_STAGES = ("layer1", "layer2", "layer3", "layer4")


class LHCNet(FERClassifier):
    """ResNet + five LHC modules + the 4096-1024 MLP head.

    Args:
        backbone: a timm ResNet with basic or bottleneck blocks (``resnet34`` as published; torchvision
            and timm share its parameter names).
        pretrained: timm's ImageNet weights (needs them in the local Hugging Face cache or a download).
            The official code starts from the Keras ``classification_models`` pre-activation ResNet34-v2
            weights, which exist for Keras only: docs/models.md#lhc-net.
        backbone_weights: a local state dict of the backbone (torchvision's or timm's ``resnet34``;
            the ``fc`` classifier is ignored), loaded strictly.
        backbone_kwargs: further ``timm.create_model`` arguments (``channels``, ``stem_width`` for a
            narrow variant).
        input_size: the side of the input images (``data.img_size``); fixes each module's R.
        lhc: insert the five modules (the modular protocol's first stage trains without them).
        lhc_heads, lhc_embed_dims: h and d of each module (published: 8/8/7/7/1 and 196/196/56/14/25).
        lhc_pool_size, lhc_value_kernel, lhc_norm_c: shared by the five modules.
        controller: initial gate logits w of the five modules (gate = 1 + tanh(w); the paper's
            controller stage uses [0, 0, 0, -1, -0.5]); ``None``: plain residuals, no gates.
        head_dims: hidden widths of the MLP head (each Linear + ReLU + Dropout).
        head_dropout: dropout after each hidden layer.
        trainable: ``all``, or ``gates_only`` (the controller stage: only the five gates learn; the
            backbone's BatchNorm layers stay in eval mode, as Keras runs frozen BatchNorm layers).
        init_from: a checkpoint (a ``fer-lightning fit`` ``.ckpt`` of this model, or a state dict) to
            start from: weights only, every tensor of the file must fit, and only LHC module tensors may
            be missing from it (inserted fresh). Not kept in the checkpoint's hyperparameters.
        tta: ``test`` also reports ``test/acc_tta``, the accuracy of the 62-view TTA (:func:`tta_views`);
            ``predict`` returns TTA probabilities. Not kept in the checkpoint's hyperparameters either,
            so ``--model.init_args.tta true`` applies when testing a checkpoint trained without it.
        **kwargs: :class:`~fer_lightning.models.base.FERClassifier` arguments.
    """

    def __init__(
        self,
        backbone: str = "resnet34",
        pretrained: bool = False,
        backbone_weights: str | None = None,
        backbone_kwargs: dict | None = None,
        input_size: int = 224,
        lhc: bool = True,
        lhc_heads: Sequence[int] = PAPER_HEADS,
        lhc_embed_dims: Sequence[int] = PAPER_EMBED_DIMS,
        lhc_pool_size: int = 3,
        lhc_value_kernel: int = 3,
        lhc_norm_c: float = 1.0,
        controller: Sequence[float] | None = None,
        head_dims: Sequence[int] = (4096, 1024),
        head_dropout: float = 0.4,
        trainable: Trainable = "all",
        init_from: str | None = None,
        tta: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.trainable = trainable
        # Not saved with the checkpoint, because a later --ckpt_path re-applies the saved hyperparameters
        # over the command line: init_from is a weights-only starting point this run's checkpoints
        # already hold (its file must not be read again), and tta is chosen per evaluation
        # (`test --ckpt_path … --model.init_args.tta true` must not be overridden by the fit's false).
        for evaluation_choice in ("init_from", "tta"):
            self.hparams.pop(evaluation_choice, None)
        if trainable not in ("all", "gates_only"):
            raise ConfigurationError(f"model trainable={trainable!r}: expected 'all' or 'gates_only'")
        if trainable == "gates_only" and (not lhc or controller is None):
            raise ConfigurationError(
                "model trainable=gates_only trains the LHC gates only: set model.init_args.lhc: true and "
                "model.init_args.controller (e.g. [0, 0, 0, -1, -0.5])"
            )
        for name, values in (
            ("lhc_heads", lhc_heads),
            ("lhc_embed_dims", lhc_embed_dims),
            ("controller", controller),
        ):
            if values is not None and len(values) != len(_STAGES) + 1:
                raise ConfigurationError(
                    f"model {name}={list(values)}: expected 5 values, one per LHC module"
                )
        self.backbone = _build_resnet(backbone, pretrained, backbone_kwargs)
        if backbone_weights is not None:
            load_backbone_weights(self.backbone, backbone_weights)
        shapes = _feature_shapes(self.backbone, input_size)
        self.lhc = nn.ModuleList()
        if lhc:
            gates = controller if controller is not None else [None] * len(shapes)
            for (channels, resolution), heads, embed_dim, gate in zip(
                shapes, lhc_heads, lhc_embed_dims, gates, strict=True
            ):
                self.lhc.append(
                    LHCModule(
                        channels,
                        resolution,
                        heads,
                        embed_dim,
                        pool_size=lhc_pool_size,
                        value_kernel=lhc_value_kernel,
                        norm_c=lhc_norm_c,
                        gate_init=gate,
                    )
                )
        layers: list[nn.Module] = []
        width = shapes[-1][0]
        for hidden in head_dims:
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(head_dropout)]
            width = hidden
        layers.append(nn.Linear(width, self.num_classes))
        self.head = nn.Sequential(*layers)
        self.init_report: InitReport | None = None
        if init_from is not None:
            self.init_report = self.load_initial_weights(init_from)
            rank_zero_info(str(self.init_report))
        if trainable == "gates_only":
            for name, param in self.named_parameters():
                param.requires_grad_(name.endswith(".gate"))
        self.tta = tta
        self.tta_accuracy = MulticlassAccuracy(self.num_classes, average="micro")
        self._tta_views = tta_views()

    # ---- weights ---------------------------------------------------------------------------------

    def load_initial_weights(self, checkpoint: CheckpointSource) -> InitReport:
        """Load a previous stage's weights (see ``init_from``); raises ``CheckpointMismatchError``
        (a :class:`~fer_lightning.errors.WeightsError`) unless the file fits."""
        state_dict, source = read_state_dict(checkpoint)
        own = self.state_dict()
        new = [key for key in own if key.startswith("lhc.") and key not in state_dict]
        # Strict for everything else: the fresh tensors count as present with their current values.
        completed = {**{key: own[key] for key in new}, **state_dict}
        report = load_renamed(
            self, completed, network="LHCNet", source=source, key_format="fer-lightning LHCNet", ignored=[]
        )
        return InitReport(source, report.matched - len(new), report.expected, new)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.trainable == "gates_only":
            self.backbone.eval()  # frozen BatchNorm keeps its statistics, as in the official controller stage
        return self

    # ---- forward -----------------------------------------------------------------------------------

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The final feature map (B, C, R, R), with the LHC modules applied."""
        x = images
        for name in _STEM:
            x = getattr(self.backbone, name)(x)
        for index, stage in enumerate((None, *_STAGES)):
            if stage is not None:
                x = getattr(self.backbone, stage)(x)
            if self.lhc:
                x = self.lhc[index](x)
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).mean(dim=(2, 3)))

    # ---- test-time augmentation ------------------------------------------------------------------

    def tta_probabilities(
        self, images: torch.Tensor, plain_logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Class probabilities averaged over the 62 weighted views (B, classes)."""
        return tta_probabilities(self, images, self._tta_views, plain_logits)

    def _evaluation_step(self, split: str, batch) -> None:
        images, labels = batch
        logits = self(images)
        self.update_evaluation(split, logits, labels)
        if split == "test" and self.tta:
            self.tta_accuracy.update(self.tta_probabilities(images, logits), labels)

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        if self.tta:
            # compute() sums the counts of every DDP rank, as the other test metrics do.
            self._log_synced("test/acc_tta", self.tta_accuracy.compute())
            self.tta_accuracy.reset()

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        if not self.tta:
            return super().predict_step(batch, batch_idx)
        images = batch[0] if isinstance(batch, list | tuple) else batch
        return self.tta_probabilities(images)


def _build_resnet(name: str, pretrained: bool, kwargs: dict | None) -> nn.Module:
    # Imported here: timm (and the wandb it imports) cost every CLI start, --help included.
    import timm

    network = timm.create_model(name, pretrained=pretrained, num_classes=0, global_pool="", **(kwargs or {}))
    missing = [part for part in (*_STEM, *_STAGES) if not hasattr(network, part)]
    if missing:
        raise ConfigurationError(
            f"model backbone={name!r} is not a ResNet (no {', '.join(missing)}); LHCNet places its modules "
            "after a ResNet's stem and four stages: use resnet34 (published), resnet18, resnet50, …"
        )
    return network


def _feature_shapes(backbone: nn.Module, input_size: int) -> list[tuple[int, int]]:
    """(channels, side) after the stem and after each stage, for square inputs of ``input_size``."""
    was_training = backbone.training
    backbone.eval()  # a dry pass must not move BatchNorm running statistics
    shapes = []
    with torch.no_grad():
        x = torch.zeros(1, 3, input_size, input_size)
        for name in _STEM:
            x = getattr(backbone, name)(x)
        shapes.append((x.shape[1], x.shape[2]))
        for stage in _STAGES:
            x = getattr(backbone, stage)(x)
            shapes.append((x.shape[1], x.shape[2]))
    backbone.train(was_training)
    return shapes


def load_backbone_weights(backbone: nn.Module, checkpoint: CheckpointSource):
    """Strictly load a torchvision/timm ResNet state dict into ``backbone`` (its ``fc`` is dropped)."""
    state_dict, source = read_state_dict(checkpoint)
    ignored = [key for key in state_dict if key.startswith("fc.")]
    renamed = {key: value for key, value in state_dict.items() if not key.startswith("fc.")}
    report = load_renamed(
        backbone,
        renamed,
        network="ResNet",
        source=source,
        key_format="torchvision/timm ResNet",
        ignored=ignored,
    )
    rank_zero_info(f"LHCNet backbone: {report}")
    return report
