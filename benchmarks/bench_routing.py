"""Benchmark top-k region routing attention: forward+backward time and peak memory per backend.

Backends: ``reference`` (BiFormer's gather formulation, what users run today), ``compiled`` (its
``torch.compile``), ``fast`` (the exact PyTorch fast path), ``dense`` (``scaled_dot_product_attention``
over all H·W tokens, i.e. no routing: the baseline the fast path should not lose to when few regions are
routed) and ``triton`` (CUDA only). Ratios are against ``reference``. The routing index is computed once
per case, outside the timing (it is identical for all backends). Heads have dim 32 as in BiFormer.

    python benchmarks/bench_routing.py                  # everything (several minutes on 2 cores)
    python benchmarks/bench_routing.py --quick --cases 28x28-C128-S7-k4 --backends reference,fast
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_utils import benchmark_main, forward_backward_step, measure

from fer_lightning.ops import region_attention, route_regions
from fer_lightning.ops.bra import fast as bra_fast
from fer_lightning.ops.bra.reference import region_attention_reference

# name: (batch, H = W, heads, head dim, regions S, topk); batches as in the targets table.
CASES = {
    "56x56-C64-S7-k1": (16, 56, 2, 32, 7, 1),
    "56x56-C64-S7-k4": (16, 56, 2, 32, 7, 4),
    "28x28-C128-S7-k4": (64, 28, 4, 32, 7, 4),
    "14x14-C256-S7-k16": (64, 14, 8, 32, 7, 16),
    "vit-16x16-12x64-S4-k4": (64, 16, 12, 64, 4, 4),
    "112x112-C64-S14-k8": (4, 112, 2, 32, 14, 8),
}
BACKENDS = ["reference", "compiled", "fast", "dense", "triton"]


def skip_reason(case: str, backend: str, device: str) -> str | None:
    if backend == "triton" and device != "cuda":
        return "Triton runs only on CUDA (CPU interpreter is for tests)"
    return None


def worker(
    case: str, backend: str, what: str, device: torch.device, repeats: int, max_seconds: float
) -> dict:
    batch, size, heads, head_dim, regions, topk = CASES[case]
    generator = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(batch, heads, size, size, head_dim, generator=generator).to(device) for _ in range(3)
    )
    route_idx = route_regions(q, k, regions, topk)
    inputs = [t.requires_grad_() for t in (q, k, v)]
    scale = head_dim**-0.5
    note = ""

    if backend in ("reference", "compiled"):

        def fn(q, k, v):
            return region_attention_reference(q, k, v, route_idx, regions, scale)

        if backend == "compiled":
            fn = torch.compile(fn)
    elif backend == "dense":

        def fn(q, k, v):
            tokens = [t.flatten(2, 3) for t in (q, k, v)]
            return F.scaled_dot_product_attention(*tokens, scale=scale)
    else:
        if backend == "fast":
            note = "dense+mask" if bra_fast.prefer_dense_masked(q, v, regions, topk) else "streaming"

        def fn(q, k, v):
            return region_attention(q, k, v, route_idx, regions, scale=scale, backend=backend)

    result = measure(forward_backward_step(fn, inputs), device, what, repeats, max_seconds)
    return {**result, "note": note}


def main() -> None:
    benchmark_main(__file__, __doc__.splitlines()[0], list(CASES), BACKENDS, worker, skip_reason)


if __name__ == "__main__":
    main()
