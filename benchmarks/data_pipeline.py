"""Benchmark the data pipeline: images/s of decode + augment through the real DataLoader.

A synthetic RAF-DB set (100×100 JPEGs, as RAF-DB's aligned faces) is read by ``RAFDBDataModule`` with a
training recipe; for each image size and DataLoader worker count the training loader is drained for
``--epochs`` epochs and images/s is reported (worker start-up and the first batch excluded). Two
single-process rows split the cost: ``decode`` (``read_rgb`` alone) and ``augment`` (the transform alone,
on already-decoded pixels).

    python benchmarks/data_pipeline.py                      # 112 and 224 px, 0/1/2 workers
    python benchmarks/data_pipeline.py --workers 0 4 8 --recipe posterpp_affectnet --json out.json

Compare the images/s with a training step: at batch B and a step of t seconds the GPU consumes B / t
images/s; loading keeps up when the loader's rate at the chosen worker count is higher.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import torch

from fer_lightning.data import RAFDBDataModule
from fer_lightning.data.io import read_rgb
from fer_lightning.data.synthetic import write_synthetic
from fer_lightning.data.transforms import build_transform


def loader_rate(root: Path, size: int, workers: int, recipe: str, batch_size: int, epochs: int) -> dict:
    """Images/s of the training DataLoader (decode + augment + collate), after its first batch."""
    datamodule = RAFDBDataModule(
        root=str(root),
        batch_size=batch_size,
        num_workers=workers,
        img_size=size,
        augment=recipe,
        val_fraction=0.05,
    )
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    images, started = 0, None
    for _ in range(epochs):
        for batch, _labels in loader:
            if started is None:  # the first batch pays for worker start-up
                started = time.perf_counter()
                continue
            images += len(batch)
    seconds = time.perf_counter() - started
    return {"images_per_s": images / seconds, "ms_per_batch": 1000 * seconds / (images / batch_size)}


def stage_rates(root: Path, size: int, recipe: str, repeats: int) -> dict:
    """Single-process images/s of decoding alone and of the training transform alone."""
    paths = sorted((root / "Image" / "aligned").glob("*.jpg"))[:repeats]
    started = time.perf_counter()
    decoded = [read_rgb(path) for path in paths]
    decode = len(paths) / (time.perf_counter() - started)
    transform = build_transform(recipe, size, train=True)
    started = time.perf_counter()
    for image in decoded:
        transform(image=image)
    augment = len(decoded) / (time.perf_counter() - started)
    return {"decode_images_per_s": decode, "augment_images_per_s": augment}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1024, help="synthetic RAF-DB images (default 1024)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[112, 224])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipe", default="btn_rafdb", help="training recipe (default btn_rafdb)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2, help="epochs drained per measurement")
    parser.add_argument("--data", type=Path, help="existing synthetic RAF-DB folder (default: generate one)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    # Each DataLoader worker runs with one torch thread (PyTorch sets it); do the same here so that the
    # 0-worker row measures what one worker does. With several intra-op threads, the batch collate's
    # parallel torch.stack fights OpenCV's threads for the cores and is up to 50× slower on a busy machine.
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="fer_data_bench_") as scratch:
        root = args.data or Path(scratch) / "rafdb"
        if args.data is None:
            write_synthetic("rafdb", root, num_images=args.images, seed=0, progress=False)
        print(
            f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"OpenCV {cv2.__version__}; {args.images} RAF-DB JPEGs (100×100), recipe {args.recipe}, "
            f"batch {args.batch_size}"
        )
        print(f"{'size':>5} {'stage':>12} {'images/s':>10} {'ms/batch':>9}")
        results = []
        for size in args.sizes:
            stages = stage_rates(root, size, args.recipe, repeats=min(args.images, 512))
            for stage in ("decode", "augment"):
                rate = stages[f"{stage}_images_per_s"]
                results.append({"size": size, "stage": stage, "workers": 0, "images_per_s": rate})
                print(f"{size:>5} {stage + ' only':>12} {rate:>10.0f} {1000 * args.batch_size / rate:>9.1f}")
            for workers in args.workers:
                measured = loader_rate(root, size, workers, args.recipe, args.batch_size, args.epochs)
                results.append({"size": size, "stage": "loader", "workers": workers, **measured})
                label = f"{workers} worker" + ("s" if workers != 1 else "")
                print(
                    f"{size:>5} {label:>12} {measured['images_per_s']:>10.0f} {measured['ms_per_batch']:>9.1f}"
                )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
