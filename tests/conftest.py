"""Test-wide settings. Must run before anything imports triton or wandb."""

import os

# Triton kernels run on CPU tensors only in interpreter mode, which is read when triton is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Synthetic datasets go to a per-session cache, never the user's ~/.cache."""
    cache = tmp_path_factory.getbasetemp() / "fer_lightning_cache"
    monkeypatch.setenv("FER_LIGHTNING_CACHE", str(cache))
