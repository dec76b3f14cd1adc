"""Helper commands of ``fer-lightning`` that are not LightningCLI subcommands; each imports what it needs."""

from __future__ import annotations

import argparse
import os


def make_synthetic(argv: list[str]) -> None:
    """``fer-lightning make-synthetic``: write a generated dataset in a real dataset's on-disk format."""
    from fer_lightning.data.synthetic import WRITERS, write_synthetic

    parser = argparse.ArgumentParser(
        prog="fer-lightning make-synthetic",
        description="Write procedurally generated faces in the on-disk format of a real FER dataset.",
    )
    parser.add_argument("--format", required=True, choices=sorted(WRITERS), help="dataset format to write")
    parser.add_argument("--out", required=True, help="output folder (created; must be empty if it exists)")
    parser.add_argument("--num-images", type=int, default=3000, help="number of images (default 3000)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    args = parser.parse_args(argv)
    if os.path.isdir(args.out) and os.listdir(args.out):
        parser.error(f"--out {args.out} exists and is not empty")
    summary = write_synthetic(args.format, args.out, num_images=args.num_images, seed=args.seed)
    print(summary)


def complexity(argv: list[str]) -> None:
    """``fer-lightning complexity``: parameters and MACs of a config's model, per image."""
    from fer_lightning.models.complexity import count_macs, count_parameters

    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: fer-lightning complexity --config CONFIG [overrides]\n\n"
            + complexity.__doc__.split(": ", 1)[1]
            + " MACs = multiply-accumulates (FlopCounterMode FLOPs / 2), eval mode, batch 1; no data is read."
        )
        return
    # The datamodule is only instantiated (for the class count and image size); it reads nothing, so a
    # config whose data root is unset may stand in for one with synthetic data.
    from fer_lightning.cli.lightning_cli import FERCLI, trainer_defaults
    from fer_lightning.data import FERDataModule
    from fer_lightning.models import FERClassifier

    cli = FERCLI(
        FERClassifier,
        FERDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults=trainer_defaults(),
        run=False,
        args=[*argv, "--data.synthetic_size=1"],
    )
    model, size = cli.model, cli.datamodule.hparams.img_size
    total, trainable = count_parameters(model), count_parameters(model, trainable_only=True)
    macs = count_macs(model, (1, 3, size, size))
    print(f"model: {type(model).__name__} ({cli.datamodule.num_classes} classes), input 3x{size}x{size}")
    print(f"parameters: {total:,} ({trainable:,} trainable)")
    print(f"compute: {macs / 1e9:.3f} GMACs per image (eval forward; 1 MAC = 2 FLOPs)")


def plot_curves(argv: list[str]) -> None:
    """``fer-lightning plot-curves``: draw a run's loss and accuracy curves from its metrics.csv."""
    from fer_lightning.plots import plot_training_curves

    parser = argparse.ArgumentParser(
        prog="fer-lightning plot-curves",
        description="Draw loss and validation accuracy per epoch of a run (its CSV logger metrics.csv).",
    )
    parser.add_argument("run", help="run folder (e.g. runs/quickstart/version_0) or a metrics.csv")
    parser.add_argument("--out", help="PNG to write (default: training_curves.png in the run folder)")
    parser.add_argument("--title", default="", help="figure title")
    parser.add_argument(
        "--majority", type=float, help="draw the majority-class rate of the validation split (a fraction)"
    )
    args = parser.parse_args(argv)
    metrics = args.run if args.run.endswith(".csv") else os.path.join(args.run, "metrics.csv")
    if not os.path.isfile(metrics):
        parser.error(f"{metrics} not found (a run folder written by the CSV logger holds metrics.csv)")
    out = args.out or os.path.join(os.path.dirname(metrics), "training_curves.png")
    summary = plot_training_curves(metrics, out, title=args.title, majority_fraction=args.majority)
    print(f"wrote {out} (best val acc {summary['best_val_acc']:.4f} at epoch={int(summary['best_epoch'])})")
