"""Class batch attention on the routed-attention Triton kernels (``bra/triton.py``).

CBA is routed attention with one region: lay the batch out as a 1×B "image" with N heads, a single
window holding all B tokens, routed to itself. The kernels then tile the B queries in blocks, stream
over the B keys with an online softmax, and never form the (N, B, B) logits. The views below are
strided, not copied; value dim 1 is padded to a 16-wide tile inside the kernels by masking.
"""

from __future__ import annotations

import torch

from ..bra import routed_attention_op


def class_batch_attention_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> torch.Tensor:
    """CBA with q, k: (B, N, D) and v: (B, N) → (B, N), via the ``fer_lightning::routed_attention`` op."""
    as_one_window = [t.transpose(0, 1).unsqueeze(0).unsqueeze(3) for t in (q, k)]  # (1, N, B, 1, D)
    values = v.t().reshape(1, v.shape[1], v.shape[0], 1, 1)  # (1, N, B, 1, 1)
    route_to_itself = torch.zeros(1, 1, 1, dtype=torch.int32, device=q.device)
    out, _ = routed_attention_op(*as_one_window, values, route_to_itself, 1, scale, "triton")
    return out[0, :, :, 0, 0].t()
