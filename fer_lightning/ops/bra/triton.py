"""Triton kernels for routed attention, forward and backward (docs/kernels.md#backends).

The problem they solve, per (image b, head h): query tokens are grouped in windows ("regions") of a
grid, and every query region r attends to the concatenated tokens of the key regions listed in
``route[b, r, :]``. Region attention is this with S×S windows; class batch attention is the special case
of one window holding the whole batch, routed to itself (see ``ops/cba/triton.py``).

Design:
- No copies: a kernel walks the routed token list ``slot · w² + token`` in blocks of BLOCK_N columns and
  computes each column's address from the routing index and the tensor strides, so neither a
  region-major copy nor the topk-fold gather of K/V is made. Tiny windows (2×2) pack several routed
  regions into one block; large ones (one CBA window of B tokens) span several blocks.
- Forward: one program per (block of BLOCK_M query tokens of one region, batch·head); online softmax in
  fp32; writes O and the log-sum-exp (LSE).
- Backward, deterministic and atomic-free: Δ = rowsum(dO ⊙ O) in PyTorch; a dQ kernel with the forward's
  grid; a dK/dV kernel with one program per block of key tokens of one region, which loops over the query
  regions that routed to it (the routing index transposed into CSR form by :func:`incoming_regions`).
- Inputs fp32/fp16/bf16, every accumulator fp32; fp32 matmuls use IEEE precision (no TF32) so that fp32
  results match the reference tightly.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dispatch import triton_interpreter_enabled


@triton.jit
def _token_position(region, token, regions, region_h, region_w):
    """Grid row and column of ``token`` (row-major in its window) of window ``region`` (row-major in the grid)."""
    row = (region // regions) * region_h + token // region_w
    col = (region % regions) * region_w + token % region_w
    return row, col


@triton.jit
def _dot(a, b, DOT_PRECISION: tl.constexpr, UPCAST_16BIT: tl.constexpr):
    """``tl.dot`` with fp32 accumulation; with UPCAST_16BIT, 16-bit operands are widened to fp32 first.

    UPCAST_16BIT is set only under the interpreter, whose bf16 ``tl.dot`` returns garbage (triton 3.8).
    Products of 16-bit values are exact in fp32, so the result is what a 16-bit tensor-core dot gives.
    """
    if UPCAST_16BIT:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=DOT_PRECISION)


@triton.jit
def _program_block(heads, tokens, regions, region_h, region_w, BLOCK: tl.constexpr):
    """The block of BLOCK tokens this program owns: program axis 0 = (region, block within the region),
    axis 1 = (image, head). Returns region, image·heads + head, image, head (int64 for pointer
    arithmetic), which of the BLOCK tokens exist, and their grid rows and columns."""
    blocks_per_region = tl.cdiv(tokens, BLOCK)
    region = tl.program_id(0) // blocks_per_region
    batch_head = tl.program_id(1)
    batch = (batch_head // heads).to(tl.int64)
    head = (batch_head % heads).to(tl.int64)
    token = (tl.program_id(0) % blocks_per_region) * BLOCK + tl.arange(0, BLOCK)
    row, col = _token_position(region, token, regions, region_h, region_w)
    return region, batch_head, batch, head, token < tokens, row, col


@triton.jit
def _load_routed_block(
    k_base, v_base, route_row, first, routed_tokens, tokens, regions, region_h, region_w,
    stride_kh, stride_kw, stride_kd, stride_vh, stride_vw, stride_vd, dim_qk, dim_v,
    D_QK: tl.constexpr, D_V: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Keys and values of routed tokens first … first + BLOCK_N of one query region, read through the
    routing row (the routed regions' tokens in routing order, row-major in each window), and which of the
    BLOCK_N are real: (BLOCK_N, D_QK), (BLOCK_N, D_V), (BLOCK_N,). No copy of K/V is ever gathered."""
    key_index = first + tl.arange(0, BLOCK_N)
    key_valid = key_index < routed_tokens
    key_region = tl.load(route_row + key_index // tokens, mask=key_valid, other=0)
    key_row, key_col = _token_position(key_region, key_index % tokens, regions, region_h, region_w)
    k = tl.load(k_base + key_row[:, None] * stride_kh + key_col[:, None] * stride_kw
                + dim_qk[None, :] * stride_kd,
                mask=key_valid[:, None] & (dim_qk[None, :] < D_QK), other=0.0)  # fmt: skip
    v = tl.load(v_base + key_row[:, None] * stride_vh + key_col[:, None] * stride_vw
                + dim_v[None, :] * stride_vd,
                mask=key_valid[:, None] & (dim_v[None, :] < D_V), other=0.0)  # fmt: skip
    return k, v, key_valid


@triton.jit
def _routed_attention_fwd_kernel(
    Q, K, V, Out, Lse, Route,
    stride_qb, stride_qm, stride_qh, stride_qw, stride_qd,
    stride_kb, stride_km, stride_kh, stride_kw, stride_kd,
    stride_vb, stride_vm, stride_vh, stride_vw, stride_vd,
    stride_ob, stride_om, stride_oh, stride_ow, stride_od,
    stride_route_b, stride_route_r,
    heads, height, width, topk, regions, region_h, region_w, scale,
    D_QK: tl.constexpr, D_V: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_16BIT: tl.constexpr,
):  # fmt: skip
    tokens = region_h * region_w
    query_region, batch_head, batch, head, query_valid, query_row, query_col = _program_block(
        heads, tokens, regions, region_h, region_w, BLOCK_M
    )
    dim_qk = tl.arange(0, BLOCK_DQK)
    dim_v = tl.arange(0, BLOCK_DV)

    q_ptrs = (Q + batch * stride_qb + head * stride_qm + query_row[:, None] * stride_qh
              + query_col[:, None] * stride_qw + dim_qk[None, :] * stride_qd)  # fmt: skip
    q = tl.load(q_ptrs, mask=query_valid[:, None] & (dim_qk[None, :] < D_QK), other=0.0)

    k_base = K + batch * stride_kb + head * stride_km
    v_base = V + batch * stride_vb + head * stride_vm
    route_row = Route + batch * stride_route_b + query_region * stride_route_r

    # Online softmax state (fp32): running row max, running sum of exp(logit - max), unnormalised output.
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    routed_tokens = topk * tokens
    for first in range(0, routed_tokens, BLOCK_N):
        k, v, key_valid = _load_routed_block(
            k_base, v_base, route_row, first, routed_tokens, tokens, regions, region_h, region_w,
            stride_kh, stride_kw, stride_kd, stride_vh, stride_vw, stride_vd, dim_qk, dim_v, D_QK, D_V, BLOCK_N,
        )  # fmt: skip

        logits = _dot(q, tl.trans(k), DOT_PRECISION, UPCAST_16BIT) * scale
        logits = tl.where(key_valid[None, :], logits, float("-inf"))
        # Every block has at least one valid column, so new_max is finite and rescale is 0 at first.
        new_max = tl.maximum(row_max, tl.max(logits, axis=1))
        rescale = tl.exp(row_max - new_max)
        probs = tl.exp(logits - new_max[:, None])
        row_sum = row_sum * rescale + tl.sum(probs, axis=1)
        acc = acc * rescale[:, None] + _dot(probs.to(v.dtype), v, DOT_PRECISION, UPCAST_16BIT)
        row_max = new_max

    out = acc / row_sum[:, None]
    out_ptrs = (Out + batch * stride_ob + head * stride_om + query_row[:, None] * stride_oh
                + query_col[:, None] * stride_ow + dim_v[None, :] * stride_od)  # fmt: skip
    tl.store(out_ptrs, out.to(Out.dtype.element_ty), mask=query_valid[:, None] & (dim_v[None, :] < D_V))
    lse_ptrs = Lse + batch_head.to(tl.int64) * height * width + query_row * width + query_col
    tl.store(lse_ptrs, row_max + tl.log(row_sum), mask=query_valid)


@triton.jit
def _routed_attention_bwd_dq_kernel(
    Q, K, V, GradOut, Lse, Delta, Route, GradQ,
    stride_qb, stride_qm, stride_qh, stride_qw, stride_qd,
    stride_kb, stride_km, stride_kh, stride_kw, stride_kd,
    stride_vb, stride_vm, stride_vh, stride_vw, stride_vd,
    stride_gb, stride_gm, stride_gh, stride_gw, stride_gd,
    stride_route_b, stride_route_r,
    heads, height, width, topk, regions, region_h, region_w, scale,
    D_QK: tl.constexpr, D_V: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_16BIT: tl.constexpr,
):  # fmt: skip
    """dQ = scale · Σ_routed dS K with dS = P ⊙ (dO Vᵀ − Δ); grid and loop as in the forward.

    GradQ is contiguous with Q's shape and the grad-out strides describe dO.
    """
    tokens = region_h * region_w
    query_region, batch_head, batch, head, query_valid, query_row, query_col = _program_block(
        heads, tokens, regions, region_h, region_w, BLOCK_M
    )
    dim_qk = tl.arange(0, BLOCK_DQK)
    dim_v = tl.arange(0, BLOCK_DV)
    qk_mask = query_valid[:, None] & (dim_qk[None, :] < D_QK)

    q_offsets = (batch * stride_qb + head * stride_qm + query_row[:, None] * stride_qh
                 + query_col[:, None] * stride_qw + dim_qk[None, :] * stride_qd)  # fmt: skip
    q = tl.load(Q + q_offsets, mask=qk_mask, other=0.0)
    grad_out = tl.load(GradOut + batch * stride_gb + head * stride_gm + query_row[:, None] * stride_gh
                       + query_col[:, None] * stride_gw + dim_v[None, :] * stride_gd,
                       mask=query_valid[:, None] & (dim_v[None, :] < D_V), other=0.0)  # fmt: skip
    row_offsets = batch_head.to(tl.int64) * height * width + query_row * width + query_col
    lse = tl.load(Lse + row_offsets, mask=query_valid, other=0.0)
    delta = tl.load(Delta + row_offsets, mask=query_valid, other=0.0)

    k_base = K + batch * stride_kb + head * stride_km
    v_base = V + batch * stride_vb + head * stride_vm
    route_row = Route + batch * stride_route_b + query_region * stride_route_r

    grad_q = tl.zeros([BLOCK_M, BLOCK_DQK], tl.float32)
    routed_tokens = topk * tokens
    for first in range(0, routed_tokens, BLOCK_N):
        k, v, key_valid = _load_routed_block(
            k_base, v_base, route_row, first, routed_tokens, tokens, regions, region_h, region_w,
            stride_kh, stride_kw, stride_kd, stride_vh, stride_vw, stride_vd, dim_qk, dim_v, D_QK, D_V, BLOCK_N,
        )  # fmt: skip

        logits = _dot(q, tl.trans(k), DOT_PRECISION, UPCAST_16BIT) * scale
        probs = tl.where(key_valid[None, :], tl.exp(logits - lse[:, None]), 0.0)
        grad_probs = _dot(grad_out, tl.trans(v), DOT_PRECISION, UPCAST_16BIT)
        grad_logits = probs * (grad_probs - delta[:, None])
        grad_q += _dot(grad_logits.to(k.dtype), k, DOT_PRECISION, UPCAST_16BIT)

    grad_q_offsets = (batch_head.to(tl.int64) * height * width * D_QK
                      + (query_row * width + query_col)[:, None] * D_QK + dim_qk[None, :])  # fmt: skip
    tl.store(GradQ + grad_q_offsets, (grad_q * scale).to(GradQ.dtype.element_ty), mask=qk_mask)


@triton.jit
def _routed_attention_bwd_dkv_kernel(
    Q, K, V, GradOut, Lse, Delta, SourceOffsets, SourceRegions, GradK, GradV,
    stride_qb, stride_qm, stride_qh, stride_qw, stride_qd,
    stride_kb, stride_km, stride_kh, stride_kw, stride_kd,
    stride_vb, stride_vm, stride_vh, stride_vw, stride_vd,
    stride_gb, stride_gm, stride_gh, stride_gw, stride_gd,
    heads, height, width, num_regions, regions, region_h, region_w, scale,
    D_QK: tl.constexpr, D_V: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    DOT_PRECISION: tl.constexpr, UPCAST_16BIT: tl.constexpr,
):  # fmt: skip
    """dV = Σ Pᵀ dO and dK = scale · Σ dSᵀ Q over the queries that routed to this key block.

    One program owns BLOCK_N key tokens of one region and writes their gradients once (no atomics).
    The query regions that routed to key region g of image b are
    ``SourceRegions[SourceOffsets[b·S² + g] : SourceOffsets[b·S² + g + 1]]``. GradK and GradV are
    contiguous with K's and V's shapes.
    """
    tokens = region_h * region_w
    key_region, batch_head, batch, head, key_valid, key_row, key_col = _program_block(
        heads, tokens, regions, region_h, region_w, BLOCK_N
    )
    dim_qk = tl.arange(0, BLOCK_DQK)
    dim_v = tl.arange(0, BLOCK_DV)
    k_mask = key_valid[:, None] & (dim_qk[None, :] < D_QK)
    v_mask = key_valid[:, None] & (dim_v[None, :] < D_V)
    k = tl.load(K + batch * stride_kb + head * stride_km + key_row[:, None] * stride_kh
                + key_col[:, None] * stride_kw + dim_qk[None, :] * stride_kd, mask=k_mask, other=0.0)  # fmt: skip
    v = tl.load(V + batch * stride_vb + head * stride_vm + key_row[:, None] * stride_vh
                + key_col[:, None] * stride_vw + dim_v[None, :] * stride_vd, mask=v_mask, other=0.0)  # fmt: skip

    q_base = Q + batch * stride_qb + head * stride_qm
    grad_out_base = GradOut + batch * stride_gb + head * stride_gm
    row_base = batch_head.to(tl.int64) * height * width
    sources_begin = tl.load(SourceOffsets + batch * num_regions + key_region)
    sources_end = tl.load(SourceOffsets + batch * num_regions + key_region + 1)
    incoming_tokens = (sources_end - sources_begin) * tokens

    grad_k = tl.zeros([BLOCK_N, BLOCK_DQK], tl.float32)
    grad_v = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    for first in range(0, incoming_tokens, BLOCK_M):
        query_index = first + tl.arange(0, BLOCK_M)
        query_valid = query_index < incoming_tokens
        query_region = tl.load(
            SourceRegions + sources_begin + query_index // tokens, mask=query_valid, other=0
        )
        query_row, query_col = _token_position(
            query_region, query_index % tokens, regions, region_h, region_w
        )
        q = tl.load(q_base + query_row[:, None] * stride_qh + query_col[:, None] * stride_qw
                    + dim_qk[None, :] * stride_qd,
                    mask=query_valid[:, None] & (dim_qk[None, :] < D_QK), other=0.0)  # fmt: skip
        grad_out = tl.load(grad_out_base + query_row[:, None] * stride_gh + query_col[:, None] * stride_gw
                           + dim_v[None, :] * stride_gd,
                           mask=query_valid[:, None] & (dim_v[None, :] < D_V), other=0.0)  # fmt: skip
        row_offsets = row_base + query_row * width + query_col
        lse = tl.load(Lse + row_offsets, mask=query_valid, other=0.0)
        delta = tl.load(Delta + row_offsets, mask=query_valid, other=0.0)

        logits = _dot(q, tl.trans(k), DOT_PRECISION, UPCAST_16BIT) * scale  # (BLOCK_M, BLOCK_N)
        # Padding rows and columns must contribute exactly zero to the sums over queries below.
        probs = tl.where(query_valid[:, None] & key_valid[None, :], tl.exp(logits - lse[:, None]), 0.0)
        grad_v += _dot(tl.trans(probs.to(grad_out.dtype)), grad_out, DOT_PRECISION, UPCAST_16BIT)
        grad_probs = _dot(grad_out, tl.trans(v), DOT_PRECISION, UPCAST_16BIT)
        grad_logits = probs * (grad_probs - delta[:, None])
        grad_k += _dot(tl.trans(grad_logits.to(q.dtype)), q, DOT_PRECISION, UPCAST_16BIT)

    key_offsets = row_base + key_row * width + key_col
    tl.store(GradK + key_offsets[:, None] * D_QK + dim_qk[None, :],
             (grad_k * scale).to(GradK.dtype.element_ty), mask=k_mask)  # fmt: skip
    tl.store(
        GradV + key_offsets[:, None] * D_V + dim_v[None, :], grad_v.to(GradV.dtype.element_ty), mask=v_mask
    )


def _block(size: int, largest: int = 64) -> int:
    """Power-of-two block covering ``size``, within [16, largest] (16 is the smallest ``tl.dot`` tile)."""
    return max(16, min(largest, triton.next_power_of_2(size)))


def _dot_precision(dtype: torch.dtype) -> str:
    # TF32 would make fp32 results differ from the reference by ~1e-3; 16-bit inputs ignore the setting.
    return "ieee" if dtype == torch.float32 else "tf32"


def _problem_sizes(q: torch.Tensor, v: torch.Tensor, regions: int) -> dict[str, int]:
    _, heads, height, width, dim_qk = q.shape
    return dict(
        heads=heads, height=height, width=width, regions=regions,
        region_h=height // regions, region_w=width // regions,
        D_QK=dim_qk, D_V=v.shape[-1],
        BLOCK_DQK=_block(dim_qk, largest=1 << 30), BLOCK_DV=_block(v.shape[-1], largest=1 << 30),
        DOT_PRECISION=_dot_precision(q.dtype),
        UPCAST_16BIT=q.dtype != torch.float32 and triton_interpreter_enabled(),
    )  # fmt: skip


def incoming_regions(route_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Transpose the routing index into CSR form: which query regions read each key region.

    Args:
        route_idx: (B, S², topk).

    Returns:
        offsets (B·S² + 1,) int32 and sources (B·S²·topk,) int32: the query regions that routed to key
        region g of image b are ``sources[offsets[b·S² + g] : offsets[b·S² + g + 1]]``, in increasing
        order (a stable sort keeps the backward deterministic).
    """
    batch, num_regions, topk = route_idx.shape
    image_offset = torch.arange(batch, device=route_idx.device).view(batch, 1, 1) * num_regions
    key_rows = (route_idx.long() + image_offset).flatten()  # pair (b, r, slot) → key row b·S² + g
    order = torch.sort(key_rows, stable=True).indices
    sources = (order // topk) % num_regions
    counts = torch.bincount(key_rows, minlength=batch * num_regions)
    offsets = torch.zeros(batch * num_regions + 1, dtype=torch.int32, device=route_idx.device)
    offsets[1:] = torch.cumsum(counts, 0)
    return offsets, sources.to(torch.int32)


def forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, route_idx: torch.Tensor, regions: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Routed attention forward; same contract as ``bra.fast.forward``.

    Args:
        q, k: (B, heads, H, W, d); v: (B, heads, H, W, d_v), any strides; route_idx: (B, S², topk).

    Returns:
        out (B, heads, H, W, d_v) in the input dtype and the fp32 log-sum-exp (B, heads, H, W).
    """
    batch, heads = q.shape[:2]
    route = route_idx.to(torch.int32).contiguous()
    sizes = _problem_sizes(q, v, regions)
    tokens = sizes["region_h"] * sizes["region_w"]
    topk = route.shape[-1]
    out = torch.empty((*q.shape[:-1], v.shape[-1]), dtype=q.dtype, device=q.device)
    lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
    block_m, block_n = _block(tokens), _block(tokens * topk)
    grid = (regions * regions * triton.cdiv(tokens, block_m), batch * heads)
    _routed_attention_fwd_kernel[grid](
        q, k, v, out, lse, route,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), route.stride(0), route.stride(1),
        topk=topk, scale=scale, BLOCK_M=block_m, BLOCK_N=block_n, **sizes,
    )  # fmt: skip
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
    """Gradients with respect to q, k, v (contiguous, in their dtypes); same contract as the fast path."""
    batch, heads = q.shape[:2]
    route = route_idx.to(torch.int32).contiguous()
    sizes = _problem_sizes(q, v, regions)
    tokens = sizes["region_h"] * sizes["region_w"]
    topk = route.shape[-1]
    lse = lse.contiguous()
    delta = (grad_out.float() * out.float()).sum(dim=-1).contiguous()  # Δ = rowsum(dO ⊙ O), (B, heads, H, W)
    grad_q = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    grad_k = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    grad_v = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    common_strides = (*q.stride(), *k.stride(), *v.stride(), *grad_out.stride())

    block_m, block_n = _block(tokens), _block(tokens * topk)
    grid = (regions * regions * triton.cdiv(tokens, block_m), batch * heads)
    _routed_attention_bwd_dq_kernel[grid](
        q, k, v, grad_out, lse, delta, route, grad_q, *common_strides, route.stride(0), route.stride(1),
        topk=topk, scale=scale, BLOCK_M=block_m, BLOCK_N=block_n, **sizes,
    )  # fmt: skip

    source_offsets, source_regions = incoming_regions(route)
    # On average topk query regions read each key region: size the query block for that many.
    block_m, block_n = _block(tokens * topk), _block(tokens)
    grid = (regions * regions * triton.cdiv(tokens, block_n), batch * heads)
    _routed_attention_bwd_dkv_kernel[grid](
        q, k, v, grad_out, lse, delta, source_offsets, source_regions, grad_k, grad_v, *common_strides,
        num_regions=regions * regions, scale=scale, BLOCK_M=block_m, BLOCK_N=block_n, **sizes,
    )  # fmt: skip
    return grad_q, grad_k, grad_v
