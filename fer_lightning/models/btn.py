"""BTN: Batch Transformer Network (Her, Jeong, Song, Han, "Batch Transformer: Look for Attention in
Batch", arXiv 2024; docs/models.md#btn).

BTN = the POSTER++ body + multi-level attention (MLA, eqs. 1–2) + a batch transformer (BT) whose class
batch attention (CBA, eqs. 3–7) lets each image borrow the ViT class scores of the images in its batch
that look alike, class by class. The loss is λ·L_VIT + L_BT + L_CBA (eq. 9). **Predictions use P_VIT
only**: "you must not perform inference after any batch attention mechanism" — CBA, BT and MLA shape
training, and in eval mode a sample's prediction does not depend on the rest of its batch.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from fer_lightning.models.backbones.poster_body import CrossAttentionBlock
from fer_lightning.models.base import EVAL_SPLITS
from fer_lightning.models.distributed import gather_batch
from fer_lightning.models.posterpp import POSTERPP
from fer_lightning.ops import class_batch_attention

CBAScale = Literal["sqrt_classes", "none", "sqrt_dim"]
CBAScope = Literal["local", "global"]


class MultiLevelAttention(nn.Module):
    """MLA: cross-attention from each higher level into the level below it (eqs. 1–2).

    F_LA = MHCA(query = S₂, key = value = conv_a(S₁))      (eq. 2)
    F_MLA = MHCA(query = S₃, key = value = conv_b(F_LA))   (eq. 1)

    conv_a/conv_b are 3×3 stride-2 convolutions that bring the lower map to the next level's shape
    (the paper: "to fit S₂/S₃"; kernel sizes are not published), and MHCA is the same
    cross-attention block the POSTER++ body uses, with the higher level as query.
    """

    def __init__(
        self,
        level_dims: tuple[int, int, int],
        level_sizes: tuple[int, int, int],
        num_heads: tuple[int, int] = (4, 8),
    ) -> None:
        super().__init__()
        dim1, dim2, dim3 = level_dims
        self.conv_a = nn.Conv2d(dim1, dim2, kernel_size=3, stride=2, padding=1)
        self.attend_a = CrossAttentionBlock(dim2, num_heads[0], window_size=level_sizes[1])
        self.conv_b = nn.Conv2d(dim2, dim3, kernel_size=3, stride=2, padding=1)
        self.attend_b = CrossAttentionBlock(dim3, num_heads[1], window_size=level_sizes[2])

    def forward(self, s1: torch.Tensor, s2: torch.Tensor, s3: torch.Tensor) -> torch.Tensor:
        """(B, C₁, H₁, W₁), (B, C₂, H₂, W₂), (B, C₃, H₃, W₃) → F_MLA (B, C₃, H₃, W₃)."""
        local_attention = self.attend_a(self.conv_a(s1), s2)  # F_LA, eq. 2
        return self.attend_b(self.conv_b(local_attention), s3)  # F_MLA, eq. 1


class BatchTransformer(nn.Module):
    """BT: embedding E = conv(F_MLA) (eq. 8), channel positional encoding, CBA, P_BT = P_CBA + P_VIT (eq. 6).

    Args:
        in_channels: channels of F_MLA.
        num_classes: N; E has one channel per class.
        num_positions: H·W of F_MLA (49 in the paper).
        scale: CBA logit scale: ``sqrt_classes`` = 1/√N as in the official README code (default),
            ``none`` as in the paper's eq. 4, ``sqrt_dim`` = 1/√(H·W).
        value: P_VIT enters CBA as ``logits`` (default) or softmax ``probabilities`` (unpublished).
            The residual of eq. 6 adds P_VIT itself either way.
        detach_value: stop L_CBA and L_BT from pushing P_VIT towards the batch consensus through the CBA
            value (the residual of eq. 6 still passes L_BT's gradient to P_VIT).
        backend: CBA implementation (:func:`fer_lightning.ops.class_batch_attention`).
        scope: which images CBA mixes under DDP while training. ``local``: the images of this process's
            batch (B per device). ``global``: the images of all processes (B × processes, as one device
            with the whole batch would): each process gathers every process's embeddings and values,
            runs CBA on all of them (every backend works; the gathered batch is small next to the body's
            cost) and keeps its own rows, and gradients reach the process each image came from. Outside
            a distributed run, and in evaluation (where processes may hold different numbers of
            batches), both are the same.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        num_positions: int,
        scale: CBAScale = "sqrt_classes",
        value: Literal["logits", "probabilities"] = "logits",
        detach_value: bool = False,
        backend: str = "auto",
        scope: CBAScope = "local",
    ) -> None:
        super().__init__()
        if scope not in ("local", "global"):
            raise ValueError(f"cba_scope must be local or global, got {scope!r}")
        if scale not in ("sqrt_classes", "none", "sqrt_dim"):
            raise ValueError(f"cba_scale must be sqrt_classes, none or sqrt_dim, got {scale!r}")
        if value not in ("logits", "probabilities"):
            raise ValueError(f"cba_value must be logits or probabilities, got {value!r}")
        self.embed = nn.Conv2d(in_channels, num_classes, kernel_size=1)  # conv_E, eq. 8
        # CP: one learned position vector shared by every class channel ("the same position per channel").
        self.channel_position = nn.Parameter(torch.zeros(num_positions))
        nn.init.trunc_normal_(self.channel_position, std=0.02)
        self.scale = {"sqrt_classes": num_classes**-0.5, "none": 1.0, "sqrt_dim": num_positions**-0.5}[scale]
        self.value = value
        self.detach_value = detach_value
        self.backend = backend
        self.scope = scope

    def embeddings(self, f_mla: torch.Tensor) -> torch.Tensor:
        """CP(E): the per-class features CBA compares, (B, N, H·W) (eq. 8 plus the channel positions)."""
        return self.embed(f_mla).flatten(2) + self.channel_position

    def forward(self, f_mla: torch.Tensor, p_vit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """F_MLA (B, C, H, W), P_VIT (B, N) → (P_CBA, P_BT), each (B, N). Mixes samples of the batch."""
        encoded = self.embeddings(f_mla)
        value = p_vit.detach() if self.detach_value else p_vit
        if self.value == "probabilities":
            value = value.float().softmax(dim=-1).to(p_vit.dtype)
        if self.scope == "global" and self.training:
            num_classes = value.shape[1]
            # One collective for both: the embeddings and the values, side by side per image.
            rows, own_rows = gather_batch(torch.cat([encoded.flatten(1), value.to(encoded.dtype)], dim=1))
            encoded = rows[:, :-num_classes].unflatten(1, (num_classes, -1))
            value = rows[:, -num_classes:]
        else:
            own_rows = slice(None)
        p_cba = class_batch_attention(
            encoded, encoded, value, scale=self.scale, backend=self.backend
        )  # eq. 7
        p_cba = p_cba[own_rows]  # with global scope, this process's images of the gathered batch
        return p_cba, p_cba + p_vit  # eq. 6


class BTN(POSTERPP):
    """Batch Transformer Network: POSTER++ (its body and P_VIT head) plus MLA and the batch transformer.

    Args:
        lambda_vit: λ of eq. 9 (2.0 is the paper's best on RAF-DB, Table 6).
        inference_head: ``vit`` (the paper: P_VIT, batch-independent) or ``bt`` (P_BT, which depends on
            the other images of the batch; for ablations only).
        cba_scale, cba_value, detach_cba_value, cba_backend, cba_scope: see :class:`BatchTransformer`
            (``cba_scope``: ``global`` makes CBA attend over the batch of all DDP processes).
        mla_heads: heads of the two MLA cross-attention blocks.
        **kwargs: :class:`~fer_lightning.models.posterpp.POSTERPP` arguments (the body: ``variant``,
            ``ir50_weights``, ``mobilefacenet_weights``, ``landmark_bn_mode``, ``interpolate_mode``) and
            :class:`~fer_lightning.models.base.FERClassifier` ones (classes, optimiser, SAM, …).
    """

    def __init__(
        self,
        lambda_vit: float = 2.0,
        inference_head: Literal["vit", "bt"] = "vit",
        cba_scale: CBAScale = "sqrt_classes",
        cba_value: Literal["logits", "probabilities"] = "logits",
        detach_cba_value: bool = False,
        cba_backend: str = "auto",
        cba_scope: CBAScope = "local",
        mla_heads: tuple[int, int] = (4, 8),
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if inference_head not in ("vit", "bt"):
            raise ValueError(f"inference_head must be 'vit' or 'bt', got {inference_head!r}")
        self.mla = MultiLevelAttention(self.body.level_dims, self.body.level_sizes, num_heads=mla_heads)
        last_size = self.body.level_sizes[-1]
        self.batch_transformer = BatchTransformer(
            self.body.level_dims[-1],
            self.num_classes,
            last_size * last_size,
            scale=cba_scale,
            value=cba_value,
            detach_value=detach_cba_value,
            backend=cba_backend,
            scope=cba_scope,
        )
        self.lambda_vit = lambda_vit
        self.inference_head = inference_head
        # Accuracy of each head on validation/test batches; P_BT and P_CBA ones depend on the batch.
        self.head_accuracy = nn.ModuleDict(
            {
                split: nn.ModuleDict(
                    {
                        head: MulticlassAccuracy(self.num_classes, average="micro")
                        for head in ("vit", "bt", "cba")
                    }
                )
                for split in EVAL_SPLITS
            }
        )

    def heads(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """P_VIT, P_CBA and P_BT for a batch, each (B, N)."""
        levels = self.body.extract_levels(images)
        p_vit = self.body.classify(levels)
        p_cba, p_bt = self.batch_transformer(self.mla(*levels), p_vit)
        return {"vit": p_vit, "cba": p_cba, "bt": p_bt}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.inference_head == "vit":
            return super().forward(images)  # POSTER++'s P_VIT: MLA and BT cannot change it
        return self.heads(images)["bt"]

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        heads = self.heads(images)
        # Each term is the configured loss (cross-entropy in the paper; F-PDLS with loss: fpdls).
        terms = {
            f"loss_{name}": self.classification_loss(heads[name], labels) for name in ("vit", "bt", "cba")
        }
        self.record_loss_terms(**terms)
        loss = self.lambda_vit * terms["loss_vit"] + terms["loss_bt"] + terms["loss_cba"]  # eq. 9
        return loss, heads["vit"]

    def _evaluation_step(self, split: str, batch) -> None:
        images, labels = batch
        heads = self.heads(images)
        self.update_evaluation(split, heads[self.inference_head], labels)
        for name, logits in heads.items():
            self.head_accuracy[split][name](logits, labels)
            self.log(f"{split}/heads/acc_{name}", self.head_accuracy[split][name], on_epoch=True)
