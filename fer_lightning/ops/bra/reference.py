"""Reference region attention: BiFormer's gather formulation in plain PyTorch (docs/kernels.md#backends).

This is the definition the other backends are tested against, and deliberately the algorithm that
BiFormer users run today, so that the benchmarks compare with it: the routed key/value regions are
gathered out of a view of K and V expanded over the query regions. That costs ``topk`` copies of K and
V in the forward, and the gather's backward allocates zeros the size of the expanded view — S² times K
and V.
"""

from __future__ import annotations

import torch

from .layout import from_region_major, to_region_major


def gather_routed_regions(x: torch.Tensor, route_idx: torch.Tensor, regions: int) -> torch.Tensor:
    """Copy the routed regions of ``x`` for every query region, as BiFormer's ``KVGather`` does.

    Args:
        x: (B, heads, H, W, d) keys or values.
        route_idx: (B, S², topk) routed key regions of each query region.

    Returns:
        (B, heads, S², topk·w², d): for each query region, the tokens of its routed regions
        concatenated in routing order.
    """
    per_region = to_region_major(x, regions)  # (B, heads, S², w², d)
    batch, heads, num_regions, tokens, dim = per_region.shape
    topk = route_idx.shape[-1]
    # Expand over query regions without copying; gather then materialises topk regions per query region.
    expanded = per_region.unsqueeze(2).expand(batch, heads, num_regions, num_regions, tokens, dim)
    index = route_idx.long().reshape(batch, 1, num_regions, topk, 1, 1)
    routed = torch.gather(expanded, 3, index.expand(batch, heads, num_regions, topk, tokens, dim))
    return routed.reshape(batch, heads, num_regions, topk * tokens, dim)


def region_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, route_idx: torch.Tensor, regions: int, scale: float
) -> torch.Tensor:
    """Routed attention by gathering K and V.

    Args:
        q, k: (B, heads, H, W, d); v: (B, heads, H, W, d_v).
        route_idx: (B, S², topk) key regions routed to each query region.
        regions: S; scale: multiplies the logits.

    Returns:
        (B, heads, H, W, d_v): O_r = softmax(scale · Q_r K̃_rᵀ) Ṽ_r per query region r and head, where
        K̃_r, Ṽ_r are the tokens of the routed regions.
    """
    queries = to_region_major(q, regions)  # (B, heads, S², w², d)
    routed_keys = gather_routed_regions(k, route_idx, regions)  # (B, heads, S², topk·w², d)
    routed_values = gather_routed_regions(v, route_idx, regions)
    weights = torch.softmax(scale * queries @ routed_keys.transpose(-1, -2), dim=-1)
    return from_region_major(weights @ routed_values, regions, q.shape[2], q.shape[3])
