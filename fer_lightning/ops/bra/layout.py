"""Region-major layout of a (B, heads, H, W, d) token grid, and region routing.

The H×W grid is split into ``regions × regions`` windows of ``region_h × region_w`` tokens. Windows are
numbered row-major over the grid (window r covers rows ``(r // regions) * region_h ...`` and columns
``(r % regions) * region_w ...``) and tokens row-major inside their window; the Triton kernels compute
the same numbering from strides instead of copying to this layout. Routing is described in
docs/kernels.md#region-routing-attention.
"""

from __future__ import annotations

import torch


def region_shape(x: torch.Tensor, regions: int) -> tuple[int, int]:
    """Return (region_h, region_w) of the windows of ``x`` (B, heads, H, W, d); check divisibility."""
    if x.dim() != 5:
        raise ValueError(f"expected a (B, heads, H, W, d) tensor, got shape {tuple(x.shape)}")
    height, width = x.shape[2], x.shape[3]
    if regions < 1 or height % regions or width % regions:
        raise ValueError(f"H={height} and W={width} must be divisible by regions={regions}")
    return height // regions, width // regions


def to_region_major(x: torch.Tensor, regions: int) -> torch.Tensor:
    """(B, heads, H, W, d) → (B, heads, S², w², d): windows row-major over the grid, tokens inside."""
    batch, heads, _, _, dim = x.shape
    region_h, region_w = region_shape(x, regions)
    windows = x.reshape(batch, heads, regions, region_h, regions, region_w, dim)
    windows = windows.permute(0, 1, 2, 4, 3, 5, 6)  # (B, heads, S, S, region_h, region_w, d)
    return windows.reshape(batch, heads, regions * regions, region_h * region_w, dim)


def from_region_major(x: torch.Tensor, regions: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`to_region_major`: (B, heads, S², w², d) → (B, heads, H, W, d)."""
    batch, heads, _, _, dim = x.shape
    region_h, region_w = height // regions, width // regions
    windows = x.reshape(batch, heads, regions, regions, region_h, region_w, dim)
    windows = windows.permute(0, 1, 2, 4, 3, 5, 6)  # (B, heads, S, region_h, S, region_w, d)
    return windows.reshape(batch, heads, height, width, dim)


def region_descriptors(x: torch.Tensor, regions: int) -> torch.Tensor:
    """Mean of ``x`` (B, heads, H, W, d) over each window, heads concatenated: (B, S², heads·d).

    Concatenating head-major matches the channel order C = heads·d of BiFormer's q̄ and k̄.
    """
    batch, heads, _, _, dim = x.shape
    region_h, region_w = region_shape(x, regions)
    # One window axis at a time: PyTorch reduces one strided axis 3-8× faster than the two together
    # (measured on the strided q and k of a QKV projection and on contiguous ones alike).
    windows = x.reshape(batch, heads, regions, region_h, regions, region_w, dim)
    means = windows.sum(dim=5).sum(dim=3).div_(region_h * region_w)
    return means.permute(0, 2, 3, 1, 4).reshape(batch, regions * regions, heads * dim)


@torch.no_grad()
def route_regions(q: torch.Tensor, k: torch.Tensor, regions: int, topk: int) -> torch.Tensor:
    """Top-k key regions of every query region (no gradient).

    Args:
        q, k: (B, heads, H, W, d); H and W divisible by ``regions``.
        regions: S, windows per side (S² regions in all).
        topk: routed key regions per query region, 1 ≤ topk ≤ S².

    Returns:
        LongTensor (B, S², topk): for query region r, the key regions g in decreasing order of
        ⟨q̄_r, k̄_g⟩, where q̄, k̄ are the window means with heads concatenated. The scale of the
        routing logits does not change the order, so none is applied. Equal logits are ordered by
        lower region index (a stable sort; ``torch.topk`` does not promise any order among ties).
    """
    if q.shape != k.shape:
        raise ValueError(f"q and k must have one shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    num_regions = regions * regions
    if not 1 <= topk <= num_regions:
        raise ValueError(f"topk must be in [1, regions²={num_regions}], got {topk}")
    # Descriptors in fp32 so that low-precision rounding does not reorder near-ties.
    query_desc = region_descriptors(q.detach().float(), regions)
    key_desc = region_descriptors(k.detach().float(), regions)
    affinity = torch.bmm(query_desc, key_desc.transpose(1, 2))  # (B, S², S²)
    if torch.compiler.is_exporting():
        # ONNX has no stable sort; its TopK puts the lower index first among equal values, the same order.
        return torch.topk(affinity, topk, dim=-1).indices
    order = torch.sort(affinity, dim=-1, descending=True, stable=True).indices
    return order[..., :topk].contiguous()
