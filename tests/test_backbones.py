"""POSTER++ body parts: IR-50, MobileFaceNet, the cross-attention block, and the strict checkpoint loaders.

Checkpoints are synthetic state dicts written with the *published* key names (face.evoLVe / POSTER V1
``body.N``, POSTER V2 ``body1/2/3``, pytorch_face_landmark ``*.pth.tar``), generated here from the
published architecture description rather than from our loaders, so a renaming bug cannot cancel out.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from fer_lightning.models.backbones import (
    IR50,
    CheckpointMismatchError,
    CrossAttentionBlock,
    FrozenLandmarkNet,
    MobileFaceNet,
    PosterBody,
    load_ir50_weights,
    load_mobilefacenet_weights,
)
from fer_lightning.models.backbones.poster_body import POSTER_BODY_VARIANTS

# --- published key layouts, written from the architecture (face.evoLVe model_irse.py, IR-50) -------------

IR50_STAGES = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))  # (in, out, units), all 4 stages


def _bn(prefix: str, channels: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": torch.rand(channels, generator=generator) + 0.5,
        f"{prefix}.bias": torch.randn(channels, generator=generator),
        f"{prefix}.running_mean": torch.randn(channels, generator=generator),
        f"{prefix}.running_var": torch.rand(channels, generator=generator) + 0.5,
        f"{prefix}.num_batches_tracked": torch.tensor(1000),
    }


def _ir_unit(prefix: str, cin: int, cout: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``bottleneck_IR``: res_layer = BN, Conv3×3, PReLU, Conv3×3(stride), BN; conv+BN shortcut if cin≠cout."""
    tensors = {
        **_bn(f"{prefix}.res_layer.0", cin, generator),
        f"{prefix}.res_layer.1.weight": torch.randn(cout, cin, 3, 3, generator=generator),
        f"{prefix}.res_layer.2.weight": torch.rand(cout, generator=generator),
        f"{prefix}.res_layer.3.weight": torch.randn(cout, cout, 3, 3, generator=generator),
        **_bn(f"{prefix}.res_layer.4", cout, generator),
    }
    if cin != cout:
        tensors[f"{prefix}.shortcut_layer.0.weight"] = torch.randn(cout, cin, 1, 1, generator=generator)
        tensors.update(_bn(f"{prefix}.shortcut_layer.1", cout, generator))
    return tensors


def published_ir50(layout: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """An IR-50 state dict with published names: ``v1`` = face.evoLVe (``body.0..23`` + output_layer),
    ``v2`` = POSTER V2 (``body1/2/3`` + output_layer, no stage 4)."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        "input_layer.0.weight": torch.randn(64, 3, 3, 3, generator=generator),
        **_bn("input_layer.1", 64, generator),
        "input_layer.2.weight": torch.rand(64, generator=generator),
    }
    index = 0
    for stage, (cin, cout, units) in enumerate(IR50_STAGES):
        if layout == "v2" and stage == 3:
            break
        for unit in range(units):
            prefix = f"body.{index}" if layout == "v1" else f"body{stage + 1}.{unit}"
            tensors.update(_ir_unit(prefix, cin if unit == 0 else cout, cout, generator))
            index += 1
    # The dead output layer: BN2d(512), Dropout, Flatten, Linear(512·7·7 → 512), BN1d(512).
    tensors.update(_bn("output_layer.0", 512, generator))
    tensors["output_layer.3.weight"] = torch.zeros(512, 512 * 7 * 7)
    tensors["output_layer.3.bias"] = torch.zeros(512)
    tensors.update(_bn("output_layer.4", 512, generator))
    return tensors


def _ours_from_v1(key: str) -> str | None:
    """Our name for a published V1 key, or None if dropped (docs/models.md#loading-backbone-checkpoints)."""
    if key.startswith("input_layer."):
        return "stem." + key.removeprefix("input_layer.")
    if key.startswith("output_layer."):
        return None
    _, index, rest = key.split(".", 2)
    index = int(index)
    for stage, (start, end) in enumerate(((0, 3), (3, 7), (7, 21))):
        if start <= index < end:
            rest = rest.replace("res_layer.", "residual.").replace("shortcut_layer.", "shortcut.")
            return f"stage{stage + 1}.{index - start}.{rest}"
    return None  # body.21-23: stage 4


# IR-50 (three stages) tensors without BN counters: stem 6, 21 units × 11, and 5 more for each of the two
# conv shortcuts (body.3 64→128, body.7 128→256; body.0 keeps 64 channels and subsamples).
IR50_EXPECTED = 6 + 21 * 11 + 2 * 5


def test_ir50_stage_shapes_paper_and_tiny():
    with torch.no_grad():
        maps = IR50().eval()(torch.randn(1, 3, 112, 112))
        assert [tuple(m.shape) for m in maps] == [(1, 64, 56, 56), (1, 128, 28, 28), (1, 256, 14, 14)]
        tiny = POSTER_BODY_VARIANTS["tiny"]
        maps = IR50(tiny.ir_depths, tiny.ir_widths).eval()(torch.randn(2, 3, 64, 64))
        assert [tuple(m.shape) for m in maps] == [(2, 16, 32, 32), (2, 32, 16, 16), (2, 64, 8, 8)]


def test_ir50_builds_no_dead_modules():
    names = {name.split(".")[0] for name, _ in IR50().named_parameters()}
    assert names == {"stem", "stage1", "stage2", "stage3"}
    # face.evoLVe IR-50 minus stage 4 and output_layer = 17,611,968 (official IR-50: 30.46 M − 12.85 M).
    assert sum(p.numel() for p in IR50().parameters()) == 17_611_968


@pytest.mark.parametrize("wrapped", [True, False])
def test_ir50_loads_face_evolve_v1_names(tmp_path, wrapped):
    published = published_ir50("v1")
    stored = {f"module.{key}": value for key, value in published.items()}
    path = tmp_path / "ir50.pth"
    torch.save({"state_dict": stored} if wrapped else stored, path)
    model = IR50()
    report = load_ir50_weights(model, str(path))
    assert report.matched == report.expected == IR50_EXPECTED
    ours = model.state_dict()
    loaded = 0
    for key, tensor in published.items():
        target = _ours_from_v1(key)
        if target is None:
            assert key in report.ignored
            continue
        assert torch.equal(ours[target], tensor), key
        loaded += 1
    assert loaded == IR50_EXPECTED + 1 + 21 * 2 + 2  # plus the BN counters: stem, 2 per unit, shortcuts
    # body.21-23 (13 tensors per unit, 6 more for body.21's conv shortcut) and output_layer (12).
    assert len(report.ignored) == 3 * 13 + 6 + 12
    assert f"{IR50_EXPECTED}/{IR50_EXPECTED}" in str(report)


def test_ir50_loads_poster_v2_names_and_changes_the_output():
    published = published_ir50("v2")
    model = IR50().eval()
    image = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        before = model(image)[2]
    report = load_ir50_weights(model, published)
    assert report.matched == IR50_EXPECTED and report.key_format.startswith("POSTER V2")
    assert torch.equal(model.stage3[13].residual[3].weight, published["body3.13.res_layer.3.weight"])
    assert torch.equal(
        model.stage2[0].shortcut[1].running_var, published["body2.0.shortcut_layer.1.running_var"]
    )
    with torch.no_grad():
        assert not torch.allclose(model(image)[2], before)


def test_ir50_missing_tensor_fails_with_counts():
    published = published_ir50("v1")
    del published["body.5.res_layer.1.weight"]
    with pytest.raises(
        CheckpointMismatchError,
        match=rf"matched {IR50_EXPECTED - 1}/{IR50_EXPECTED} .*missing 1 "
        r"\[stage2\.2\.residual\.1\.weight\]",
    ):
        load_ir50_weights(IR50(), published)


def test_ir50_wrong_shape_fails_and_loads_nothing():
    published = published_ir50("v1")
    published["body.10.res_layer.3.weight"] = torch.randn(256, 256, 1, 1)
    model = IR50()
    before = model.stem[0].weight.clone()
    with pytest.raises(CheckpointMismatchError, match=r"wrong shape 1 \[stage3\.3\.residual\.3\.weight"):
        load_ir50_weights(model, published)
    assert torch.equal(model.stem[0].weight, before)


def test_ir50_unexpected_key_and_unknown_layout_fail():
    published = published_ir50("v2")
    published["body2.1.se.fc1.weight"] = torch.zeros(8, 128, 1, 1)  # an IR-SE checkpoint, say
    with pytest.raises(CheckpointMismatchError, match=r"unexpected 1 \[stage2\.1\.se\.fc1\.weight\]"):
        load_ir50_weights(IR50(), published)
    with pytest.raises(CheckpointMismatchError, match="cannot tell the key layout"):
        load_ir50_weights(IR50(), {"conv1.weight": torch.zeros(1)})


def test_ir50_paper_checkpoint_does_not_fit_the_tiny_variant():
    tiny = POSTER_BODY_VARIANTS["tiny"]
    with pytest.raises(CheckpointMismatchError, match="wrong shape"):
        load_ir50_weights(IR50(tiny.ir_depths, tiny.ir_widths), published_ir50("v1"))


def test_ir50_checkpoint_without_batchnorm_counters_loads():
    # Saved before PyTorch 0.4.1: no num_batches_tracked. Optional, reported.
    published = {k: v for k, v in published_ir50("v1").items() if not k.endswith("num_batches_tracked")}
    report = load_ir50_weights(IR50(), published)
    assert report.matched == IR50_EXPECTED and len(report.optional_missing) == 1 + 21 * 2 + 2


# --- MobileFaceNet ---------------------------------------------------------------------------------------


def published_mobilefacenet(seed: int = 0) -> dict[str, torch.Tensor]:
    """pytorch_face_landmark ``MobileFaceNet([112, 112], 136)`` state dict with its published names:
    residual stages as ``conv_N.model.i`` and the GDC landmark head as ``output_layer.*``."""
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}

    def conv_block(prefix, cin, cout, kernel, groups=1, prelu=True):
        tensors[f"{prefix}.conv.weight"] = torch.randn(
            cout, cin // groups, kernel, kernel, generator=generator
        )
        tensors.update(_bn(f"{prefix}.bn", cout, generator))
        if prelu:
            tensors[f"{prefix}.prelu.weight"] = torch.rand(cout, generator=generator)

    def depth_wise(prefix, cin, cout, hidden):
        conv_block(f"{prefix}.conv", cin, hidden, 1)
        conv_block(f"{prefix}.conv_dw", hidden, hidden, 3, groups=hidden)
        conv_block(f"{prefix}.project", hidden, cout, 1, prelu=False)

    conv_block("conv1", 3, 64, 3)
    conv_block("conv2_dw", 64, 64, 3, groups=64)
    depth_wise("conv_23", 64, 64, 128)
    for i in range(4):
        depth_wise(f"conv_3.model.{i}", 64, 64, 128)
    depth_wise("conv_34", 64, 128, 256)
    for i in range(6):
        depth_wise(f"conv_4.model.{i}", 128, 128, 256)
    depth_wise("conv_45", 128, 128, 512)
    for i in range(2):
        depth_wise(f"conv_5.model.{i}", 128, 128, 256)
    conv_block("conv_6_sep", 128, 512, 1)
    conv_block("output_layer.conv_6_dw", 512, 512, 7, groups=512, prelu=False)  # GDC head
    tensors["output_layer.linear.weight"] = torch.randn(136, 512, generator=generator)
    tensors.update(_bn("output_layer.bn", 136, generator))
    return tensors


# conv1, conv2_dw, conv_6_sep: 6 each; 15 depth-wise blocks (conv_23, 4, conv_34, 6, conv_45, 2) × (6 + 6 + 5);
# BN counters excluded.
MOBILEFACENET_EXPECTED = 3 * 6 + 15 * 17
MOBILEFACENET_HEAD_KEYS = 6 + 1 + 5  # conv_6_dw (conv + BN with counter), linear, BN1d with counter


def test_mobilefacenet_taps_paper_and_tiny():
    with torch.no_grad():
        taps = MobileFaceNet().eval()(torch.randn(1, 3, 112, 112))
        assert [tuple(t.shape) for t in taps] == [(1, 64, 28, 28), (1, 128, 14, 14), (1, 512, 7, 7)]
        tiny = POSTER_BODY_VARIANTS["tiny"]
        taps = MobileFaceNet(tiny.landmark_channels, tiny.landmark_depths).eval()(torch.randn(2, 3, 64, 64))
        assert [tuple(t.shape) for t in taps] == [(2, 16, 16, 16), (2, 32, 8, 8), (2, 128, 4, 4)]


def test_mobilefacenet_loads_pth_tar_and_ignores_only_the_head(tmp_path):
    published = published_mobilefacenet()
    path = tmp_path / "mobilefacenet_model_best.pth.tar"
    torch.save({"epoch": 50, "state_dict": {f"module.{k}": v for k, v in published.items()}}, path)
    frozen = FrozenLandmarkNet(MobileFaceNet())
    report = load_mobilefacenet_weights(frozen, path)
    assert report.matched == report.expected == MOBILEFACENET_EXPECTED
    assert sorted(report.ignored) == sorted(k for k in published if k.startswith("output_layer."))
    assert len(report.ignored) == MOBILEFACENET_HEAD_KEYS
    ours = frozen.net.state_dict()
    for key, tensor in published.items():
        if not key.startswith("output_layer."):
            assert torch.equal(ours[key.replace(".model.", ".")], tensor), key
    assert not any(p.requires_grad for p in frozen.parameters())  # loading keeps it frozen


def test_mobilefacenet_bare_state_dict_and_failures():
    published = published_mobilefacenet()
    assert load_mobilefacenet_weights(MobileFaceNet(), published).matched == MOBILEFACENET_EXPECTED
    extra = {**published, "fc.weight": torch.zeros(136, 512)}
    with pytest.raises(CheckpointMismatchError, match=r"unexpected 1 \[fc\.weight\]"):
        load_mobilefacenet_weights(MobileFaceNet(), extra)
    missing = {k: v for k, v in published.items() if not k.startswith("conv_4.model.5.")}
    with pytest.raises(CheckpointMismatchError, match=rf"matched {MOBILEFACENET_EXPECTED - 17}/"):
        load_mobilefacenet_weights(MobileFaceNet(), missing)


def test_checkpoint_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": published_mobilefacenet(), "recorder": warnings.WarningMessage}, path)
    with pytest.raises(Exception, match=r"(?i)weights_only|unsupported|global"):
        load_mobilefacenet_weights(MobileFaceNet(), path)


# --- frozen landmark net: eval-mode fix vs upstream drift (docs/models.md#deviations-from-the-official-code)


def _landmark_bn_buffers(body: PosterBody) -> dict[str, torch.Tensor]:
    return {
        k: v.clone() for k, v in body.landmark_net.state_dict().items() if "running" in k or "batches" in k
    }


def _train_step(body: PosterBody) -> None:
    body.train()
    optimizer = torch.optim.Adam([p for p in body.parameters() if p.requires_grad], lr=1e-3)
    images, labels = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    F.cross_entropy(body(images), labels).backward()
    optimizer.step()


@pytest.mark.filterwarnings("ignore:PosterBody")
def test_frozen_landmark_net_stays_in_eval_mode_and_its_bn_does_not_drift():
    torch.manual_seed(0)
    body = PosterBody(7, variant="tiny")
    before = _landmark_bn_buffers(body)
    weights_before = [p.clone() for p in body.landmark_net.parameters()]
    _train_step(body)
    assert body.training and body.ir50.training
    assert not body.landmark_net.training and not any(m.training for m in body.landmark_net.modules())
    assert not any(p.requires_grad for p in body.landmark_net.parameters())
    for key, value in _landmark_bn_buffers(body).items():
        assert torch.equal(value, before[key]), key
    assert all(torch.equal(a, b) for a, b in zip(body.landmark_net.parameters(), weights_before))


@pytest.mark.filterwarnings("ignore:PosterBody")
def test_train_upstream_bn_mode_reproduces_the_drift():
    torch.manual_seed(0)
    body = PosterBody(7, variant="tiny", landmark_bn_mode="train_upstream")
    before = _landmark_bn_buffers(body)
    _train_step(body)
    assert body.landmark_net.training
    changed = [
        key for key, value in _landmark_bn_buffers(body).items() if not torch.equal(value, before[key])
    ]
    assert len(changed) == len(before)  # every running mean/var and counter moved
    assert not any(p.requires_grad for p in body.landmark_net.parameters())  # still "frozen"
    body.eval()
    assert not body.landmark_net.training


def test_bn_mode_is_validated():
    with pytest.raises(ValueError, match="bn_mode"):
        FrozenLandmarkNet(MobileFaceNet(), bn_mode="train")


# --- cross-attention block (docs/models.md#the-poster-body) -------------------------------------------------


def _reference_cross_attention(
    block: CrossAttentionBlock, image: torch.Tensor, query: torch.Tensor
) -> torch.Tensor:
    """The block's equations with explicit loops over heads and an independently computed relative bias."""
    batch, channels, size, _ = image.shape
    heads, head_dim, tokens = block.num_heads, channels // block.num_heads, size * size
    x = F.layer_norm(
        image.flatten(2).transpose(1, 2), (channels,), block.norm_image.weight, block.norm_image.bias
    )
    key_value = x @ block.key_value.weight.T + block.key_value.bias
    keys, values = key_value[..., :channels], key_value[..., channels:]
    y = query.flatten(2).transpose(1, 2)
    rows, cols = torch.arange(tokens) // size, torch.arange(tokens) % size
    table_index = (rows[:, None] - rows[None, :] + size - 1) * (2 * size - 1) + (
        cols[:, None] - cols[None, :] + size - 1
    )
    outputs = []
    for h in range(heads):
        part = slice(h * head_dim, (h + 1) * head_dim)
        q = y[..., part] * head_dim**-0.5  # raw query, scaled; no projection
        logits = q @ keys[..., part].transpose(1, 2) + block.relative_position_bias_table[table_index, h]
        outputs.append(logits.softmax(-1) @ values[..., part])
    z = torch.cat(outputs, -1) @ block.proj.weight.T + block.proj.bias
    u = x + block.gamma_attention * z
    mlp_in = F.layer_norm(u, (channels,), block.norm_mlp.weight, block.norm_mlp.bias)
    s = u + block.gamma_mlp * block.mlp(mlp_in)
    return s.transpose(1, 2).reshape(batch, channels, size, size)


def test_cross_attention_block_matches_the_equations():
    torch.manual_seed(0)
    block = CrossAttentionBlock(dim=32, num_heads=4, window_size=5, drop_path=0.25).eval()
    with torch.no_grad():  # large layer scales so that attention and MLP matter
        block.gamma_attention.uniform_(0.5, 1.5)
        block.gamma_mlp.uniform_(0.5, 1.5)
        block.relative_position_bias_table.normal_()
        image, query = torch.randn(2, 32, 5, 5), torch.randn(2, 32, 5, 5)
        torch.testing.assert_close(block(image, query), _reference_cross_attention(block, image, query))


def test_cross_attention_block_starts_at_the_normalised_image():
    # γ = 1e-5 at init: the output is (almost) LayerNorm(image), the *normalised* shortcut.
    torch.manual_seed(0)
    block = CrossAttentionBlock(dim=64, num_heads=2, window_size=4).eval()
    image, query = torch.randn(1, 64, 4, 4) * 3 + 1, torch.randn(1, 64, 4, 4)
    with torch.no_grad():
        normalised = F.layer_norm(image.permute(0, 2, 3, 1), (64,)).permute(0, 3, 1, 2)
        torch.testing.assert_close(block(image, query), normalised, atol=1e-3, rtol=0)
    assert torch.all(block.gamma_attention == 1e-5) and torch.all(block.gamma_mlp == 1e-5)


def test_cross_attention_block_parameter_count_and_shape_check():
    # LN 2C + K,V (2C² + 2C) + bias table (2w−1)²·h + proj (C² + C) + γ 2C + LN 2C + MLP (8C² + 5C)
    #   = 11C² + 14C + (2w−1)²·h; level 3 of the paper (C 256, w 7, 8 heads): 725,832.
    block = CrossAttentionBlock(256, 8, 7)
    assert sum(p.numel() for p in block.parameters()) == 11 * 256**2 + 14 * 256 + 13**2 * 8 == 725_832
    assert "relative_position_index" not in block.state_dict()  # derived, not stored
    with pytest.raises(ValueError, match="expects image and query maps"):
        block(torch.randn(1, 256, 7, 7), torch.randn(1, 256, 14, 14))
