"""CBA through ``scaled_dot_product_attention``, the exact fast path (docs/kernels.md#backends).

CBA is ordinary attention with N heads (classes), B tokens (images), head dim D and value dim 1.
PyTorch's fused CPU kernel (flash attention for CPU, with its own backward) streams over key blocks with
an online softmax, so the (N, B, B) logits never exist. It requires the value head dim to equal the
query's, so v is padded with D - 1 zero columns and only column 0 of the result is kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel

from .._dispatch import fused_sdpa_backends, with_unit_feature_stride


def class_batch_attention_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> torch.Tensor:
    """CBA with q, k: (B, N, D) and v: (B, N) → (B, N), differentiable through SDPA's own backward."""
    dim = q.shape[-1]
    # The fused kernels need stride 1 along D, which e.g. a channels-last conv output does not have.
    heads_first = [with_unit_feature_stride(t.transpose(0, 1).unsqueeze(0)) for t in (q, k)]  # (1, N, B, D)
    values = F.pad(v.t().unsqueeze(-1), (0, dim - 1)).unsqueeze(0)  # (1, N, B, D), v in column 0
    with sdpa_kernel(fused_sdpa_backends(q.device)):
        out = F.scaled_dot_product_attention(*heads_first, values, scale=scale)
    return out[0, :, :, 0].t()
