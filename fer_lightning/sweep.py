"""Sweep files in W&B's format, checked and run on one machine without a W&B server.

A sweep file is what ``wandb sweep FILE`` takes: a ``method``, a ``metric``, ``parameters`` named with
the CLI's dotted keys (``model.init_args.lambda_vit``) and a ``command`` whose ``${args}`` element
becomes one ``--key=value`` per parameter, exactly as a W&B agent writes them. Two commands use it::

    fer-lightning sweep validate FILE [FILE ...]
    fer-lightning sweep run FILE [--max-runs N] [--out DIR] [--wandb offline|off] [--seed S] [--dry-run]
                            [overrides ...]

``sweep run`` runs a grid or random sweep sequentially, each run as its own process in its own folder
(``<out>/run-001``, …, passed as ``--run_dir``), with a progress line per run. The state of every run is
kept in ``<out>/sweep_state.json``: after a kill, the same command skips the finished runs and continues
an interrupted one from its ``last.ckpt``. Overrides (e.g. ``--config experiments/btn_synthetic.yaml``)
go into the command just before ``${args}``, so the swept parameters still win. docs/sweeps.md explains
the format and the choices.
"""

from __future__ import annotations

import contextlib
import difflib
import itertools
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fer_lightning.errors import ResultsError

#: Top-level keys of W&B's sweep configuration schema.
SWEEP_KEYS = (
    "method",
    "metric",
    "parameters",
    "program",
    "command",
    "name",
    "description",
    "project",
    "entity",
    "run_cap",
    "early_terminate",
    "controller",
    "scheduler",
    "job",
    "image_uri",
    "metrics",
)
METHODS = ("grid", "random", "bayes", "custom")
LOCAL_METHODS = ("grid", "random")
METRIC_KEYS = ("name", "goal", "target", "impute", "imputewhilerunning")
PARAMETER_KEYS = (
    "value",
    "values",
    "probabilities",
    "min",
    "max",
    "distribution",
    "mu",
    "sigma",
    "q",
    "a",
    "b",
)
DISTRIBUTIONS = (
    "constant",
    "categorical",
    "int_uniform",
    "uniform",
    "q_uniform",
    "log_uniform",
    "q_log_uniform",
    "log_uniform_values",
    "q_log_uniform_values",
    "inv_log_uniform",
    "inv_log_uniform_values",
    "normal",
    "q_normal",
    "log_normal",
    "q_log_normal",
    "beta",
    "q_beta",
)
#: Distributions whose draws are floats: wrong for an option the CLI parses as an integer.
FLOAT_DISTRIBUTIONS = tuple(d for d in DISTRIBUTIONS if d not in ("constant", "categorical", "int_uniform"))
#: Options of ours and Lightning's that take integers (a float such as 64.0 is refused by the CLI).
INTEGER_OPTION_SUFFIXES = (
    "batch_size",
    "max_epochs",
    "max_steps",
    "seed_everything",
    "num_workers",
    "accumulate_grad_batches",
    "img_size",
)
ARGUMENT_MACROS = (
    "${args}",
    "${args_no_hyphens}",
    "${args_no_equals}",
    "${args_no_boolean_flags}",
    "${args_json}",
    "${args_json_file}",
    "${args_append_hydra}",
    "${args_override_hydra}",
)
MACROS = ("${env}", "${interpreter}", "${program}", *ARGUMENT_MACROS)
DEFAULT_COMMAND = ("${env}", "${interpreter}", "${program}", "${args}")
PROGRAM = "fer-lightning"
STATE_FILE = "sweep_state.json"


# --------------------------------------------------------------------------------------------- checking


def load_sweep(path: str | os.PathLike) -> dict:
    """The sweep file as a dict; a :class:`ResultsError` naming the file when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"sweep file {path} not found; sweep files are YAML, e.g. sweeps/btn_lambda.yaml")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        hint = (
            "; write command: as a block list (one '- item' per line): a flow list [${env}, ...] is not YAML"
            if "${" in path.read_text(encoding="utf-8")
            else ""
        )
        raise ResultsError(
            f"{path}{line}: not valid YAML ({getattr(error, 'problem', error)}){hint}"
        ) from None
    if not isinstance(config, dict):
        raise ResultsError(f"{path}: a sweep file is a mapping with method, metric, parameters and command")
    return config


def _did_you_mean(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(str(word), choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _parameter_problems(name: str, spec: Any, method: Any) -> list[str]:
    where = f"parameters.{name}"
    if not isinstance(spec, dict):
        return [
            f"{where}: expected a mapping such as {{values: [...]}} or {{min: .., max: ..}}, got {spec!r}"
        ]
    if "parameters" in spec or name in ("model", "data", "trainer", "optimizer", "lr_scheduler"):
        return [
            f"{where}: nested parameters reach the CLI as one dict (--{name}={{...}}); name each parameter "
            "with its dotted key instead, e.g. model.init_args.lambda_vit"
        ]
    problems = [
        f"{where}: unknown key '{key}'{_did_you_mean(key, PARAMETER_KEYS)}"
        for key in spec
        if key not in PARAMETER_KEYS
    ]
    forms = [form for form in ("value", "values", "min") if form in spec]
    if "mu" in spec and "min" not in spec:
        forms.append("mu")
    if len(forms) != 1 and not problems:
        problems.append(
            f"{where}: give exactly one of value, values, or min and max (found {forms or 'none'})"
        )
    distribution = spec.get("distribution")
    if distribution is not None and distribution not in DISTRIBUTIONS:
        problems.append(
            f"{where}.distribution: '{distribution}' is not a W&B distribution{_did_you_mean(distribution, DISTRIBUTIONS)}"
        )
    values = spec.get("values")
    if "values" in spec and (not isinstance(values, list) or not values):
        problems.append(f"{where}.values: expected a non-empty list")
    if "probabilities" in spec:
        probabilities = spec["probabilities"]
        if (
            not isinstance(values, list)
            or not isinstance(probabilities, list)
            or len(probabilities) != len(values)
        ):
            problems.append(f"{where}.probabilities: expected one probability per value")
        elif not math.isclose(sum(probabilities), 1.0, abs_tol=1e-6):
            problems.append(f"{where}.probabilities: they sum to {sum(probabilities):g}, not 1")
    if ("min" in spec) != ("max" in spec):
        problems.append(f"{where}: min and max go together")
    elif "min" in spec:
        low, high = spec["min"], spec["max"]
        if not (_is_number(low) and _is_number(high)):
            problems.append(f"{where}: min and max must be numbers, got {low!r} and {high!r}")
        elif low >= high:
            problems.append(f"{where}: min ({low}) must be below max ({high})")
        elif distribution == "int_uniform" and not (isinstance(low, int) and isinstance(high, int)):
            problems.append(f"{where}: int_uniform needs integer min and max")
    candidates = values if isinstance(values, list) else [spec.get("value")] if "value" in spec else []
    if any(value is None for value in candidates):
        problems.append(
            f"{where}: a null value reaches the CLI as the text None, which it refuses; write the string 'null'"
        )
    if name.endswith(INTEGER_OPTION_SUFFIXES):
        floats = [value for value in candidates if isinstance(value, float)]
        drawn = distribution in FLOAT_DISTRIBUTIONS or (
            "min" in spec
            and distribution is None
            and not all(isinstance(spec.get(k), int) for k in ("min", "max"))
        )
        if floats or drawn:
            problems.append(
                f"{where}: the CLI takes an integer here and refuses a float such as {floats[0] if floats else 64.0}; "
                "use integer values or distribution: int_uniform"
            )
    if method == "grid" and "value" not in spec and "values" not in spec:
        problems.append(f"{where}: method grid needs value or values (use method: random for min/max ranges)")
    return problems


def _command_problems(config: dict) -> list[str]:
    command = config.get("command")
    if command is None:
        return (
            []
            if config.get("program")
            else ["no command (or program): add a command block list that runs fer-lightning fit"]
        )
    if not isinstance(command, list) or not all(isinstance(part, str | int | float) for part in command):
        return ["command: expected a block list of strings (one '- item' per line)"]
    problems = []
    for part in map(str, command):
        if "${" not in part or part.startswith("${envvar:"):
            continue
        if part not in MACROS:
            known = [m for m in MACROS if m in part]
            problems.append(
                f"command: '{part}': a macro expands only as a whole list element"
                if known
                else f"command: unknown macro '{part}'{_did_you_mean(part, MACROS)}"
            )
    parts = list(map(str, command))
    if not any(macro in parts for macro in ARGUMENT_MACROS):
        problems.append("command: no ${args} element, so the parameters would never reach the run")
    if PROGRAM in parts or ("${program}" in parts and config.get("program") == PROGRAM):
        if "${args_no_boolean_flags}" in parts:
            problems.append(
                "command: ${args_no_boolean_flags} drops false flags and writes true ones bare; fer-lightning "
                "wants --flag=true/false: use ${args}"
            )
    if "${program}" in parts and not config.get("program"):
        problems.append("command: ${program} is used but the file has no program key")
    return problems


def sweep_problems(config: dict) -> list[str]:
    """Everything wrong with a sweep config, each naming its key; empty when it is valid.

    Covers W&B's schema for the keys sweeps use and what the ``fer-lightning`` CLI needs on top (flat
    dotted parameter names, integers where it parses integers, no null values, a ``${args}`` element).
    """
    problems = [
        f"unknown key '{key}'{_did_you_mean(key, SWEEP_KEYS)}" for key in config if key not in SWEEP_KEYS
    ]
    method = config.get("method")
    if method is None:
        problems.append(f"method: missing; one of {', '.join(METHODS)}")
    elif method not in METHODS:
        problems.append(
            f"method: '{method}' is not one of {', '.join(METHODS)}{_did_you_mean(method, METHODS)}"
        )
    metric = config.get("metric")
    if metric is not None:
        if not isinstance(metric, dict) or not isinstance(metric.get("name"), str):
            problems.append("metric: expected {name: <logged metric, e.g. val/acc>, goal: maximize|minimize}")
        else:
            problems += [
                f"metric: unknown key '{key}'{_did_you_mean(key, METRIC_KEYS)}"
                for key in metric
                if key not in METRIC_KEYS
            ]
            if metric.get("goal", "minimize") not in ("minimize", "maximize"):
                problems.append(f"metric.goal: '{metric['goal']}' is not minimize or maximize")
    elif method == "bayes":
        problems.append("metric: method bayes needs a metric to optimise")
    parameters = config.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        problems.append("parameters: missing or empty; name each with the CLI's dotted key")
    else:
        for name, spec in parameters.items():
            problems += _parameter_problems(str(name), spec, method)
    run_cap = config.get("run_cap")
    if run_cap is not None and (not isinstance(run_cap, int) or isinstance(run_cap, bool) or run_cap < 1):
        problems.append(f"run_cap: expected a positive integer, got {run_cap!r}")
    return problems + _command_problems(config)


def wandb_schema_problems(config: dict) -> list[str] | None:
    """Violations of W&B's own sweep schema (the ``sweeps`` package); None when it is not installed."""
    try:
        import sweeps
    except ImportError:
        return None
    # A folder named sweeps/ in the working directory (ours) imports as an empty namespace package.
    check = getattr(sweeps, "schema_violations_from_proposed_config", None)
    if check is None:
        return None
    return [f"W&B schema: {problem}" for problem in check(config)]


def validate_sweep(path: str | os.PathLike) -> tuple[dict, str]:
    """(the sweep config, which checks ran); a :class:`ResultsError` listing the problems if any."""
    config = load_sweep(path)
    from_wandb = wandb_schema_problems(config)
    checked = "fer-lightning's rules" + (
        " and W&B's schema" if from_wandb is not None else " (W&B's schema: package 'sweeps' not installed)"
    )
    problems = (from_wandb or []) + sweep_problems(config)
    if problems:
        more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:])})" if len(problems) > 1 else ""
        raise ResultsError(f"{path}: {problems[0]}{more}")
    return config, checked


# ----------------------------------------------------------------------------------------- expansion


def grid_points(parameters: Mapping[str, Mapping]) -> list[dict[str, Any]]:
    """Every combination, in file order with the last parameter varying fastest."""
    names = list(parameters)
    choices = [spec["values"] if "values" in spec else [spec["value"]] for spec in parameters.values()]
    return [dict(zip(names, combination)) for combination in itertools.product(*choices)]


def _draw(spec: Mapping, rng: random.Random) -> Any:
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return rng.choices(spec["values"], weights=spec.get("probabilities"))[0]
    low, high = spec.get("min"), spec.get("max")
    ints = isinstance(low, int) and isinstance(high, int)
    distribution = spec.get("distribution") or ("int_uniform" if ints else "uniform")
    quantum = spec.get("q", 1.0)
    base = distribution.removeprefix("q_")
    if base == "int_uniform":
        return rng.randint(low, high)
    if base == "uniform":
        value = rng.uniform(low, high)
    elif base == "log_uniform":  # W&B: min and max are natural-log exponents
        value = math.exp(rng.uniform(low, high))
    elif base == "log_uniform_values":
        value = math.exp(rng.uniform(math.log(low), math.log(high)))
    elif base == "normal":
        value = rng.gauss(spec.get("mu", 0.0), spec.get("sigma", 1.0))
    elif base == "log_normal":
        value = math.exp(rng.gauss(spec.get("mu", 0.0), spec.get("sigma", 1.0)))
    elif base == "beta":
        value = rng.betavariate(spec.get("a", 1.0), spec.get("b", 1.0))
    else:
        raise ResultsError(
            f"distribution {distribution} is not supported by the local runner; use W&B's agent"
        )
    return round(value / quantum) * quantum if distribution.startswith("q_") else value


def random_point(parameters: Mapping[str, Mapping], seed: int, index: int) -> dict[str, Any]:
    """The parameters of run ``index`` of a random sweep: a function of (seed, index), so a resumed sweep
    draws the same runs again."""
    rng = random.Random(f"fer-lightning-sweep-{seed}-{index}")
    return {name: _draw(spec, rng) for name, spec in parameters.items()}


def sweep_points(config: dict, max_runs: int | None, seed: int = 0) -> list[dict[str, Any]]:
    """The parameters of each run the local runner makes: at most ``max_runs`` or ``run_cap``."""
    method = config["method"]
    caps = [cap for cap in (max_runs, config.get("run_cap")) if cap is not None]
    cap = min(caps) if caps else None
    if method == "grid":
        points = grid_points(config["parameters"])
        return points[:cap] if cap is not None else points
    if method == "random":
        if cap is None:
            raise ResultsError(
                "a random sweep never ends by itself: give --max-runs N (or run_cap in the file)"
            )
        return [random_point(config["parameters"], seed, index) for index in range(cap)]
    raise ResultsError(
        f"method {method} needs W&B's sweep controller (wandb sweep FILE, then wandb agent); the local runner "
        f"does {' and '.join(LOCAL_METHODS)}"
    )


def argument_forms(parameters: Mapping[str, Any]) -> dict[str, list[str]]:
    """What each ``${args*}`` macro becomes: values written as W&B's agent writes them (``str(value)``)."""
    pairs = [(name, str(value)) for name, value in parameters.items()]
    return {
        "${args}": [f"--{name}={text}" for name, text in pairs],
        "${args_no_hyphens}": [f"{name}={text}" for name, text in pairs],
        "${args_no_equals}": [part for name, text in pairs for part in (f"--{name}", text)],
        "${args_no_boolean_flags}": [
            f"--{name}" if value is True else f"--{name}={value}"
            for name, value in parameters.items()
            if value is not False
        ],
        "${args_json}": [json.dumps(dict(parameters))],
        "${args_append_hydra}": [f"+{name}={text}" for name, text in pairs],
        "${args_override_hydra}": [f"++{name}={text}" for name, text in pairs],
    }


def expand_command(config: dict, parameters: Mapping[str, Any], overrides: list[str] = ()) -> list[str]:
    """The command of one run, with W&B's macro rules: ``${env}`` dropped (it only makes the system look
    the program up on PATH), ``${interpreter}`` = this Python, ``${program}`` = the file's program,
    ``${envvar:NAME}`` = that variable, each ``${args*}`` = the parameters in that form.

    ``overrides`` go right after the command's last ``--config FILE`` before the parameters (else right
    before them): a config file among them layers on the sweep's base config without replacing the
    options the command sets after it (such as an added W&B logger), and the parameters still win.
    """
    template = [str(part) for part in config.get("command") or DEFAULT_COMMAND]
    if "${args_json_file}" in template:
        raise ResultsError("${args_json_file} is not supported by the local runner; use ${args}")
    forms = argument_forms(parameters)
    first_arguments = next((i for i, part in enumerate(template) if part in forms), len(template))
    insert_at = first_arguments
    for i, part in enumerate(template[:first_arguments]):
        if part in ("--config", "-c") and i + 1 < first_arguments:
            insert_at = i + 2
        elif part.startswith(("--config=", "-c=")):
            insert_at = i + 1
    template[insert_at:insert_at] = ["\0override"]
    command: list[str] = []
    for part in template:
        if part == "\0override":
            command += overrides
        elif part in forms:
            command += forms[part]
        elif part == "${interpreter}":
            command.append(sys.executable)
        elif part == "${program}":
            command.append(str(config.get("program", "")))
        elif part != "${env}":
            command.append(_expand_envvars(part))
    return command


def _expand_envvars(part: str) -> str:
    while "${envvar:" in part:
        start = part.index("${envvar:")
        end = part.index("}", start)
        name = part[start + len("${envvar:") : end]
        part = part[:start] + os.environ.get(name, name) + part[end + 1 :]
    return part


def local_command(command: list[str]) -> list[str]:
    """``fer-lightning …`` run by this Python (``-m fer_lightning.cli``), the package this runner belongs to,
    whatever ``fer-lightning`` the PATH holds."""
    if command and Path(command[0]).name == PROGRAM:
        return [sys.executable, "-m", "fer_lightning.cli", *command[1:]]
    return list(command)


def runs_fer_lightning(command: list[str]) -> bool:
    return any(command[i : i + 2] == ["-m", "fer_lightning.cli"] for i in range(len(command)))


# ------------------------------------------------------------------------------------------- running


@dataclass
class PlannedRun:
    index: int
    name: str
    parameters: dict[str, Any]


class SweepState:
    """``<out>/sweep_state.json``: per run its parameters, status, exit code, time and metric."""

    def __init__(self, folder: Path, sweep_file: Path, overrides: list[str]) -> None:
        self.path = folder / STATE_FILE
        if self.path.is_file():
            self.data = json.loads(self.path.read_text())
            if self.data.get("overrides") != overrides:
                raise ResultsError(
                    f"{folder} holds a sweep run with the overrides {self.data.get('overrides')}, not {overrides}; "
                    "rerun with the same overrides to continue it, or pass another --out folder"
                )
        else:
            self.data = {"sweep_file": str(sweep_file), "overrides": overrides, "runs": {}}

    def run(self, name: str) -> dict:
        return self.data["runs"].get(name, {})

    def check_planned(self, planned: PlannedRun) -> None:
        recorded = self.run(planned.name).get("parameters")
        if recorded is not None and recorded != planned.parameters:
            raise ResultsError(
                f"{self.path.parent}/{planned.name} was made with {recorded}, but the sweep file now gives "
                f"{planned.parameters}; pass another --out folder for a changed sweep"
            )

    def update(self, name: str, **fields: Any) -> None:
        self.data["runs"].setdefault(name, {}).update(fields)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(temporary, self.path)


class _Terminated(Exception):
    """SIGTERM reached the runner."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated


def _die_with_parent() -> None:
    """In the child: receive SIGTERM when the runner dies, even by SIGKILL (Linux only)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def check_config_files(command: list[str], sweep_file: Path) -> None:
    """Every ``--config FILE`` of a run's command exists, before any run starts: a sweep's command names
    its configs relative to the folder it runs in (the repository root for ours), as W&B's agents do."""
    paths = [value for option, value in itertools.pairwise(command) if option in ("--config", "-c")]
    paths += [part.partition("=")[2] for part in command if part.startswith(("--config=", "-c="))]
    for path in paths:
        if not Path(path).is_file():
            raise ResultsError(
                f"{sweep_file}: the runs' config {path} does not exist from {Path.cwd()}; run the sweep from "
                "the folder its command's paths are relative to (the repository root for sweeps/*.yaml)"
            )


def best_metric(run_folder: Path, metric: str, goal: str) -> float | None:
    """The best value of ``metric`` in a run's ``metrics.csv`` (None when it never logged it)."""
    from fer_lightning.plots import read_metrics_csv

    try:
        series = read_metrics_csv(run_folder / "metrics.csv")
    except (OSError, ValueError):
        return None
    values = [value for *_, value in series.get(metric, [])]
    if not values:
        return None
    return max(values) if goal == "maximize" else min(values)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or "Error" in line]
    return (errors or lines or ["(no output)"])[-1].strip()


def run_sweep(
    sweep_file: str | os.PathLike,
    out: str | os.PathLike | None = None,
    max_runs: int | None = None,
    overrides: list[str] = (),
    wandb_mode: str = "offline",
    seed: int = 0,
    dry_run: bool = False,
    max_failures_in_a_row: int = 3,
) -> Path:
    """Run a sweep file's runs one after the other; returns the sweep folder (see the module docstring)."""
    sweep_file = Path(sweep_file)
    config, _ = validate_sweep(sweep_file)
    overrides = list(overrides)
    planned = [
        PlannedRun(index, f"run-{index + 1:03d}", parameters)
        for index, parameters in enumerate(sweep_points(config, max_runs, seed))
    ]
    folder = (
        Path(out) if out is not None else Path("runs") / "sweeps" / str(config.get("name") or sweep_file.stem)
    )
    metric = (config.get("metric") or {}).get("name")
    goal = (config.get("metric") or {}).get("goal", "minimize")
    if dry_run:
        for run in planned:
            command = local_command(expand_command(config, run.parameters, overrides))
            print(f"[{run.index + 1}/{len(planned)}] {run.name}: {subprocess.list2cmdline(command)}")
        return folder
    if planned:
        check_config_files(
            local_command(expand_command(config, planned[0].parameters, overrides)), sweep_file
        )
    folder.mkdir(parents=True, exist_ok=True)
    state = SweepState(folder, sweep_file, overrides)
    for run in planned:
        state.check_planned(run)
    if not (folder / "sweep.yaml").exists():
        shutil.copyfile(sweep_file, folder / "sweep.yaml")
    (folder / "logs").mkdir(exist_ok=True)
    environment = {**os.environ, "WANDB_MODE": "disabled" if wandb_mode == "off" else "offline"}
    print(
        f"sweep {sweep_file} ({config['method']}): {len(planned)} runs into {folder}; W&B {wandb_mode}; "
        f"each run's output in {folder / 'logs'}"
    )
    failed, in_a_row = [], 0
    previous_handler = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        for run in planned:
            outcome = _run_one(run, len(planned), config, overrides, folder, state, environment, metric, goal)
            if outcome == "failed":
                failed.append(run.name)
                in_a_row += 1
                if in_a_row >= max_failures_in_a_row:
                    raise ResultsError(
                        f"{in_a_row} runs in a row failed ({', '.join(failed[-in_a_row:])}); stopped the sweep: "
                        f"see {folder / 'logs'}, fix the cause and rerun the same command"
                    )
            else:
                in_a_row = 0
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    if failed:
        raise ResultsError(
            f"{len(failed)} of {len(planned)} runs failed ({', '.join(failed)}); see {folder / 'logs'}; rerun the "
            "same command to retry them (finished runs are skipped)"
        )
    results = folder / "results.csv"
    print(f"sweep finished: {folder}" + (f"; results table {results}" if results.is_file() else ""))
    return folder


def _run_one(
    run: PlannedRun,
    total: int,
    config: dict,
    overrides: list[str],
    folder: Path,
    state: SweepState,
    environment: dict,
    metric: str | None,
    goal: str,
) -> str:
    """Launch one run (or skip it when finished); returns its status."""
    prefix = f"[{run.index + 1}/{total}] {run.name}"
    settings = " ".join(f"{name}={value}" for name, value in run.parameters.items())
    recorded = state.run(run.name)
    if recorded.get("status") == "finished":
        print(f"{prefix} {settings}: finished before, skipped")
        return "finished"
    command = local_command(expand_command(config, run.parameters, overrides))
    run_folder = (folder / run.name).resolve()
    resumed = ""
    if runs_fer_lightning(command):
        command.append(f"--run_dir={run_folder}")
        last = run_folder / "checkpoints" / "last.ckpt"
        if recorded.get("status") in ("interrupted", "running", "failed") and last.is_file():
            command.append(f"--ckpt_path={last}")
            resumed = f", continuing from {last.name}"
    log = folder / "logs" / f"{run.name}.log"
    print(f"{prefix} {settings}: started{resumed}", flush=True)
    state.update(
        run.name, parameters=run.parameters, command=command, status="running", folder=str(run_folder)
    )
    started = time.monotonic()
    with open(log, "a") as output:
        output.write(f"$ {subprocess.list2cmdline(command)}\n")
        output.flush()
        child = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,  # a Ctrl-C in the terminal reaches the runner, which passes on one signal
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        try:
            returncode = child.wait()
        except (KeyboardInterrupt, _Terminated) as stop:
            signal_number = signal.SIGINT if isinstance(stop, KeyboardInterrupt) else signal.SIGTERM
            child.send_signal(signal_number)  # the run writes last.ckpt after its current step
            try:
                child.wait(timeout=600)
            except (KeyboardInterrupt, subprocess.TimeoutExpired):
                child.kill()
                child.wait()
            state.update(run.name, status="interrupted", seconds=time.monotonic() - started)
            print(
                f"{prefix}: interrupted; rerun the same command to continue (finished runs are skipped, "
                f"{run.name} continues from its last checkpoint)",
                file=sys.stderr,
            )
            raise SystemExit(128 + signal_number) from None
    seconds = time.monotonic() - started
    value = best_metric(run_folder, metric, goal) if metric else None
    status = "finished" if returncode == 0 else "failed"
    state.update(run.name, status=status, returncode=returncode, seconds=seconds, metric=value)
    if status == "failed":
        print(
            f"{prefix}: failed (exit {returncode}) after {_duration(seconds)}: {_last_line(log)} (log: {log})"
        )
        return status
    measured = f"; best {metric} {value:.4f}" if value is not None else ""
    print(f"{prefix}: finished in {_duration(seconds)}{measured}", flush=True)
    return status


# ------------------------------------------------------------------------------------------- command

RUN_OPTIONS = {"--max-runs": int, "--out": str, "--wandb": str, "--seed": int}
RUN_FLAGS = ("--dry-run",)
USAGE = (
    "usage: fer-lightning sweep validate FILE [FILE ...]\n"
    "       fer-lightning sweep run FILE [--max-runs N] [--out DIR] [--wandb offline|off] [--seed S] "
    "[--dry-run] [overrides ...]\n\n"
    "Sweep files use W&B's format (wandb sweep FILE works on them too); validate checks them offline, run\n"
    "runs a grid or random sweep here, one run after the other, each in <out>/run-NNN (default out:\n"
    "runs/sweeps/<sweep name>). Overrides are fer-lightning options placed before the swept parameters,\n"
    "e.g. --config experiments/btn_synthetic.yaml --trainer.max_epochs=2. A killed sweep continues where it\n"
    "stopped when the same command runs again. --max-runs caps the runs; --seed draws a random sweep's runs;\n"
    "--wandb off disables W&B loggers (default: offline); --dry-run prints the commands only."
)


def _parse_run_arguments(argv: list[str]) -> tuple[Path, dict[str, Any], list[str]]:
    options: dict[str, Any] = {"--wandb": "offline", "--seed": 0}
    file, overrides = None, []
    tokens = iter(argv)
    for token in tokens:
        if token == "--":
            overrides += list(tokens)
            break
        name, equals, value = token.partition("=")
        if name in RUN_OPTIONS:
            if not equals:
                value = next(tokens, None)
                if value is None:
                    raise ResultsError(f"sweep run: {name} needs a value (see fer-lightning sweep --help)")
            try:
                options[name] = RUN_OPTIONS[name](value)
            except ValueError:
                raise ResultsError(
                    f"sweep run: {name} expects {RUN_OPTIONS[name].__name__}, got {value!r}"
                ) from None
        elif token in RUN_FLAGS:
            options[token] = True
        elif file is None and not token.startswith("-"):
            file = Path(token)
        else:
            overrides.append(token)
    if file is None:
        raise ResultsError("sweep run: which sweep file? e.g. fer-lightning sweep run sweeps/btn_lambda.yaml")
    if options["--wandb"] not in ("offline", "off"):
        raise ResultsError(
            f"sweep run: --wandb is offline or off, got {options['--wandb']!r} (online runs: wandb agent)"
        )
    if options.get("--max-runs") is not None and options["--max-runs"] < 1:
        raise ResultsError("sweep run: --max-runs must be at least 1")
    return file, options, overrides


def sweep(argv: list[str]) -> None:
    """``fer-lightning sweep validate|run ...``."""
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in ("validate", "run"):
        if argv and argv[0] not in ("-h", "--help"):
            raise ResultsError(
                f"sweep: unknown action '{argv[0]}'; use validate or run (fer-lightning sweep --help)"
            )
        print(USAGE)
        return
    if "-h" in argv[1:] or "--help" in argv[1:]:
        print(USAGE)
        return
    if argv[0] == "validate":
        if len(argv) < 2:
            raise ResultsError(
                "sweep validate: which sweep file? e.g. fer-lightning sweep validate sweeps/*.yaml"
            )
        for file in argv[1:]:
            config, checked = validate_sweep(file)
            runs = len(grid_points(config["parameters"])) if config.get("method") == "grid" else None
            size = f", {runs} runs" if runs is not None else ""
            print(f"{file}: valid ({config['method']}{size}; checked with {checked})")
        return
    file, options, overrides = _parse_run_arguments(argv[1:])
    run_sweep(
        file,
        out=options.get("--out"),
        max_runs=options.get("--max-runs"),
        overrides=overrides,
        wandb_mode=options["--wandb"],
        seed=options["--seed"],
        dry_run=options.get("--dry-run", False),
    )
