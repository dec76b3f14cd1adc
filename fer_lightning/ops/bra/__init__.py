"""Top-k region routing attention (BiFormer's bi-level routing attention, "BRA").

Public functions: :func:`route_regions`, :func:`region_attention` and :func:`routing_attention` (the
two in sequence). The "triton" backend and the streaming "fast" algorithm run
through the custom op ``fer_lightning::routed_attention`` registered here, so they work under autograd
and inside ``torch.compile``; the "fast" backend's dense-with-mask algorithm and the "reference"
backend (BiFormer's gather formulation) are plain differentiable PyTorch. The math and the backends:
docs/kernels.md#region-routing-attention.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
from torch.utils.flop_counter import register_flop_formula

from .._dispatch import autocast_disabled, cast_to_autocast_dtype, check_same_float_dtype, resolve_backend
from . import fast
from .layout import region_shape, route_regions
from .reference import region_attention_reference

__all__ = ["region_attention", "route_regions", "routing_attention"]


def _implementation(backend: str) -> ModuleType:
    """The module with ``forward``/``backward`` for ``backend``; Triton is imported only when used."""
    if backend == "fast":
        return fast
    return importlib.import_module(f"{__name__}.triton")


@torch.library.custom_op("fer_lightning::routed_attention", mutates_args=())
def routed_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    route_idx: torch.Tensor,
    regions: int,
    scale: float,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Routed attention forward with ``backend`` "fast" or "triton"; returns (out, fp32 log-sum-exp).

    The log-sum-exp (B, heads, H, W) is an auxiliary output for the backward and carries no gradient.
    """
    return _implementation(backend).forward(q, k, v, route_idx, regions, scale)


@routed_attention_op.register_fake
def _(q, k, v, route_idx, regions, scale, backend):
    out = q.new_empty((*q.shape[:-1], v.shape[-1]))
    return out, q.new_empty(q.shape[:-1], dtype=torch.float32)


@torch.library.custom_op("fer_lightning::routed_attention_backward", mutates_args=())
def routed_attention_backward_op(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    route_idx: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    regions: int,
    scale: float,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) of :func:`routed_attention_op`; a custom op so that compiled graphs keep it whole."""
    return _implementation(backend).backward(grad_out, q, k, v, route_idx, out, lse, regions, scale)


@routed_attention_backward_op.register_fake
def _(grad_out, q, k, v, route_idx, out, lse, regions, scale, backend):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, route_idx, regions, scale, backend = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, route_idx, out, lse)
    ctx.regions, ctx.scale, ctx.backend = regions, scale, backend


def _backward(ctx, grad_out, _grad_lse):
    q, k, v, route_idx, out, lse = ctx.saved_tensors
    grads = routed_attention_backward_op(
        grad_out, q, k, v, route_idx, out, lse, ctx.regions, ctx.scale, ctx.backend
    )
    return (*grads, None, None, None, None)


routed_attention_op.register_autograd(_backward, setup_context=_setup_context)


# FLOP formulas, so that torch.utils.flop_counter.FlopCounterMode counts the custom ops (it skips ops it
# has no formula for). The count is the routed arithmetic, whatever the backend: every query token
# against the topk·w² key tokens of its routed regions; routing itself is counted by the counter from
# its own matmul. 2 FLOPs per multiply-add, the counter's convention.
def _routed_products(q_shape, v_shape, route_idx_shape, products_over_d: int, products_over_dv: int) -> int:
    batch, heads, height, width, dim = q_shape
    num_regions, topk = route_idx_shape[1], route_idx_shape[2]
    keys_per_query = topk * (height * width // num_regions)
    return (
        2
        * batch
        * heads
        * height
        * width
        * keys_per_query
        * (products_over_d * dim + products_over_dv * v_shape[-1])
    )


@register_flop_formula(torch.ops.fer_lightning.routed_attention)
def _routed_attention_flops(
    q_shape, k_shape, v_shape, route_idx_shape, *args, out_shape=None, **kwargs
) -> int:
    # Logits Q·K̃ᵀ (over d) and weights·Ṽ (over d_v).
    return _routed_products(q_shape, v_shape, route_idx_shape, 1, 1)


@register_flop_formula(torch.ops.fer_lightning.routed_attention_backward)
def _routed_attention_backward_flops(
    grad_out_shape, q_shape, k_shape, v_shape, route_idx_shape, *args, out_shape=None, **kwargs
) -> int:
    # Recomputed logits, dQ and dK̃ (over d); dṼ and dO·Ṽᵀ (over d_v).
    return _routed_products(q_shape, v_shape, route_idx_shape, 3, 2)


def _flops_being_counted() -> bool:
    """Whether a FlopCounterMode is active: the dense-with-mask path would be counted as dense attention
    (or not at all, through the fused CPU kernel), so the routed op runs instead."""
    return any(type(mode).__name__ == "_FlopCounterMode" for mode in _get_current_dispatch_mode_stack())


def _check_region_inputs(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, route_idx: torch.Tensor, regions: int
):
    check_same_float_dtype(q=q, k=k, v=v)
    region_shape(q, regions)
    if k.shape != q.shape or v.shape[:-1] != q.shape[:-1]:
        raise ValueError(
            f"expected q, k of one shape (B, heads, H, W, d) and v (B, heads, H, W, d_v), got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    expected = (q.shape[0], regions * regions)
    if route_idx.dim() != 3 or tuple(route_idx.shape[:2]) != expected or route_idx.is_floating_point():
        raise ValueError(
            f"route_idx must be an integer tensor of shape (B, regions², topk) = ({expected[0]}, {expected[1]}, k), "
            f"got {route_idx.dtype} {tuple(route_idx.shape)}"
        )


def region_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    route_idx: torch.Tensor,
    regions: int,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Attention of every query token to the tokens of its region's routed key regions.

    Args:
        q, k: (B, heads, H, W, d); v: (B, heads, H, W, d_v). H and W divisible by ``regions``.
        route_idx: (B, S², topk) integer key-region indices per query region (from :func:`route_regions`;
            values must lie in [0, S²)). One index set is shared by all heads; no gradient flows into it.
        regions: S, windows per side.
        scale: logit scale, default d^-1/2.
        backend: "auto" (Triton on CUDA, "fast" elsewhere), "triton", "fast" or "reference". "fast"
            streams over the routed regions, or, where enough regions are routed for the window size
            (the smaller the windows, the fewer) and d_v = d, runs fused dense attention with a block
            mask (both exact; see ``bra/fast.py``).

    Returns:
        (B, heads, H, W, d_v), in the autocast dtype under ``torch.autocast``, else in q's dtype.
        Differentiable in q, k and v.
    """
    _check_region_inputs(q, k, v, route_idx, regions)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    backend = resolve_backend(backend, q.device)
    q, k, v = cast_to_autocast_dtype(q, k, v)
    with autocast_disabled(q.device.type):
        if backend == "reference":
            return region_attention_reference(q, k, v, route_idx, regions, scale)
        if (
            backend == "fast"
            and fast.prefer_dense_masked(q, v, regions, route_idx.shape[-1])
            and not _flops_being_counted()
        ):
            return fast.region_attention_dense_masked(q, k, v, route_idx, regions, scale)
        out, _ = routed_attention_op(q, k, v, route_idx, regions, scale, backend)
        return out


def routing_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    regions: int,
    topk: int,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """:func:`route_regions` followed by :func:`region_attention`; shapes and arguments as there."""
    route_idx = route_regions(q, k, regions, topk)
    return region_attention(q, k, v, route_idx, regions, scale=scale, backend=backend)
