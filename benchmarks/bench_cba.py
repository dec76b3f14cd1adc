"""Benchmark class batch attention: forward+backward time and peak memory per backend.

Backends: ``reference`` (eager PyTorch, materialises the (N, B, B) logits), ``compiled`` (its
``torch.compile``), ``fast`` (fused ``scaled_dot_product_attention``) and ``triton`` (CUDA only).
Ratios are against ``reference``. D = 49 (BTN's 7×7 maps). The reference is skipped where its logits
alone would not leave room in memory (B = 16384: 3 tensors of N·B² fp32 ≈ 22–26 GB on a 24 GB machine).

    python benchmarks/bench_cba.py                       # everything (several minutes on 2 cores)
    python benchmarks/bench_cba.py --quick --cases B4096-N7 --backends reference,fast
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_utils import benchmark_main, forward_backward_step, measure

from fer_lightning.ops import class_batch_attention

DIM = 49
CASES = {
    f"B{batch}-N{classes}": (batch, classes) for batch in (64, 144, 1024, 4096, 16384) for classes in (7, 8)
}
BACKENDS = ["reference", "compiled", "fast", "triton"]
# The eager reference holds about three (N, B, B) fp32 tensors at its peak (logits, weights, a gradient).
MAX_REFERENCE_BYTES = 12 * 2**30


def skip_reason(case: str, backend: str, device: str) -> str | None:
    batch, classes = CASES[case]
    if backend == "triton" and device != "cuda":
        return "Triton runs only on CUDA (CPU interpreter is for tests)"
    needed = 3 * classes * batch**2 * 4
    if backend in ("reference", "compiled") and needed > MAX_REFERENCE_BYTES:
        return f"skipped: needs ~{needed / 2**30:.0f} GB for the (N, B, B) tensors"
    return None


def worker(
    case: str, backend: str, what: str, device: torch.device, repeats: int, max_seconds: float
) -> dict:
    batch, classes = CASES[case]
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(batch, classes, DIM, generator=generator).to(device).requires_grad_()
    scores = torch.randn(batch, classes, generator=generator).to(device).requires_grad_()
    op_backend = "reference" if backend == "compiled" else backend

    def fn(features, scores):  # BTN ties query and key: both are the channel-encoded features
        return class_batch_attention(features, features, scores, backend=op_backend)

    if backend == "compiled":
        fn = torch.compile(fn)
    return measure(forward_backward_step(fn, [features, scores]), device, what, repeats, max_seconds)


def main() -> None:
    benchmark_main(__file__, __doc__.splitlines()[0], list(CASES), BACKENDS, worker, skip_reason)


if __name__ == "__main__":
    main()
