"""IR-50 (ArcFace), the image branch of POSTER++/BTN: stem and stages 1–3 (docs/models.md#the-poster-body).

Built as face.evoLVe's ``Backbone(…, 'ir')`` with ``bottleneck_IR`` units (Deng et al., ArcFace), but
only up to the 256-channel stage: at 112×112 input it returns the 56/28/14-pixel stage maps the
POSTER++ body uses. Stage 4 and the 512·7·7→512 ``output_layer`` (≈12.8 M parameters, built but never
run by POSTER V2) are not built.

Our names (``stem``, ``stage1..3``, per unit ``residual``/``shortcut``) differ from the published ones;
:func:`load_ir50_weights` renames either published layout onto them and fails unless everything matched.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import nn

from fer_lightning.models.backbones.checkpoint import (
    CheckpointMismatchError,
    CheckpointSource,
    LoadReport,
    load_renamed,
    read_state_dict,
)

IR50_DEPTHS = (3, 4, 14)
IR50_WIDTHS = (64, 128, 256)


class IRUnit(nn.Module):
    """An improved-residual unit (ArcFace ``bottleneck_IR``): out = residual(x) + shortcut(x).

    residual = BN → Conv3×3 → PReLU → Conv3×3(stride) → BN (BN first, no ReLU after the sum). The
    shortcut is a 1×1 conv + BN when the width changes, else plain subsampling by ``stride`` (upstream
    writes it as ``MaxPool2d(1, stride)``, which has no weights and picks every stride-th pixel).

    Shapes: (B, in_channels, H, W) → (B, out_channels, ⌈H/stride⌉, ⌈W/stride⌉).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.residual = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1, bias=False),
            nn.PReLU(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut = (
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
            if in_channels != out_channels
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x[:, :, :: self.stride, :: self.stride] if self.shortcut is None else self.shortcut(x)
        return self.residual(x) + shortcut


class IR50(nn.Module):
    """Stem + three IR stages; the first unit of every stage has stride 2.

    Args:
        depths: units per stage; IR-50 has (3, 4, 14) (its fourth stage, 3 units, is not built).
        widths: channels per stage; IR-50 has (64, 128, 256). The stem has ``widths[0]`` channels.

    Shapes (IR-50 at 112×112): (B, 3, 112, 112) → stem (B, 64, 112, 112) → stage maps
    (B, 64, 56, 56), (B, 128, 28, 28), (B, 256, 14, 14). The input is not resized here; the POSTER++
    body resizes once for both branches.
    """

    def __init__(
        self, depths: tuple[int, int, int] = IR50_DEPTHS, widths: tuple[int, int, int] = IR50_WIDTHS
    ) -> None:
        super().__init__()
        if len(depths) != 3 or len(widths) != 3:
            raise ValueError(f"IR50 builds three stages; got depths={depths}, widths={widths}")
        self.depths = tuple(depths)
        self.widths = tuple(widths)
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.PReLU(widths[0]),
        )
        in_channels = widths[0]
        stages = []
        for depth, width in zip(depths, widths):
            units = [
                IRUnit(in_channels if index == 0 else width, width, 2 if index == 0 else 1)
                for index in range(depth)
            ]
            stages.append(nn.Sequential(*units))
            in_channels = width
        self.stage1, self.stage2, self.stage3 = stages

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) → the three stage maps at H/2, H/4, H/8."""
        x1 = self.stage1(self.stem(x))
        x2 = self.stage2(x1)
        return x1, x2, self.stage3(x2)


# --- published checkpoint layouts -----------------------------------------------------------------------
# face.evoLVe / InsightFace_Pytorch / POSTER V1 ``ir50.pth``: ``input_layer.{0,1,2}`` (conv, BN, PReLU),
# ``body.N.{shortcut_layer,res_layer}.M`` numbered straight through all 24 units, ``output_layer.*``.
# POSTER V2's converted file: the same, but units under ``body1.i``/``body2.i``/``body3.i``.
_V1_UNIT = re.compile(r"^body\.(\d+)\.(.+)$")
_V2_UNIT = re.compile(r"^body([123])\.(\d+)\.(.+)$")
_UNIT_PARTS = {"res_layer.": "residual.", "shortcut_layer.": "shortcut."}


def _rename_unit_part(rest: str) -> str:
    for published, ours in _UNIT_PARTS.items():
        if rest.startswith(published):
            return ours + rest.removeprefix(published)
    return rest  # left as is: it will show up as unexpected


def _rename_common(key: str) -> str | None:
    """Stem rename; ``None`` for the dead ``output_layer``; the key unchanged if not a common one."""
    if key.startswith("input_layer."):
        return "stem." + key.removeprefix("input_layer.")
    if key.startswith("output_layer."):
        return None
    return key


def ir50_v1_filter(
    state_dict: dict[str, torch.Tensor], depths: tuple[int, int, int] = IR50_DEPTHS
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """face.evoLVe / POSTER V1 names → ours (docs/models.md#loading-backbone-checkpoints).

    ``body.i`` → stage1.i for i < 3, stage2.(i−3) for i < 7, stage3.(i−7) for i < 21 (with IR-50
    depths); units past the third stage (``body.21``–``body.23``) and ``output_layer.*`` are dropped.

    Returns:
        (renamed state dict, dropped published keys).
    """
    boundaries = [sum(depths[: stage + 1]) for stage in range(3)]

    def unit_name(key: str) -> str | None:
        match = _V1_UNIT.match(key)
        if not match:
            return key
        index, rest = int(match.group(1)), match.group(2)
        stage = next((s for s, end in enumerate(boundaries) if index < end), None)
        if stage is None:
            return None  # stage 4 is not built
        unit = index - (boundaries[stage - 1] if stage else 0)
        return f"stage{stage + 1}.{unit}.{_rename_unit_part(rest)}"

    return _rename_keys(state_dict, unit_name)


def ir50_v2_filter(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """POSTER V2 names (``body1.i``/``body2.i``/``body3.i``) → ours; ``output_layer.*`` dropped."""

    def unit_name(key: str) -> str | None:
        match = _V2_UNIT.match(key)
        if not match:
            return key
        stage, unit, rest = match.groups()
        return f"stage{stage}.{unit}.{_rename_unit_part(rest)}"

    return _rename_keys(state_dict, unit_name)


def _rename_keys(
    state_dict: dict[str, torch.Tensor], unit_name: Callable[[str], str | None]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Apply a layout's IR-unit renaming (``unit_name``: our name, ``None`` to drop, or the key itself
    when it is not a unit key), then the stem/output-layer renaming every layout shares."""
    renamed: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, tensor in state_dict.items():
        new_key = unit_name(key)
        if new_key == key:
            new_key = _rename_common(key)
        if new_key is None:
            dropped.append(key)
        else:
            renamed[new_key] = tensor
    return renamed, dropped


def detect_ir50_format(state_dict: dict[str, torch.Tensor]) -> str:
    """``"v1"`` (``body.N``), ``"v2"`` (``body1/2/3``) or ``"ours"`` (``stage1/2/3``); raises otherwise."""
    found = {
        "v1": any(_V1_UNIT.match(key) for key in state_dict),
        "v2": any(_V2_UNIT.match(key) for key in state_dict),
        "ours": any(key.startswith(("stage1.", "stage2.", "stage3.")) for key in state_dict),
    }
    formats = [name for name, present in found.items() if present]
    if len(formats) != 1:
        sample = ", ".join(list(state_dict)[:5])
        raise CheckpointMismatchError(
            f"IR-50 checkpoint: cannot tell the key layout (found {formats or 'no'} unit names; "
            f"first keys: {sample})"
        )
    return formats[0]


_FORMAT_NAMES = {"v1": "face.evoLVe body.N", "v2": "POSTER V2 body1/2/3", "ours": "fer_lightning"}


def load_ir50_weights(model: IR50, checkpoint: CheckpointSource) -> LoadReport:
    """Load a published IR-50 checkpoint into ``model`` strictly.

    Args:
        model: the :class:`IR50` to fill.
        checkpoint: a path (``torch.load``-able) or a mapping; either a bare state dict or
            ``{'state_dict': …}``; ``module.`` prefixes are removed. Key layouts: face.evoLVe/POSTER V1
            (``body.0``–``body.23``), POSTER V2 (``body1/2/3``) or ours.

    Returns:
        A :class:`LoadReport` (matched == expected).

    Raises:
        CheckpointMismatchError: unless every parameter and buffer of the stem and the three stages was
            matched by name and shape (BatchNorm counters optional), and every other key is one of the
            known unbuilt modules (stage 4, ``output_layer``).
    """
    state_dict, source = read_state_dict(checkpoint)
    key_format = detect_ir50_format(state_dict)
    if key_format == "v1":
        renamed, dropped = ir50_v1_filter(state_dict, model.depths)
    elif key_format == "v2":
        renamed, dropped = ir50_v2_filter(state_dict)
    else:
        renamed, dropped = state_dict, []
    return load_renamed(
        model, renamed, network="IR-50", source=source, key_format=_FORMAT_NAMES[key_format], ignored=dropped
    )
