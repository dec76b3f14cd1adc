"""Training losses beyond plain cross-entropy, shared by the paper models.

Each loss is an ``nn.Module`` whose ``forward`` returns a scalar; losses that read logits compute in
fp32, because under bf16/fp16 autocast a log-softmax loses the precision the gradients need.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fer_lightning.errors import ConfigurationError

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


# ----------------------------------------------------------------------------------------------------
# Classification losses any FERClassifier trains with (``model.init_args.loss``): cross-entropy and
# F-PDLS, the focal prior-distribution label smoothing of the Neural-Resizer paper (Hwang et al. 2022,
# docs/models.md#f-pdls), with its non-focal and uniform special cases.
# ----------------------------------------------------------------------------------------------------

#: ``model.init_args.loss`` values; every one maps (logits, labels) to the mean loss of the batch.
CLASSIFICATION_LOSSES = ("cross_entropy", "fpdls", "pdls")
#: (alpha, gamma) a prior-based loss uses when the config leaves them unset: the official code's values
#: (F-PDLS α 0.8, γ 2; PDLS, its non-focal variant, α 0.5).
PRIOR_LOSS_DEFAULTS = {"fpdls": (0.8, 2.0), "pdls": (0.5, 0.0)}


def _fp32_log_softmax(logits: torch.Tensor) -> torch.Tensor:
    with torch.autocast(device_type=logits.device.type, enabled=False):
        return F.log_softmax(logits.float(), dim=-1)


class CrossEntropy(nn.Module):
    """Cross-entropy with optional uniform label smoothing, in fp32 under autocast."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)


class FPDLS(nn.Module):
    """Focal prior-distribution label smoothing (F-PDLS).

    The target of a sample of class y is ``t = α·onehot(y) + (1 − α)·D[y]``, where row y of the prior
    ``D`` is how annotators spread their votes over the classes for images labelled y (rows sum to 1).
    The loss is ``−Σ_c t_c (1 − p_c)^γ log p_c`` averaged over the batch, with ``p = softmax(logits)``:
    the focal factor weighs *every* class by its own probability, as the official code does, not only the
    true class. Special cases: ``γ = 0`` is PDLS; a uniform ``D`` (:meth:`uniform`) with ``γ = 0`` is
    label smoothing; ``α = 1`` is the focal loss, and cross-entropy when also ``γ = 0``.

    Args:
        prior: K×K row-stochastic matrix in the model's class order.
        alpha: weight of the one-hot part of the target.
        gamma: focal exponent.
    """

    def __init__(
        self, prior: torch.Tensor | Sequence[Sequence[float]], alpha: float = 0.8, gamma: float = 2.0
    ):
        super().__init__()
        prior = torch.as_tensor(prior, dtype=torch.float32)
        check_prior(prior, prior.shape[0] if prior.ndim == 2 else 0)
        if not 0.0 <= alpha <= 1.0:
            raise ConfigurationError(
                f"F-PDLS alpha={alpha}: expected a weight in [0, 1] (official value 0.8)"
            )
        if gamma < 0.0:
            raise ConfigurationError(
                f"F-PDLS gamma={gamma}: expected a focal exponent >= 0 (official value 2)"
            )
        # Not persistent: it is rebuilt from the hyperparameters, so checkpoints of any loss stay alike.
        self.register_buffer("prior", prior, persistent=False)
        self.alpha = alpha
        self.gamma = gamma

    @classmethod
    def uniform(cls, num_classes: int, alpha: float = 0.9, gamma: float = 0.0) -> FPDLS:
        """Uniform label smoothing (the official code's ``LabelSmoothingLoss``, α 0.9) as F-PDLS."""
        return cls(torch.full((num_classes, num_classes), 1.0 / num_classes), alpha=alpha, gamma=gamma)

    def targets(self, labels: torch.Tensor) -> torch.Tensor:
        """The soft targets ``α·onehot(y) + (1 − α)·D[y]`` of a batch of class ids."""
        onehot = F.one_hot(labels, self.prior.shape[0]).to(self.prior.dtype)
        return self.alpha * onehot + (1.0 - self.alpha) * self.prior[labels]

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if logits.shape[-1] != self.prior.shape[0]:
            raise ValueError(
                f"F-PDLS prior is {self.prior.shape[0]}×{self.prior.shape[0]} but logits have "
                f"{logits.shape[-1]} classes"
            )
        log_probabilities = _fp32_log_softmax(logits)
        weighted = self.targets(labels) * log_probabilities
        if self.gamma != 0.0:  # skipped at 0: pow's gradient at p = 1 would be 0·inf there
            with torch.autocast(device_type=logits.device.type, enabled=False):
                weighted = weighted * (1.0 - log_probabilities.exp()).pow(self.gamma)
        return -weighted.sum(dim=-1).mean()


def check_prior(prior: torch.Tensor, num_classes: int, where: str = "F-PDLS prior") -> None:
    """Raise unless ``prior`` is a ``num_classes``×``num_classes`` matrix of finite, non-negative
    numbers whose rows sum to 1 (to 1e-3: published priors are rounded to six decimals)."""
    if prior.ndim != 2 or prior.shape != (num_classes, num_classes) or num_classes == 0:
        raise ConfigurationError(
            f"{where}: expected a {num_classes}×{num_classes} matrix (row y: how the votes for images of "
            f"class y spread over the classes, in the dataset's class order), got shape {tuple(prior.shape)}"
        )
    if not torch.isfinite(prior).all() or (prior < 0).any():
        raise ConfigurationError(f"{where}: entries must be finite and non-negative")
    row_sums = prior.sum(dim=1)
    bad_rows = torch.nonzero((row_sums - 1.0).abs() > 1e-3).flatten().tolist()
    if bad_rows:
        raise ConfigurationError(
            f"{where}: row {bad_rows[0]} sums to {float(row_sums[bad_rows[0]]):.4g}; every row must sum to 1"
        )


def prior_loss_needs_dataset_prior(loss: str, loss_prior: object) -> bool:
    """Whether a model configured with ``loss`` and ``loss_prior`` takes its prior from the dataset."""
    return loss in PRIOR_LOSS_DEFAULTS and loss_prior is None


def build_classification_loss(
    loss: str,
    num_classes: int,
    *,
    label_smoothing: float = 0.0,
    alpha: float | None = None,
    gamma: float | None = None,
    loss_prior: str | Sequence[Sequence[float]] | None = None,
    dataset_prior: Sequence[Sequence[float]] | None = None,
) -> nn.Module:
    """The loss module ``FERClassifier`` trains with (see its ``loss`` arguments)."""
    if loss not in CLASSIFICATION_LOSSES:
        raise ConfigurationError(f"model loss={loss!r}: expected one of {', '.join(CLASSIFICATION_LOSSES)}")
    if loss == "cross_entropy":
        if alpha is not None or gamma is not None or loss_prior is not None:
            raise ConfigurationError(
                "model loss_alpha, loss_gamma and loss_prior apply to loss=fpdls or pdls, not cross_entropy "
                "(its smoothing is model.init_args.label_smoothing)"
            )
        return CrossEntropy(label_smoothing)
    if label_smoothing:
        raise ConfigurationError(
            f"model label_smoothing applies to loss=cross_entropy; loss={loss} smooths through its prior "
            "(loss_prior: uniform is uniform label smoothing)"
        )
    default_alpha, default_gamma = PRIOR_LOSS_DEFAULTS[loss]
    alpha = default_alpha if alpha is None else alpha
    gamma = default_gamma if gamma is None else gamma
    if loss_prior == "uniform":
        return FPDLS.uniform(num_classes, alpha=alpha, gamma=gamma)
    if isinstance(loss_prior, str):
        raise ConfigurationError(
            f"model loss_prior={loss_prior!r}: expected 'uniform', a {num_classes}×{num_classes} matrix, or "
            "null (the dataset's prior)"
        )
    prior = loss_prior if loss_prior is not None else dataset_prior
    if prior is None:
        raise ConfigurationError(
            f"model loss={loss} needs a prior matrix and none was given: the fer-lightning CLI passes the "
            "dataset's (FER+ votes, or the FER+ prior remapped by class name); outside it set "
            f"loss_prior to a {num_classes}×{num_classes} matrix or 'uniform'"
        )
    where = "model loss_prior" if loss_prior is not None else "the dataset's F-PDLS prior"
    prior = torch.as_tensor(prior, dtype=torch.float32)
    check_prior(prior, num_classes, where)
    return FPDLS(prior, alpha=alpha, gamma=gamma)
