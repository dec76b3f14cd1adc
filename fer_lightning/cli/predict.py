"""``fer-lightning predict`` (expressions in photos, folders and videos) and ``fer-lightning export``."""

from __future__ import annotations

import sys
from pathlib import Path

from fer_lightning.cli.commands import OneLineErrorParser
from fer_lightning.errors import ConfigurationError

PREDICTIONS_FILE = "predictions.csv"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


def predict(argv: list[str]) -> None:
    parser = OneLineErrorParser(
        prog="fer-lightning predict",
        description=(
            "Expression probabilities for every face in images, folders (recursive: jpg, png, bmp, webp) and "
            f"videos, written to OUT/{PREDICTIONS_FILE}: one row per face (input, frame, face, box, one "
            "probability per class, predicted class, note). The checkpoint alone says how to prepare faces "
            "for the model; it is read with torch.load(weights_only=True), so it cannot run code."
        ),
    )
    parser.add_argument(
        "model", help="a .ckpt written by fer-lightning fit, or a .onnx written by fer-lightning export"
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or video files")
    parser.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    parser.add_argument(
        "--faces",
        choices=("detect", "none"),
        default="detect",
        help="detect: find faces (OpenCV's frontal-face Haar cascade); none: each picture is one face "
        "already cropped, as in the datasets",
    )
    parser.add_argument(
        "--every", type=_positive_int, default=1, help="of a video, every N-th frame (default 1)"
    )
    parser.add_argument(
        "--annotate", action="store_true", help="also write copies with boxes and labels into OUT"
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=32, help="faces per forward pass (default 32)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--detector-model",
        help="a face detector file instead of the bundled cascade: an OpenCV cascade .xml or a YuNet .onnx",
    )
    parser.add_argument(
        "--margin",
        type=float,
        help="grow each detected box by this fraction of its side on every side (default: the checkpoint's)",
    )
    parser.add_argument(
        "--preprocessing",
        help="JSON with the evaluation preprocessing (img_size, mean, std, crop_margin, …), for checkpoints "
        "written before predict metadata existed",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.margin is not None and args.margin < 0:
        raise ConfigurationError(f"predict --margin {args.margin}: expected a fraction >= 0 (e.g. 0.2)")

    from fer_lightning.inference import Predictor

    options = {"faces": args.faces, "detector_model": args.detector_model, "batch_size": args.batch_size}
    if args.preprocessing is not None:
        options["preprocessing"] = args.preprocessing
    predictor = Predictor.load(args.model, args.device, **options)
    if args.margin is not None:
        predictor = Predictor(
            predictor.network,
            predictor.class_names,
            predictor.preprocessing.with_margin(args.margin),
            args.faces,
            args.detector_model,
            args.batch_size,
            predictor.source,
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = predictor.predict(
        args.inputs,
        every=args.every,
        progress=not args.no_progress,
        annotate_dir=out if args.annotate else None,
    )
    table.to_csv(out / PREDICTIONS_FILE, index=False)
    faces = int(table["face"].notna().sum())
    pictures = len(table.drop_duplicates(["input", "frame"]))
    skipped = len(table.attrs.get("skipped", []))
    print(
        f"{faces} faces in {pictures} pictures"
        + (f" ({skipped} inputs skipped)" if skipped else "")
        + f": {out / PREDICTIONS_FILE}"
        + (f", annotated copies in {out}" if args.annotate else ""),
        file=sys.stderr,
    )
    if pictures == 0:
        raise ConfigurationError(
            f"predict: no picture could be read from {' '.join(args.inputs)} (images: jpg, png, bmp, webp; "
            "videos: mp4, avi, mov, mkv, …)"
        )


def export(argv: list[str]) -> None:
    from fer_lightning.export import FORMATS, TOLERANCE

    parser = OneLineErrorParser(
        prog="fer-lightning export",
        description=(
            "Write a checkpoint's inference path (normalised images -> class probabilities, dynamic batch) "
            "as ONNX or TorchScript, with its preprocessing and class names as JSON beside it "
            "(model.onnx -> model.onnx.json), and check it against PyTorch on random inputs."
        ),
    )
    parser.add_argument("checkpoint", help="a .ckpt written by fer-lightning fit")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="onnx (default) or torchscript")
    parser.add_argument("--out", help="output file (default: the checkpoint's path with .onnx or .pt)")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=TOLERANCE,
        help=f"largest accepted probability difference to PyTorch (default {TOLERANCE:.0e})",
    )
    args = parser.parse_args(argv)

    from fer_lightning.export import export_checkpoint

    result = export_checkpoint(args.checkpoint, args.format, args.out, tolerance=args.tolerance)
    print(result.summary())
