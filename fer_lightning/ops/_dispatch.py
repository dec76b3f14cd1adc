"""Backend selection and autocast handling shared by the ops in this package.

Every op takes ``backend``: ``"reference"`` (plain PyTorch, the definition), ``"fast"`` (the exact
blocked/fused path that needs nothing but torch), ``"triton"`` (the Triton kernels) or ``"auto"``
(Triton on CUDA, the fast path everywhere else). Triton is optional: this module only asks whether it
is installed, and the kernels are imported on first use.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from contextvars import ContextVar

import torch
from torch.nn.attention import SDPBackend

BACKENDS = ("auto", "triton", "fast", "reference")

# Looked up once, without importing triton, so that importing the ops stays cheap and works without it.
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def triton_interpreter_enabled() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``, set before import)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_forced_backend: ContextVar[str | None] = ContextVar("fer_lightning_forced_backend", default=None)


@contextlib.contextmanager
def forced_backend(backend: str) -> Iterator[None]:
    """Run every op in the body with ``backend``, whatever the calling module asked for.

    Exporters (ONNX, TorchScript) can trace only plain PyTorch: ``forced_backend("reference")`` makes a
    model that holds ``backend="auto"`` export through the ops' reference formulation.
    """
    if backend not in BACKENDS or backend == "auto":
        raise ValueError(f"forced backend must be one of {BACKENDS[1:]}, got {backend!r}")
    token = _forced_backend.set(backend)
    try:
        yield
    finally:
        _forced_backend.reset(token)


def resolve_backend(backend: str, device: torch.device) -> str:
    """Return the concrete backend ("triton", "fast" or "reference") for tensors on ``device``.

    Inside :func:`forced_backend` the forced one replaces ``backend``.

    Raises:
        ValueError: ``backend`` is not one of :data:`BACKENDS`.
        RuntimeError: ``backend="triton"`` where Triton cannot run (not installed, or CPU tensors
            without the interpreter).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    backend = _forced_backend.get() or backend
    if backend == "auto":
        return "triton" if device.type == "cuda" and TRITON_INSTALLED else "fast"
    if backend == "triton":
        if not TRITON_INSTALLED:
            raise RuntimeError(
                "backend='triton' needs the triton package, which is not installed; "
                "use backend='fast' (exact, pure PyTorch) or 'auto'"
            )
        if device.type == "cpu" and not triton_interpreter_enabled():
            raise RuntimeError(
                "backend='triton' on CPU tensors runs only in Triton's interpreter: set TRITON_INTERPRET=1 "
                "before triton is imported, or use backend='fast'"
            )
    return backend


def cast_to_autocast_dtype(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Cast floating-point ``tensors`` to the autocast dtype when autocast is on for their device.

    Custom ops are opaque to autocast, so the public functions cast their inputs here and then run the
    implementation with autocast disabled: every backend computes in, and returns, the autocast dtype.
    """
    device_type = tensors[0].device.type
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if t.is_floating_point() else t for t in tensors)


@contextlib.contextmanager
def autocast_disabled(device_type: str) -> Iterator[None]:
    """Run the body without autocast, so the implementation sees exactly the dtypes it was given."""
    with torch.autocast(device_type, enabled=False):
        yield


def check_same_float_dtype(**tensors: torch.Tensor) -> None:
    """Raise a ValueError unless all ``tensors`` share one floating-point dtype and one device."""
    dtypes = {t.dtype for t in tensors.values()}
    devices = {t.device for t in tensors.values()}
    if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
        described = ", ".join(f"{name}: {t.dtype}" for name, t in tensors.items())
        raise ValueError(f"expected one floating-point dtype for all inputs, got {described}")
    if len(devices) != 1:
        described = ", ".join(f"{name}: {t.device}" for name, t in tensors.items())
        raise ValueError(f"expected all inputs on one device, got {described}")


def fused_sdpa_backends(device: torch.device) -> list[SDPBackend]:
    """SDPA kernels the fast paths may use on ``device``.

    On CPU only the fused flash kernel streams over keys; the math fallback would materialise the full
    logits, which is what the fast paths exist to avoid, so it is excluded there (an unsupported input
    then fails loudly). On other devices PyTorch chooses among all of its kernels.
    """
    if device.type == "cpu":
        return [SDPBackend.FLASH_ATTENTION]
    return [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def with_unit_feature_stride(x: torch.Tensor) -> torch.Tensor:
    """``x``, copied only if its last dim is strided: PyTorch's fused CPU attention needs stride 1 there."""
    return x if x.stride(-1) == 1 else x.contiguous()
