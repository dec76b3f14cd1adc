"""Sweep files (W&B format) checked offline, their commands as LightningCLI takes them, and the local runner:
a real 3-run λ sweep, a killed sweep that resumes, an interrupted run that continues from its checkpoint."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sweep_helpers import REPO

from fer_lightning import sweep
from fer_lightning.cli import main

SWEEP_FILES = sorted((REPO / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("sweep_file", SWEEP_FILES, ids=lambda path: path.name)
def test_the_repository_sweep_files_validate(sweep_file, capsys):
    main(["sweep", "validate", str(sweep_file)])
    assert f"{sweep_file}: valid" in capsys.readouterr().out


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


VALID = """
method: grid
metric: {name: val/acc, goal: maximize}
parameters:
  model.init_args.lambda_vit: {values: [1.0, 2.0]}
command:
  - ${env}
  - fer-lightning
  - fit
  - ${args}
"""


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        (
            VALID.replace("method: grid", "method: grdi"),
            "method: 'grdi' is not one of grid, random, bayes, custom (did you mean 'grid'?)",
        ),
        (
            VALID.replace("{values:", "{valeus:"),
            "parameters.model.init_args.lambda_vit: unknown key 'valeus' (did you mean 'values'?)",
        ),
        (VALID.replace("parameters:", "paramters:"), "unknown key 'paramters' (did you mean 'parameters'?)"),
        (
            VALID.replace(
                "model.init_args.lambda_vit: {values: [1.0, 2.0]}",
                "data.init_args.batch_size: {values: [32.0, 64]}",
            ),
            "parameters.data.init_args.batch_size: the CLI takes an integer here",
        ),
        (VALID.replace("  - ${args}\n", ""), "command: no ${args} element"),
        (VALID.replace("{values: [1.0, 2.0]}", "{min: 1.0, max: 3.0}"), "method grid needs value or values"),
        (
            VALID.replace(
                "model.init_args.lambda_vit: {values: [1.0, 2.0]}",
                "model:\n    parameters: {lambda_vit: {values: [1.0]}}",
            ),
            "parameters.model: nested parameters reach the CLI as one dict",
        ),
        (
            VALID.replace(
                "command:\n  - ${env}\n  - fer-lightning\n  - fit\n  - ${args}",
                "command: [${env}, fer-lightning, fit, ${args}]",
            ),
            "write command: as a block list",
        ),
    ],
    ids=[
        "bad-method",
        "misspelled-values",
        "misspelled-parameters",
        "float-batch-size",
        "no-args",
        "range-in-grid",
        "nested",
        "flow-command",
    ],
)
def test_a_broken_sweep_file_is_rejected_naming_the_key(tmp_path, capsys, broken, expected):
    path = _write(tmp_path, broken)
    with pytest.raises(SystemExit) as raised:
        main(["sweep", "validate", str(path)])
    assert raised.value.code == 1
    error = capsys.readouterr().err
    assert error.startswith(f"error: {path}") and error.count("\n") == 1, error
    assert expected in error


def test_validate_uses_wandbs_schema_when_the_sweeps_package_is_installed(tmp_path, monkeypatch, capsys):
    class FakeSweeps:
        @staticmethod
        def schema_violations_from_proposed_config(config):
            return (
                ["'grdi' is not one of ['bayes', 'custom', 'grid', 'random']"]
                if config["method"] == "grdi"
                else []
            )

    monkeypatch.setitem(sys.modules, "sweeps", FakeSweeps)
    main(["sweep", "validate", str(_write(tmp_path, VALID))])
    assert "W&B's schema" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["sweep", "validate", str(_write(tmp_path, VALID.replace("method: grid", "method: grdi")))])
    assert "error: " in (error := capsys.readouterr().err) and "W&B schema: 'grdi' is not one of" in error


def test_the_arguments_are_written_as_wandbs_agent_writes_them():
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    parameters = {
        "model.init_args.lambda_vit": 2.25,
        "data.init_args.batch_size": 144,
        "trainer.deterministic": True,
    }
    ours = sweep.argument_forms(parameters)
    theirs = create_sweep_command_args({"args": {key: {"value": value} for key, value in parameters.items()}})
    for macro in ("args", "args_no_hyphens", "args_no_equals", "args_no_boolean_flags", "args_json"):
        assert ours["${" + macro + "}"] == theirs[macro], macro


class _Parsed(Exception):
    pass


def _parse_like_the_cli(arguments: list[str]):
    """The config LightningCLI parses from ``arguments`` (``fit …``), without building anything."""
    from fer_lightning.cli.lightning_cli import FERCLI, run_lightning_cli

    def stop_after_parsing(cli):
        raise _Parsed(cli.config)

    original = FERCLI.before_instantiate_classes
    FERCLI.before_instantiate_classes = stop_after_parsing
    try:
        run_lightning_cli(arguments)
    except _Parsed as parsed:
        return parsed.args[0]
    finally:
        FERCLI.before_instantiate_classes = original
    raise AssertionError("the CLI did not parse")


@pytest.mark.parametrize(
    ("sweep_name", "parameter", "kind"),
    [("btn_lambda.yaml", "lambda_vit", float), ("btn_batch_size.yaml", "batch_size", int)],
)
def test_the_sweep_commands_are_argument_lists_lightningcli_accepts(monkeypatch, sweep_name, parameter, kind):
    monkeypatch.chdir(REPO)  # the commands name experiments/ relative to the repository
    config, _ = sweep.validate_sweep(REPO / "sweeps" / sweep_name)
    points = sweep.sweep_points(config, max_runs=None)
    swept = next(name for name in config["parameters"] if name.endswith(parameter))
    values = config["parameters"][swept]["values"]
    assert [point[swept] for point in points[: len(values)]] == values  # the last parameter varies fastest
    for point in (points[0], points[-1]):
        command = sweep.expand_command(config, point, ["--trainer.max_epochs=3"])
        assert command[:2] == ["fer-lightning", "fit"] and f"--{swept}={point[swept]}" in command
        parsed = _parse_like_the_cli(command[1:]).fit
        section = parsed.model if parameter == "lambda_vit" else parsed.data
        value = section.init_args[parameter]
        assert type(value) is kind and value == point[swept]
        assert parsed.seed_everything == point["seed_everything"] and parsed.test_after_fit is True
        assert parsed.trainer.max_epochs == 3
        assert [logger.class_path.rsplit(".", 1)[-1] for logger in parsed.trainer.logger] == [
            "CSVLogger",
            "WandbLogger",
        ]


def test_overrides_go_after_the_sweeps_config_so_its_options_and_parameters_still_apply():
    config = yaml.safe_load((REPO / "sweeps" / "btn_lambda.yaml").read_text())
    command = sweep.expand_command(config, {"model.init_args.lambda_vit": 1.5}, ["--config", "mine.yaml"])
    assert command.index("mine.yaml") == command.index("experiments/btn_rafdb.yaml") + 2
    assert command.index("mine.yaml") < command.index("--trainer.logger+=WandbLogger")
    assert command[-1] == "--model.init_args.lambda_vit=1.5"


# The first test to use the session's sweep waits for its three runs (a few minutes on a busy machine).
@pytest.mark.timeout(900)
def test_a_local_lambda_sweep_gives_one_result_row_per_run_with_its_lambda(tiny_lambda_sweep):
    folder, printed = tiny_lambda_sweep
    with open(folder / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(row["lambda_vit"]) for row in rows] == [1.0, 1.25, 1.5]
    assert [row["run_folder"] for row in rows] == ["run-001", "run-002", "run-003"]
    assert {row["model"] for row in rows} == {"BTN"} and {row["dataset"] for row in rows} == {
        "synthetic RAF-DB"
    }
    assert {row["batch_size"] for row in rows} == {"8"} and {row["seed"] for row in rows} == {"0"}
    for row in rows:
        run = folder / row["run_folder"]
        assert (run / "config.yaml").is_file() and any((run / "checkpoints").glob("best-*.ckpt"))
        assert yaml.safe_load((run / "config.yaml").read_text())["model"]["init_args"]["lambda_vit"] == float(
            row["lambda_vit"]
        )
        # The per-class CSV beside the bar chart holds the numbers of the results row.
        with open(run / "per_class_accuracy_test.csv", newline="") as handle:
            per_class = list(csv.DictReader(handle))
        assert len(per_class) == 7 and (run / "per_class_accuracy_test.png").is_file()
        for entry in per_class:
            assert entry["accuracy"] == "" or float(entry["accuracy"]) == pytest.approx(
                float(row[f"class_acc/{entry['class']}"]), abs=1e-5
            )
            assert int(entry["correct"]) <= int(entry["samples"])
    progress = [line for line in printed.splitlines() if line.startswith("[")]
    assert len(progress) == 6 and all(f"[{i}/3]" in line for i, line in zip((1, 1, 2, 2, 3, 3), progress))
    state = json.loads((folder / "sweep_state.json").read_text())
    assert [run["status"] for run in state["runs"].values()] == ["finished"] * 3


CHILD = """
import sys, time
from pathlib import Path
calls = Path(sys.argv[1])
with open(calls, "a") as handle:
    handle.write(" ".join(sys.argv[2:]) + "\\n")
if sys.argv[2] == "--x=2" and calls.read_text().count("--x=2") == 1:
    time.sleep(120)  # the first attempt of run 2 is killed
"""


def test_a_killed_sweep_skips_its_finished_runs_when_run_again(tmp_path):
    child, calls = tmp_path / "child.py", tmp_path / "calls.txt"
    child.write_text(CHILD)
    sweep_file = _write(
        tmp_path,
        f"method: grid\nparameters:\n  x: {{values: [1, 2, 3]}}\ncommand:\n  - ${{interpreter}}\n  - {child}\n  - {calls}\n  - ${{args}}\n",
    )
    out = tmp_path / "sweep"
    command = [sys.executable, "-m", "fer_lightning.cli", "sweep", "run", str(sweep_file), "--out", str(out)]
    runner = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while "--x=2" not in (calls.read_text() if calls.exists() else ""):
        assert time.monotonic() < deadline and runner.poll() is None, runner.stdout.read()
        time.sleep(0.2)
    runner.send_signal(signal.SIGTERM)
    printed, _ = runner.communicate(timeout=60)
    assert runner.returncode == 128 + signal.SIGTERM, printed
    assert "run-002: interrupted; rerun the same command to continue" in printed
    state = json.loads((out / "sweep_state.json").read_text())
    assert {name: run["status"] for name, run in state["runs"].items()} == {
        "run-001": "finished",
        "run-002": "interrupted",
    }

    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "[1/3] run-001 x=1: finished before, skipped" in again.stdout
    assert calls.read_text().splitlines() == ["--x=1", "--x=2", "--x=2", "--x=3"]


def test_an_interrupted_fer_lightning_run_continues_from_its_last_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    last = out / "run-001" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"")
    config = yaml.safe_load((REPO / "sweeps" / "btn_lambda.yaml").read_text())
    config["parameters"] = {"model.init_args.lambda_vit": {"values": [1.0]}}
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(config))
    state = {
        "sweep_file": str(sweep_file),
        "overrides": [],
        "runs": {"run-001": {"parameters": {"model.init_args.lambda_vit": 1.0}, "status": "interrupted"}},
    }
    out.joinpath("sweep_state.json").write_text(json.dumps(state))
    launched = []

    class Finished:
        def __init__(self, command, **kwargs):
            launched.append(command)

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(sweep.subprocess, "Popen", Finished)
    sweep.run_sweep(sweep_file, out=out)
    [command] = launched
    assert command[:3] == [sys.executable, "-m", "fer_lightning.cli"]
    assert command[-2:] == [f"--run_dir={(out / 'run-001').resolve()}", f"--ckpt_path={last.resolve()}"]


def test_a_random_sweep_draws_the_same_runs_again_and_needs_a_limit():
    parameters = {
        "lr": {"min": 1e-5, "max": 1e-3, "distribution": "log_uniform_values"},
        "batch": {"values": [16, 32]},
    }
    config = {"method": "random", "parameters": parameters}
    first = sweep.sweep_points(config, max_runs=4, seed=1)
    assert (
        first
        == sweep.sweep_points(config, max_runs=4, seed=1)
        != sweep.sweep_points(config, max_runs=4, seed=2)
    )
    assert all(1e-5 <= point["lr"] <= 1e-3 and point["batch"] in (16, 32) for point in first)
    with pytest.raises(sweep.ResultsError, match="--max-runs"):
        sweep.sweep_points(config, max_runs=None)


def test_a_sweep_folder_refuses_a_changed_sweep(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep.subprocess, "Popen", lambda *a, **k: pytest.fail("nothing may run"))
    out = tmp_path / "sweep"
    out.mkdir()
    sweep_file = _write(tmp_path, VALID)
    state = {
        "overrides": [],
        "runs": {"run-001": {"parameters": {"model.init_args.lambda_vit": 3.0}, "status": "finished"}},
    }
    (out / "sweep_state.json").write_text(json.dumps(state))
    with pytest.raises(sweep.ResultsError, match="pass another --out folder"):
        sweep.run_sweep(sweep_file, out=out)


def test_a_sweep_whose_configs_are_not_found_stops_before_any_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep.subprocess, "Popen", lambda *a, **k: pytest.fail("nothing may run"))
    monkeypatch.chdir(tmp_path)  # not the repository root: experiments/btn_rafdb.yaml is not here
    with pytest.raises(SystemExit):
        main(["sweep", "run", str(REPO / "sweeps" / "btn_lambda.yaml"), "--max-runs", "1"])
    error = capsys.readouterr().err
    assert (
        "the runs' config experiments/btn_rafdb.yaml does not exist" in error and "repository root" in error
    )
    assert not (tmp_path / "runs").exists()
