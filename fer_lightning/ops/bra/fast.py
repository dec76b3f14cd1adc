"""Exact region attention in plain PyTorch, without BiFormer's gather (docs/kernels.md#backends).

Two exact algorithms; :func:`prefer_dense_masked` picks one from the shape:

- Streaming (:func:`forward`/:func:`backward`, run as the ``fer_lightning::routed_attention`` custom op):
  the Triton kernels' algorithm in chunks of query regions rather than in one fused kernel. Computed in fp32,
  returned in the input dtype; same signatures as the Triton ``forward``/``backward``.
- Dense with a block mask (:func:`region_attention_dense_masked`): the equivalent dense form
  (docs/kernels.md#region-routing-attention) through PyTorch's fused SDPA kernel. It does S²/topk
  times the arithmetic but no copies, and on CPU it is the faster of the two once many regions are
  routed, the sooner the smaller the windows.

How the streaming algorithm spends its time, and why it is built this way. The arithmetic (seven small
matmuls per query region: two forward, five backward) is what is left once data movement is cut, so
the design is about copies:

- Chunks of query regions, all ``topk`` routed regions at once. Each chunk copies the routed key/value
  regions of its query regions into scratch buffers (the gather reference does this for all query
  regions at once, ``topk``-fold) and runs plain softmax attention on them: batched
  matmuls as large as the chunk, no online-softmax rescaling, and every intermediate stays in cache.
  Chunks hold about :data:`_CHUNK_BYTES` of scratch, so memory is O(chunk), not O(topk·N). (Measured:
  16 MB beats 4 MB by ~10%, per-op overhead, and 64 MB by ~25%, out of cache; 1 MB is 1.5× slower.)
- No region-major copies of whole tensors. The regions are read straight from the (B, heads, H, W, d)
  inputs: a window row of ``region_w`` tokens is contiguous there, so a routed key region is
  ``region_h`` row copies (``index_select``), and a query chunk is a strided view that is copied (and
  scaled, and converted to fp32) once into its scratch buffer. Outputs and dQ are written straight into
  their final layout the same way.
- dK and dV are added into their final-layout fp32 buffers with ``index_add_`` over the same window
  rows, once per chunk. On 2-D contiguous rows this is PyTorch's sorted, parallel scatter-add: about 3×
  faster than ``index_put_(accumulate=True)`` and within 2× of a plain copy, with no topk- or S²-fold
  buffer. Routed regions listed twice are added twice, as in the gather reference.
- Scratch buffers are allocated once per call and reused by every chunk: an allocation this large is
  fresh pages from the OS, and touching them the first time costs about as much as a copy.
- Logits are computed transposed, as (routed keys × query tokens) = K̃ (s·Q)ᵀ: with few query tokens
  per window (4×4 on 28×28 S7) MKL's batched GEMM runs this orientation about 1.3× faster than
  (s·Q) K̃ᵀ, and no slower for larger windows. Folding the scale into the copy of Q makes
  dK̃ = dSᵀ (s·Q) need no extra scaling either.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel

from .._dispatch import fused_sdpa_backends, with_unit_feature_stride
from .layout import region_shape

# Scratch bytes per chunk of query regions in the streaming algorithm (see the module docstring).
_CHUNK_BYTES = 16 * 2**20

# Dense-with-mask does S²/topk times the streaming arithmetic, but as one fused kernel, while streaming's
# per-window matmuls get less efficient as windows shrink. Measured on a 2-core CPU (fp32, forward and
# backward, 1 and 2 threads), dense-with-mask is the faster from a routed fraction topk/S² of about
# (tokens per window)/32: ~0.1 for 2×2 windows (14×14 S7), ~0.27 for 3×3, ~0.45 for 4×4 (ViT 16×16 S4:
# streaming 1.3× faster at 1/4, dense-with-mask 1.15× faster at 1/2), never for 7×7 or larger. It is
# used only while its additive mask (B, 1, HW, HW) stays this small.
_DENSE_MASKED_FRACTION_PER_WINDOW_TOKEN = 1 / 32
_DENSE_MASKED_MAX_MASK_BYTES = 256 * 2**20


def prefer_dense_masked(q: torch.Tensor, v: torch.Tensor, regions: int, topk: int) -> bool:
    """Whether :func:`region_attention_dense_masked` is the faster exact algorithm for these inputs.

    It also needs d_v = d, which PyTorch's fused CPU kernel requires.
    """
    batch, _, height, width, dim = q.shape
    mask_bytes = batch * (height * width) ** 2 * q.element_size()
    window_tokens = (height // regions) * (width // regions)
    return (
        v.shape[-1] == dim
        and topk >= _DENSE_MASKED_FRACTION_PER_WINDOW_TOKEN * window_tokens * regions**2
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


# ---------------------------------------------------------------- streaming algorithm


def _bands(x: torch.Tensor, regions: int) -> torch.Tensor:
    """(B, heads, H, W, d) → (B·heads·S, region_h, S, region_w, d): dim 0 is a band of S windows.

    A view for contiguous ``x`` (and for our own outputs), a copy for inputs with other strides. Query
    region (band, column) is ``[band, :, column]``, so a range of bands × a range of columns is a view.
    """
    region_h, region_w = region_shape(x, regions)
    return x.unflatten(3, (regions, region_w)).unflatten(2, (regions, region_h)).flatten(0, 2)


def _window_rows(x: torch.Tensor, regions: int) -> torch.Tensor:
    """Contiguous (B, heads, H, W, d) → (B·heads·H·S, region_w·d): one row per window row of tokens."""
    return x.view(-1, (x.shape[3] // regions) * x.shape[4])


def _routed_window_rows(route_idx: torch.Tensor, heads: int, regions: int, region_h: int) -> torch.Tensor:
    """Rows of :func:`_window_rows` that make up the routed regions: (B·heads·S, S, topk·region_h).

    Entry [band, column] of a query region lists its routed key regions in routing order, each as its
    window rows top to bottom, i.e. the keys in the token order of the gather reference.
    """
    batch, num_regions, topk = route_idx.shape
    route = route_idx.long()
    # Window row i of region (gy, gx) of image-head bh is row ((bh·S + gy)·region_h + i)·S + gx.
    first_row = (route // regions) * (region_h * regions) + route % regions  # (B, S², topk)
    head_offset = torch.arange(batch * heads, device=route.device).mul_(num_regions * region_h)
    row_offset = torch.arange(region_h, device=route.device).mul_(regions)
    rows = (
        first_row.view(batch, 1, num_regions, topk, 1) + head_offset.view(batch, heads, 1, 1, 1) + row_offset
    )
    return rows.view(batch * heads * regions, regions, topk * region_h)


def _chunks(num_bands: int, regions: int, bytes_per_region: int) -> Iterator[tuple[slice, slice]]:
    """(bands, columns) ranges of query regions covering all of them, about _CHUNK_BYTES each.

    Whole bands while a band fits, else single bands split by columns (huge windows or topk).
    """
    bands_per_chunk = _CHUNK_BYTES // (bytes_per_region * regions)
    if bands_per_chunk >= 1:
        for first in range(0, num_bands, bands_per_chunk):
            yield slice(first, min(first + bands_per_chunk, num_bands)), slice(0, regions)
        return
    columns = max(1, _CHUNK_BYTES // bytes_per_region)
    for band in range(num_bands):
        for first in range(0, regions, columns):
            yield slice(band, band + 1), slice(first, min(first + columns, regions))


class _Scratch:
    """Buffers by name, fp32 unless told, grown to the largest size asked for and reused by every chunk.

    A name asked for again (same chunk or next) returns the same memory, whatever the shape.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.buffers: dict[str, torch.Tensor] = {}

    def __call__(self, name: str, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        numel = 1
        for size in shape:
            numel *= size
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < numel or buffer.dtype != dtype:
            buffer = self.buffers[name] = torch.empty(numel, dtype=dtype, device=self.device)
        return buffer[:numel].view(shape)


def _load(view: torch.Tensor, scratch: _Scratch, name: str, scale: float | None = None) -> torch.Tensor:
    """Copy a chunk's strided (nb, region_h, nc, region_w, d) view into fp32 scratch (n, w², d).

    The layout change, the fp32 conversion and the scaling are one pass where the dtype allows.
    """
    nb, region_h, nc, region_w, dim = view.shape
    out = scratch(name, nb, nc, region_h, region_w, dim)
    view = view.transpose(1, 2)
    if scale is not None and view.dtype == torch.float32:
        torch.mul(view, scale, out=out)
    else:  # 16-bit: convert first, so that the scaled value is rounded once, in fp32
        out.copy_(view)
        if scale is not None:
            out.mul_(scale)
    return out.view(nb * nc, region_h * region_w, dim)


def _store(view: torch.Tensor, values: torch.Tensor) -> None:
    """Write chunk results (n, region_h·region_w, d) into their (nb, region_h, nc, region_w, d) view."""
    nb, region_h, nc, region_w, dim = view.shape
    view.transpose(1, 2).copy_(values.view(nb, nc, region_h, region_w, dim))


def _gather(window_rows: torch.Tensor, rows: torch.Tensor, scratch: _Scratch, name: str) -> torch.Tensor:
    """The window rows ``rows`` of ``window_rows`` as fp32 scratch (len(rows), row length)."""
    if window_rows.dtype == torch.float32:
        return torch.index_select(window_rows, 0, rows, out=scratch(name, rows.numel(), window_rows.shape[1]))
    raw = scratch(name + "_raw", rows.numel(), window_rows.shape[1], dtype=window_rows.dtype)
    torch.index_select(window_rows, 0, rows, out=raw)
    return scratch(name, *raw.shape).copy_(raw)


def _column_max(x: torch.Tensor) -> torch.Tensor:
    """``x.amax(dim=1, keepdim=True)`` for (n, keys, query tokens).

    PyTorch's max over a non-innermost dim is ~10× slower when the inner dim is narrower than a few
    vector registers (16 query tokens: 4×4 windows), so pairs of rows are folded into the inner dim first.
    """
    n, keys, queries = x.shape
    fold = 1
    while queries * fold < 64 and keys % (2 * fold) == 0:
        fold *= 2
    if fold == 1:
        return x.amax(dim=1, keepdim=True)
    return (
        x.view(n, keys // fold, fold * queries).amax(dim=1).view(n, fold, queries).amax(dim=1, keepdim=True)
    )


class _Plan:
    """Shapes and routed window rows shared by :func:`forward` and :func:`backward`."""

    def __init__(self, q: torch.Tensor, v: torch.Tensor, route_idx: torch.Tensor, regions: int):
        self.regions = regions
        self.region_h, region_w = region_shape(q, regions)
        self.tokens = self.region_h * region_w  # query tokens per region
        self.dim, self.dim_v = q.shape[-1], v.shape[-1]
        self.keys = route_idx.shape[-1] * self.tokens  # routed key tokens per query region
        self.rows = _routed_window_rows(route_idx, q.shape[1], regions, self.region_h)
        self.num_bands = self.rows.shape[0]

    def chunks(
        self, floats_per_key: int, floats_per_query: int
    ) -> Iterator[tuple[slice, slice, int, torch.Tensor]]:
        """Chunks as (bands, columns, number of query regions, their routed window rows flattened)."""
        bytes_per_region = 4 * (self.keys * floats_per_key + self.tokens * floats_per_query)
        for bands, columns in _chunks(self.num_bands, self.regions, bytes_per_region):
            rows = self.rows[bands, columns]
            yield bands, columns, rows.shape[0] * rows.shape[1], rows.flatten()


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
    plan = _Plan(q, v, route_idx, regions)
    keys, values = (_window_rows(x.contiguous(), regions) for x in (k, v))
    out = torch.empty((*q.shape[:-1], plan.dim_v), dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
    q_bands, out_bands, lse_bands = (_bands(x, regions) for x in (q, out, lse.unsqueeze(-1)))
    scratch = _Scratch(q.device)
    # Scratch per query region: gathered K̃, Ṽ (+ their 16-bit copies) and logits; Q and the output.
    floats_per_key = 2 * (plan.dim + plan.dim_v) + plan.tokens
    for bands, columns, n, rows in plan.chunks(floats_per_key, plan.dim + plan.dim_v):
        queries = _load(q_bands[bands, :, columns], scratch, "q", scale)  # (n, w², d), scaled
        routed_keys = _gather(keys, rows, scratch, "k").view(n, plan.keys, plan.dim)
        routed_values = _gather(values, rows, scratch, "v").view(n, plan.keys, plan.dim_v)
        logits = torch.bmm(
            routed_keys, queries.transpose(1, 2), out=scratch("logits", n, plan.keys, plan.tokens)
        )
        row_max = _column_max(logits)  # (n, 1, w²): logits are (keys, queries), one column per query
        probs = logits.sub_(row_max).exp_()
        row_sum = probs.sum(dim=1, keepdim=True)
        acc = torch.bmm(probs.transpose(1, 2), routed_values, out=scratch("acc", n, plan.tokens, plan.dim_v))
        _store(out_bands[bands, :, columns], acc.div_(row_sum.transpose(1, 2)))
        _store(lse_bands[bands, :, columns], row_max.add_(row_sum.log_()))
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
    dṼ = Pᵀ dO, dS = P ⊙ (dO Ṽᵀ − Δ), dQ = scale·dS K̃, dK̃ = scale·dSᵀ Q;
    dK̃ and dṼ are added into the regions they were read from. All (keys × queries) blocks are the
    transposes of these, as in the forward.
    """
    plan = _Plan(q, v, route_idx, regions)
    keys, values = (_window_rows(x.contiguous(), regions) for x in (k, v))
    grad_q = torch.empty_like(q, memory_format=torch.contiguous_format)
    grad_k = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
    grad_v = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
    grad_key_rows, grad_value_rows = _window_rows(grad_k, regions), _window_rows(grad_v, regions)
    q_bands, grad_out_bands, out_bands, lse_bands, grad_q_bands = (
        _bands(x, regions) for x in (q, grad_out, out, lse.unsqueeze(-1), grad_q)
    )
    scratch = _Scratch(q.device)
    # Scratch per query region: K̃, Ṽ (+ 16-bit copies), P, dS, and dṼ then dK̃; Q, dO and dQ.
    floats_per_key = 2 * (plan.dim + plan.dim_v) + max(plan.dim, plan.dim_v) + 2 * plan.tokens
    for bands, columns, n, rows in plan.chunks(floats_per_key, 2 * plan.dim + plan.dim_v):
        queries = _load(q_bands[bands, :, columns], scratch, "q", scale)  # (n, w², d), scaled
        grads = _load(grad_out_bands[bands, :, columns], scratch, "grad_out")
        out_chunk = out_bands[bands, :, columns].transpose(1, 2)  # (nb, nc, region_h, region_w, d_v)
        delta = (grads.view(out_chunk.shape) * out_chunk).sum(dim=-1).view(n, 1, plan.tokens)
        lse_chunk = lse_bands[bands, :, columns].transpose(1, 2).reshape(n, 1, plan.tokens)
        routed_keys = _gather(keys, rows, scratch, "k").view(n, plan.keys, plan.dim)
        routed_values = _gather(values, rows, scratch, "v").view(n, plan.keys, plan.dim_v)

        probs = torch.bmm(
            routed_keys, queries.transpose(1, 2), out=scratch("probs", n, plan.keys, plan.tokens)
        )
        probs.sub_(lse_chunk).exp_()
        grad_routed_values = torch.bmm(probs, grads, out=scratch("grad_routed", n, plan.keys, plan.dim_v))
        grad_value_rows.index_add_(0, rows, grad_routed_values.view(rows.numel(), -1))
        grad_logits = scratch("grad_logits", n, plan.keys, plan.tokens)
        torch.bmm(routed_values, grads.transpose(1, 2), out=grad_logits).sub_(delta).mul_(probs)
        grad_queries = torch.bmm(
            grad_logits.transpose(1, 2), routed_keys, out=scratch("grad_q", n, plan.tokens, plan.dim)
        )
        _store(grad_q_bands[bands, :, columns], grad_queries.mul_(scale))
        grad_routed_keys = torch.bmm(grad_logits, queries, out=scratch("grad_routed", n, plan.keys, plan.dim))
        grad_key_rows.index_add_(0, rows, grad_routed_keys.view(rows.numel(), -1))
    return grad_q, grad_k.to(k.dtype), grad_v.to(v.dtype)
