"""Exact region attention on any device with plain PyTorch, without BiFormer's gather (kernels.md §2.4).

Two exact algorithms; :func:`prefer_dense_masked` picks one from the shape:

- Streaming (:func:`forward`/:func:`backward`, run as the ``fer_lightning::routed_attention`` custom op):
  the forward walks the routed slots with an online softmax (the flash-attention recurrence), copying
  only a few routed key/value regions per query region at a time instead of all ``topk``; the backward
  recomputes the probabilities from the saved log-sum-exp and adds dK/dV into their source regions with
  ``index_put_(accumulate=True)``, so neither the topk-fold copies nor the S²-fold zeros of the gather's backward exist.
  Computed in fp32, returned in the input dtype. Same signatures as the Triton ``forward``/``backward``.
- Dense with a block mask (:func:`region_attention_dense_masked`): kernels.md §2.2's "equivalent dense
  form" through PyTorch's fused SDPA kernel. It does S²/topk times the arithmetic but no copies, and on
  CPU it is the faster of the two once a quarter or more of the regions are routed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel

from .._dispatch import fused_sdpa_backends, with_unit_feature_stride
from .layout import from_region_major, region_shape, to_region_major

# Columns of the score block computed per step. Tiny windows (2×2 tokens) make per-slot matmuls too
# small to run well, so several routed slots are processed together, up to this many key tokens; windows
# of this size or larger go one slot at a time.
_KEY_TOKENS_PER_STEP = 32


# Dense-with-mask is used from this routed fraction topk/S² up (measured on a 2-core CPU: at 1/4, e.g.
# ViT 16×16 S4 k4, it runs as fast as unmasked dense SDPA and 2.5× faster than streaming; at 4/49,
# streaming is 1.5× faster), and only while its additive mask (B, 1, HW, HW) stays this small.
_DENSE_MASKED_MIN_FRACTION = 0.25
_DENSE_MASKED_MAX_MASK_BYTES = 256 * 2**20


def prefer_dense_masked(q: torch.Tensor, v: torch.Tensor, regions: int, topk: int) -> bool:
    """Whether :func:`region_attention_dense_masked` is the faster exact algorithm for these inputs.

    It also needs d_v = d, which PyTorch's fused CPU kernel requires.
    """
    batch, _, height, width, dim = q.shape
    mask_bytes = batch * (height * width) ** 2 * q.element_size()
    return (
        v.shape[-1] == dim
        and topk >= _DENSE_MASKED_MIN_FRACTION * regions**2
        and mask_bytes <= _DENSE_MASKED_MAX_MASK_BYTES
    )


def region_attention_dense_masked(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, route_idx: torch.Tensor, regions: int, scale: float
) -> torch.Tensor:
    """Routed attention as dense attention over all H·W tokens with an additive block mask.

    The bias of query token i and key token j is log(number of times region(j) appears among the routed
    regions of region(i)): -inf where it is not routed, 0 where it is routed once. A region routed c
    times gets log c, i.e. its keys count c times, exactly as in the gather reference. Differentiable
    through SDPA's own backward; shapes as in :func:`forward`, returns only the output.
    """
    batch, _, height, width, _ = q.shape
    region_h, region_w = region_shape(q, regions)
    num_regions = regions * regions
    grid_rows = torch.arange(height, device=q.device) // region_h
    grid_cols = torch.arange(width, device=q.device) // region_w
    token_region = (grid_rows[:, None] * regions + grid_cols[None, :]).flatten()  # (H·W,)
    route = route_idx.long()
    times_routed = torch.zeros(batch, num_regions, num_regions, device=q.device)
    times_routed.scatter_add_(2, route, torch.ones(route.shape, device=q.device))
    bias = times_routed.log()[:, token_region][:, :, token_region].unsqueeze(1).to(q.dtype)  # (B, 1, HW, HW)
    tokens = [with_unit_feature_stride(t.flatten(2, 3)) for t in (q, k, v)]  # (B, heads, H·W, d), views
    with sdpa_kernel(fused_sdpa_backends(q.device)):
        out = F.scaled_dot_product_attention(*tokens, attn_mask=bias, scale=scale)
    return out.unflatten(2, (height, width))


def _slots_per_step(tokens: int, topk: int) -> int:
    return max(1, min(topk, _KEY_TOKENS_PER_STEP // tokens))


def _routed_rows(route_idx: torch.Tensor, heads: int) -> torch.Tensor:
    """Routing index → rows of the flattened (B·heads·S², w², d) region-major tensors: (B·heads·S², topk)."""
    batch, num_regions, topk = route_idx.shape
    first_row = (
        torch.arange(batch * heads, device=route_idx.device).mul_(num_regions).view(batch, heads, 1, 1)
    )
    return (route_idx.long().unsqueeze(1) + first_row).reshape(batch * heads * num_regions, topk)


def _flat_regions(x: torch.Tensor, regions: int) -> torch.Tensor:
    """(B, heads, H, W, d) → fp32 (B·heads·S², w², d): one row per (image, head, window)."""
    return to_region_major(x, regions).flatten(0, 2).float()


def _gather_slots(per_region: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Tokens of regions ``rows`` (R, c) of ``per_region`` (R, w², d), concatenated: (R, c·w², d).

    Each gathered region is one contiguous row, so this is a plain row copy of c regions per query
    region, never of all topk.
    """
    return per_region.index_select(0, rows.flatten()).view(rows.shape[0], -1, per_region.shape[-1])


def _scatter_add_slots(target: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor) -> None:
    """Add ``grad`` (R, c·w², d) into the regions ``rows`` (R, c) of ``target`` (R, w², d), in place.

    ``index_put_(accumulate=True)`` rather than ``index_add_``: on CPU it is about 2× faster here.
    """
    target.index_put_((rows.flatten(),), grad.view(rows.numel(), *target.shape[1:]), accumulate=True)


def forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, route_idx: torch.Tensor, regions: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Routed attention forward.

    Args:
        q, k: (B, heads, H, W, d); v: (B, heads, H, W, d_v); route_idx: (B, S², topk).

    Returns:
        out (B, heads, H, W, d_v) in the input dtype, and the log-sum-exp of each query's logits
        (B, heads, H, W) in fp32, which the backward needs.
    """
    batch, heads, height, width, _ = q.shape
    topk = route_idx.shape[-1]
    queries, keys, values = (_flat_regions(x, regions) for x in (q, k, v))  # (R, w², d), R = B·heads·S²
    routed_rows = _routed_rows(route_idx, heads)
    step = _slots_per_step(queries.shape[1], topk)

    # Online softmax: running row max, running sum of exp(logit - max), unnormalised output.
    row_max = queries.new_full(queries.shape[:-1], float("-inf"))
    row_sum = queries.new_zeros(queries.shape[:-1])
    acc = queries.new_zeros(*queries.shape[:-1], values.shape[-1])
    for first in range(0, topk, step):
        rows = routed_rows[:, first : first + step]
        logits = torch.bmm(queries, _gather_slots(keys, rows).transpose(1, 2)).mul_(scale)
        new_max = torch.maximum(row_max, logits.amax(dim=-1))
        rescale = torch.exp(row_max - new_max)  # 0 on the first step, where row_max = -inf
        probs = logits.sub_(new_max.unsqueeze(-1)).exp_()
        row_sum = row_sum.mul_(rescale).add_(probs.sum(dim=-1))
        acc = torch.baddbmm(acc.mul_(rescale.unsqueeze(-1)), probs, _gather_slots(values, rows))
        row_max = new_max

    def back(x: torch.Tensor) -> torch.Tensor:
        return from_region_major(
            x.view(batch, heads, regions * regions, *x.shape[1:]), regions, height, width
        )

    out = back(acc.div_(row_sum.unsqueeze(-1))).to(q.dtype)
    lse = back(row_max.add_(row_sum.log_()).unsqueeze(-1)).squeeze(-1)
    return out, lse


def backward(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    route_idx: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    regions: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of :func:`forward` with respect to q, k and v (same shapes and dtypes as those).

    With P = softmax(scale·Q K̃ᵀ) recomputed from the log-sum-exp, and Δ = rowsum(dO ⊙ O):
    dṼ = Pᵀ dO, dS = P ⊙ (dO Ṽᵀ − Δ), dQ = scale·dS K̃, dK̃ = scale·dSᵀ Q (kernels.md §2.5 step 4);
    dK̃ and dṼ are added into the regions they were read from.
    """
    batch, heads, height, width, _ = q.shape
    topk = route_idx.shape[-1]
    delta = (grad_out.float() * out.float()).sum(dim=-1, keepdim=True)  # (B, heads, H, W, 1)
    queries, keys, values, grad_rows = (_flat_regions(x, regions) for x in (q, k, v, grad_out))
    lse_rows, delta_rows = (_flat_regions(x, regions) for x in (lse.unsqueeze(-1), delta))  # (R, w², 1)
    routed_rows = _routed_rows(route_idx, heads)
    step = _slots_per_step(queries.shape[1], topk)

    grad_q = torch.zeros_like(queries)
    grad_k = torch.zeros_like(keys)
    grad_v = torch.zeros_like(values)
    for first in range(0, topk, step):
        rows = routed_rows[:, first : first + step]
        slot_keys = _gather_slots(keys, rows)
        probs = torch.bmm(queries, slot_keys.transpose(1, 2)).mul_(scale).sub_(lse_rows).exp_()
        _scatter_add_slots(grad_v, rows, torch.bmm(probs.transpose(1, 2), grad_rows))
        grad_logits = torch.bmm(grad_rows, _gather_slots(values, rows).transpose(1, 2))
        grad_logits = grad_logits.sub_(delta_rows).mul_(probs)
        grad_q.baddbmm_(grad_logits, slot_keys)
        _scatter_add_slots(grad_k, rows, torch.bmm(grad_logits.transpose(1, 2), queries))

    def back(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        per_region = x.view(batch, heads, regions * regions, *x.shape[1:])
        return from_region_major(per_region, regions, height, width).to(like.dtype)

    return back(grad_q.mul_(scale), q), back(grad_k.mul_(scale), k), back(grad_v, v)
