"""ONNX export of every model's inference path: same probabilities as PyTorch, any batch size, metadata beside it.

Add a model to :data:`EXPORTED_MODELS` with one line: (model class path, small init options, input side).
"""

from __future__ import annotations

import importlib
import json
import warnings

import numpy as np
import pytest
import torch

from fer_lightning.callbacks.inference_metadata import inference_metadata
from fer_lightning.data.preprocessing import EvalPreprocessing
from fer_lightning.export import export_model
from fer_lightning.inference import InferenceNetwork, OnnxNetwork, metadata_path_of
from fer_lightning.ops import _dispatch

QUICKSTART_NETWORK = {
    "backbone": "resnet10t",
    "model_kwargs": {"channels": [16, 32, 64, 128], "stem_width": 16, "zero_init_last": False},
}
LHCNET_NARROW = {
    "backbone_kwargs": {"channels": [16, 32, 64, 128], "stem_width": 16},
    "input_size": 64,
    "lhc_heads": [4, 4, 2, 2, 1],
    "lhc_embed_dims": [32, 32, 16, 8, 4],
    "head_dims": [256, 128],
}
RESIZER_TINY = {
    "backbone": "vit_tiny_patch16_224",
    "backbone_kwargs": {"img_size": 32, "patch_size": 4, "depth": 1, "embed_dim": 32, "num_heads": 2},
    "img_size": 48,
    "resizer_scale_factor": None,
    "resizer_target_size": 32,
    "resizer_channels": 8,
}
EXPORTED_MODELS = [
    ("fer_lightning.models.TimmClassifier", QUICKSTART_NETWORK, 32),
    # BTN's inference path is POSTER++'s body plus its P_VIT head: POSTER++ alone runs with the slow tests.
    pytest.param("fer_lightning.models.POSTERPP", {"variant": "tiny"}, 64, marks=pytest.mark.slow),
    ("fer_lightning.models.BTN", {"variant": "tiny"}, 64),
    # Routing attention's top-k through ONNX's TopK (its stable sort has no ONNX form).
    pytest.param(
        "fer_lightning.models.RoutingViT", {"variant": "tiny", "img_size": 64}, 64, marks=pytest.mark.slow
    ),
    pytest.param("fer_lightning.models.ARBEx", {"variant": "tiny"}, 64, marks=pytest.mark.slow),
    pytest.param("fer_lightning.models.LHCNet", LHCNET_NARROW, 64, marks=pytest.mark.slow),
    pytest.param("fer_lightning.models.ResizerTransformer", RESIZER_TINY, 48, marks=pytest.mark.slow),
]
CLASS_NAMES = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]


def build(class_path: str, options: dict):
    module_name, _, class_name = class_path.rpartition(".")
    torch.manual_seed(0)
    model_class = getattr(importlib.import_module(module_name), class_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # POSTER++'s "no backbone weights: random initialisation"
        return model_class(num_classes=len(CLASS_NAMES), class_names=CLASS_NAMES, **options).eval()


def shuffled_batchnorm_statistics(model) -> None:
    """Non-trivial running statistics, so that an export that ran BatchNorm in training mode would differ."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)


@pytest.mark.parametrize(
    ("class_path", "options", "side"),
    EXPORTED_MODELS,
    ids=lambda v: v.rsplit(".", 1)[-1] if isinstance(v, str) else "-",
)
def test_onnx_matches_pytorch_at_batch_1_and_5(tmp_path, class_path, options, side):
    model = build(class_path, options)
    shuffled_batchnorm_statistics(model)
    metadata = inference_metadata(model, EvalPreprocessing(side).to_dict())
    out = tmp_path / "model.onnx"

    result = export_model(model, metadata, out)

    session = OnnxNetwork(out)
    reference = InferenceNetwork(model)
    generator = torch.Generator().manual_seed(7)
    for batch_size in (1, 5):
        images = torch.randn(batch_size, 3, side, side, generator=generator)
        with torch.inference_mode():
            expected = reference(images).numpy()
        got = session(images)
        assert got.shape == (batch_size, len(CLASS_NAMES))
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
    assert result.max_difference <= 1e-4
    written = json.loads(metadata_path_of(out).read_text())
    assert written["class_names"] == CLASS_NAMES
    assert written["preprocessing"]["img_size"] == side
    assert written["preprocessing"]["channel_order"] == "RGB"


def test_torchscript_export_matches_pytorch(tmp_path):
    model = build(*EXPORTED_MODELS[0][:2])
    metadata = inference_metadata(model, EvalPreprocessing(32).to_dict())
    result = export_model(model, metadata, tmp_path / "model.pt", fmt="torchscript")
    assert result.max_difference <= 1e-4
    assert metadata_path_of(tmp_path / "model.pt").is_file()


def test_an_export_that_differs_from_pytorch_is_refused(tmp_path):
    """Every export is compared with the PyTorch network; one off by more than the tolerance raises
    instead of being handed out (a tolerance below zero makes any export "too far off")."""
    from fer_lightning.export import ExportError

    model = build(*EXPORTED_MODELS[0][:2])
    metadata = inference_metadata(model, EvalPreprocessing(32).to_dict())
    with pytest.raises(ExportError, match="differ from PyTorch"):
        export_model(model, metadata, tmp_path / "model.pt", fmt="torchscript", tolerance=-1.0)


def test_forced_backend_overrides_what_a_module_asks_for():
    with _dispatch.forced_backend("reference"):
        assert _dispatch.resolve_backend("auto", torch.device("cpu")) == "reference"
        assert _dispatch.resolve_backend("fast", torch.device("cpu")) == "reference"
    assert _dispatch.resolve_backend("auto", torch.device("cpu")) == "fast"


def test_a_batch_dependent_inference_head_is_not_exported(tmp_path):
    """BTN with inference_head=bt predicts through batch attention: no export could be batch-invariant."""
    from fer_lightning.export import ExportError

    model = build("fer_lightning.models.BTN", {"variant": "tiny", "inference_head": "bt"})
    metadata = inference_metadata(model, EvalPreprocessing(64).to_dict())
    with pytest.raises(ExportError, match="batch-dependent 'bt' head"):
        export_model(model, metadata, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()
