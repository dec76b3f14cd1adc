"""Resuming and run folders: a resumed run equals the uninterrupted one and stays in its own folder."""

import csv
import glob
import os
import random
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from cli_helpers import EXPERIMENTS, quickstart_args, write_tiny_rafdb

from fer_lightning.callbacks.random_state import StepSeededRandomState
from fer_lightning.cli import main
from fer_lightning.data import RAFDBDataModule

REPO = Path(__file__).resolve().parents[1]

# A step checkpoint written inside epoch 0 (16 training batches per epoch here).
STEP_CHECKPOINT = [
    "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
    "--trainer.callbacks.every_n_train_steps=5",
    "--trainer.callbacks.save_top_k=-1",
    "--trainer.callbacks.filename={step}",
]


@pytest.fixture(scope="module")
def tiny_rafdb(tmp_path_factory):
    return write_tiny_rafdb(tmp_path_factory.mktemp("tiny_rafdb"), num_images=150, seed=1)


def fit(root, save_dir, *extra, workers=0):
    args = quickstart_args(
        root, save_dir, "--trainer.log_every_n_steps=1", *extra, batch_size=8, num_workers=workers
    )
    main(["fit", *args])


def run_folders(save_dir) -> list[Path]:
    return [Path(p) for p in sorted(glob.glob(str(save_dir / "quickstart" / "version_*")))]


def weights(ckpt) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def metrics(run) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, different[:5]


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_resume_from_last_equals_the_uninterrupted_run(tiny_rafdb, tmp_path, workers):
    fit(tiny_rafdb, tmp_path / "straight", "--trainer.max_epochs=2", workers=workers)
    fit(tiny_rafdb, tmp_path / "resumed", "--trainer.max_epochs=1", workers=workers)
    [run] = run_folders(tmp_path / "resumed")
    fit(
        tiny_rafdb, tmp_path / "resumed", "--trainer.max_epochs=2", f"--ckpt_path={run}/checkpoints/last.ckpt"
    )

    [straight] = run_folders(tmp_path / "straight")
    assert run_folders(tmp_path / "resumed") == [run]  # continued in its own folder
    assert_same_weights(weights(straight / "checkpoints/last.ckpt"), weights(run / "checkpoints/last.ckpt"))
    # One continuous history, row for row the uninterrupted run's (training loss of every step, and
    # the validation metrics of each epoch).
    for column in ("train/loss_step", "val/acc", "val/mean_class_acc"):
        expected = [(r["step"], r[column]) for r in metrics(straight) if r.get(column)]
        assert [(r["step"], r[column]) for r in metrics(run) if r.get(column)] == expected, column
    # The best checkpoint is still tracked: the same file, and the resumed run's last.ckpt knows it.
    best = sorted(p.name for p in (straight / "checkpoints").glob("best-*.ckpt"))
    assert sorted(p.name for p in (run / "checkpoints").glob("best-*.ckpt")) == best
    state = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)["callbacks"]
    [checkpoint_state] = [s for k, s in state.items() if k.startswith("ValidationCheckpoint")]
    assert Path(checkpoint_state["best_model_path"]).name == best[-1]
    assert checkpoint_state["best_model_score"] is not None


@pytest.mark.slow
def test_resume_inside_an_epoch_continues_with_the_remaining_samples(tiny_rafdb, tmp_path):
    fit(tiny_rafdb, tmp_path, "--trainer.max_epochs=2", *STEP_CHECKPOINT)
    [run] = run_folders(tmp_path)
    uninterrupted = weights(run / "checkpoints/last.ckpt")
    validation = [r["val/acc"] for r in metrics(run) if r.get("val/acc")]
    mid_epoch = run / "checkpoints" / "step=5.ckpt"
    assert torch.load(mid_epoch, weights_only=False)["epoch"] == 0

    fit(tiny_rafdb, tmp_path, "--trainer.max_epochs=2", *STEP_CHECKPOINT, f"--ckpt_path={mid_epoch}")
    assert not list((run / "checkpoints").glob("last-v*.ckpt"))  # last.ckpt itself was rewritten
    assert_same_weights(uninterrupted, weights(run / "checkpoints/last.ckpt"))
    assert [r["val/acc"] for r in metrics(run) if r.get("val/acc")] == validation


def test_global_generators_are_a_function_of_epoch_rank_and_batch(monkeypatch):
    """What a resumed process draws (dropout masks) depends on where in training it is, not on what
    the process ran before, and each DDP rank draws its own stream."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")
    callback = StepSeededRandomState()

    def draw(epoch, rank, batch_idx):
        trainer = SimpleNamespace(current_epoch=epoch, global_rank=rank)
        callback.on_train_batch_start(trainer, None, None, batch_idx)
        return torch.rand(3), np.random.rand(), random.random()  # noqa: NPY002

    first = draw(1, 0, 7)
    torch.rand(100), np.random.rand(100), random.random()  # noqa: NPY002 - whatever ran in between
    again = draw(1, 0, 7)
    assert torch.equal(first[0], again[0]) and first[1:] == again[1:]
    for other in (draw(1, 1, 7), draw(1, 0, 8), draw(2, 0, 7)):
        assert not torch.equal(first[0], other[0]) and first[1] != other[1] and first[2] != other[2]


def _restored_mid_epoch(root, written_by: dict | None, rank: int):
    """A datamodule as Lightning leaves it after restoring a checkpoint written 5 batches into epoch 0,
    on process ``rank`` of 2 with batch 4; ``written_by`` is the checkpoint's datamodule state."""
    datamodule = RAFDBDataModule(root=str(root), batch_size=4, num_workers=0, img_size=32)
    datamodule.setup()
    progress = SimpleNamespace(
        epoch_progress=SimpleNamespace(current=SimpleNamespace(started=1, processed=0)),
        epoch_loop=SimpleNamespace(batch_progress=SimpleNamespace(current=SimpleNamespace(processed=5))),
    )
    datamodule.trainer = SimpleNamespace(
        distributed_sampler_kwargs={"num_replicas": 2, "rank": rank}, fit_loop=progress
    )
    if written_by is not None:
        datamodule.load_state_dict(written_by)
    return datamodule


@pytest.mark.parametrize(
    ("written_by", "trained_on"),
    [(None, 20), ({"processes": 2, "batch_size": 4}, 20), ({"processes": 1, "batch_size": 4}, 10)],
    ids=["no_layout_saved", "same_layout", "one_process"],
)
def test_a_restored_epoch_skips_what_was_trained_on_in_the_layout_the_checkpoint_was_written_in(
    tiny_rafdb, written_by, trained_on
):
    """5 batches of 4 on each of 2 processes trained on 20 samples of each share; 5 batches of 4 on one
    process trained on the first 20 of the order, 10 of each share of 2 (and that resume warns)."""
    share = [
        key.index for key in _restored_mid_epoch(tiny_rafdb, None, rank=0)._loader("train", True).sampler
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = _restored_mid_epoch(tiny_rafdb, written_by, rank=0).train_dataloader().sampler
        assert [key.index for key in resumed] == share[trained_on:]
    other_layout = [w for w in caught if "resuming inside epoch 0" in str(w.message)]
    assert len(other_layout) == (written_by == {"processes": 1, "batch_size": 4})


def _fit_ddp(root, save_dir, *extra):
    """``fit`` of the quickstart on 2 CPU processes (a subprocess: Lightning's launcher re-runs it)."""
    args = quickstart_args(
        root,
        save_dir,
        "--trainer.log_every_n_steps=1",
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        "--trainer.accelerator=cpu",
        *extra,
        batch_size=4,
    )
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "fer_lightning.cli", "fit", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-5000:]


@pytest.mark.slow
def test_resume_inside_an_epoch_under_ddp_continues_each_process_where_it_stopped(tiny_rafdb, tmp_path):
    """Each process skips the samples of its own share that the interrupted epoch had consumed, and
    draws the dropout masks of the uninterrupted run: the weights come out the same."""
    dropout = "--model.init_args.drop_rate=0.5"
    _fit_ddp(tiny_rafdb, tmp_path, "--trainer.max_epochs=2", dropout, *STEP_CHECKPOINT)
    [run] = run_folders(tmp_path)
    uninterrupted = weights(run / "checkpoints/last.ckpt")
    validation = [r["val/acc"] for r in metrics(run) if r.get("val/acc")]
    mid_epoch = run / "checkpoints" / "step=5.ckpt"
    assert torch.load(mid_epoch, weights_only=False)["epoch"] == 0

    _fit_ddp(
        tiny_rafdb, tmp_path, "--trainer.max_epochs=2", dropout, *STEP_CHECKPOINT, f"--ckpt_path={mid_epoch}"
    )
    assert_same_weights(uninterrupted, weights(run / "checkpoints/last.ckpt"))
    assert [r["val/acc"] for r in metrics(run) if r.get("val/acc")] == validation


def test_last_ckpt_is_the_latest_epoch_and_selection_metric_names_the_best(tiny_rafdb, tmp_path, capsys):
    # lr 0: validation never improves after epoch 0, so only epoch 0 is a "best".
    fit(
        tiny_rafdb,
        tmp_path,
        "--trainer.max_epochs=2",
        "--model.init_args.optimizer.init_args.lr=0",
        "--selection_metric=val/mean_class_acc",
    )
    [run] = run_folders(tmp_path)
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=False)["epoch"] == 1
    [best] = (run / "checkpoints").glob("best-*.ckpt")
    assert best.name.startswith("best-epoch00-val_mean_class_acc")
    assert "best checkpoint (val/mean_class_acc = " in capsys.readouterr().out


def test_ckpt_path_last_lets_one_command_be_resubmitted_as_it_is(tiny_rafdb, tmp_path, capsys, caplog):
    """A requeued cluster job reruns its command unchanged: ``fit --ckpt_path last`` starts a run when
    there is none and otherwise continues the run that trained last (newest ``last.ckpt``), in its
    own folder. ``test --ckpt_path best`` evaluates that run's selected checkpoint. (Lightning's own
    "last" and "best" name nothing in a fresh process: fit would start over, test would evaluate
    untrained weights.)"""
    short = ["--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]
    caplog.set_level("INFO")
    fit(tiny_rafdb, tmp_path, "--trainer.max_epochs=1", "--ckpt_path=last", *short)
    assert "has a last.ckpt yet; starting a new run" in caplog.text
    fit(tiny_rafdb, tmp_path, "--trainer.max_epochs=1", *short)  # another run of the config, written later
    first, second = run_folders(tmp_path)
    os.utime(first / "checkpoints/last.ckpt")  # the first run trained last
    second_weights = weights(second / "checkpoints/last.ckpt")
    fit(tiny_rafdb, tmp_path, "--trainer.max_epochs=2", "--ckpt_path=last", *short)
    assert run_folders(tmp_path) == [first, second]
    state = torch.load(first / "checkpoints/last.ckpt", weights_only=False)
    assert (state["epoch"], state["global_step"]) == (1, 4)  # epoch 2 trained on top of the first run's
    assert_same_weights(weights(second / "checkpoints/last.ckpt"), second_weights)
    caplog.clear()
    main(
        ["test", *quickstart_args(tiny_rafdb, tmp_path, "--trainer.limit_test_batches=1"), "--ckpt_path=best"]
    )
    [best] = (first / "checkpoints").glob("best-*.ckpt")
    assert f"--ckpt_path best: {best}" in caplog.text
    capsys.readouterr()
    for command, keyword in (("test", "best"), ("fit", "best")):
        with pytest.raises(SystemExit):
            main([command, *quickstart_args(tiny_rafdb, tmp_path / "empty"), f"--ckpt_path={keyword}"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors[0].startswith("error: --ckpt_path best: no run in") and errors[0].endswith(
        "pass a checkpoint file"
    )
    assert errors[1] == "error: fit continues a run from its last.ckpt: use --ckpt_path last"


def test_a_fit_that_fails_at_setup_leaves_no_run_folder(tmp_path):
    empty_root = tmp_path / "not_a_dataset"
    empty_root.mkdir()
    with pytest.raises((SystemExit, FileNotFoundError)):
        fit(empty_root, tmp_path / "runs", "--trainer.max_epochs=1")
    assert run_folders(tmp_path / "runs") == []


def test_selection_metric_must_be_a_validation_metric(tiny_rafdb, tmp_path, capsys):
    with pytest.raises(SystemExit):
        fit(tiny_rafdb, tmp_path, "--selection_metric=test/acc")
    assert "selection_metric='test/acc' is not a validation metric" in capsys.readouterr().err


@pytest.mark.parametrize("config", sorted(p.name for p in EXPERIMENTS.glob("*affectnet*.yaml")))
def test_affectnet_configs_select_on_mean_class_accuracy(config, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(EXPERIMENTS / config), "--print_config"])
    assert "selection_metric: val/mean_class_acc" in capsys.readouterr().out.splitlines()


def test_max_steps_before_any_validation_is_explained(tiny_rafdb, tmp_path, capsys):
    fit(tiny_rafdb, tmp_path, "--trainer.max_epochs=1", "--trainer.max_steps=3")
    out = capsys.readouterr().out
    assert "no best checkpoint: training stopped at trainer.max_steps=3" in out
    shutil.rmtree(tmp_path)
