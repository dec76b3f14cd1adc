"""Reference class batch attention in plain PyTorch: the definition of the op."""

from __future__ import annotations

import torch


def class_batch_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> torch.Tensor:
    """out[i, n] = Σ_j softmax_j(scale · ⟨q[i, n], k[j, n]⟩) · v[j, n]  (BTN's CBA, eqs. 4–5 and 7).

    Args:
        q, k: (B, N, D) per-class features; v: (B, N) class scores.

    Returns:
        (B, N). Materialises the (N, B, B) logits and weights, which is what limits B.
    """
    weights = class_batch_attention_weights(q, k, scale)
    return (weights @ v.t().unsqueeze(-1)).squeeze(-1).t()


def class_batch_attention_weights(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """The attention of CBA, (N, B, B): for class n, how much image i takes from image j (rows sum to 1)."""
    logits = scale * (q.transpose(0, 1) @ k.permute(1, 2, 0))  # (N, B, B): class n, image i, image j
    return torch.softmax(logits, dim=-1)
