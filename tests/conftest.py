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


@pytest.fixture(scope="session")
def tiny_lambda_sweep(tmp_path_factory):
    """A real 3-run local λ sweep of the tiny BTN (tests/sweep_helpers.py), made once per session:
    (sweep folder, what the runner printed). Read-only for the tests that use it."""
    from sweep_helpers import run_tiny_lambda_sweep

    out = tmp_path_factory.mktemp("btn_lambda_sweep")
    with pytest.MonkeyPatch.context() as patch:  # the runs' synthetic faces go to the session's cache
        patch.setenv("FER_LIGHTNING_CACHE", str(tmp_path_factory.getbasetemp() / "fer_lightning_cache"))
        printed = run_tiny_lambda_sweep(out)
    return out, printed
