"""LHC-Net against the official code: module sizes and math, the gate, the 62-view TTA, the staged
``init_from`` chain, the controller stage, restoring the best weights, and every config through the CLI."""

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
import yaml
from cli_helpers import EXPERIMENTS, fast_dev_run, finite_metrics, quickstart_args, run_cli
from lightning.pytorch.callbacks import EarlyStopping

from fer_lightning.callbacks import RestoreBestWeights
from fer_lightning.errors import ConfigurationError, WeightsError
from fer_lightning.models.lhcnet import (
    PAPER_EMBED_DIMS,
    PAPER_HEADS,
    LHCModule,
    LHCNet,
    TTAView,
    apply_view,
    tta_probabilities,
    tta_views,
)

# A network small enough for unit tests: narrow ResNet-18, 32 px input (maps 8, 8, 4, 2, 1 px).
TINY = dict(
    backbone="resnet18",
    backbone_kwargs={"channels": [8, 16, 32, 64], "stem_width": 8},
    input_size=32,
    lhc_heads=(2, 2, 2, 1, 1),
    lhc_embed_dims=(4, 4, 3, 2, 2),
    head_dims=(16,),
    num_classes=7,
)
# The same network through the CLI, for the full-size configs' fast_dev_run.
TINY_OVERRIDES = (
    "--model.init_args.backbone=resnet18",
    "--model.init_args.backbone_kwargs={channels: [8, 16, 32, 64], stem_width: 8}",
    "--model.init_args.input_size=32",
    "--model.init_args.lhc_heads=[2, 2, 2, 1, 1]",
    "--model.init_args.lhc_embed_dims=[4, 4, 3, 2, 2]",
    "--model.init_args.head_dims=[16]",
)


@pytest.fixture(autouse=True)
def _one_thread():
    """These networks are tiny: a second intra-op thread gains nothing, and on a busy machine its
    spin-waiting made each small batched matmul ~100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---- the module ----------------------------------------------------------------------------------


def test_module_parameters_match_the_published_table():
    """(C, R) after the stem and the four stages of ResNet-34 at 224 px, with the published h and d."""
    maps = [(64, 56), (64, 56), (128, 28), (256, 14), (512, 7)]
    counts = [
        _count(LHCModule(channels, resolution, heads, embed_dim))
        for (channels, resolution), heads, embed_dim in zip(maps, PAPER_HEADS, PAPER_EMBED_DIMS, strict=True)
    ]
    assert counts == [657_312, 657_312, 208_392, 658_714, 2_623_714]
    assert sum(counts) == 4_805_444  # "about 4.81 M"
    assert _count(LHCModule(64, 56, 8, 196, gate_init=0.0)) == 657_313  # the controller adds one scalar


def _pool_naive(maps: torch.Tensor, kind: str) -> torch.Tensor:
    """3×3, stride 1, 'same': the max or the mean of the in-image neighbours of each position."""
    out = torch.empty_like(maps)
    side = maps.shape[-1]
    for row in range(side):
        for col in range(side):
            window = maps[..., max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2].flatten(-2)
            out[..., row, col] = window.amax(-1) if kind == "max" else window.mean(-1)
    return out


def _lhc_naive(module: LHCModule, x: torch.Tensor) -> torch.Tensor:
    """The module written head by head: head i takes rows [i·R/h, (i+1)·R/h) of each channel."""
    rows = module.resolution // module.heads
    query_maps, key_maps = _pool_naive(x, "avg"), _pool_naive(x, "max")
    value_maps = _pool_naive(module.value_conv(x), "avg")
    out = x.clone()
    for head in range(module.heads):
        band = slice(head * rows, (head + 1) * rows)
        weight, bias = module.qk_weight[head], module.qk_bias[head]
        query = query_maps[:, :, band].flatten(2) @ weight.T + bias  # (B, C, d)
        key = key_maps[:, :, band].flatten(2) @ weight.T + bias
        scores = query @ key.transpose(1, 2)  # (B, C, C)
        dynamic = torch.sigmoid(module.score_gate(scores.mean(-1)))  # (B, C)
        scale = module.embed_dim ** (module.norm_c + dynamic)
        weights = torch.softmax(scores / scale.unsqueeze(-1), dim=-1)
        attended = weights @ value_maps[:, :, band].flatten(2)
        gate = 1.0 if module.gate is None else 1.0 + math.tanh(module.gate.item())
        out[:, :, band] += gate * attended.unflatten(2, (rows, module.resolution))
    return out


@pytest.mark.parametrize("gate_init", [None, -0.7])
def test_module_equals_a_naive_per_head_loop(gate_init):
    torch.manual_seed(0)
    module = LHCModule(channels=3, resolution=6, heads=3, embed_dim=5, gate_init=gate_init)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(module(x), _lhc_naive(module, x))


def test_gate_at_minus_infinity_is_the_identity():
    torch.manual_seed(0)
    module = LHCModule(channels=4, resolution=4, heads=2, embed_dim=3, gate_init=float("-inf"))
    x = torch.randn(2, 4, 4, 4)
    with torch.no_grad():
        assert torch.equal(module(x), x)
        module.gate.fill_(0.0)  # gate 1: the plain residual, which changes x
        assert not torch.allclose(module(x), x)


def test_heads_must_split_the_map():
    with pytest.raises(ConfigurationError, match="7 heads"):
        LHCModule(channels=4, resolution=4, heads=7, embed_dim=3)


# ---- test-time augmentation ------------------------------------------------------------------------


def test_tta_grid_has_53_plus_6_views_and_weight_62():
    views = tta_views()
    plain = [view for view in views if view.is_plain]
    crops = [view for view in views if view.zoom != 1.0]
    assert len(plain) == 1 and plain[0].weight == 3
    assert len(views) - 1 - len(crops) == 53 and len(crops) == 6
    assert len(set(views)) == len(views)
    assert sum(view.weight for view in views) == 62


def test_tta_with_only_the_plain_view_is_plain_inference():
    torch.manual_seed(0)
    model = LHCNet(**TINY).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(images).softmax(-1)
        torch.testing.assert_close(tta_probabilities(model, images, [TTAView(weight=3.0)]), expected)
        # The full grid is something else, and the plain view enters it with weight 3 of 62.
        assert not torch.allclose(model.tta_probabilities(images), expected)


def test_view_geometry():
    """Flip mirrors, a shift of 2 px moves the image by 2 px (repeating the edge), a crop view magnifies."""
    images = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(apply_view(images, TTAView(flip=True)), images.flip(-1))
    shifted = apply_view(images, TTAView(shift_x=2 / 16, shift_y=-1 / 16))
    torch.testing.assert_close(shifted[..., :-1, 2:], images[..., 1:, :-2])
    torch.testing.assert_close(shifted[..., :-1, 0], images[..., 1:, 0])  # edge repeated
    quarter_turn = apply_view(images, TTAView(rotation=math.pi / 2))
    torch.testing.assert_close(
        quarter_turn.flip(-1).transpose(-1, -2).flip(-1), images.flip(-1), atol=1e-5, rtol=0
    )
    ramp = torch.arange(16.0).expand(1, 1, 16, 16)
    zoomed = apply_view(ramp, TTAView(zoom=0.5))
    assert zoomed[0, 0, 0, -1] - zoomed[0, 0, 0, 0] == pytest.approx(7.5)  # half the range across the image


# ---- the network, init_from and the controller stage -----------------------------------------------


def test_init_from_chain_loads_every_tensor_and_reports_the_new_ones(tmp_path):
    torch.manual_seed(0)
    resnet_only = LHCNet(lhc=False, **TINY)
    stage1 = tmp_path / "stage1.ckpt"
    torch.save({"state_dict": resnet_only.state_dict(), "epoch": 3}, stage1)

    torch.manual_seed(1)
    with_lhc = LHCNet(init_from=str(stage1), **TINY)
    report = with_lhc.init_report
    checkpoint_tensors = [key for key in resnet_only.state_dict() if not key.endswith("num_batches_tracked")]
    assert report.loaded == len(checkpoint_tensors)
    assert report.new and all(key.startswith("lhc.") for key in report.new)
    assert len(report.new) == 5 * 6 and report.expected == report.loaded + len(report.new)
    for key, value in resnet_only.state_dict().items():
        assert torch.equal(with_lhc.state_dict()[key], value), key
    assert "new, left as initialised" in str(report)

    stage2 = tmp_path / "stage2.ckpt"
    torch.save({"state_dict": with_lhc.state_dict()}, stage2)
    controlled = LHCNet(init_from=str(stage2), controller=(0, 0, 0, -1, -0.5), trainable="gates_only", **TINY)
    assert sorted(controlled.init_report.new) == [f"lhc.{i}.gate" for i in range(5)]
    assert [module.gate.item() for module in controlled.lhc] == [0, 0, 0, -1, -0.5]
    assert torch.equal(controlled.lhc[2].qk_weight, with_lhc.lhc[2].qk_weight)
    assert "init_from" not in controlled.hparams  # a later --ckpt_path must not read stage 2 again


def test_init_from_refuses_what_does_not_fit(tmp_path):
    torch.manual_seed(0)
    state = LHCNet(lhc=False, **TINY).state_dict()
    incomplete = tmp_path / "incomplete.ckpt"
    torch.save({"state_dict": {k: v for k, v in state.items() if k != "head.0.weight"}}, incomplete)
    with pytest.raises(WeightsError, match=r"missing 1 \[head\.0\.weight\]"):
        LHCNet(init_from=str(incomplete), **TINY)
    with_lhc = tmp_path / "with_lhc.ckpt"
    torch.save({"state_dict": LHCNet(**TINY).state_dict()}, with_lhc)
    with pytest.raises(WeightsError, match="unexpected"):
        LHCNet(lhc=False, init_from=str(with_lhc), **TINY)


def test_gates_only_trains_the_five_gates_with_frozen_batchnorm():
    model = LHCNet(controller=(0, 0, 0, -1, -0.5), trainable="gates_only", **TINY).train()
    trainable = [name for name, param in model.named_parameters() if param.requires_grad]
    assert trainable == [f"lhc.{i}.gate" for i in range(5)]
    assert not model.backbone.training and not model.backbone.bn1.training
    assert model.head.training  # dropout stays on, as in the official controller stage
    with pytest.raises(ConfigurationError, match="controller"):
        LHCNet(trainable="gates_only", **TINY)


def test_a_few_steps_lower_the_loss():
    """Twenty Adam steps on one fixed batch reduce the training loss."""
    torch.manual_seed(0)
    model = LHCNet(**TINY)
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8) % 7
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0]


def test_restore_best_weights_loads_the_best_checkpoint(tmp_path):
    torch.manual_seed(0)
    best = LHCNet(lhc=False, **TINY)
    path = tmp_path / "best.ckpt"
    torch.save({"state_dict": best.state_dict()}, path)
    model = LHCNet(lhc=False, **TINY)  # other random weights: the state at the end of training
    checkpoint = SimpleNamespace(
        best_model_path=str(path), monitor="val/acc", best_model_score=torch.tensor(0.5)
    )
    trainer = SimpleNamespace(checkpoint_callback=checkpoint, fast_dev_run=False, interrupted=False)
    RestoreBestWeights().on_fit_end(trainer, model)
    for key, value in best.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


# ---- the configs through the CLI -----------------------------------------------------------------

# What each stage of the official protocol uses: optimiser, learning rate, batch, augmentation, patience.
PROTOCOL = {
    "lhcnet_fer2013.yaml": ("Adam", 1e-4, 48, "lhcnet_rotate", 8, True),
    "lhcnet_fer2013_stage1a.yaml": ("Adam", 1e-4, 48, "lhcnet_rotate", 30, False),
    "lhcnet_fer2013_stage1b.yaml": ("SGD", 1e-2, 64, "lhcnet_shift", 10, False),
    "lhcnet_fer2013_stage1c.yaml": ("SGD", 1e-2, 64, "none", 5, False),
    "lhcnet_fer2013_stage2.yaml": ("SGD", 1e-2, 64, "none", 3, True),
    "lhcnet_fer2013_stage3.yaml": ("Adam", 1e-4, 32, "none", 1, True),
}


@pytest.mark.parametrize("config", sorted(PROTOCOL))
def test_fer2013_configs_train_through_the_cli(config, tmp_path):
    """One batch of each stage (a narrow network at 32 px: the published sizes are checked above), with
    the stage's recipe in effect."""
    optimizer_name, lr, batch_size, augment, patience, lhc = PROTOCOL[config]
    raw = yaml.safe_load((EXPERIMENTS / config).read_text())
    assert raw["data"]["init_args"]["batch_size"] == batch_size
    cli = fast_dev_run(config, tmp_path, "--data.synthetic_size=70", *TINY_OVERRIDES)
    finite_metrics(cli, "train/loss_epoch", "val/acc")
    optimizer = cli.trainer.optimizers[0]
    assert type(optimizer).__name__ == optimizer_name and optimizer.param_groups[0]["lr"] == lr
    assert cli.datamodule.hparams.augment == augment
    [stopping] = [callback for callback in cli.trainer.callbacks if isinstance(callback, EarlyStopping)]
    assert (stopping.monitor, stopping.mode, stopping.patience) == ("val/acc", "max", patience)
    assert any(isinstance(callback, RestoreBestWeights) for callback in cli.trainer.callbacks)
    assert bool(cli.model.lhc) == lhc
    if config.endswith("stage3.yaml"):
        assert cli.model.trainable == "gates_only"
        gates = [module.gate.item() for module in cli.model.lhc]
        # One Adam step (lr 1e-4) moved each gate from its initial value, and only the gates learn.
        assert gates == pytest.approx([0, 0, 0, -1, -0.5], abs=2e-4) and gates != [0, 0, 0, -1, -0.5]


def test_synthetic_config_trains_and_tests_with_tta(tmp_path):
    cli = fast_dev_run(
        "lhcnet_synthetic.yaml", tmp_path, "--data.synthetic_size=70", "--model.init_args.input_size=32"
    )
    finite_metrics(cli, "train/loss_epoch", "val/acc")
    args = quickstart_args(
        None,
        tmp_path,
        "--data.synthetic_size=70",
        "--model.init_args.input_size=32",
        "--model.init_args.tta=true",
        "--trainer.limit_test_batches=1",
        config=EXPERIMENTS / "lhcnet_synthetic.yaml",
    )
    # A checkpoint of a run trained without TTA: the command line's tta=true must still apply (Lightning
    # re-applies a checkpoint's saved hyperparameters over the command line).
    checkpoint = tmp_path / "trained.ckpt"
    cli.trainer.save_checkpoint(checkpoint)
    tested = run_cli(["test", *args, f"--ckpt_path={checkpoint}"])
    metrics = finite_metrics(tested, "test/acc", "test/acc_tta")
    assert 0.0 <= metrics["test/acc_tta"] <= 1.0
    assert Path(tested.trainer.log_dir).is_dir()
