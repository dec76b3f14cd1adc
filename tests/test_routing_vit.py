"""RoutingViT: BiFormer and the region-routed ViT (fer_lightning/models/routing_vit.py).

The official sizes and checkpoint layout, routing that reduces to dense attention when every region is
routed, FLOPs by hand, batch-independent predictions, clear errors, and one training batch of every
experiment config through the CLI on synthetic AI-Hub data.
"""

from __future__ import annotations

import logging

import pytest
import torch
from cli_helpers import fast_dev_run
from test_batch_independence import predictions_alone_batched_and_permuted

from fer_lightning.cli import main
from fer_lightning.data.synthetic import write_synthetic
from fer_lightning.errors import ConfigurationError, WeightsError
from fer_lightning.models import RoutingViT
from fer_lightning.models.complexity import count_macs
from fer_lightning.models.routing_vit import RoutedViTNetwork, RoutingVariant, rename_official_biformer


def _randomised(model: RoutingViT) -> RoutingViT:
    """Every floating-point tensor random (LePE, norms and BatchNorm statistics included), eval mode.

    Norm gains and variances near 1 and weights large enough that attention is far from uniform, so
    that the logits depend on which tokens are attended to and how sharply.
    """
    torch.manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.network.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var") or (tensor.dim() == 1 and name.endswith("weight")):
                tensor.uniform_(0.5, 1.5)
            else:
                tensor.normal_(0, 0.2 if tensor.dim() > 1 else 0.1)
    return model.eval()


@pytest.mark.parametrize(
    ("variant", "all_regions"),
    [("routed_vit_tiny", 4), ("tiny", [4, 4, 4, -2])],
    ids=["routed_vit", "biformer"],
)
def test_routing_every_region_equals_dense_attention_with_the_same_weights(variant, all_regions):
    # 32 px in 2×2 regions: token grids 4×4 (ViT) and 8/4/2 (BiFormer's routed stages).
    sizes = {"img_size": 32, "regions": 2}
    routed = _randomised(RoutingViT(variant=variant, topk=all_regions, **sizes))
    dense = RoutingViT(variant=variant, topk=-1, **sizes).eval()
    dense.network.load_state_dict(routed.network.state_dict())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(routed(images), dense(images), rtol=1e-4, atol=1e-5)
        # ... and routing fewer regions does change the result.
        fewer = RoutingViT(variant=variant, topk=1, **sizes).eval()
        fewer.network.load_state_dict(routed.network.state_dict())
        assert (fewer(images) - dense(images)).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("variant", "official"),
    [("biformer_tiny", 13_142_760), ("biformer_small", 25_536_232), ("biformer_base", 56_804_968)],
)
def test_parameter_counts_equal_the_official_models(variant, official):
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = RoutingViT(variant=variant, num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == official


def _official_biformer_keys(depths: tuple[int, ...]) -> list[str]:
    """The tensor names of the official BiFormer (rayleizhu/BiFormer models/biformer.py), spelled out:
    routed stages use BRA (QKVLinear ``qkv.qkv``, output ``wo``), the last stage dense attention with
    LePE (``qkv`` without bias, ``proj``); the MLP is Sequential(Linear, Identity, GELU, Linear)."""
    batch_norm = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = [f"downsample_layers.0.{i}.{p}" for i in (0, 3) for p in ("weight", "bias")]
    keys += [f"downsample_layers.0.{i}.{p}" for i in (1, 4) for p in batch_norm]
    for stage in (1, 2, 3):
        keys += [f"downsample_layers.{stage}.0.{p}" for p in ("weight", "bias")]
        keys += [f"downsample_layers.{stage}.1.{p}" for p in batch_norm]
    for stage, depth in enumerate(depths):
        for block in range(depth):
            prefix = f"stages.{stage}.{block}."
            keys += [
                prefix + name
                for name in ("pos_embed.weight", "pos_embed.bias", "attn.lepe.weight", "attn.lepe.bias")
            ]
            keys += [prefix + f"{norm}.{p}" for norm in ("norm1", "norm2") for p in ("weight", "bias")]
            keys += [prefix + f"mlp.{i}.{p}" for i in (0, 3) for p in ("weight", "bias")]
            if stage == len(depths) - 1:
                keys += [prefix + name for name in ("attn.qkv.weight", "attn.proj.weight", "attn.proj.bias")]
            else:
                keys += [prefix + f"attn.{m}.{p}" for m in ("qkv.qkv", "wo") for p in ("weight", "bias")]
    return keys + [f"norm.{p}" for p in batch_norm] + ["head.weight", "head.bias"]


@pytest.fixture(scope="module")
def official_tiny_checkpoint(tmp_path_factory):
    """A file in the official release layout, {"model": state_dict}, with random tensors."""
    shapes = {
        key: tensor.shape
        for key, tensor in RoutingViT(variant="biformer_tiny", num_classes=1000).network.state_dict().items()
    }
    generator = torch.Generator().manual_seed(1)
    state_dict = {}
    for key in _official_biformer_keys((2, 2, 8, 2)):
        [ours] = rename_official_biformer({key: None})
        state_dict[key] = (
            torch.tensor(7)
            if key.endswith("num_batches_tracked")
            else torch.rand(shapes[ours], generator=generator)
        )
    path = tmp_path_factory.mktemp("biformer") / "biformer_tiny_in1k.pth"
    torch.save({"model": state_dict}, path)
    return path, state_dict


def test_an_official_checkpoint_loads_every_tensor(official_tiny_checkpoint, caplog):
    path, official = official_tiny_checkpoint
    with caplog.at_level(logging.INFO, logger="fer_lightning.models.routing_vit"):
        model = RoutingViT(variant="biformer_tiny", weights=str(path), num_classes=1000)
    ours = model.network.state_dict()
    assert len(ours) == len(official)
    for key, tensor in official.items():
        [ours_key] = rename_official_biformer({key: None})
        torch.testing.assert_close(ours[ours_key], tensor, rtol=0, atol=0)
    assert "loaded 258/258 tensors" in caplog.text and "official BiFormer keys" in caplog.text


def test_a_new_class_count_replaces_the_imagenet_head_and_says_so(official_tiny_checkpoint, caplog):
    path, official = official_tiny_checkpoint
    with caplog.at_level(logging.INFO, logger="fer_lightning.models.routing_vit"):
        model = RoutingViT(variant="biformer_tiny", weights=str(path), num_classes=7)
    assert model.network.head.weight.shape == (7, 512)
    torch.testing.assert_close(model.network.norm.running_mean, official["norm.running_mean"])
    assert "loaded 256/256 tensors" in caplog.text
    assert "1000-class head dropped, a new 7-class head initialised" in caplog.text


def test_a_truncated_or_foreign_checkpoint_is_refused_with_counts(official_tiny_checkpoint, tmp_path):
    _, official = official_tiny_checkpoint
    truncated = {key: value for key, value in official.items() if not key.startswith("stages.2.7.")}
    with pytest.raises(WeightsError, match=r"matched 242/258 expected tensors; missing 16 \[stages\.2\.7\."):
        RoutingViT(variant="biformer_tiny", weights=truncated, num_classes=1000)
    foreign = {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 512)}
    with pytest.raises(
        WeightsError, match=r"matched 0/258 expected tensors; missing 258 .*unexpected 2 \[conv1"
    ):
        RoutingViT(variant="biformer_tiny", weights=foreign, num_classes=1000)
    not_a_checkpoint = tmp_path / "biformer_tiny_in1k.pth"
    not_a_checkpoint.write_text("<html>rate limited</html>")
    with pytest.raises(WeightsError, match="not a PyTorch checkpoint"):
        RoutingViT(variant="biformer_tiny", weights=str(not_a_checkpoint))


def test_a_timm_vit_state_dict_starts_the_routed_vit_with_zero_lepe():
    import timm

    dense = timm.create_model(
        "vit_tiny_patch16_224", num_classes=7, img_size=64, patch_size=8, depth=4, embed_dim=96, num_heads=3
    )
    model = RoutingViT(variant="routed_vit_tiny", weights=dense.state_dict(), num_classes=7)
    block = model.network.blocks[0]
    torch.testing.assert_close(block.attn.qkv.weight, dense.blocks[0].attn.qkv.weight)
    torch.testing.assert_close(
        model.network.pos_embed, dense.pos_embed[:, 1:]
    )  # class token's position dropped
    assert not block.attn.lepe.weight.any() and not block.attn.lepe.bias.any()


def test_flops_of_a_tiny_routed_vit_equal_a_hand_count():
    # 16×16 px, 4-px patches: a 4×4 grid of 8-wide tokens, 2×2 regions of 2×2 tokens, 1 routed, 2 heads.
    spec = RoutingVariant(
        "isotropic", (1,), (8,), (1,), regions=2, mlp_ratio=2, img_size=16, patch_size=4, num_heads=2
    )
    tokens, dim, keys_per_token, classes = 16, 8, 1 * 4, 3
    by_hand = {
        "patch embedding": tokens * dim * 3 * 4 * 4,
        "qkv": tokens * dim * 3 * dim,
        "routing (region means, 4×4 affinities)": 4 * 4 * dim,
        "attention (Q·K̃ᵀ and P·Ṽ over routed keys only)": 2 * tokens * keys_per_token * dim,
        "LePE 5×5 depthwise": tokens * dim * 25,
        "projection": tokens * dim * dim,
        "mlp": 2 * tokens * dim * 2 * dim,
        "head": dim * classes,
    }
    for backend in ("fast", "reference"):
        network = RoutedViTNetwork(spec, classes, 16, 0.0, backend)
        assert count_macs(network, (1, 3, 16, 16)) == sum(by_hand.values()), backend


@pytest.mark.parametrize("variant", ["tiny", "routed_vit_tiny"])
def test_eval_predictions_do_not_depend_on_the_batch(variant):
    model = _randomised(RoutingViT(variant=variant, img_size=32, regions=2, topk=2))
    alone, batch, permuted = predictions_alone_batched_and_permuted(model, torch.randn(6, 3, 32, 32))
    # fp32 rounding of other kernels for other batch sizes, relative to these large random logits.
    tolerance = 1e-5 * float(batch.abs().max())
    torch.testing.assert_close(alone, batch, rtol=0, atol=tolerance)
    torch.testing.assert_close(permuted, batch, rtol=0, atol=tolerance)


def test_a_convolutional_patch_stem_makes_the_same_token_grid_from_stride_two_convolutions():
    model = RoutingViT(variant="routed_vit_tiny", patch_stem="conv", img_size=64).eval()
    stem, proj = model.network.patch_embed.stem, model.network.patch_embed.proj
    strides = [layer.stride for layer in stem if isinstance(layer, torch.nn.Conv2d)]
    assert strides == [(2, 2)] * 3 and proj.kernel_size == (1, 1)  # 8-px patches: three halvings, then 1×1
    with torch.no_grad():
        assert proj(stem(torch.zeros(2, 3, 64, 64))).shape == (2, 96, 8, 8)  # the linear stem's grid
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    linear = RoutingViT(variant="routed_vit_tiny", img_size=64)
    assert isinstance(linear.network.patch_embed.stem, torch.nn.Identity)
    assert linear.network.patch_embed.proj.kernel_size == (8, 8)
    with pytest.raises(ConfigurationError, match="has BiFormer's own convolutional stem"):
        RoutingViT(variant="tiny", patch_stem="conv")
    with pytest.raises(ConfigurationError, match="cannot load weights"):
        RoutingViT(variant="routed_vit_tiny", patch_stem="conv", weights="vit.pth")


def test_regions_that_do_not_tile_the_grid_and_wrong_sizes_are_clear_errors():
    with pytest.raises(
        ConfigurationError, match=r"regions=7 must divide the 16×16 token grid of the ViT at img_size 256"
    ):
        RoutingViT(variant="routed_vit_b16", img_size=256)
    with pytest.raises(ConfigurationError, match=r"regions=7 must divide the 64×64 token grid of stage 1"):
        RoutingViT(variant="biformer_tiny", img_size=256)
    with pytest.raises(ConfigurationError, match=r"topk=17 must be in \[1, regions²=16\]"):
        RoutingViT(variant="routed_vit_tiny", topk=17)
    with pytest.raises(ConfigurationError, match="expected one of"):
        RoutingViT(variant="biformer_huge")
    with pytest.raises(
        ConfigurationError, match=r"set model\.init_args\.img_size to data\.init_args\.img_size"
    ):
        RoutingViT(variant="routed_vit_tiny")(torch.zeros(1, 3, 32, 32))


def test_complexity_labels_gmacs_and_gflops(capsys):
    main(["complexity", "--config", "experiments/routed_vit_synthetic.yaml"])
    compute = capsys.readouterr().out.splitlines()[-1]
    macs, flops = (float(compute.split(unit)[0].split()[-1]) for unit in (" GMACs", " GFLOPs"))
    assert compute.startswith("compute: ") and flops == pytest.approx(2 * macs, abs=2e-3)


@pytest.fixture(scope="module")
def synthetic_aihub(tmp_path_factory):
    root = tmp_path_factory.mktemp("aihub")
    write_synthetic("aihub", root, num_images=56, seed=8, progress=False)
    return root


# At the helper's 32 px: BiFormer's stage grids are 8/4/2(/1), the ViT-B/16 grid 2×2, the tiny ViT's 4×4.
CONFIG_OVERRIDES = {
    "biformer_synthetic.yaml": [
        "--model.init_args.img_size=32",
        "--model.init_args.regions=2",
        "--model.init_args.topk=2",
    ],
    "routed_vit_synthetic.yaml": [
        "--model.init_args.img_size=32",
        "--model.init_args.regions=2",
        "--model.init_args.topk=2",
    ],
    "vit_synthetic.yaml": ["--model.init_args.img_size=32"],
    "biformer_aihub.yaml": [
        "--model.init_args.img_size=32",
        "--model.init_args.regions=2",
        "--model.init_args.topk=2",
    ],
    "routed_vit_aihub.yaml": ["--model.init_args.img_size=32", "--model.init_args.regions=2"],
    "vit_aihub.yaml": ["--model.init_args.model_kwargs={img_size: 32}"],
}


@pytest.mark.parametrize(
    "config",
    [
        *(name for name in CONFIG_OVERRIDES if "synthetic" in name),
        *(pytest.param(name, marks=pytest.mark.slow) for name in CONFIG_OVERRIDES if "aihub" in name),
    ],
)
def test_every_config_trains_one_batch_on_synthetic_aihub(config, synthetic_aihub, tmp_path):
    cli = fast_dev_run(config, tmp_path, f"--data.root={synthetic_aihub}", *CONFIG_OVERRIDES[config])
    assert cli.trainer.global_step == 1
    assert torch.isfinite(torch.tensor(float(cli.trainer.callback_metrics["val/loss"])))
