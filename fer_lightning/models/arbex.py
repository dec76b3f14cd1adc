"""ARBEx (Wasi et al., "ARBEx: Attentive Feature Extraction with Reliability Balancing for Robust Facial
Expression Learning", 2023; docs/models.md#arbex).

    images ─ POSTER++ body ─→ embedding z (B, D)          the SE-gated CLS feature, D = 768
    logits = MLP head(z)                                   D → 384 → 192 → 96 → N (ReLU, BatchNorm, dropout)
    p      = softmax(logits / T)                           the prediction
    d      = ‖z − a_{c,j}‖₂                                anchors a ∈ ℝ^{N×k×D}, d ∈ ℝ^{B×N×k}
    s      = Σ_j softmax_{(c,j)}(−d / δ)                  anchor similarity, per class (B, N)
    α      = batch attention over the images of the batch (B, N)
    conf(q) = 1 − H(q) / log N
    corr   = (s·conf(s) + α·conf(α)) / (conf(s) + conf(α))
    p'     = conf(p)·p + (1 − conf(p))·corr               reliability balancing
    p_fin  = (1 − τ)·p + τ·p'                              τ: trust, 0 → 1 over training by global step
    loss   = λ_nll·NLL(log p_fin; class weights) + τ·(λ_anchor·L_anchor + λ_center·L_center)

**Predictions are argmax softmax(logits / T)**, which depends on each image alone; anchors and the batch
attention shape training only. ``test_time_correction`` adds the anchor part of the balancing at
evaluation (still per image). The paper gives no equations; these follow the official code
(takihasan/ARBEx), with its faults fixed behind flags that reproduce them (docs/models.md#arbex).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from fer_lightning.errors import ConfigurationError
from fer_lightning.losses import (
    AnchorCenterLoss,
    AnchorLossForm,
    AnchorSeparationLoss,
    DistributionNLLLoss,
    inverse_frequency_weights,
)
from fer_lightning.models.backbones.mobilefacenet import BNMode
from fer_lightning.models.backbones.poster_body import PosterBody
from fer_lightning.models.base import FERClassifier


def normalized_confidence(distribution: torch.Tensor) -> torch.Tensor:
    """1 − H(q) / log N per row of (…, N) distributions: 1 for a one-hot row, 0 for the uniform one.

    0·log 0 counts as 0 (the official code takes log 0 and gives NaN for a row with an exact zero)."""
    entropy = -torch.special.xlogy(distribution, distribution).sum(-1)
    return 1.0 - entropy / math.log(distribution.shape[-1])


def reliability_balance(
    prediction: torch.Tensor, similarity: torch.Tensor, attention: torch.Tensor, trust: float | torch.Tensor
) -> torch.Tensor:
    """The reliability-balanced distribution p_fin (B, N) from three (B, N) distributions.

    corr = (s·conf(s) + α·conf(α)) / (conf(s) + conf(α)); p' = conf(p)·p + (1 − conf(p))·corr;
    p_fin = (1 − τ)·p + τ·p'. A confident prediction (conf 1) is kept as it is; a uniform one (conf 0)
    is replaced by the correction. When s and α are both uniform (both confidences 0, where the
    official code divides 0 by 0) the correction is their mean, the limit of equal weights.
    """
    conf_p, conf_s, conf_a = (
        normalized_confidence(q).unsqueeze(-1) for q in (prediction, similarity, attention)
    )
    weight = conf_s + conf_a
    positive = weight > 0
    weighted = (similarity * conf_s + attention * conf_a) / torch.where(
        positive, weight, torch.ones_like(weight)
    )
    correction = torch.where(positive, weighted, (similarity + attention) / 2)
    corrected = conf_p * prediction + (1 - conf_p) * correction
    return (1 - trust) * prediction + trust * corrected


class ARBExHead(nn.Sequential):
    """MLP embedding → class logits: [Linear → ReLU → BatchNorm1d → Dropout] per hidden width, then Linear
    (the official order; 768 → 384 → 192 → 96 → N in the paper configuration)."""

    def __init__(self, in_dim: int, hidden: Sequence[int], num_classes: int, dropout: float = 0.5) -> None:
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), nn.ReLU(), nn.BatchNorm1d(width), nn.Dropout(dropout)]
            in_dim = width
        layers.append(nn.Linear(in_dim, num_classes))
        super().__init__(*layers)


class EmbeddingAnchors(nn.Module):
    """k learnable anchor points per class in embedding space, a ∈ ℝ^{N×k×D}.

    init: ``normal`` (ours): N(0, init_std²) per coordinate, so anchors differ from the start;
    ``zeros`` (official): every anchor at the origin, where the anchor loss has no gradient and the
    anchors of all classes are indistinguishable until the other losses move them.
    """

    def __init__(
        self,
        num_classes: int,
        num_anchors: int,
        dim: int,
        init: Literal["normal", "zeros"] = "normal",
        init_std: float = 0.1,
    ) -> None:
        super().__init__()
        if init not in ("normal", "zeros"):
            raise ValueError(f"anchor_init must be 'normal' or 'zeros', got {init!r}")
        anchors = torch.zeros(num_classes, num_anchors, dim)
        if init == "normal":
            nn.init.normal_(anchors, std=init_std)
        self.anchors = nn.Parameter(anchors)

    def distances(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, D) → Euclidean distances to every anchor (B, N, k), in fp32."""
        difference = self.anchors.float().unsqueeze(0) - embeddings.float()[:, None, None, :]
        # The clamp keeps the square root differentiable where an embedding sits on an anchor.
        return difference.pow(2).sum(-1).clamp_min(1e-12).sqrt()

    @staticmethod
    def similarity(distances: torch.Tensor, delta: float) -> torch.Tensor:
        """(B, N, k) distances → class similarity (B, N): softmax of −d/δ over all N·k anchors, summed per
        class."""
        weights = (-distances.flatten(1) / delta).softmax(dim=-1)
        return weights.view_as(distances).sum(-1)


class BatchAnchorAttention(nn.Module):
    """Self-attention **across the images of a batch**: (B, D) embeddings → (B, N) class distributions.

    q, k, v = Linear(D → N·m)(z) per image; the B images form one sequence, so image i attends to every
    image j of its batch (single-head ``nn.MultiheadAttention`` of width N·m, with its own in- and
    out-projections). A softmax over the N·m outputs, summed over the m slots of each class, gives a
    distribution per image.

    The official code gets the batch mixing by accident: it passes 2-D (B, N·m) tensors, which PyTorch
    reads as one unbatched sequence of length B. Here the batch is that sequence on purpose (a batch of
    one sequence), with the same weights and the same result. Under DDP the sequence is each process's
    own batch. Used in training only: predictions never depend on the other images of a batch.
    """

    def __init__(self, dim: int, num_classes: int, slots_per_class: int, num_heads: int = 1) -> None:
        super().__init__()
        width = num_classes * slots_per_class
        self.num_classes = num_classes
        self.slots_per_class = slots_per_class
        self.query = nn.Linear(dim, width)
        self.key = nn.Linear(dim, width)
        self.value = nn.Linear(dim, width)
        self.attention = nn.MultiheadAttention(width, num_heads, batch_first=True)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        batch = embeddings.shape[0]
        # (1, B, N·m): one sequence whose B tokens are the images of the batch.
        query, key, value = (
            projection(embeddings).unsqueeze(0) for projection in (self.query, self.key, self.value)
        )
        mixed, _ = self.attention(query, key, value, need_weights=False)
        scores = mixed.squeeze(0).float().softmax(dim=-1)
        return scores.view(batch, self.num_classes, self.slots_per_class).sum(-1)


class ARBEx(FERClassifier):
    """ARBEx as a LightningModule: the POSTER++ body as embedding extractor, MLP head, anchors, batch
    attention and reliability balancing (module docstring; docs/models.md#arbex).

    Body:
        variant, ir50_weights, mobilefacenet_weights, interpolate_mode: as
            :class:`~fer_lightning.models.posterpp.POSTERPP` (``tiny`` for CPU runs on synthetic data).
            The body's linear classifier is not built: the head below classifies its embedding.
        freeze_ir: freeze IR-50. ``None`` (default) freezes it when ``ir50_weights`` is given, as the
            official code does; the landmark net is always frozen.
        frozen_bn_mode: ``eval`` (ours) keeps the frozen IR-50 and landmark net in eval mode;
            ``train_upstream`` lets their BatchNorm statistics drift during training, as upstream.
    Head, anchors, attention:
        head_hidden: hidden widths of the MLP head; ``None``: D/2, D/4, D/8 (384, 192, 96 at D = 768).
        head_dropout: dropout after each hidden layer (0.5).
        num_anchors: k anchors per class (10, the official class default; its CLI default is 1).
        attention_slots: outputs per class of the batch attention (width N·slots); ``None``: 1, what the
            official training script builds (it never passes its anchor count to the attention).
        anchor_init: ``normal`` (ours) with ``anchor_init_std``, or ``zeros`` (official).
    Balancing and losses:
        temperature: T of softmax(logits / T), in training and for predictions.
        delta: δ of the anchor similarity. The official script ignores its δ flag and uses T: set
            ``delta`` equal to ``temperature`` to reproduce that.
        lambda_nll, lambda_anchor, lambda_center: weights of the three terms (1.0 each, as upstream).
        anchor_loss: ``margin`` (ours, bounded, ``anchor_margin`` in RMS distance per coordinate) or
            ``upstream`` (unbounded below); see :class:`~fer_lightning.losses.AnchorSeparationLoss`.
        detach_center_confidence: ``True`` (ours) or ``False`` (upstream; see
            :class:`~fer_lightning.losses.AnchorCenterLoss`).
        class_weighting: ``inverse_frequency`` (upstream: NLL weights (n/N)/n_c from the training
            split's class counts, read from the datamodule at the start of fitting) or ``none``.
        trust_ramp_steps: the trust τ = min(1, global_step / trust_ramp_steps); ``None`` ramps over the
            whole run (the trainer's estimated optimiser steps), as upstream's iteration / num_iters.
            A function of the global step, so a resumed run continues the same ramp.
        test_time_correction: at evaluation, balance the prediction with the anchor similarity
            (p' = conf(p)·p + (1 − conf(p))·s, mixed by the trust reached in training); per image, so
            still batch-independent. The official correction path calls softmax without a dim and
            cannot run; it also scaled s by conf(p), which we do not.
    Optimisation:
        lr_body, lr_head, lr_anchors, lr_attention: learning rates of the four parameter groups handed to
            the optimiser (they override the optimiser's own ``lr``). Upstream has all four default to
            1.0 and sets the attention's from the anchors' flag; ours are real arguments, defaults
            measured on synthetic data (docs/models.md#arbex).
        **kwargs: :class:`~fer_lightning.models.base.FERClassifier` arguments (classes, optimiser,
            scheduler, SAM, …).
    """

    def __init__(
        self,
        variant: str = "paper",
        ir50_weights: str | None = None,
        mobilefacenet_weights: str | None = None,
        freeze_ir: bool | None = None,
        frozen_bn_mode: BNMode = "eval",
        interpolate_mode: str = "nearest",
        head_hidden: Sequence[int] | None = None,
        head_dropout: float = 0.5,
        num_anchors: int = 10,
        attention_slots: int | None = None,
        anchor_init: Literal["normal", "zeros"] = "normal",
        anchor_init_std: float = 0.1,
        temperature: float = 1.0,
        delta: float = 1.0,
        lambda_nll: float = 1.0,
        lambda_anchor: float = 1.0,
        lambda_center: float = 1.0,
        anchor_loss: AnchorLossForm = "margin",
        anchor_margin: float = 0.5,
        detach_center_confidence: bool = True,
        class_weighting: Literal["inverse_frequency", "none"] = "inverse_frequency",
        trust_ramp_steps: int | None = None,
        test_time_correction: bool = False,
        lr_body: float = 3e-4,
        lr_head: float = 1e-3,
        lr_anchors: float = 1e-3,
        lr_attention: float = 1e-3,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if self.hparams.get("loss", "cross_entropy") != "cross_entropy":
            # ARBEx trains on the NLL of its balanced distribution (eq. above); a second classification
            # loss on the raw logits would not be ARBEx, and silently ignoring the option would mislead.
            raise ConfigurationError(
                f"model loss={self.hparams.loss!r}: ARBEx trains with its own loss (class-weighted NLL of "
                "the balanced distribution + anchor and center terms); leave loss at cross_entropy"
            )
        for name, value in (("temperature", temperature), ("delta", delta)):
            if value <= 0:
                raise ConfigurationError(f"model {name}={value}: expected a positive number")
        if num_anchors < 1 or (attention_slots is not None and attention_slots < 1):
            raise ConfigurationError(
                f"model num_anchors={num_anchors}, attention_slots={attention_slots}: expected at least 1"
            )
        if trust_ramp_steps is not None and trust_ramp_steps < 1:
            raise ConfigurationError(
                f"model trust_ramp_steps={trust_ramp_steps}: expected a number of steps >= 1, or null to "
                "ramp over the whole run"
            )
        if class_weighting not in ("inverse_frequency", "none"):
            raise ConfigurationError(
                f"model class_weighting={class_weighting!r}: expected 'inverse_frequency' or 'none'"
            )
        self.body = PosterBody(
            self.num_classes,
            variant=variant,
            ir50_weights=ir50_weights,
            mobilefacenet_weights=mobilefacenet_weights,
            landmark_bn_mode=frozen_bn_mode,
            interpolate_mode=interpolate_mode,
        )
        # The head below classifies the embedding; the body's own linear classifier would never run.
        self.body.vit.head = nn.Identity()
        self.freeze_ir = ir50_weights is not None if freeze_ir is None else freeze_ir
        self.frozen_bn_mode = frozen_bn_mode
        if self.freeze_ir:
            self.body.ir50.requires_grad_(False)
        dim = self.body.embed_dim
        hidden = tuple(head_hidden) if head_hidden is not None else (dim // 2, dim // 4, dim // 8)
        self.head = ARBExHead(dim, hidden, self.num_classes, dropout=head_dropout)
        self.anchors = EmbeddingAnchors(
            self.num_classes, num_anchors, dim, init=anchor_init, init_std=anchor_init_std
        )
        self.attention = BatchAnchorAttention(dim, self.num_classes, attention_slots or 1)
        self.temperature = temperature
        self.delta = delta
        self.lambda_nll = lambda_nll
        self.lambda_anchor = lambda_anchor
        self.lambda_center = lambda_center
        self.nll_loss = DistributionNLLLoss()
        self.anchor_loss = AnchorSeparationLoss(anchor_loss, margin=anchor_margin)
        self.center_loss = AnchorCenterLoss(dim, detach_confidence=detach_center_confidence)
        self.class_weighting = class_weighting
        # Filled from the training split at the start of fitting; saved, so a checkpoint carries them.
        self.register_buffer("class_weights", torch.ones(self.num_classes))
        # The trust of the latest training step: what test-time correction uses after loading a checkpoint.
        self.register_buffer("trust_reached", torch.zeros(()))
        self.trust_ramp_steps = trust_ramp_steps
        self._run_steps: float | None = None
        self.test_time_correction = test_time_correction
        self.learning_rates = {
            "body": lr_body,
            "head": lr_head,
            "anchors": lr_anchors,
            "attention": lr_attention,
        }

    # --- forward and prediction ------------------------------------------------------------------------

    def scaled_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, D) → logits / T (B, N) in fp32; their softmax is the prediction p."""
        return self.head(embeddings).float() / self.temperature

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) → (B, N) scores whose softmax is the prediction: logits / T, or with
        ``test_time_correction`` the log of the anchor-corrected distribution. Depends on each image alone."""
        embeddings = self.body.embed(images)
        scaled = self.scaled_logits(embeddings)
        if not self.test_time_correction:
            return scaled
        prediction = scaled.softmax(dim=-1)
        similarity = EmbeddingAnchors.similarity(self.anchors.distances(embeddings), self.delta)
        confidence = normalized_confidence(prediction).unsqueeze(-1)
        corrected = confidence * prediction + (1 - confidence) * similarity
        trust = self.trust_reached.float()
        balanced = (1 - trust) * prediction + trust * corrected
        return balanced.clamp_min(torch.finfo(torch.float32).tiny).log()

    # --- training --------------------------------------------------------------------------------------

    def balanced_outputs(self, embeddings: torch.Tensor, trust: float) -> dict[str, torch.Tensor]:
        """Everything the loss reads, from the embeddings (B, D) of a training batch: ``logits`` (scaled
        by 1/T), ``prediction`` p, ``distances`` (B, N, k), ``similarity`` s, ``attention`` α and the
        balanced ``final`` distribution p_fin, each (B, N) unless stated."""
        logits = self.scaled_logits(embeddings)
        prediction = logits.softmax(dim=-1)
        distances = self.anchors.distances(embeddings)
        similarity = EmbeddingAnchors.similarity(distances, self.delta)
        attention = self.attention(embeddings)
        final = reliability_balance(prediction, similarity, attention, trust)
        return {
            "logits": logits,
            "prediction": prediction,
            "distances": distances,
            "similarity": similarity,
            "attention": attention,
            "final": final,
        }

    def loss_terms_from_embeddings(
        self, embeddings: torch.Tensor, labels: torch.Tensor, trust: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(loss, its named terms, :meth:`balanced_outputs`) for one batch of embeddings."""
        outputs = self.balanced_outputs(embeddings, trust)
        weights = self.class_weights if self.class_weighting == "inverse_frequency" else None
        terms = {
            "nll": self.nll_loss(outputs["final"], labels, weights),
            "anchor": self.anchor_loss(self.anchors.anchors),
            "center": self.center_loss(
                outputs["distances"], labels, normalized_confidence(outputs["prediction"])
            ),
        }
        loss = self.lambda_nll * terms["nll"] + trust * (
            self.lambda_anchor * terms["anchor"] + self.lambda_center * terms["center"]
        )
        return loss, terms, outputs

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        trust = self.trust()
        loss, terms, outputs = self.loss_terms_from_embeddings(self.body.embed(images), labels, trust)
        self.record_loss_terms(**terms)
        self.trust_reached.fill_(trust)
        return loss, outputs["logits"]

    def trust(self) -> float:
        """τ = min(1, global_step / ramp): the step about to be taken, over ``trust_ramp_steps`` or the
        run's optimiser steps. Outside a trainer (and without ``trust_ramp_steps``): 1."""
        ramp = self.trust_ramp_steps
        if ramp is None:
            if self._trainer is None:
                return 1.0
            ramp = self._run_steps if self._run_steps is not None else self._estimated_run_steps()
        return min(1.0, self.global_step / ramp)

    def _estimated_run_steps(self) -> float:
        steps = float(self.trainer.estimated_stepping_batches)
        if not math.isfinite(steps):
            raise ConfigurationError(
                "ARBEx ramps its trust weight over the whole run, but this run has no end "
                "(trainer.max_epochs=-1 and no trainer.max_steps): set trainer.max_epochs or "
                "trainer.max_steps, or model.init_args.trust_ramp_steps"
            )
        return max(steps, 1.0)

    def on_fit_start(self) -> None:
        # The same on a resumed run as on the original (same trainer limits and data), so the ramp continues.
        self._run_steps = None if self.trust_ramp_steps is not None else self._estimated_run_steps()
        if self.class_weighting == "inverse_frequency":
            counts = torch.bincount(torch.as_tensor(self._training_labels()), minlength=self.num_classes)
            self.class_weights.copy_(inverse_frequency_weights(counts).to(self.class_weights))

    def _training_labels(self):
        datamodule = getattr(self.trainer, "datamodule", None)
        tables = getattr(datamodule, "tables", None) or {}
        if "train" not in tables:
            raise ConfigurationError(
                "ARBEx class_weighting='inverse_frequency' weights its loss by the training split's class "
                "counts, read from a fer_lightning datamodule; this run has none: use a fer_lightning "
                "datamodule or set model.init_args.class_weighting: none"
            )
        return tables["train"].labels

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        self.log("train/trust", self.trust(), on_step=True, on_epoch=False)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        # The unweighted terms (train/nll_step, train/anchor_epoch, ...): which one moves, and how much.
        if self._skip_reason is None:
            for name, term in self.loss_terms.items():
                self.log(f"train/{name}", term, on_step=True, on_epoch=True, sync_dist=True)

    def train(self, mode: bool = True) -> ARBEx:
        super().train(mode)
        if self.freeze_ir and self.frozen_bn_mode == "eval":
            self.body.ir50.train(False)  # frozen: its BatchNorm statistics must not drift either
        return self

    def parameter_groups(self) -> list[dict]:
        """Four optimiser groups, each with its own learning rate: body, head, anchors, attention
        (frozen parameters left out)."""
        parts = {"body": self.body, "head": self.head, "anchors": self.anchors, "attention": self.attention}
        groups = []
        for name, module in parts.items():
            params = [param for param in module.parameters() if param.requires_grad]
            if params:
                groups.append({"params": params, "lr": self.learning_rates[name], "name": name})
        return groups
