"""In eval mode a sample's prediction depends on that sample only (the BTN paper: never predict after
a batch attention). One implementation for POSTER++, BTN and ARBEx (whose batch attention shapes
training only); BTN's P_BT head shows the check can fail."""

from __future__ import annotations

import pytest
import torch

from fer_lightning.models import POSTERPP
from fer_lightning.models.arbex import ARBEx
from fer_lightning.models.btn import BTN

pytestmark = pytest.mark.filterwarnings("ignore:PosterBody")


def _trained_like(model_class, **kwargs):
    """A tiny model whose landmark cross-attention reaches the logits, as after training (γ = 1e-5 at init)."""
    torch.manual_seed(0)
    model = model_class(variant="tiny", num_classes=7, **kwargs).eval()
    with torch.no_grad():
        for block in model.body.cross_attention:
            block.gamma_attention.fill_(1.0)
            block.gamma_mlp.fill_(1.0)
    return model


def predictions_alone_batched_and_permuted(model, images):
    """(logits of each image run alone, logits of the whole batch, logits of a permuted batch put back)."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        alone = torch.cat([model(images[i : i + 1]) for i in range(len(images))])
        batch = model(images)
        permuted = torch.empty_like(batch)
        permuted[order] = model(images[order])
    return alone, batch, permuted


@pytest.mark.parametrize(
    ("model_class", "kwargs"),
    [(POSTERPP, {}), (BTN, {"cba_backend": "reference"}), (ARBEx, {})],
    ids=["posterpp", "btn", "arbex"],
)
def test_eval_predictions_do_not_depend_on_the_batch(model_class, kwargs):
    model = _trained_like(model_class, **kwargs)
    alone, batch, permuted = predictions_alone_batched_and_permuted(model, torch.randn(12, 3, 64, 64))
    # Not bit-exact on CPU: a batch of 1 takes other kernels (oneDNN convolution algorithms, GEMV not
    # GEMM) than a batch of 12, so compare at fp32 rounding level; batch mixing moves logits far more.
    torch.testing.assert_close(alone, batch, rtol=0, atol=1e-5)
    torch.testing.assert_close(permuted, batch, rtol=0, atol=1e-5)


def test_predicting_after_batch_attention_does_depend_on_the_batch():
    """The check above can fail: BTN's P_BT (after class batch attention) mixes the batch."""
    model = _trained_like(BTN, cba_backend="reference", inference_head="bt")
    alone, batch, _ = predictions_alone_batched_and_permuted(model, torch.randn(12, 3, 64, 64))
    assert (alone - batch).abs().max() > 1e-3
