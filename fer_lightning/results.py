"""The results table: every ``fer-lightning test`` appends one row to a ``results.csv``.

By default the table lies beside the run folders (``runs/<name>/results.csv`` for the run folder
``runs/<name>/version_N``; ``<sweep folder>/results.csv`` for the runs of a local sweep); the option
``--results_csv PATH`` names another. A row holds what identifies the run (its folder, a hash of its
``config.yaml``, model, dataset and the studied settings λ, batch size, seed and label-noise rate, read
from the run's config and blank where a model or datamodule has no such option), the test metrics
(overall, mean class and per-class accuracy, macro F1, as fractions) and the epoch of the checkpoint
tested. ``fer-lightning report`` and ``notebooks/results.ipynb`` read it.

Rows of different datasets have different classes: the per-class columns (``class_acc/<class>``) are
the union over all rows, blank where a row's dataset has no such class.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fer_lightning.errors import ResultsError

RESULTS_FILE = "results.csv"
CLASS_ACCURACY_PREFIX = "class_acc/"
#: The studied settings: column -> where it is read in a run's config (``class_path``/``init_args`` sections).
STUDY_SETTINGS: dict[str, tuple[str, ...]] = {
    "lambda_vit": ("model", "init_args", "lambda_vit"),
    "batch_size": ("data", "init_args", "batch_size"),
    "seed": ("seed_everything",),
    "label_noise_rate": ("data", "init_args", "label_noise", "rate"),
}
#: Test metrics copied into a row: column -> logged metric.
TEST_METRICS = {"acc": "test/acc", "mean_class_acc": "test/mean_class_acc", "macro_f1": "test/macro_f1"}
COLUMNS = (
    "run_folder",
    "config_hash",
    "model",
    "variant",
    "dataset",
    *STUDY_SETTINGS,
    *TEST_METRICS,
    "selected_epoch",
    "checkpoint",
)


def config_digest(data: bytes) -> str:
    """The first 12 hex digits of the SHA-256 of a config file's bytes (as the README cites configs)."""
    return hashlib.sha256(data).hexdigest()[:12]


_MISSING = object()


def _lookup(config: Mapping, keys: tuple[str, ...]) -> Any:
    """``config[k1][k2]…``; ``_MISSING`` when a key is absent, None when a section on the way is null."""
    value: Any = config
    for key in keys:
        if value is None:
            return None
        if not isinstance(value, Mapping) or key not in value:
            return _MISSING
        value = value[key]
    return value


def study_settings(config: Mapping) -> dict[str, Any]:
    """λ, batch size, seed and label-noise rate of a run's config; '' where the option does not exist.

    A datamodule with a ``label_noise`` option that is null trains on clean labels: rate 0.
    """
    settings = {}
    for column, keys in STUDY_SETTINGS.items():
        value = _lookup(config, keys)
        if column == "label_noise_rate" and value is None:
            value = 0.0
        settings[column] = "" if value is _MISSING or value is None else value
    return settings


def dataset_label(datamodule: Any) -> str:
    """The dataset a datamodule reads, as tables name it: ``RAF-DB``, ``AffectNet-7``, …; prefixed with
    ``synthetic`` when it reads generated faces (no ``root``), which no paper number is comparable to."""
    name = getattr(datamodule, "DATASET_NAME", type(datamodule).__name__)
    if name == "AffectNet":
        name = f"AffectNet-{datamodule.num_classes}"
    hparams = getattr(datamodule, "hparams", {})
    if hparams.get("root", "") is None:
        name = f"synthetic {name}"
    return name


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else str(value)


def results_row(
    *,
    run_folder: Path,
    config: Mapping,
    config_hash: str,
    model: Any,
    datamodule: Any,
    metrics: Mapping[str, float],
    selected_epoch: int | None,
    checkpoint: str | None,
) -> dict[str, str]:
    """One row of the table for a finished test (``metrics``: the logged ``test/*`` values)."""
    hparams = getattr(model, "hparams", {})
    row: dict[str, Any] = {
        "run_folder": str(run_folder),
        "config_hash": config_hash,
        "model": type(model).__name__,
        "variant": hparams.get("variant", ""),
        "dataset": dataset_label(datamodule),
        **study_settings(config),
        **{column: metrics.get(name, "") for column, name in TEST_METRICS.items()},
        "selected_epoch": "" if selected_epoch is None else selected_epoch,
        "checkpoint": checkpoint or "",
    }
    for class_name in getattr(model, "class_names", []):
        row[f"{CLASS_ACCURACY_PREFIX}{class_name}"] = metrics.get(f"test/class_acc/{class_name}", "")
    return {column: _format(value) for column, value in row.items()}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock next to ``path`` (several W&B agents may test on one machine at once)."""
    try:
        import fcntl
    except ImportError:  # Windows: one writer at a time is up to the user
        yield
        return
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def append_row(path: str | os.PathLike, row: Mapping[str, str]) -> Path:
    """Append ``row`` to the table at ``path`` (created with its folder if absent); returns the path.

    A row may bring columns the table lacks (another dataset's classes): the file is then rewritten with
    the union of the columns, through a temporary file, so an interrupted write never leaves half a table.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path):
        header, rows = _read_rows(path) if path.is_file() else (list(COLUMNS), [])
        new_columns = [column for column in row if column not in header]
        if not new_columns and path.is_file():
            with open(path, "a", newline="") as handle:
                csv.DictWriter(handle, fieldnames=header).writerow(row)
            return path
        header += new_columns
        with tempfile.NamedTemporaryFile(
            "w", dir=path.parent, suffix=".tmp", delete=False, newline=""
        ) as tmp:
            writer = csv.DictWriter(tmp, fieldnames=header)
            writer.writeheader()
            writer.writerows([*rows, row])
        os.replace(tmp.name, path)
    return path


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        header = list(reader.fieldnames or [])
    missing = [column for column in ("run_folder", "acc") if column not in header]
    if missing:
        raise ResultsError(
            f"{path}: not a results table of fer-lightning (no column {', '.join(missing)}); pass the "
            f"{RESULTS_FILE} that fer-lightning test writes, or move this file out of the way"
        )
    return header, rows


def read_results(path: str | os.PathLike):
    """The table as a pandas DataFrame: numeric columns as numbers, blanks as NaN, ``run_folder`` absolute.

    Raises:
        ResultsError: no such file, or not a table ``fer-lightning test`` wrote.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ResultsError(
            f"results table {path} not found; fer-lightning test (or a sweep run with --test_after_fit=true) "
            f"writes {RESULTS_FILE} beside the run folders"
        )
    header, rows = _read_rows(path)
    if not rows:
        raise ResultsError(f"{path}: the results table has no rows yet; run fer-lightning test first")
    frame = pd.DataFrame(rows, columns=header)
    text_columns = {"run_folder", "config_hash", "model", "variant", "dataset", "checkpoint"}
    for column in frame.columns:
        if column not in text_columns:
            frame[column] = pd.to_numeric(frame[column].replace("", None), errors="coerce")
    frame["run_folder"] = [str((path.parent / folder).resolve()) for folder in frame["run_folder"]]
    return frame


def relative_to_table(folder: Path, table: Path) -> str:
    """``folder`` relative to the table's folder when inside it (the table moves with its runs), else absolute."""
    folder, base = folder.resolve(), table.resolve().parent
    try:
        return str(folder.relative_to(base))
    except ValueError:
        return str(folder)
