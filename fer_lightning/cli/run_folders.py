"""One run, one folder: where ``fit``/``validate``/``test`` write, and what a failed run leaves behind.

A run folder is the CSV logger's ``<save_dir>/<name>/version_N``, holding ``config.yaml``,
``metrics.csv``, ``checkpoints/`` and the figures. Given a checkpoint of such a run:

* ``fit --ckpt_path <run>/checkpoints/last.ckpt`` continues in ``<run>`` itself: ``metrics.csv`` keeps
  the rows logged before the checkpoint and goes on from there (one history, one curve), and the
  checkpoint callback finds its best-so-far again (it only restores that when its folder is unchanged);
* ``validate``/``test --ckpt_path <run>/checkpoints/….ckpt`` write into ``<run>/validate`` or
  ``<run>/test``, next to the training results without touching them.

A run that fails before it wrote any checkpoint removes the folder it created, so failed attempts do
not pile up as empty ``version_N`` folders.
"""

from __future__ import annotations

import csv
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

CHECKPOINT_FOLDER = "checkpoints"
#: Files whose presence marks a folder as a run folder of ours (the CSV logger and the config callback).
RUN_FOLDER_MARKERS = ("config.yaml", "metrics.csv", "hparams.yaml")


def run_folder_of_checkpoint(ckpt_path: str | os.PathLike | None) -> Path | None:
    """``<run>`` for a checkpoint at ``<run>/checkpoints/<file>.ckpt``; None for a checkpoint kept elsewhere."""
    if ckpt_path is None or str(ckpt_path) in ("last", "best", "hpc", "registry"):
        return None
    path = Path(ckpt_path).expanduser().resolve()
    if path.parent.name != CHECKPOINT_FOLDER:
        return None
    run = path.parent.parent
    return run if any((run / marker).is_file() for marker in RUN_FOLDER_MARKERS) else None


def _logger_entries(logger_config: Any) -> list[Any]:
    if isinstance(logger_config, list | tuple):
        return list(logger_config)
    return [logger_config]


def csv_logger_runs(logger_config: Any) -> Path | None:
    """``<save_dir>/<name>``, the folder of the ``version_N`` run folders of a parsed ``trainer.logger``
    config's CSV logger; None if it has none."""
    for entry in _logger_entries(logger_config):
        if str(getattr(entry, "class_path", "") or "").endswith("CSVLogger"):
            init_args = entry.init_args
            return Path(init_args.save_dir or ".").expanduser() / (init_args.name or "lightning_logs")
    return None


def newest_run_checkpoint(runs: Path, keyword: str) -> Path | None:
    """What ``--ckpt_path last`` / ``best`` names: ``last.ckpt`` / the ``best-….ckpt`` of the run folder
    under ``runs`` whose ``last.ckpt`` was written most recently (the run that trained last, e.g. the
    one a requeued job is continuing); None if no run there has one."""
    lasts = sorted(runs.glob(f"*/{CHECKPOINT_FOLDER}/last.ckpt"), key=lambda path: path.stat().st_mtime)
    for last in reversed(lasts):
        if keyword == "last":
            return last
        bests = sorted(last.parent.glob("best-*.ckpt"), key=lambda path: path.stat().st_mtime)
        if bests:
            return bests[-1]
    return None


def point_csv_logger_at(logger_config: Any, folder: Path) -> bool:
    """Make the CSV logger of a parsed ``trainer.logger`` config write into ``folder``; False if none.

    ``folder`` becomes ``<save_dir>/<name>/<version>`` with the version taken as the folder's own name.
    """
    found = False
    for entry in _logger_entries(logger_config):
        class_path = str(getattr(entry, "class_path", "") or "")
        if not class_path.endswith("CSVLogger"):
            continue
        init_args = entry.init_args
        init_args.save_dir = str(folder.parent.parent)
        init_args.name = folder.parent.name
        init_args.version = folder.name
        found = True
    return found


def metrics_rows_before(metrics_file: Path, global_step: int) -> list[dict[str, str]]:
    """The rows of a ``metrics.csv`` logged before optimiser step ``global_step`` (empty cells dropped).

    Lightning logs a row at step ``s - 1`` after ``s`` optimiser steps (training steps, and the
    validation and epoch summaries that close an epoch), so these are exactly the rows a run resumed
    from a checkpoint taken at ``global_step`` will not log again.
    """
    if not metrics_file.is_file():
        return []
    with open(metrics_file, newline="") as handle:
        rows = list(csv.DictReader(handle))
    kept = []
    for row in rows:
        try:
            step = int(float(row.get("step") or 0))
        except ValueError:
            continue
        if step < global_step:
            kept.append({key: value for key, value in row.items() if value not in ("", None)})
    return kept


def continue_metrics_history(csv_logger: Any, rows: list[dict[str, str]]) -> None:
    """Start the CSV logger's ``metrics.csv`` with ``rows`` (the history of the run being resumed).

    The CSV logger deletes an existing ``metrics.csv`` when it opens a non-empty folder (and warns that
    it does); the caller reads the rows first and they are written back here before any new row.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
        writer = csv_logger.experiment
    if rows:
        writer.metrics = rows
        writer.save()


def holds_results(folder: Path) -> bool:
    """Whether a run folder holds something worth keeping after a failure: a checkpoint or a bad-sample list."""
    if any(folder.rglob("*.ckpt")):
        return True
    return any(path.stat().st_size > 0 for path in folder.glob("bad_samples*.tsv"))


def remove_if_empty_run(folder: Path | None) -> bool:
    """Delete a run folder that holds no results (see :func:`holds_results`); True if removed."""
    if folder is None or not folder.is_dir() or holds_results(folder):
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return True
