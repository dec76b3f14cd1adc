"""Strict loading of published backbone checkpoints (docs/models.md#loading-backbone-checkpoints).

Each backbone file has one renaming function per published key layout (timm's ``checkpoint_filter_fn``
idea): it maps the published names onto ours and says which published tensors are deliberately dropped
(modules we do not build). :func:`load_renamed` then loads the result and **fails** unless every tensor
the module expects was matched by name and shape and nothing unexplained was left over, because the
upstream loaders' silent partial loads are how POSTER++'s IR-50 body ended up randomly initialised.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from fer_lightning.errors import WeightsError

CheckpointSource = str | os.PathLike | Mapping[str, object]

# How many key names an error message or report lists before it says "…".
_SHOWN_KEYS = 5

# BatchNorm's step counter: only read when momentum=None (never here), and absent from checkpoints saved
# before PyTorch 0.4.1, so it is loaded when present but never required.
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)


class CheckpointMismatchError(WeightsError):
    """A checkpoint does not cover a module exactly (missing, wrong-shape or unexpected tensors)."""


@dataclass
class LoadReport:
    """What a strict backbone load did.

    Attributes:
        source: file path, or ``"<state dict>"`` for an in-memory mapping.
        key_format: the published key layout that was recognised (e.g. ``"face.evoLVe body.N"``).
        matched: expected tensors loaded (name and shape matched); equals ``expected`` after a load.
        expected: tensors the module requires (parameters and buffers, BatchNorm counters excepted).
        ignored: published keys dropped on purpose (modules we do not build), in checkpoint order.
        optional_missing: optional buffers (BatchNorm counters) the checkpoint did not have.
    """

    source: str
    key_format: str
    matched: int
    expected: int
    ignored: list[str] = field(default_factory=list)
    optional_missing: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"loaded {self.matched}/{self.expected} tensors from {self.source} ({self.key_format} keys)"
        if self.ignored:
            text += f"; ignored {len(self.ignored)} of unbuilt modules ({_preview(self.ignored)})"
        return text


def _preview(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return shown + (", …" if len(keys) > _SHOWN_KEYS else "")


def read_state_dict(checkpoint: CheckpointSource) -> tuple[dict[str, torch.Tensor], str]:
    """A flat ``{name: tensor}`` from a path or a mapping, with any ``module.`` prefixes removed.

    Accepts a bare state dict, a training checkpoint ``{'state_dict': {...}, 'epoch': …}`` (the
    ``*.pth.tar`` form) or a release file ``{'model': {...}}`` (BiFormer's). Files are read with
    ``weights_only=True``: a checkpoint that pickles other objects is refused rather than executed;
    extract its ``state_dict`` once in a trusted session.

    Returns:
        (state dict, source description for messages).

    Raises:
        WeightsError: the file is missing, is not a PyTorch checkpoint, or pickles other objects.
        CheckpointMismatchError: the file holds something other than a state dict.
    """
    if isinstance(checkpoint, Mapping):
        source, loaded = "<state dict>", checkpoint
    else:
        source = os.fspath(checkpoint)
        if not os.path.isfile(source):
            raise WeightsError(
                f"weights file not found: {source}; give the path of the downloaded checkpoint"
            )
        try:
            loaded = torch.load(source, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            # The weights-only unpickler also fails on bytes that were never a pickle (an HTML page):
            # only "Unsupported global" means a real checkpoint that pickles Python objects.
            if "unsupported global" not in str(error).lower():
                raise _not_a_checkpoint(source, error) from error
            raise WeightsError(
                f"{source}: refused by torch.load(weights_only=True), it pickles Python objects besides "
                "tensors; extract its state_dict once in a trusted session and save that"
            ) from error
        except Exception as error:
            # A text file, an image, a truncated download: torch only says e.g. "KeyError: 101".
            raise _not_a_checkpoint(source, error) from error
        if not isinstance(loaded, Mapping):
            raise CheckpointMismatchError(f"{source}: expected a state dict, found {type(loaded).__name__}")
    # Training checkpoints nest it under "state_dict"; BiFormer's releases under "model".
    nested = next(
        (loaded[key] for key in ("state_dict", "model") if isinstance(loaded.get(key), Mapping)), None
    )
    if nested is not None:
        loaded = nested
    state_dict: dict[str, torch.Tensor] = {}
    for key, value in loaded.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointMismatchError(
                f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor; is this a state dict?"
            )
        # nn.DataParallel saves every name with a "module." prefix.
        state_dict[key.removeprefix("module.")] = value
    return state_dict, source


def _not_a_checkpoint(source: str, error: Exception) -> WeightsError:
    return WeightsError(
        f"{source}: not a PyTorch checkpoint (torch.load failed with {type(error).__name__}); expected a "
        "state dict saved with torch.save (.pth/.pt/.pth.tar); is the download complete?"
    )


def load_renamed(
    module: nn.Module,
    renamed: Mapping[str, torch.Tensor],
    *,
    network: str,
    source: str,
    key_format: str,
    ignored: list[str],
    initialised: Collection[str] = (),
) -> LoadReport:
    """Load ``renamed`` (already in our names) into ``module`` if it covers it exactly, else raise.

    ``initialised``: tensors of ``module`` that keep their initial values (a new classifier head) and
    are therefore neither expected nor accepted in ``renamed``.

    Raises:
        CheckpointMismatchError: one line with the matched/expected counts and the first missing,
            wrong-shape and unexpected keys. Nothing is loaded in that case.
    """
    own = module.state_dict()
    own = {key: value for key, value in own.items() if key not in initialised}
    expected = [key for key in own if not key.endswith(_OPTIONAL_SUFFIXES)]
    missing = [key for key in expected if key not in renamed]
    wrong_shape = [
        f"{key} {tuple(renamed[key].shape)}≠{tuple(own[key].shape)}"
        for key in own
        if key in renamed and renamed[key].shape != own[key].shape
    ]
    unexpected = [key for key in renamed if key not in own]
    matched = sum(1 for key in expected if key in renamed and renamed[key].shape == own[key].shape)
    if missing or wrong_shape or unexpected:
        problems = [
            f"{label} {len(keys)} [{_preview(keys)}]"
            for label, keys in (
                ("missing", missing),
                ("wrong shape", wrong_shape),
                ("unexpected", unexpected),
            )
            if keys
        ]
        raise CheckpointMismatchError(
            f"{network} checkpoint {source} ({key_format} keys) does not fit: matched {matched}/{len(expected)} "
            f"expected tensors; " + "; ".join(problems)
        )
    module.load_state_dict(dict(renamed), strict=False)
    optional_missing = [key for key in own if key.endswith(_OPTIONAL_SUFFIXES) and key not in renamed]
    return LoadReport(source, key_format, matched, len(expected), list(ignored), optional_missing)
