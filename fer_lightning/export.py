"""Export the inference path of a checkpoint to ONNX or TorchScript, checked against PyTorch every time.

What is exported is :class:`~fer_lightning.inference.InferenceNetwork`: normalised images
(B, 3, S, S) → class probabilities (B, K), the model's eval-mode ``forward`` (BTN: its batch-independent
P_VIT head), with a dynamic batch axis. The preprocessing a caller must apply (face crop, resize,
normalisation, channel order) and the class names are written next to the file as JSON
(``model.onnx`` → ``model.onnx.json``). Our custom ops are traced through their plain-PyTorch reference
formulation (:func:`fer_lightning.ops._dispatch.forced_backend`), which any runtime can execute.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from fer_lightning.errors import FERLightningError
from fer_lightning.inference import (
    ONNX_INPUT,
    ONNX_OUTPUT,
    InferenceNetwork,
    OnnxNetwork,
    Predictor,
    metadata_path_of,
)
from fer_lightning.ops._dispatch import forced_backend

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}
#: Largest |exported - PyTorch| probability accepted on the check's random inputs.
TOLERANCE = 1e-4
#: Batch sizes of the check: one image, and a batch other than the traced one's.
CHECK_BATCHES = (1, 5)
ONNX_OPSET = 18


class ExportError(FERLightningError, RuntimeError):
    """The exported model does not reproduce PyTorch's probabilities, or the exporter failed."""


@dataclass
class ExportResult:
    path: Path
    metadata_path: Path
    max_difference: float
    batches: tuple[int, ...]

    def summary(self) -> str:
        batches = " and ".join(str(b) for b in self.batches)
        return (
            f"wrote {self.path} and {self.metadata_path.name}; max |difference| to PyTorch on random inputs "
            f"(batch {batches}): {self.max_difference:.2e} (tolerance {TOLERANCE:.0e})"
        )


def export_checkpoint(
    checkpoint: str | os.PathLike,
    fmt: Literal["onnx", "torchscript"] = "onnx",
    out: str | os.PathLike | None = None,
    tolerance: float = TOLERANCE,
) -> ExportResult:
    """Export ``checkpoint`` (from ``fer-lightning fit``) to ``out`` (default: beside it, ``.onnx``/``.pt``)."""
    if fmt not in FORMATS:
        raise ExportError(f"export format {fmt!r} unknown; choose one of {', '.join(FORMATS)}")
    predictor = Predictor.from_checkpoint(checkpoint)
    out = Path(out) if out is not None else Path(checkpoint).with_suffix(SUFFIXES[fmt])
    return export_model(
        predictor.model, predictor.metadata, out, fmt, tolerance=tolerance, source=str(checkpoint)
    )


def export_model(
    model: nn.Module,
    metadata: dict,
    out: str | os.PathLike,
    fmt: Literal["onnx", "torchscript"] = "onnx",
    tolerance: float = TOLERANCE,
    source: str = "",
) -> ExportResult:
    """Write ``model``'s inference path to ``out`` with its metadata JSON, then check it (see module doc)."""
    if getattr(model, "inference_head", "vit") != "vit":
        # P_BT mixes the images of a batch: an export of it would give a face a different answer in
        # every batch it lands in.
        raise ExportError(
            f"{source or type(model).__name__}: the model predicts with its batch-dependent "
            f"{model.inference_head!r} head; export a model trained with inference_head=vit"
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    network = InferenceNetwork(model.cpu()).eval()
    size = int(metadata["preprocessing"]["img_size"])
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with forced_backend("reference"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter (deprecations, tracer notes); checked below
        try:
            if fmt == "onnx":
                _write_onnx(network, example, out)
            else:
                with _lightning_scripting(network):
                    torch.jit.save(torch.jit.trace(network, example, check_trace=False), str(out))
        except Exception as error:
            raise ExportError(
                f"exporting {metadata['model']['class_path']} to {fmt} failed: "
                f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200]}"
            ) from error
    metadata_path = metadata_path_of(out)
    metadata_path.write_text(
        json.dumps(export_metadata(metadata, fmt, source), indent=2) + "\n", encoding="utf-8"
    )
    difference = check_export(network, out, fmt, size)
    if not difference <= tolerance:
        raise ExportError(
            f"{out}: the exported model's probabilities differ from PyTorch's by up to {difference:.2e} "
            f"(tolerance {tolerance:.0e}); do not use it (run with --debug and report the model)"
        )
    return ExportResult(out, metadata_path, difference, CHECK_BATCHES)


@contextlib.contextmanager
def _lightning_scripting(network: nn.Module) -> Iterator[None]:
    """Lightning's own flag for TorchScript: without it the tracer reads ``LightningModule.trainer``, which
    raises outside a Trainer."""
    modules = [module for module in network.modules() if hasattr(module, "_jit_is_scripting")]
    for module in modules:
        module._jit_is_scripting = True
    try:
        yield
    finally:
        for module in modules:
            module._jit_is_scripting = False


def _write_onnx(network: nn.Module, example: torch.Tensor, out: Path) -> None:
    try:
        import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
    except ImportError as error:
        raise ExportError(
            "ONNX export needs onnx, onnxscript and onnxruntime: pip install -c constraints.txt -e '.[export]'"
        ) from error
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        network,
        (example,),
        dynamic_shapes={"images": {0: batch}},
        input_names=[ONNX_INPUT],
        output_names=[ONNX_OUTPUT],
        opset_version=ONNX_OPSET,
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    program.save(str(out), external_data=False)


def export_metadata(metadata: dict, fmt: str, source: str) -> dict:
    """The JSON beside an export: what a runtime in any language needs to use it."""
    return {
        "format": fmt,
        "input": {
            "name": ONNX_INPUT,
            "shape": [
                "batch",
                3,
                metadata["preprocessing"]["img_size"],
                metadata["preprocessing"]["img_size"],
            ],
        },
        "output": {
            "name": ONNX_OUTPUT,
            "shape": ["batch", len(metadata["class_names"])],
            "meaning": "softmax probabilities",
        },
        "class_names": list(metadata["class_names"]),
        "preprocessing": dict(metadata["preprocessing"]),
        "model": {"class_path": metadata["model"]["class_path"]},
        "checkpoint": source,
    }


def check_export(network: nn.Module, path: Path, fmt: str, size: int) -> float:
    """Largest |exported - PyTorch| probability over random inputs of :data:`CHECK_BATCHES` sizes."""
    if fmt == "onnx":
        run = OnnxNetwork(path)
    else:
        with warnings.catch_warnings():
            # TorchScript is deprecated in favour of torch.export; the file is still checked here.
            warnings.simplefilter("ignore", FutureWarning)
            loaded = torch.jit.load(str(path)).eval()

        def run(batch: torch.Tensor) -> np.ndarray:
            with torch.inference_mode():
                return loaded(batch).numpy()

    generator = torch.Generator().manual_seed(1)
    worst = 0.0
    for batch_size in CHECK_BATCHES:
        images = torch.randn(batch_size, 3, size, size, generator=generator)
        with torch.inference_mode():
            expected = network(images).numpy()
        got = run(images)
        if got.shape != expected.shape:
            raise ExportError(f"{path}: batch {batch_size} gave shape {got.shape}, expected {expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst
