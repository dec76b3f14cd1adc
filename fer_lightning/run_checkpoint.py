"""Reading a checkpoint written by ``fer-lightning fit`` without letting it run code.

One reader for every command that opens such a file (``fit/test/validate --ckpt_path``, ``predict``,
``export``): ``torch.load(weights_only=True)``, so a file that needs pickled objects is refused instead
of executed, and a one-line :class:`~fer_lightning.errors.WeightsError` for anything that is not a
Lightning checkpoint. Imports only torch: the CLI reads checkpoint headers before building anything.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fer_lightning.errors import WeightsError


def read_run_checkpoint(
    path: str | os.PathLike, *, label: str = "checkpoint", mmap: bool = False, hint: str = ""
) -> dict:
    """The checkpoint dict at ``path``; ``label`` names it in errors (``--ckpt_path``), ``mmap`` maps
    the tensors instead of reading them (for callers that only look at the metadata), ``hint`` ends the
    error for a file that loads but holds no ``state_dict``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(
            f"{label} {path}: no such file; pass a .ckpt written by fer-lightning fit "
            "(e.g. runs/<name>/version_N/checkpoints/best-*.ckpt)"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightsError(
            f"{label} {path}: not a Lightning checkpoint, or one that cannot be read safely (torch.load "
            f"weights_only=True refused it: {first_line[:160]}); fer-lightning only opens checkpoints that "
            "hold plain data, so a file cannot run code when it is opened: pass a .ckpt written by "
            "fer-lightning fit (in its run folder's checkpoints/)"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise WeightsError(
            f"{label} {path}: not a Lightning checkpoint (no state_dict); pass a .ckpt written by "
            f"fer-lightning fit{hint}"
        )
    return checkpoint
