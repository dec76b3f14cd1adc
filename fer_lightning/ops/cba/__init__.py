"""Class batch attention (CBA): BTN's per-class attention along the batch axis.

Backends: "reference" (plain PyTorch, materialises the (N, B, B) logits), "fast" (fused
``scaled_dot_product_attention``), "triton" (the routed-attention kernels with one region spanning the
batch, run as the ``fer_lightning::routed_attention`` custom op) and "auto".
The math and the backends: docs/kernels.md#class-batch-attention-cba.
"""

from __future__ import annotations

import torch

from .._dispatch import autocast_disabled, cast_to_autocast_dtype, check_same_float_dtype, resolve_backend
from .fast import class_batch_attention_sdpa
from .reference import class_batch_attention_reference

__all__ = ["class_batch_attention"]


def class_batch_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None, backend: str = "auto"
) -> torch.Tensor:
    """out[i, n] = Σ_j softmax_j(scale · ⟨q[i, n, :], k[j, n, :]⟩) · v[j, n].

    Mixes samples across the batch (each image attends to every image of the batch, class by class), so
    it is for training only. In BTN q and k are the same tensor; gradients then add.

    Args:
        q, k: (B, N, D): N classes, D features per class (49 in BTN).
        v: (B, N) class scores.
        scale: logit scale, default 1/√N (BTN's convention, N = number of classes).
        backend: "auto" (Triton on CUDA, "fast" elsewhere), "triton", "fast" or "reference".

    Returns:
        (B, N), in the autocast dtype under ``torch.autocast``, else in q's dtype. Differentiable in
        q, k and v.
    """
    # Cast first: under autocast, callers legitimately mix fp32 parameters with bf16 activations.
    q, k, v = cast_to_autocast_dtype(q, k, v)
    check_same_float_dtype(q=q, k=k, v=v)
    if q.dim() != 3 or k.shape != q.shape or v.shape != q.shape[:2]:
        raise ValueError(
            f"expected q, k of shape (B, N, D) and v of shape (B, N), got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    scale = q.shape[1] ** -0.5 if scale is None else float(scale)
    backend = resolve_backend(backend, q.device)
    with autocast_disabled(q.device.type):
        if backend == "reference":
            return class_batch_attention_reference(q, k, v, scale)
        if backend == "fast":
            return class_batch_attention_sdpa(q, k, v, scale)
        from .triton import class_batch_attention_triton  # keeps this module importable without Triton

        return class_batch_attention_triton(q, k, v, scale)
