"""Helper commands of ``fer-lightning`` that are not LightningCLI subcommands; each imports what it needs."""

from __future__ import annotations

import argparse
import inspect
import math
import os
from typing import NoReturn

from fer_lightning.errors import ConfigurationError


class OneLineErrorParser(argparse.ArgumentParser):
    """An argparse parser whose mistakes reach the user as the CLI's one ``error:`` line, not usage + exit 2."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("fer-lightning ")
        raise ConfigurationError(f"{command}: {message} (see {self.prog} --help)")


# make-synthetic options that set a writer keyword: flag -> (writer keyword, value type, help). A flag
# applies to the formats whose writer takes that keyword; each help ends with the per-format defaults.
SYNTHETIC_OPTIONS: dict[str, tuple[str, type, str]] = {
    "--imbalance": (
        "imbalance",
        float,
        "ratio of the most to the least frequent class (>= 1; 1 = balanced); the classes are ranked as in "
        "the real training set",
    ),
    "--label-noise": (
        "label_noise",
        float,
        "fraction of training labels replaced by a different class, in [0, 1] (the manifest keeps the "
        "clean labels; for ferplus only the FER2013 column is corrupted). This writes the noise into the "
        "files; to flip the labels of any dataset, real ones included, when it is read, use fit's "
        "--data.label_noise instead",
    ),
    "--nuisance": (
        "nuisance",
        float,
        "scale of the variation unrelated to expression (pose, identity, lighting, background, "
        "occluders, blur, noise), >= 0; 0 draws frontal average faces on grey",
    ),
    "--test-fraction": ("test_fraction", float, "fraction of the images in the test split, in [0, 1)"),
    "--validation-fraction": (
        "validation_fraction",
        float,
        "fraction of the images in the validation split, in [0, 1) (AffectNet's is balanced per class)",
    ),
    "--public-test-fraction": (
        "public_test_fraction",
        float,
        "fraction of the images in the PublicTest split, in [0, 1)",
    ),
    "--private-test-fraction": (
        "private_test_fraction",
        float,
        "fraction of the images in the PrivateTest split, in [0, 1)",
    ),
    "--image-size": ("image_size", int, "side of the square aligned face images in pixels, >= 1"),
    "--face-size": ("face_size", int, "side of the face box inside each full picture in pixels, >= 1"),
}


def _writer_defaults(writers: dict) -> dict[str, dict[str, object]]:
    """Keyword -> {format: default} for every keyword some writer takes."""
    defaults: dict[str, dict[str, object]] = {}
    for fmt, writer in sorted(writers.items()):
        for name, parameter in inspect.signature(writer).parameters.items():
            defaults.setdefault(name, {})[fmt] = parameter.default
    return defaults


def _check_synthetic_option(flag: str, value: float) -> None:
    keyword = SYNTHETIC_OPTIONS[flag][0]
    if keyword == "imbalance":
        valid, expected = value >= 1, "a ratio >= 1 (1 = balanced)"
    elif keyword == "label_noise":
        valid, expected = 0 <= value <= 1, "a fraction in [0, 1]"
    elif keyword == "nuisance":
        valid, expected = value >= 0, "a scale >= 0 (1 = the default variation)"
    elif keyword.endswith("_fraction"):
        valid, expected = 0 <= value < 1, "a fraction in [0, 1)"
    else:
        valid, expected = value >= 1, "a size in pixels >= 1"
    if not (valid and math.isfinite(value)):
        raise ConfigurationError(f"make-synthetic {flag} {value}: expected {expected}")


def _flags_and_values(options: dict[str, object]) -> str:
    flags = {keyword: flag for flag, (keyword, _, _) in SYNTHETIC_OPTIONS.items()}
    return ", ".join(f"{flags[keyword]} {value:g}" for keyword, value in options.items())


def make_synthetic(argv: list[str]) -> None:
    """``fer-lightning make-synthetic``: write a generated dataset in a real dataset's on-disk format."""
    from fer_lightning.data.synthetic import MANIFEST_NAME, WRITERS, write_synthetic

    defaults = _writer_defaults(WRITERS)
    parser = OneLineErrorParser(
        prog="fer-lightning make-synthetic",
        description="Write procedurally generated faces in the on-disk format of a real FER dataset. "
        "Options left out take the format's own default (listed with each option).",
    )
    parser.add_argument("--format", required=True, choices=sorted(WRITERS), help="dataset format to write")
    parser.add_argument("--out", required=True, help="output folder (created; must be empty if it exists)")
    parser.add_argument("--num-images", type=int, default=3000, help="number of images (default 3000)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    for flag, (keyword, value_type, text) in SYNTHETIC_OPTIONS.items():
        per_format = defaults[keyword]
        if len(per_format) == len(WRITERS) and len(set(per_format.values())) == 1:
            default = f"default {next(iter(per_format.values()))}, every format"
        else:
            default = "default " + ", ".join(f"{value} for {fmt}" for fmt, value in per_format.items())
        parser.add_argument(
            flag, dest=keyword, type=value_type, metavar=keyword.upper(), help=f"{text} ({default})"
        )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a synthetic dataset written earlier into --out"
    )
    args = parser.parse_args(argv)

    options = {}
    for flag, (keyword, _, _) in SYNTHETIC_OPTIONS.items():
        value = getattr(args, keyword)
        if value is None:
            continue
        if args.format not in defaults[keyword]:
            applicable = [
                other for other, (name, _, _) in SYNTHETIC_OPTIONS.items() if args.format in defaults[name]
            ]
            raise ConfigurationError(
                f"make-synthetic {flag} does not apply to --format {args.format} (it applies to "
                f"{', '.join(defaults[keyword])}); options of {args.format}: {', '.join(applicable)}"
            )
        _check_synthetic_option(flag, value)
        options[keyword] = value
    fractions = {
        keyword: options.get(keyword, per_format[args.format])
        for keyword, per_format in defaults.items()
        if keyword.endswith("_fraction") and args.format in per_format
    }
    held_out = sum(fractions.values())
    if held_out >= 1:
        raise ConfigurationError(
            f"make-synthetic: the held-out fractions of {args.format} ({_flags_and_values(fractions)}) sum to "
            f"{held_out:g}; keep their sum below 1 so that images are left for training"
        )
    if args.num_images < 1:
        raise ConfigurationError(f"make-synthetic --num-images {args.num_images}: expected at least 1")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ConfigurationError(f"make-synthetic --out {args.out} is a file; give a folder to write into")
    if os.path.isdir(args.out) and os.listdir(args.out):
        if not os.path.isfile(os.path.join(args.out, MANIFEST_NAME)):
            raise ConfigurationError(
                f"make-synthetic --out {args.out} exists and holds other files; choose a new or empty folder"
            )
        if not args.overwrite:
            raise ConfigurationError(
                f"make-synthetic --out {args.out} already holds a synthetic dataset; "
                "pass --overwrite to replace it, or choose another folder"
            )
    summary = write_synthetic(
        args.format, args.out, num_images=args.num_images, seed=args.seed, overwrite=args.overwrite, **options
    )
    print(summary.describe())


def complexity(argv: list[str]) -> None:
    """``fer-lightning complexity``: parameters, MACs and FLOPs of a config's model, per image."""
    from fer_lightning.models.complexity import count_flops, count_parameters

    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: fer-lightning complexity --config CONFIG [overrides]\n\n"
            + complexity.__doc__.split(": ", 1)[1]
            + " MACs = multiply-accumulates; FLOPs = 2 x MACs (FlopCounterMode's count); eval mode, batch 1;"
            " no data is read."
        )
        return
    # The datamodule is only instantiated (for the class count and image size); it reads nothing, so a
    # config whose data root is unset may stand in for one with synthetic data.
    from fer_lightning.cli.lightning_cli import FERCLI, trainer_defaults
    from fer_lightning.data import FERDataModule
    from fer_lightning.models import FERClassifier

    class ModelOnlyCLI(FERCLI):
        # Counting needs no Trainer; building one only prints its accelerator report.
        def instantiate_trainer(self, **kwargs):
            return None

    cli = ModelOnlyCLI(
        FERClassifier,
        FERDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults=trainer_defaults(),
        run=False,
        # Weights are random either way, so the seed would only add a "Seed set to" line.
        args=[*argv, "--data.synthetic_size=1", "--seed_everything=false"],
    )
    model, size = cli.model, cli.datamodule.hparams.img_size
    total, trainable = count_parameters(model), count_parameters(model, trainable_only=True)
    flops = count_flops(model, (1, 3, size, size))
    print(f"model: {type(model).__name__} ({cli.datamodule.num_classes} classes), input 3x{size}x{size}")
    print(f"parameters: {total:,} ({trainable:,} trainable)")
    print(
        f"compute: {flops / 2e9:.3f} GMACs = {flops / 1e9:.3f} GFLOPs per image (eval forward; 1 MAC = 2 FLOPs)"
    )


def plot_curves(argv: list[str]) -> None:
    """``fer-lightning plot-curves``: draw a run's loss and accuracy curves from its metrics.csv."""
    from fer_lightning.plots import majority_baseline_from_splits, plot_training_curves

    parser = OneLineErrorParser(
        prog="fer-lightning plot-curves",
        description="Draw loss and validation accuracy per epoch of a run (its CSV logger metrics.csv).",
    )
    parser.add_argument("run", help="run folder (e.g. runs/quickstart/version_0) or a metrics.csv")
    parser.add_argument("--out", help="PNG to write (default: training_curves.png in the run folder)")
    parser.add_argument("--title", default="", help="figure title")
    parser.add_argument(
        "--majority",
        type=float,
        help="draw the majority-class rate of the validation split (a fraction); default: computed from "
        "the run folder's data_splits.csv when it is there",
    )
    args = parser.parse_args(argv)
    metrics = args.run if args.run.endswith(".csv") else os.path.join(args.run, "metrics.csv")
    if not os.path.isfile(metrics):
        parser.error(f"{metrics} not found (a run folder written by the CSV logger holds metrics.csv)")
    out = args.out or os.path.join(os.path.dirname(metrics), "training_curves.png")
    majority = args.majority
    splits = os.path.join(os.path.dirname(metrics), "data_splits.csv")
    if majority is None and os.path.isfile(splits):
        majority = majority_baseline_from_splits(splits)
    summary = plot_training_curves(metrics, out, title=args.title, majority_fraction=majority)
    baseline = f"; majority class {summary['majority']:.4f}" if "majority" in summary else ""
    print(
        f"wrote {out} (best val acc {summary['best_val_acc']:.4f} at epoch={int(summary['best_epoch'])}{baseline})"
    )
