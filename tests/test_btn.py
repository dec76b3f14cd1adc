"""BTN against the paper: shapes, added parameters, MLA query roles, eq. 9, training (batch-independent
inference: tests/test_batch_independence.py)."""

import pytest
import torch
import torch.nn.functional as F

from fer_lightning.models.btn import BTN, BatchTransformer

pytestmark = pytest.mark.filterwarnings("ignore:PosterBody")


def _cross_attention_block_parameters(dim: int, heads: int, window: int) -> int:
    """LayerNorm ×2, K/V Linear(C→2C), proj Linear(C→C), MLP C→4C→C, two layer scales, bias table."""
    return 11 * dim * dim + 14 * dim + (2 * window - 1) ** 2 * heads


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def paper_btn():
    torch.manual_seed(0)
    return BTN(variant="paper", num_classes=7, cba_backend="reference").eval()


@pytest.fixture(scope="module")
def tiny_btn():
    torch.manual_seed(0)
    return BTN(variant="tiny", num_classes=7)


def test_paper_shapes(paper_btn):
    """S_l, F_MLA, E ∈ R^{B×N×49} and the three heads (docs/models.md#btn)."""
    captured = {}
    paper_btn.batch_transformer.embed.register_forward_hook(lambda m, i, o: captured.update(E=o.flatten(2)))
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        levels = paper_btn.body.extract_levels(images)
        assert [tuple(s.shape) for s in levels] == [(2, 64, 28, 28), (2, 128, 14, 14), (2, 256, 7, 7)]
        f_mla = paper_btn.mla(*levels)
        assert f_mla.shape == (2, 256, 7, 7)
        heads = paper_btn.heads(images)
    assert captured["E"].shape == (2, 7, 49)
    assert {name: tuple(t.shape) for name, t in heads.items()} == {"vit": (2, 7), "cba": (2, 7), "bt": (2, 7)}
    torch.testing.assert_close(heads["bt"], heads["cba"] + heads["vit"])  # eq. 6


def test_added_parameters_are_mla_plus_bt(paper_btn):
    """BTN − POSTER++ = MLA (two convs, two cross-attention blocks) + BT (conv_E, channel position)."""
    from fer_lightning.models.posterpp import POSTERPP

    posterpp = POSTERPP(variant="paper", num_classes=7)
    added = _count(paper_btn) - _count(posterpp)
    conv_a, conv_b = 64 * 128 * 9 + 128, 128 * 256 * 9 + 256
    blocks = _cross_attention_block_parameters(128, 4, 14) + _cross_attention_block_parameters(256, 8, 7)
    batch_transformer = 256 * 7 + 7 + 49
    assert added == conv_a + conv_b + blocks + batch_transformer == 1_281_636  # the paper: "about 1.3 M"


def test_loss_is_equation_9(tiny_btn):
    images, labels = torch.randn(8, 3, 112, 112), torch.randint(0, 7, (8,))
    torch.manual_seed(1)
    loss, logits = tiny_btn.training_loss(images, labels)
    torch.manual_seed(1)
    heads = tiny_btn.heads(images)
    expected = (
        2.0 * F.cross_entropy(heads["vit"], labels)
        + F.cross_entropy(heads["bt"], labels)
        + F.cross_entropy(heads["cba"], labels)
    )
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logits, heads["vit"])


def test_mla_higher_level_queries_the_lower_one(tiny_btn):
    """Eqs. 1–2: S₂ is the query into conv_a(S₁), and S₃ the query into conv_b(F_LA); the lower level gives
    keys and values. Same-shaped maps, so a swap would pass every shape check."""
    mla = tiny_btn.mla
    inputs = {}
    hooks = [
        getattr(mla, name).register_forward_pre_hook(
            lambda m, args, name=name: inputs.__setitem__(name, args)
        )
        for name in ("attend_a", "attend_b")
    ]
    torch.manual_seed(2)
    s1, s2, s3 = (
        torch.randn(2, c, n, n) for c, n in zip(tiny_btn.body.level_dims, tiny_btn.body.level_sizes)
    )
    try:
        with torch.no_grad():
            mla(s1, s2, s3)
    finally:
        for hook in hooks:
            hook.remove()
    # CrossAttentionBlock(image, query): the image side gives keys and values.
    (image_a, query_a), (image_b, query_b) = inputs["attend_a"], inputs["attend_b"]
    with torch.no_grad():
        assert torch.equal(query_a, s2) and torch.equal(image_a, mla.conv_a(s1))
        f_la = mla.attend_a(mla.conv_a(s1), s2)
        assert torch.equal(query_b, s3) and torch.equal(image_b, mla.conv_b(f_la))


def test_detached_value_stops_cba_gradient_to_vit():
    torch.manual_seed(0)
    f_mla = torch.randn(6, 16, 4, 4)
    for detach in (False, True):
        transformer = BatchTransformer(16, 7, 16, detach_value=detach, backend="reference")
        p_vit = torch.randn(6, 7, requires_grad=True)
        p_cba, _ = transformer(f_mla, p_vit)
        [grad] = torch.autograd.grad(p_cba.sum(), p_vit, allow_unused=True)
        assert (grad is None) == detach
        if not detach:
            assert grad.abs().sum() > 0


def test_cba_scale_options():
    assert BatchTransformer(16, 7, 49).scale == pytest.approx(7**-0.5)
    assert BatchTransformer(16, 7, 49, scale="none").scale == 1.0
    assert BatchTransformer(16, 7, 49, scale="sqrt_dim").scale == pytest.approx(1 / 7)
    with pytest.raises(ValueError, match="cba_scale"):
        BatchTransformer(16, 7, 49, scale="sqrt")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_is_finite(tiny_btn, dtype):
    images, labels = torch.randn(8, 3, 112, 112), torch.randint(0, 7, (8,))
    with torch.autocast("cpu", dtype=dtype):
        heads = tiny_btn.heads(images)
        loss, _ = tiny_btn.training_loss(images, labels)
    assert heads["cba"].dtype == dtype  # the op runs in the autocast dtype
    assert loss.dtype == torch.float32 and torch.isfinite(loss)  # losses in fp32
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in tiny_btn.parameters() if p.grad is not None)
    tiny_btn.zero_grad()


def test_head_accuracies_are_plain_accuracy(tiny_btn):
    """``val/heads/acc_vit`` is the same (micro) accuracy as ``val/acc``, not a class-averaged one."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    labels = torch.tensor([0] * 12 + [1] * 3 + [2])  # skewed, so micro and macro accuracy differ
    loader = DataLoader(TensorDataset(torch.randn(len(labels), 3, 64, 64), labels), batch_size=8)
    trainer = L.Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu"
    )
    [metrics] = trainer.validate(tiny_btn, loader, verbose=False)
    assert metrics["val/heads/acc_vit"] == pytest.approx(metrics["val/acc"])
    for head in ("bt", "cba"):
        assert metrics[f"val/heads/acc_{head}"] * len(labels) == pytest.approx(
            round(metrics[f"val/heads/acc_{head}"] * len(labels)), abs=1e-4
        )  # a whole number of correct samples
