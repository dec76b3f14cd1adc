"""Synthetic datasets cached on disk, keyed by format, size, seed, options and generator version."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fer_lightning.data.synthetic.output import GENERATOR_VERSION, MANIFEST_NAME
from fer_lightning.data.synthetic.registry import write_synthetic, writer_for


def default_cache_dir() -> Path:
    """``$FER_LIGHTNING_CACHE`` if set, else ``~/.cache/fer_lightning``."""
    configured = os.environ.get("FER_LIGHTNING_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "fer_lightning"


# Options that change how generation looks, not what is generated; kept out of the cache key.
_NON_CONTENT_OPTIONS = frozenset({"progress", "overwrite"})


def synthetic_dataset_path(
    fmt: str, num_images: int, seed: int = 0, cache_dir: str | os.PathLike | None = None, **options: Any
) -> Path:
    """Where :func:`ensure_synthetic_dataset` keeps this dataset (whether or not it exists yet)."""
    writer_for(fmt)
    content_options = {key: value for key, value in options.items() if key not in _NON_CONTENT_OPTIONS}
    key = json.dumps({"version": GENERATOR_VERSION, "options": content_options}, sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return base / "synthetic" / f"{fmt}-n{num_images}-s{seed}-{digest}"


def ensure_synthetic_dataset(
    fmt: str, num_images: int, seed: int = 0, cache_dir: str | os.PathLike | None = None, **options: Any
) -> Path:
    """Return the folder of a cached synthetic dataset, generating it on first use.

    The folder is ``<cache>/synthetic/<fmt>-n<N>-s<seed>-<hash of options and generator version>`` with
    ``<cache>`` = ``cache_dir`` or ``$FER_LIGHTNING_CACHE`` or ``~/.cache/fer_lightning``. Generation goes
    into a temporary sibling folder that is renamed into place when complete, so concurrent processes
    (DDP ranks, dataloader workers) never see a half-written dataset; if two generate at once, the first
    rename wins and the other discards its copy.
    """
    target = synthetic_dataset_path(fmt, num_images, seed, cache_dir, **options)
    if (target / MANIFEST_NAME).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    scratch.chmod(0o755)  # mkdtemp makes it private; a cache may be shared between users
    try:
        options = {key: value for key, value in options.items() if key != "overwrite"}
        write_synthetic(fmt, scratch, num_images=num_images, seed=seed, **options)
        try:
            os.rename(scratch, target)
        except OSError:
            # Another process finished first (the target now exists and is not empty): use theirs.
            if not (target / MANIFEST_NAME).is_file():
                raise
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
    return target
