"""The format writers by name, and one entry point that writes any of them."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from fer_lightning.data.synthetic.affectnet import write_affectnet_csv, write_affectnet_npy
from fer_lightning.data.synthetic.aihub import write_aihub
from fer_lightning.data.synthetic.fer2013 import write_fer2013, write_ferplus
from fer_lightning.data.synthetic.output import SyntheticSummary
from fer_lightning.data.synthetic.rafdb import write_rafdb

#: Writers by format name; each takes ``(out_dir, num_images=..., seed=..., **options)``.
WRITERS: dict[str, Callable[..., SyntheticSummary]] = {
    "rafdb": write_rafdb,
    "affectnet_csv": write_affectnet_csv,
    "affectnet_npy": write_affectnet_npy,
    "aihub": write_aihub,
    "fer2013": write_fer2013,
    "ferplus": write_ferplus,
}


def writer_for(fmt: str) -> Callable[..., SyntheticSummary]:
    if fmt not in WRITERS:
        raise ValueError(f"unknown synthetic format {fmt!r}; known formats: {', '.join(sorted(WRITERS))}")
    return WRITERS[fmt]


def write_synthetic(
    fmt: str, out_dir: str | os.PathLike, num_images: int, seed: int = 0, **options: Any
) -> SyntheticSummary:
    """Write a synthetic dataset of format ``fmt`` (a key of :data:`WRITERS`) into ``out_dir``."""
    return writer_for(fmt)(out_dir, num_images=num_images, seed=seed, **options)
