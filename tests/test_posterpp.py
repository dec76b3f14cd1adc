"""POSTER++: the shape trace of docs/models.md#the-poster-body, size and compute against the official model,
checkpoints through the constructor, training, and the CLI on synthetic data."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
import yaml
from cli_helpers import count_training_loss_calls, finite_metrics, run_cli, write_tiny_rafdb
from torch.utils.data import DataLoader, TensorDataset

from fer_lightning.models import POSTERPP, PosterBody
from fer_lightning.models.backbones import IR50, MobileFaceNet
from fer_lightning.models.backbones.poster_body import POSTER_BODY_VARIANTS
from fer_lightning.models.complexity import count_macs, count_parameters, macs_by_module

pytestmark = pytest.mark.filterwarnings("ignore:PosterBody.*no pretrained weights:UserWarning")


def _capture(body: PosterBody, images: torch.Tensor) -> dict[str, object]:
    """Every intermediate of one eval forward, by module path, via forward hooks."""
    captured: dict[str, object] = {}
    names = ["ir50", "landmark_net", "last_face_conv", "token_embedding", "vit.blocks", "vit.se", "vit"]
    names += [f"image_convs.{i}" for i in range(3)] + [f"cross_attention.{i}" for i in range(3)]
    handles = []
    for name in names:
        module = body.get_submodule(name)
        handles.append(module.register_forward_hook(lambda m, i, o, name=name: captured.__setitem__(name, o)))
        if name.startswith("cross_attention"):
            inputs_hook = lambda m, args, name=name: captured.__setitem__(name + ".inputs", args)  # noqa: E731
            handles.append(module.register_forward_pre_hook(inputs_hook))
    body.eval()
    with torch.no_grad():
        captured["levels"] = body.extract_levels(images)
        captured["logits"] = body.classify(captured["levels"])
    for handle in handles:
        handle.remove()
    return captured


def _shapes(tensors) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in tensors]


def test_paper_shape_trace_at_224():
    torch.manual_seed(0)
    body = PosterBody(7)
    x = torch.randn(1, 3, 224, 224)
    assert body.resize(x).shape == (1, 3, 112, 112)
    got = _capture(body, x)
    assert _shapes(got["ir50"]) == [(1, 64, 56, 56), (1, 128, 28, 28), (1, 256, 14, 14)]
    features = [(1, 64, 28, 28), (1, 128, 14, 14), (1, 256, 7, 7)]
    assert [tuple(got[f"image_convs.{i}"].shape) for i in range(3)] == features  # F₁..F₃
    assert _shapes(got["landmark_net"]) == [(1, 64, 28, 28), (1, 128, 14, 14), (1, 512, 7, 7)]
    assert got["last_face_conv"].shape == (1, 256, 7, 7)  # L₃
    for level in range(3):  # image side F_l, query side L_l, output S_l
        image, query = got[f"cross_attention.{level}.inputs"]
        assert tuple(image.shape) == tuple(query.shape) == tuple(got[f"cross_attention.{level}"].shape)
    assert _shapes(got["levels"]) == features  # S₁..S₃
    assert (body.level_dims, body.level_sizes) == ((64, 128, 256), (28, 14, 7))
    assert got["token_embedding"].shape == (1, 147, 768)
    assert got["vit.blocks"].shape == (1, 148, 768)  # CLS + 147
    assert got["vit.se"].shape == (1, 768)
    assert got["logits"].shape == (1, 7)
    assert torch.equal(got["vit"], got["logits"])


def test_tiny_shape_trace():
    body = PosterBody(8, variant="tiny")
    got = _capture(body, torch.randn(2, 3, 224, 224))  # resized to the tiny input size, 64
    assert _shapes(got["levels"]) == [(2, 16, 16, 16), (2, 32, 8, 8), (2, 64, 4, 4)]
    assert (body.level_dims, body.level_sizes) == ((16, 32, 64), (16, 8, 4))
    assert got["last_face_conv"].shape == (2, 64, 4, 4)
    assert got["token_embedding"].shape == (2, 48, 96)
    assert got["vit.blocks"].shape == (2, 49, 96)
    assert got["logits"].shape == (2, 8)


# Parameters of the official POSTER V2 model that never run, derived from its module definitions:
OFFICIAL_DEAD = {
    # IR-50 output_layer: BN2d(512) + Linear(25088 → 512) + BN1d(512)
    "ir50.output_layer": 1024 + 512 * 7 * 7 * 512 + 512 + 1024,
    # MobileFaceNet GDC head (runs upstream, output discarded): 7×7 depthwise + BN, Linear 512→136, BN1d
    "mobilefacenet.output_layer": 512 * 49 + 1024 + 512 * 136 + 272,
    # ViT: patch_embed.proj 1×1 256→768, CON1 (no bias), IRLinear1 1024→768, IRLinear2 768→512,
    # eca_block Conv1d k=5, and a Conv1d(148, 148, 1) in each of the 2 blocks
    "vit.unused": (256 * 768 + 768)
    + 256 * 768
    + (1024 * 768 + 768)
    + (768 * 512 + 512)
    + 5
    + 2 * (148 * 148 + 148),
}


@pytest.mark.parametrize(("num_classes", "official"), [(7, 58_316_594), (8, 58_317_363)])
def test_paper_parameter_count_matches_the_official_model_minus_dead_modules(num_classes, official):
    body = PosterBody(num_classes)
    total = count_parameters(body)
    assert total == {7: 43_753_941, 8: 43_754_710}[num_classes]
    # The official module has exactly our modules plus the dead ones.
    assert total + sum(OFFICIAL_DEAD.values()) == official
    # Frozen MobileFaceNet trunk (the official 1.01 M includes the 96 k GDC head).
    assert total - count_parameters(body, trainable_only=True) == 911_232
    # Token embedding: 3×3 s2 64→768, 3×3 s2 768→768, 3×3 s2 128→768, 1×1 256→768 (with biases).
    embedding = (64 * 9 + 1) * 768 + (768 * 9 + 1) * 768 + (128 * 9 + 1) * 768 + (256 + 1) * 768
    assert count_parameters(body.token_embedding) == embedding == 6_835_200


def test_paper_macs_match_the_official_count_at_112_and_224():
    body = PosterBody(7)
    by_module = macs_by_module(body, (1, 3, 224, 224), depth=2)
    total = count_macs(body, (1, 3, 112, 112))
    assert total == sum(by_module.values()) == 8_592_404_224  # official module: 8.59 GMACs
    # ViT blocks: 12·T·D² (qkv, proj, MLP) + 2·T²·D (attention), T = 148, D = 768.
    assert by_module["vit.blocks"] == 2 * (12 * 148 * 768**2 + 2 * 148**2 * 768)
    # Level-1 cross-attention, T = 784, C = 64: K,V 2TC² + Q·K and A·V 2T²C + proj TC² + MLP 8TC².
    assert by_module["cross_attention.0"] == 11 * 784 * 64**2 + 2 * 784**2 * 64
    assert body.training  # count_macs restores the mode


def test_nearest_resize_keeps_every_second_pixel_as_upstream():
    body = PosterBody(7, variant="paper")
    x = torch.randn(2, 3, 224, 224)
    assert torch.equal(body.resize(x), x[:, :, ::2, ::2])
    small = torch.randn(1, 3, 112, 112)
    assert body.resize(small) is small
    nearest, area = PosterBody(7, "tiny"), PosterBody(7, "tiny", interpolate_mode="area")
    assert area.resize(x).shape == nearest.resize(x).shape == (2, 3, 64, 64)
    assert not torch.equal(area.resize(x), nearest.resize(x))
    with pytest.raises(ValueError, match="interpolate_mode"):
        PosterBody(7, interpolate_mode="lanczos")
    with pytest.raises(ValueError, match="unknown PosterBody variant"):
        PosterBody(7, variant="huge")


def test_missing_weights_give_exactly_one_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        POSTERPP(variant="tiny", num_classes=7)
    messages = [str(w.message) for w in caught if "pretrained" in str(w.message)]
    assert len(messages) == 1
    assert "ir50_weights=None" in messages[0] and "mobilefacenet_weights=None" in messages[0]


def test_checkpoints_load_through_the_constructor(tmp_path):
    """The tiny variant with its own backbone weights, saved in the published layouts (V2 and .pth.tar)."""
    tiny = POSTER_BODY_VARIANTS["tiny"]
    torch.manual_seed(1)
    ir50, landmark = (
        IR50(tiny.ir_depths, tiny.ir_widths),
        MobileFaceNet(tiny.landmark_channels, tiny.landmark_depths),
    )
    ir50_published = {
        k.replace("stem.", "input_layer.")
        .replace("stage", "body")
        .replace("residual.", "res_layer.")
        .replace("shortcut.", "shortcut_layer."): v
        for k, v in ir50.state_dict().items()
    }
    landmark_published = {
        f"module.{k}".replace("conv_4.0.", "conv_4.model.0."): v for k, v in landmark.state_dict().items()
    }
    landmark_published = {
        k.replace("conv_3.0.", "conv_3.model.0.").replace("conv_5.0.", "conv_5.model.0."): v
        for k, v in landmark_published.items()
    }
    torch.save(ir50_published, tmp_path / "ir50.pth")
    torch.save({"state_dict": landmark_published}, tmp_path / "mfn.pth.tar")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no pretrained weights" warning
        model = POSTERPP(
            variant="tiny",
            num_classes=7,
            ir50_weights=str(tmp_path / "ir50.pth"),
            mobilefacenet_weights=str(tmp_path / "mfn.pth.tar"),
        )
    assert set(model.body.load_reports) == {"ir50", "mobilefacenet"}
    for ours, source in ((model.body.ir50, ir50), (model.body.landmark_net.net, landmark)):
        for (key, value), reference in zip(ours.state_dict().items(), source.state_dict().values()):
            assert torch.equal(value, reference), key
    with pytest.raises(ValueError, match="does not fit"):
        POSTERPP(variant="paper", ir50_weights=str(tmp_path / "ir50.pth"))


def test_a_few_steps_on_a_fixed_batch_lower_the_loss():
    torch.manual_seed(0)
    model = POSTERPP(variant="tiny", num_classes=7, optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))
    optimizer = model.configure_optimizers()
    images, labels = torch.randn(8, 3, 64, 64), torch.arange(8) % 7
    model.train()
    losses = []
    for _ in range(6):
        loss, _ = model.training_loss(images, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses


def test_sam_training_through_lightning_keeps_the_landmark_net_fixed(tmp_path):
    torch.manual_seed(0)
    model = POSTERPP(variant="tiny", num_classes=7, sam_rho=0.05)
    frozen = {k: v.clone() for k, v in model.body.landmark_net.state_dict().items()}
    trainable = model.body.vit.head.weight.detach().clone()
    images, labels = torch.randn(16, 3, 64, 64), torch.arange(16) % 7
    trainer = L.Trainer(
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, DataLoader(TensorDataset(images, labels), batch_size=8))
    assert trainer.global_step == 2
    assert all(torch.equal(v, frozen[k]) for k, v in model.body.landmark_net.state_dict().items())
    assert not torch.equal(model.body.vit.head.weight, trainable)


def test_fast_dev_run_through_the_cli(tmp_path):
    root = write_tiny_rafdb(tmp_path / "rafdb", num_images=40, seed=2)
    config = {
        "trainer": {
            "fast_dev_run": True,
            "default_root_dir": str(tmp_path),
            "accelerator": "cpu",
            "enable_model_summary": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(tmp_path / "runs"), "name": "posterpp"},
            },
        },
        "model": {
            "class_path": "fer_lightning.models.POSTERPP",
            "init_args": {
                "variant": "tiny",
                "sam_rho": 0.05,
                "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 3.5e-5}},
                "scheduler": {
                    "class_path": "torch.optim.lr_scheduler.ExponentialLR",
                    "init_args": {"gamma": 0.98},
                },
            },
        },
        "data": {
            "class_path": "fer_lightning.data.RAFDBDataModule",
            "init_args": {"root": str(root), "img_size": 64, "batch_size": 8, "num_workers": 0},
        },
    }
    path = tmp_path / "posterpp_tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    passes = []
    cli = run_cli(
        ["fit", "--config", str(path)], before_fit=lambda cli: passes.append(count_training_loss_calls(cli))
    )
    assert isinstance(cli.model, POSTERPP) and cli.model.body.level_sizes == (16, 8, 4)  # the tiny variant
    assert (cli.trainer.global_step, len(passes[0])) == (1, 2)  # SAM: two passes for one step
    [group] = cli.trainer.optimizers[0].param_groups
    assert (group["initial_lr"], group["lr"]) == (3.5e-5, pytest.approx(3.5e-5 * 0.98))  # scheduler stepped
    finite_metrics(cli, "train/loss_epoch", "val/loss", "val/acc")
