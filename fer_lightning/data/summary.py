"""``fer-lightning data-summary``: what a config's datamodule reads, per split and class, and what it drops.

Usage::

    fer-lightning data-summary --config experiments/btn_affectnet7.yaml --data.root /data/AffectNet
    fer-lightning data-summary --config experiments/quickstart_aihub.yaml --out aihub.png --check-images

The datamodule is built from the config's ``data:`` section exactly as ``fit`` builds it (the same
parser, defaults and ``--data.*`` overrides); ``trainer:`` and ``model:`` are ignored, and so are
``--trainer.*``/``--model.*`` overrides (a ``fit`` command line works unchanged), so no model is
built. Printed: images per split and class (train and val after the validation carve), rows left out
per official split and reason, and with ``--check-images`` the images that fail to decode.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml
from matplotlib.figure import Figure

from fer_lightning.data.base import SPLITS, FERDataModule
from fer_lightning.data.io import BadSampleError
from fer_lightning.errors import ConfigurationError
from fer_lightning.plots import drawable_names

_SPLIT_COLOURS = {"train": "#4C72B0", "val": "#DD8452", "test": "#55A868"}
#: Options of ``fit`` that say nothing about the data: accepted and ignored, so its command line works here.
_FIT_ONLY_OPTIONS = ("trainer", "model", "optimizer", "lr_scheduler", "seed_everything", "ckpt_path")


def build_datamodule(configs: Sequence[str | os.PathLike], overrides: Sequence[str] = ()) -> FERDataModule:
    """The datamodule of the configs' merged ``data:`` sections (later configs win), plus ``--data.*`` overrides."""
    from jsonargparse import ArgumentError, ArgumentParser

    from fer_lightning.cli.parse_errors import condense_parse_error

    data: dict = {}
    for config in configs:
        if not os.path.isfile(config):
            raise ConfigurationError(f"--config {config}: no such file")
        with open(config, encoding="utf-8") as handle:
            section = (yaml.safe_load(handle) or {}).get("data")
        if section is None:
            continue
        if isinstance(section, dict) and section.get("class_path") not in (None, data.get("class_path")):
            data = {}  # another datamodule class: its init_args replace the earlier ones
        data = _merge(data, section)
    if not data:
        raise ConfigurationError(f"no data: section in {', '.join(map(str, configs))}; give a fit config")
    parser = ArgumentParser(prog="fer-lightning data-summary", exit_on_error=False)
    parser.add_subclass_arguments(FERDataModule, "data", required=True)
    try:
        config = parser.parse_args([f"--data={json.dumps(data)}", *overrides])
    except ArgumentError as error:
        raise ConfigurationError(condense_parse_error(str(error))) from error
    return parser.instantiate_classes(config).data


def data_overrides(arguments: Sequence[str]) -> list[str]:
    """The ``--data.*`` options among ``arguments``, without ``fit``'s other options (and their values).

    Raises:
        ConfigurationError: for an argument that is neither.
    """
    from fer_lightning.cli.parse_errors import did_you_mean

    kept: list[str] = []
    tokens = iter(arguments)
    for token in tokens:
        name = token.split("=", 1)[0].removeprefix("--")
        group = name.split(".", 1)[0]
        if token.startswith("--") and group == "data":
            kept.append(token)
            if "=" not in token:
                kept.append(next(tokens, ""))
        elif token.startswith("--") and group in _FIT_ONLY_OPTIONS:
            if "=" not in token:
                next(tokens, None)  # its value
        else:
            closest = did_you_mean(group, ("data", *_FIT_ONLY_OPTIONS))
            hint = f"did you mean --{closest}{name.removeprefix(group)}? " if closest else ""
            raise ConfigurationError(
                f"data-summary: unrecognized argument {token}; {hint}it takes --config, --out, "
                "--check-images and fit's options (only --data.* ones matter here)"
            )
    return kept


def _merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = (
            _merge(merged[key], value)
            if isinstance(value, dict) and isinstance(merged.get(key), dict)
            else value
        )
    return merged


def class_counts(datamodule: FERDataModule) -> dict[str, np.ndarray]:
    """Split → images per class id (after the validation carve)."""
    return {
        split: np.bincount(datamodule.tables[split].labels, minlength=datamodule.num_classes)
        for split in SPLITS
    }


def check_images(datamodule: FERDataModule) -> dict[str, Counter]:
    """Decode every sample once; split → reason → images that fail (slow on a full dataset)."""
    failures: dict[str, Counter] = {}
    for split in SPLITS:
        table = datamodule.tables[split]
        failures[split] = Counter()
        for source in table.sources:
            try:
                datamodule.load_image(source)
            except BadSampleError as error:
                failures[split][error.reason] += 1
    return failures


def format_summary(datamodule: FERDataModule, failures: dict[str, Counter] | None = None) -> str:
    """Plain-text tables: counts per split and class, then rows left out per split and reason."""
    counts = class_counts(datamodule)
    names = list(datamodule.class_names)
    width = max(8, *(len(name) + 2 for name in names))
    lines = [f"{datamodule.DATASET_NAME}: {datamodule.num_classes} classes, root {datamodule.root}", ""]
    lines.append(f"{'class':<{width}}" + "".join(f"{split:>10}" for split in SPLITS))
    for class_id, name in enumerate(names):
        lines.append(
            f"{class_id} {name:<{width - 2}}" + "".join(f"{counts[s][class_id]:>10}" for s in SPLITS)
        )
    lines.append(f"{'total':<{width}}" + "".join(f"{counts[s].sum():>10}" for s in SPLITS))
    lines += ["", "left out while reading the annotations (official split, reason):"]
    left_out = [
        (split, kind, reason, count)
        for kind, per_split in (("dropped", datamodule.dropped_rows), ("skipped", datamodule.skipped_rows))
        for split, reasons in per_split.items()
        for reason, count in reasons.most_common()
    ]
    lines += [f"  {split:<6} {kind:<8} {count:>8}  {reason}" for split, kind, reason, count in left_out] or [
        "  none"
    ]
    if failures is not None:
        lines += ["", "images that fail to decode:"]
        rows = [
            (split, reason, count) for split, reasons in failures.items() for reason, count in reasons.items()
        ]
        lines += [f"  {split:<6} {count:>8}  {reason}" for split, reason, count in rows] or ["  none"]
    return "\n".join(lines)


def display_class_names(datamodule: FERDataModule) -> list[str]:
    """Class names as they can be drawn: the dataset's own, else its English glosses (``DISPLAY_NAMES``)."""
    return drawable_names(datamodule.class_names, getattr(datamodule, "DISPLAY_NAMES", None))


def plot_class_histogram(datamodule: FERDataModule, path: str | os.PathLike) -> None:
    """Grouped bars: images per class for each split, with the count on each bar."""
    counts = class_counts(datamodule)
    names = display_class_names(datamodule)
    positions = np.arange(len(names))
    bar_width = 0.8 / len(SPLITS)
    figure = Figure(figsize=(max(6.0, 0.9 * len(names) + 2.0), 4.5))
    axes = figure.subplots()
    for offset, split in enumerate(SPLITS):
        bars = axes.bar(
            positions + (offset - (len(SPLITS) - 1) / 2) * bar_width,
            counts[split],
            bar_width,
            label=f"{split} ({counts[split].sum()})",
            color=_SPLIT_COLOURS[split],
        )
        axes.bar_label(bars, fontsize=7, padding=1)
    axes.set_xticks(positions, labels=names, rotation=30, ha="right")
    axes.set_ylabel("images")
    left_out = {
        split: sum(datamodule.dropped_rows.get(split, Counter()).values())
        + sum(datamodule.skipped_rows.get(split, Counter()).values())
        for split in datamodule.dropped_rows
    }
    subtitle = ", ".join(f"{count} {split}" for split, count in left_out.items() if count)
    title = f"{datamodule.DATASET_NAME}: images per class and split"
    axes.set_title(f"{title}\nrows left out: {subtitle}" if subtitle else title)
    axes.legend()
    axes.margins(y=0.12)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def data_summary(argv: list[str]) -> None:
    """``fer-lightning data-summary``: counts per split and class, dropped rows, and a class histogram PNG."""
    parser = argparse.ArgumentParser(
        prog="fer-lightning data-summary",
        description="Build the datamodule of a config's data: section and summarise what it reads.",
        epilog=(
            "Other --data.* options override the config, as in fit (e.g. --data.root=/data/AffectNet); "
            "fit's --trainer.* and --model.* options are accepted and ignored."
        ),
    )
    parser.add_argument("--config", action="append", required=True, help="experiment YAML (repeatable)")
    parser.add_argument("--out", help="histogram PNG (default runs/data_summary/<config name>_classes.png)")
    parser.add_argument("--check-images", action="store_true", help="decode every image and count failures")
    args, overrides = parser.parse_known_args(argv)
    datamodule = build_datamodule(args.config, data_overrides(overrides))
    datamodule.prepare_data()
    datamodule.setup("fit")
    failures = check_images(datamodule) if args.check_images else None
    out = Path(args.out or Path("runs") / "data_summary" / f"{Path(args.config[-1]).stem}_classes.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    plot_class_histogram(datamodule, out)
    print(format_summary(datamodule, failures))
    print(f"\nclass histogram: {out}")
