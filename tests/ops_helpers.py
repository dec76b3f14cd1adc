"""Shared by the kernel tests: skip markers and the per-dtype tolerances against the fp32 reference."""

from __future__ import annotations

import pytest
import torch

from fer_lightning.ops import _dispatch

TRITON_RUNS_ON_CPU = _dispatch.TRITON_INSTALLED and _dispatch.triton_interpreter_enabled()
needs_triton_cpu = pytest.mark.skipif(not TRITON_RUNS_ON_CPU, reason="needs triton with TRITON_INTERPRET=1")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# (atol, rtol) of a backend in this dtype against the fp32 reference.
TOLERANCES = {
    torch.float32: (2e-5, 1e-4),
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (6e-2, 5e-2),
}
