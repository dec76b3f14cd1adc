"""Neural-Resizer transformer: resizer sizes and parameter count, the spatial transformer's identity start,
local backbone weights, a few training steps, and both experiment configs through the CLI."""

import pytest
import torch
from cli_helpers import fast_dev_run, finite_metrics

from fer_lightning.data import FER2013DataModule
from fer_lightning.data.synthetic import write_synthetic
from fer_lightning.errors import ConfigurationError, WeightsError
from fer_lightning.losses import FPDLS
from fer_lightning.models.resizer_vit import NeuralResizer, ResizerTransformer, SpatialTransformer

pytestmark = pytest.mark.filterwarnings("ignore:ResizerTransformer. backbone .* starts from random weights")

TINY_VIT = {"img_size": 16, "patch_size": 4, "depth": 1, "embed_dim": 32, "num_heads": 2}


def tiny_model(**kwargs) -> ResizerTransformer:
    options = dict(
        backbone="vit_tiny_patch16_224",
        backbone_kwargs=TINY_VIT,
        img_size=32,
        resizer_scale_factor=None,
        resizer_target_size=16,
        num_classes=5,
    )
    options.update(kwargs)
    return ResizerTransformer(**options)


def resizer_parameter_count(channels: int, blocks: int, image_channels: int = 3) -> int:
    def conv(k, c_in, c_out):
        return k * k * c_in * c_out + c_out

    batch_norm = 2 * channels
    return (
        conv(7, image_channels, channels)  # stem
        + conv(1, channels, channels)
        + batch_norm  # mix
        + blocks * 2 * (conv(3, channels, channels) + batch_norm)  # residual blocks
        + conv(3, channels, channels)
        + batch_norm  # fuse
        + conv(7, channels, image_channels)  # to_image
    )


@pytest.mark.parametrize(("channels", "blocks"), [(16, 1), (8, 2)])
def test_resizer_sizes_and_parameter_count(channels, blocks):
    by_factor = NeuralResizer(scale_factor=0.584, channels=channels, residual_blocks=blocks)
    assert by_factor(torch.randn(1, 3, 384, 384)).shape == (1, 3, 224, 224)  # ⌊384 · 0.584⌋
    assert by_factor.output_side(384) == 224
    by_size = NeuralResizer(scale_factor=None, target_size=20, channels=channels, residual_blocks=blocks)
    assert by_size(torch.randn(2, 3, 37, 37)).shape == (2, 3, 20, 20)
    expected = resizer_parameter_count(channels, blocks)
    assert sum(p.numel() for p in by_factor.parameters()) == expected
    assert sum(p.numel() for p in by_size.parameters()) == expected
    assert (channels, blocks) != (16, 1) or expected == 12083  # the paper's resizer
    with pytest.raises(ConfigurationError, match="exactly one of scale_factor"):
        NeuralResizer(scale_factor=0.5, target_size=20)


def test_spatial_transformer_starts_at_the_identity():
    torch.manual_seed(0)
    stn = SpatialTransformer(64)
    images = torch.randn(3, 3, 64, 64)
    assert torch.allclose(stn(images), images, atol=1e-4)
    # Its fully connected input follows the image size: 384 → 378 → 189 → 185 → 92.
    assert SpatialTransformer(384).regressor[0].in_features == 10 * 92 * 92
    with pytest.raises(ConfigurationError, match="built for 64×64 images got 32×32"):
        stn(torch.randn(1, 3, 32, 32))


def test_model_uses_num_classes_and_checks_sizes():
    model = tiny_model().eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    with pytest.raises(ConfigurationError, match="outputs 18×18 images but backbone"):
        tiny_model(resizer_target_size=18)
    without_stn = tiny_model(stn=False)
    assert without_stn.stn is None and without_stn(torch.randn(2, 3, 40, 40)).shape == (2, 5)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_backbone_weights_load_strictly_from_a_local_file(tmp_path, suffix):
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, **TINY_VIT)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pth":
        torch.save(source.state_dict(), path)
    else:
        save_file(source.state_dict(), str(path))
    model = tiny_model(backbone_weights=str(path))
    loaded = model.backbone.state_dict()
    for key, value in source.state_dict().items():
        if not key.startswith("head."):  # the classifier is replaced by the head
            assert torch.equal(loaded[key], value), key
    wider = timm.create_model("vit_tiny_patch16_224", pretrained=False, **{**TINY_VIT, "embed_dim": 64})
    torch.save(wider.state_dict(), tmp_path / "wider.pth")
    with pytest.raises(WeightsError, match="does not fit"):
        tiny_model(backbone_weights=str(tmp_path / "wider.pth"))
    with pytest.raises(WeightsError, match="not found"):
        tiny_model(backbone_weights=str(tmp_path / "missing.pth"))


def test_a_few_synthetic_steps_lower_the_fpdls_loss(tmp_path):
    write_synthetic("ferplus", tmp_path, num_images=80, seed=5, progress=False)
    data = FER2013DataModule(root=str(tmp_path), labels="ferplus", img_size=32, batch_size=16, num_workers=0)
    data.setup("fit")
    images, labels = next(iter(data.train_dataloader()))
    torch.manual_seed(0)
    model = tiny_model(num_classes=8, loss="fpdls", loss_prior=data.prior_matrix().tolist())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = model.classification_loss(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_upsample_to_and_a_super_resolution_hook(tmp_path):
    write_synthetic("fer2013", tmp_path, num_images=60, seed=2, progress=False)
    data = FER2013DataModule(root=str(tmp_path), upsample_to=96, img_size=96, batch_size=4, num_workers=0)
    data.setup("fit")
    source = data.tables["train"].sources[0]
    assert data.load_image(source).shape == (96, 96, 3)
    hooked = FER2013DataModule(
        root=str(tmp_path), super_resolution="numpy:transpose", upsample_to=64, batch_size=4
    )
    with pytest.raises(ConfigurationError, match="returned a uint8 array of shape"):
        hooked.load_image(source)  # transposing an H×W×3 face gives 3×W×H: not an image
    with pytest.raises(ConfigurationError, match="cannot be imported"):
        FER2013DataModule(root=str(tmp_path), super_resolution="no_such_module:enlarge", batch_size=4)


def test_synthetic_config_through_the_cli(tmp_path):
    cli = fast_dev_run("resizer_synthetic.yaml", tmp_path, "--data.synthetic_size=80", "--data.img_size=48")
    finite_metrics(cli, "train/loss_step", "val/loss", "val/acc")
    assert isinstance(cli.model.criterion, FPDLS)
    # The prior came from the votes of the generated FER+ training split, through the CLI's link.
    assert torch.allclose(
        cli.model.criterion.prior, torch.tensor(cli.datamodule.prior_matrix(), dtype=torch.float32)
    )


def test_ferplus_recipe_config_through_the_cli(tmp_path):
    """The paper recipe with its data pipeline (bicubic 48 → 384, official augmentation, STN at 384,
    resizer ×0.584 → 224); Swin-B is narrowed to one block per stage to keep the test fast."""
    narrow_swin = (
        "--model.init_args.backbone_kwargs={embed_dim: 32, depths: [1, 1, 1, 1], num_heads: [1, 1, 1, 1]}"
    )
    cli = fast_dev_run(
        "resizer_ferplus.yaml", tmp_path, "--data.synthetic_size=80", "--data.img_size=384", narrow_swin
    )
    finite_metrics(cli, "train/loss_step", "val/loss", "val/acc")
    assert cli.model.num_classes == 8 and cli.model.resizer.output_side(384) == 224
