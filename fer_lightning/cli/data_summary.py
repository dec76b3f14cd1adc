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

import json
import os
from collections.abc import Sequence
from pathlib import Path

import yaml

from fer_lightning.cli.commands import OneLineErrorParser
from fer_lightning.cli.parse_errors import condense_parse_error, did_you_mean
from fer_lightning.data.base import FERDataModule
from fer_lightning.data.summary import check_images, format_summary, plot_class_histogram
from fer_lightning.errors import ConfigurationError

#: Options of ``fit`` that say nothing about the data: accepted and ignored, so its command line works here.
_FIT_ONLY_OPTIONS = ("trainer", "model", "optimizer", "lr_scheduler", "seed_everything", "ckpt_path")


def build_datamodule(configs: Sequence[str | os.PathLike], overrides: Sequence[str] = ()) -> FERDataModule:
    """The datamodule of the configs' merged ``data:`` sections (later configs win), plus ``--data.*`` overrides."""
    from jsonargparse import ArgumentError, ArgumentParser

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


def data_summary(argv: list[str]) -> None:
    """``fer-lightning data-summary``: counts per split and class, dropped rows, and a class histogram PNG."""
    parser = OneLineErrorParser(
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
