"""Images per second of the inference path (normalised images → probabilities): PyTorch vs ONNX Runtime.

    python benchmarks/predict.py                 # quickstart model and POSTER++ (paper), batch 1 and 32
    python benchmarks/predict.py --quick         # fewer timed runs

Models get random weights (speed does not depend on them), built as their configs build them:
``experiments/quickstart.yaml`` (timm resnet10t at a quarter width, 112 px) and
``experiments/posterpp_rafdb.yaml`` (POSTER++ ``variant: paper``, 224 px). The ONNX file is what
``fer-lightning export`` writes (checked against PyTorch when written). Each (model, runtime, batch) is
timed after one warm-up run: the median of the timed runs, converted to images per second. Face
detection and decoding are not included (see the README for the whole ``predict`` command).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from fer_lightning.callbacks.inference_metadata import inference_metadata
from fer_lightning.data.preprocessing import EvalPreprocessing
from fer_lightning.export import export_model
from fer_lightning.inference import InferenceNetwork, OnnxNetwork

CLASS_NAMES = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
QUICKSTART = {
    "backbone": "resnet10t",
    "model_kwargs": {"channels": [16, 32, 64, 128], "stem_width": 16, "zero_init_last": False},
}
MODELS = {
    "quickstart": ("TimmClassifier", QUICKSTART, 112),
    "posterpp": ("POSTERPP", {"variant": "paper"}, 224),
}


def build(name: str):
    import fer_lightning.models as models

    class_name, options, side = MODELS[name]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # POSTER++ without backbone weights: random initialisation
        model = getattr(models, class_name)(num_classes=len(CLASS_NAMES), class_names=CLASS_NAMES, **options)
    return model.eval(), side


def images_per_second(run, batch: torch.Tensor, repeats: int, max_seconds: float) -> tuple[float, int]:
    run(batch)  # warm-up
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - started < max_seconds):
        start = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - start)
    return batch.shape[0] / statistics.median(times), len(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated: {', '.join(MODELS)}")
    parser.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per cell (at most)")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="stop timing a cell after this")
    parser.add_argument("--quick", action="store_true", help="3 timed runs per cell")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads of both runtimes (default 1: on a shared machine more threads than free "
        "cores make PyTorch's OpenMP threads wait for each other, and the numbers meaningless)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else args.repeats
    batches = [int(b) for b in args.batches.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)
    print("| model | input | batch | PyTorch img/s | ONNX Runtime img/s | ONNX / PyTorch |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            model, side = build(name)
            network = InferenceNetwork(model)
            metadata = inference_metadata(model, EvalPreprocessing(side).to_dict())
            started = time.perf_counter()
            result = export_model(model, metadata, Path(folder) / f"{name}.onnx")
            print(f"{name}: {result.summary()} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
            session = OnnxNetwork(result.path, threads=args.threads)

            def with_torch(batch, network=network):
                with torch.inference_mode():
                    network(batch)

            for batch_size in batches:
                batch = torch.randn(batch_size, 3, side, side)
                torch_rate, torch_runs = images_per_second(with_torch, batch, repeats, args.max_seconds)
                onnx_rate, onnx_runs = images_per_second(session, batch, repeats, args.max_seconds)
                print(
                    f"| {name} | {side}×{side} | {batch_size} | {torch_rate:.1f} | {onnx_rate:.1f} | "
                    f"{onnx_rate / torch_rate:.2f}× |",
                    flush=True,
                )
                print(f"  ({torch_runs} / {onnx_runs} timed runs)", file=sys.stderr)


if __name__ == "__main__":
    main()
