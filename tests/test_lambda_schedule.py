"""LambdaSchedule: BTN's λ at given steps for each kind, applied and logged while training, and the same
values after a resume as in the uninterrupted run."""

import csv
import glob
from pathlib import Path
from types import SimpleNamespace

import pytest
from cli_helpers import EXPERIMENTS, quickstart_args, write_tiny_rafdb

from fer_lightning.callbacks import LambdaSchedule
from fer_lightning.callbacks.batch_size import cba_batch_size
from fer_lightning.cli import main
from fer_lightning.errors import ConfigurationError
from fer_lightning.plots import read_metrics_csv


def test_values_at_given_steps():
    constant = LambdaSchedule(start=2.0)
    assert [constant.value_at(step) for step in (0, 7, 10_000)] == [2.0, 2.0, 2.0]
    linear = LambdaSchedule("linear", start=1.0, end=3.0, ramp_steps=8)
    assert [linear.value_at(step) for step in (0, 2, 4, 8, 9, 100)] == [1.0, 1.5, 2.0, 3.0, 3.0, 3.0]
    # two jumps over 8 steps: 1.0 for steps 0-3, 2.0 for 4-7, 3.0 from step 8
    step = LambdaSchedule("step", start=1.0, end=3.0, ramp_steps=8, num_jumps=2)
    assert [step.value_at(s) for s in range(10)] == [1.0] * 4 + [2.0] * 4 + [3.0] * 2
    single = LambdaSchedule("step", start=2.0, end=1.0, ramp_steps=5)  # a ramp may go down
    assert [single.value_at(s) for s in (0, 4, 5)] == [2.0, 2.0, 1.0]


def test_schedules_that_cannot_work_are_refused():
    with pytest.raises(ConfigurationError, match="needs end"):
        LambdaSchedule("linear", start=1.0, ramp_steps=10)
    with pytest.raises(ConfigurationError, match="ramp_steps ≥ 1"):
        LambdaSchedule("step", start=1.0, end=2.0)
    with pytest.raises(ConfigurationError, match="num_jumps must be between 1 and ramp_steps"):
        LambdaSchedule("step", start=1.0, end=2.0, ramp_steps=3, num_jumps=4)


@pytest.fixture(scope="module")
def tiny_rafdb(tmp_path_factory):
    return write_tiny_rafdb(tmp_path_factory.mktemp("tiny_rafdb"), num_images=70, seed=2)


# λ from 1 to 3 over 8 steps: the ramp crosses the end of epoch 0 (5 training batches of 4 images).
SCHEDULE = [
    "--trainer.callbacks+=fer_lightning.callbacks.LambdaSchedule",
    "--trainer.callbacks.kind=linear",
    "--trainer.callbacks.start=1.0",
    "--trainer.callbacks.end=3.0",
    "--trainer.callbacks.ramp_steps=8",
]


def fit_btn(root, save_dir, *extra):
    args = quickstart_args(
        root,
        save_dir,
        "--trainer.log_every_n_steps=1",
        "--trainer.limit_train_batches=5",
        "--trainer.limit_val_batches=2",
        *SCHEDULE,
        *extra,
        config=EXPERIMENTS / "btn_synthetic.yaml",
    )
    main(["fit", *args])
    [run] = glob.glob(str(save_dir / "btn_synthetic" / "version_*"))
    return Path(run)


def logged_lambda(run) -> dict[int, float]:
    return {step: value for _, step, value in read_metrics_csv(run / "metrics.csv")["train/lambda_vit"]}


@pytest.mark.slow  # four short BTN fits: about a minute of CPU time
def test_lambda_is_scheduled_per_step_and_continues_after_resume(tiny_rafdb, tmp_path):
    straight = fit_btn(tiny_rafdb, tmp_path / "straight", "--trainer.max_epochs=2")
    values = logged_lambda(straight)
    ramp = LambdaSchedule("linear", start=1.0, end=3.0, ramp_steps=8)
    assert sorted(values) == list(range(10))  # every step of both epochs
    assert values == {step: pytest.approx(ramp.value_at(step)) for step in values}
    assert values[0] == 1.0 and values[max(values)] == 3.0
    # BatchSizeLog (a default callback): the batch each step had, per device, globally and in CBA
    with open(straight / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("batch/cba")]
    assert len(rows) == 10
    assert {(row["batch/per_device"], row["batch/global"], row["batch/cba"]) for row in rows} == {
        ("4.0", "4.0", "4.0")
    }

    first = fit_btn(tiny_rafdb, tmp_path / "resumed", "--trainer.max_epochs=1")
    resumed = fit_btn(
        tiny_rafdb,
        tmp_path / "resumed",
        "--trainer.max_epochs=2",
        f"--ckpt_path={first}/checkpoints/last.ckpt",
    )
    assert resumed == first
    # The resumed epoch is on the ramp (steps 5-7) and past it: the same values at the same steps.
    assert logged_lambda(resumed) == values


def test_cba_batch_is_the_global_batch_only_with_global_scope():
    def model(**hparams):
        return SimpleNamespace(hparams=hparams)

    assert cba_batch_size(model(cba_scope="local"), per_device=16, world_size=4) == 16
    assert cba_batch_size(model(cba_scope="global"), per_device=16, world_size=4) == 64
    assert cba_batch_size(model(), per_device=16, world_size=4) is None  # no CBA in this model


def test_a_model_without_lambda_is_named(tiny_rafdb, tmp_path, capsys):
    args = quickstart_args(tiny_rafdb, tmp_path, "--trainer.max_epochs=1", *SCHEDULE)
    with pytest.raises(SystemExit):
        main(["fit", *args])
    assert "LambdaSchedule schedules BTN's lambda_vit, but TimmClassifier has none" in capsys.readouterr().err
