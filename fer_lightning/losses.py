"""Training losses beyond plain cross-entropy, shared by the paper models.

Each loss is an ``nn.Module`` whose ``forward`` returns a scalar; losses that read logits compute in
fp32, because under bf16/fp16 autocast a log-softmax loses the precision the gradients need.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------------------------
# ARBEx (Wasi et al. 2023, docs/models.md#arbex): the loss of the reliability-balanced prediction and
# the two anchor losses. Official-code behaviour that we changed is kept behind flags, each named in
# the docstrings.
# ----------------------------------------------------------------------------------------------------

AnchorLossForm = Literal["margin", "upstream"]


def inverse_frequency_weights(class_counts: torch.Tensor) -> torch.Tensor:
    """w_c = (n / N) / n_c for N classes and n samples: 1 for every class of a balanced set; a class
    without samples gets weight 0 (it cannot occur as a label). The official ARBEx code's NLL weights."""
    counts = class_counts.double()
    weights = (counts.sum() / counts.numel()) / counts
    return torch.where(counts > 0, weights, torch.zeros_like(weights)).float()


class DistributionNLLLoss(nn.Module):
    """Negative log-likelihood of a probability distribution (not logits), class-weighted as
    ``nn.NLLLoss`` (the weighted mean Σ w_y·(−log p_y) / Σ w_y).

    ARBEx trains its reliability-balanced distribution this way; a probability of exactly 0 is taken as
    the smallest positive float, so the loss stays finite.
    """

    def forward(
        self, probabilities: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        probabilities = probabilities.float()
        log_probabilities = probabilities.clamp_min(torch.finfo(torch.float32).tiny).log()
        return F.nll_loss(log_probabilities, labels, weight=class_weights)


class AnchorSeparationLoss(nn.Module):
    """ARBEx's anchor loss: keep the anchors of different classes apart. anchors (N, k, D) → scalar.

    ``margin`` (ours, default): the mean over every pair of anchors of two different classes of
    ``relu(margin − ‖a_{c,i} − a_{c',j}‖₂ / √D)``, the distance measured per coordinate (RMS). It lies in
    [0, margin] and is 0 once every such pair is ``margin`` apart, so it cannot outweigh the other terms.

    ``upstream`` (the official code): ``−Σ_{c,c'} ‖A_c − A_{c'}‖² / √D / k²``, A_c the k anchors of class c
    flattened to one k·D vector (so anchor i of one class is compared with anchor i of the other only).
    It is unbounded below: pushing the anchors away from each other lowers it without limit, and once
    the trust weight reaches 1 it can outgrow the classification loss. With the official zero
    initialisation its gradient is 0 at the start.
    """

    def __init__(self, form: AnchorLossForm = "margin", margin: float = 0.5) -> None:
        super().__init__()
        if form not in ("margin", "upstream"):
            raise ValueError(f"anchor_loss must be 'margin' or 'upstream', got {form!r}")
        self.form = form
        self.margin = margin

    def forward(self, anchors: torch.Tensor) -> torch.Tensor:
        num_classes, num_anchors, dim = anchors.shape
        anchors = anchors.float()
        if self.form == "upstream":
            flat = anchors.reshape(num_classes, -1)
            squared = (flat.unsqueeze(0) - flat.unsqueeze(1)).pow(2)
            return -(squared / math.sqrt(dim)).sum() / num_anchors / num_anchors
        points = anchors.reshape(num_classes * num_anchors, dim)
        squared = (points.unsqueeze(0) - points.unsqueeze(1)).pow(2).sum(-1)
        # The clamp keeps the square root differentiable where two anchors coincide.
        rms_distance = (squared.clamp_min(1e-12) / dim).sqrt()
        classes = torch.arange(num_classes, device=anchors.device).repeat_interleave(num_anchors)
        different_class = classes.unsqueeze(0) != classes.unsqueeze(1)
        return F.relu(self.margin - rms_distance[different_class]).mean()


class AnchorCenterLoss(nn.Module):
    """ARBEx's center loss: mean_b conf_b · min_j ‖z_b − a_{y_b, j}‖₂ / √D, pulling each embedding towards
    the nearest anchor of its class, weighted by the confidence of its prediction.

    distances (B, N, k) embedding-to-anchor distances, labels (B,), confidence (B,) → scalar.

    ``detach_confidence`` (ours, default ``True``): the weight is a constant. The official code keeps its
    gradient (``False``), so the loss can also be lowered by making the classifier less confident,
    which works against the classification loss.
    """

    def __init__(self, embedding_dim: int, detach_confidence: bool = True) -> None:
        super().__init__()
        self.scale = 1.0 / math.sqrt(embedding_dim)
        self.detach_confidence = detach_confidence

    def forward(
        self, distances: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor
    ) -> torch.Tensor:
        nearest = distances[torch.arange(len(labels), device=labels.device), labels].min(dim=-1).values
        weight = confidence.detach() if self.detach_confidence else confidence
        return (nearest.float() * weight.float().reshape(-1)).mean() * self.scale
