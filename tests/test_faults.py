"""Faults during training: non-finite losses and gradients, SAM under them, fp16 overflow, clipping,
checkpoints of a diverged model, and a run stopped by SIGTERM/Ctrl-C."""

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from cli_helpers import quickstart_args, run_cli, write_tiny_rafdb
from interrupt_helpers import child_processes
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fer_lightning.callbacks import ValidationCheckpoint
from fer_lightning.cli import main
from fer_lightning.data.base import _worker_init
from fer_lightning.errors import NonFiniteLossError
from fer_lightning.models.base import FERClassifier

LR, RHO, BATCH = 0.1, 0.05, 8
REPO = Path(__file__).resolve().parents[1]


class _ToyModel(FERClassifier):
    """BatchNorm + linear; ``poison`` maps a forward-call number to the fault that call produces."""

    def __init__(self, poison=None, **kwargs):
        kwargs.setdefault("optimizer", lambda params: torch.optim.SGD(params, lr=LR))
        super().__init__(num_classes=3, **kwargs)
        self.norm = nn.BatchNorm1d(4)
        self.linear = nn.Linear(4, 3)
        # d sqrt(k)/dk at k = 0 is inf: a finite loss with a non-finite gradient.
        self.kink = nn.Parameter(torch.zeros(()))
        self.poison = dict(poison or {})
        self.forward_calls = 0

    def forward(self, images):
        fault = self.poison.get(self.forward_calls)
        self.forward_calls += 1
        if fault == "loss":
            images = images * float("nan")  # also feeds NaN into the BatchNorm running statistics
        logits = self.linear(self.norm(images))
        if fault == "grad":
            logits = logits + torch.sqrt(self.kink)
        return logits

    def training_loss(self, images, labels):
        loss, logits = super().training_loss(images, labels)
        self.record_loss_terms(ce_main=loss, ce_aux=loss.detach() * 0)
        return loss, logits


def _batches(count):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(count * BATCH, 4, generator=generator)
    return images, torch.randint(0, 3, (count * BATCH,), generator=generator)


def _fit(model, data, *, callbacks=(), val_data=None, epochs=1, **trainer_kwargs):
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=bool(callbacks),
        callbacks=list(callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if val_data is not None else 0,
        **trainer_kwargs,
    )
    if hasattr(model, "take_over_gradient_clipping"):
        model.take_over_gradient_clipping(trainer)
    val_loader = DataLoader(TensorDataset(*val_data), batch_size=BATCH) if val_data is not None else None
    trainer.fit(model, DataLoader(TensorDataset(*data), batch_size=BATCH), val_loader)
    return trainer


def _state(model):
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def _assert_same_state(model, expected):
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[name], msg=name)


def _without_batch(data, index):
    keep = [i for i in range(len(data[0])) if i // BATCH != index]
    return data[0][keep], data[1][keep]


@pytest.mark.parametrize("fault", ["loss", "grad"])
def test_a_nonfinite_step_is_skipped_without_a_trace(fault):
    """Skipping batch 1 leaves exactly the state of training on batches 0 and 2 (weights and BN statistics)."""
    torch.manual_seed(0)
    model = _ToyModel(poison={1: fault})
    reference = copy.deepcopy(model)
    reference.poison = {}
    data = _batches(3)
    trainer = _fit(model, data)
    _fit(reference, _without_batch(data, 1))
    _assert_same_state(model, _state(reference))
    assert trainer.callback_metrics["train/nonfinite_steps"] == 1


@pytest.mark.parametrize("skipped", [2, 3])
def test_a_skipped_micro_batch_drops_only_itself_from_its_accumulation_window(skipped):
    """Windows of two micro-batches: skipping batch 3 (the last of its window) or 2 (the first) applies the
    other one of the window, as training without the skipped batch does."""
    torch.manual_seed(0)
    model = _ToyModel(poison={skipped: "loss"})
    reference = copy.deepcopy(model)
    reference.poison = {}
    data = _batches(4)
    _fit(model, data, accumulate_grad_batches=2)
    if skipped == 3:
        _fit(reference, _without_batch(data, 3), accumulate_grad_batches=2)  # windows (0, 1) and (2)
    else:  # windows (0, 1) and (3), each applied as its own step
        _fit(reference, _without_batch(data, 2), accumulate_grad_batches=2, max_steps=1)
        _fit(reference, (data[0][3 * BATCH :], data[1][3 * BATCH :]), accumulate_grad_batches=2)
    _assert_same_state(model, _state(reference))


def test_nonfinite_steps_in_a_row_stop_training_with_one_message():
    model = _ToyModel(poison={1: "loss", 2: "loss"}, max_nonfinite_steps=2)
    with pytest.raises(NonFiniteLossError) as raised:
        _fit(model, _batches(4))
    message = str(raised.value)
    assert "\n" not in message
    assert "epoch 0, batch 2 (global step 2)" in message
    assert "2 step(s) in a row" in message and "loss=nan; ce_main=nan, ce_aux=nan" in message


def test_a_good_step_resets_the_count():
    model = _ToyModel(poison={0: "loss", 2: "grad", 4: "loss"}, max_nonfinite_steps=2)
    trainer = _fit(model, _batches(5))
    assert trainer.callback_metrics["train/nonfinite_steps"] == 3


def test_gradient_message_names_the_parameter():
    with pytest.raises(NonFiniteLossError, match="the gradient of kink was not finite"):
        _fit(_ToyModel(poison={0: "grad"}, max_nonfinite_steps=1), _batches(1))


@pytest.mark.parametrize(
    "poison, forward_calls, reason",
    [
        ({0: "loss"}, 1, "the loss was not finite"),
        ({0: "grad"}, 1, "the gradient of kink at SAM's first pass was not finite"),
        ({1: "loss"}, 2, "SAM's perturbed loss was not finite"),
    ],
    ids=["first-pass loss", "first-pass gradient", "perturbed loss"],
)
def test_sam_skips_the_whole_step(poison, forward_calls, reason):
    torch.manual_seed(0)
    model = _ToyModel(poison=poison, sam_rho=RHO, max_nonfinite_steps=1)
    before = _state(model)
    with pytest.raises(NonFiniteLossError, match=reason):
        _fit(model, _batches(1))
    assert model.forward_calls == forward_calls  # no perturbed pass after a first-pass fault
    _assert_same_state(model, before)  # no update, perturbation undone, BN statistics restored


def test_sam_fp16_overflow_at_the_first_pass_reaches_the_grad_scaler():
    """The scaler must see the overflowed first pass: it skips the update and halves its scale."""
    torch.manual_seed(0)
    model = _ToyModel(poison={0: "grad"}, sam_rho=RHO)
    before = [p.detach().clone() for p in model.parameters()]
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    trainer = _fit(model, _batches(1), plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    assert scaler.get_scale() == 512.0
    assert model.forward_calls == 1
    for parameter, value in zip(model.parameters(), before):
        torch.testing.assert_close(
            parameter.detach(), value
        )  # (BatchNorm statistics move, as in any AMP step)
    assert trainer.callback_metrics["train/nonfinite_steps"] == 0  # the scaler's business, not a divergence


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_sam_clips_the_trainers_gradient_clip_val(algorithm):
    torch.manual_seed(0)
    model = _ToyModel(sam_rho=RHO)
    before = [p.detach().clone() for p in model.parameters()]
    clip = 1e-3
    trainer = _fit(model, _batches(1), gradient_clip_val=clip, gradient_clip_algorithm=algorithm)
    assert trainer.gradient_clip_val is None and model.sam_gradient_clip_val == clip
    steps = [(b - p.detach()) / LR for b, p in zip(before, model.parameters())]
    if algorithm == "norm":
        total = math.sqrt(sum(float((s**2).sum()) for s in steps))
        assert total == pytest.approx(clip, rel=1e-3)
    else:
        assert max(float(s.abs().max()) for s in steps) == pytest.approx(clip, rel=1e-3)


class _ScoredModel(_ToyModel):
    """Logs a given val/acc per epoch and can poison its own weights during validation."""

    def __init__(self, scores, poison_weights_at=None):
        super().__init__()
        self.scores, self.poison_weights_at = scores, poison_weights_at

    def on_validation_epoch_end(self):
        self.log("val/acc", self.scores[self.current_epoch])
        if self.current_epoch == self.poison_weights_at:
            with torch.no_grad():
                self.linear.weight[0, 0] = float("inf")


def _checkpointed_fit(model, tmp_path, epochs):
    checkpoint = ValidationCheckpoint(dirpath=tmp_path, monitor="val/acc", mode="max", save_last=True)
    _fit(model, _batches(1), callbacks=[checkpoint], val_data=_batches(1), epochs=epochs)
    return checkpoint, sorted(p.name for p in tmp_path.iterdir())


def test_a_nonfinite_score_is_never_the_best(tmp_path):
    checkpoint, files = _checkpointed_fit(_ScoredModel([float("nan"), 0.25]), tmp_path, epochs=2)
    assert checkpoint.best_model_score == 0.25
    assert files == ["epoch=1-step=2.ckpt", "last.ckpt"]
    checkpoint, files = _checkpointed_fit(_ScoredModel([float("nan")]), tmp_path / "nan", epochs=1)
    assert checkpoint.best_model_path == "" and "epoch=0-step=1.ckpt" not in files


def test_nonfinite_weights_are_never_saved(tmp_path):
    checkpoint, files = _checkpointed_fit(_ScoredModel([0.5, 0.9], poison_weights_at=1), tmp_path, epochs=2)
    assert files == ["epoch=0-step=1.ckpt", "last.ckpt"]
    assert checkpoint.best_model_score == 0.5
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 1 and torch.isfinite(saved["state_dict"]["linear.weight"]).all()


# --- Through the CLI ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_rafdb(tmp_path_factory):
    return write_tiny_rafdb(tmp_path_factory.mktemp("tiny_rafdb"), num_images=60, seed=1)


def _fit_args(root, save_dir, *extra):
    return ["fit", *quickstart_args(root, save_dir, *extra)]


def _all_finite_checkpoints(folder):
    paths = list(Path(folder).rglob("*.ckpt"))
    for path in paths:
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path
    return paths


def test_a_diverging_run_stops_with_one_line(tiny_rafdb, tmp_path, capsys):
    args = _fit_args(
        tiny_rafdb, tmp_path, "--trainer.max_epochs=3", "--model.init_args.optimizer.init_args.lr=1e8"
    )
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "5 step(s) in a row skipped" in errors[0] and "global step" in errors[0]
    _all_finite_checkpoints(tmp_path)


def test_sam_takes_the_trainers_gradient_clipping_through_the_cli(tiny_rafdb, tmp_path):
    cli = run_cli(
        _fit_args(
            tiny_rafdb,
            tmp_path,
            "--trainer.fast_dev_run=true",
            "--model.init_args.sam_rho=0.05",
            "--trainer.gradient_clip_val=0.25",
            "--trainer.gradient_clip_algorithm=value",
        )
    )
    assert (cli.model.sam_gradient_clip_val, cli.model.sam_gradient_clip_algorithm) == (0.25, "value")
    assert cli.trainer.gradient_clip_val is None


def _subprocess_environment(extra=None) -> dict[str, str]:
    """A CLI subprocess's environment: the test helpers importable (callbacks given by class path), one
    thread, then ``extra``."""
    return dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
        **(extra or {}),
    )


def _fit_subprocess(root, save_dir, marker, *extra, workers=0, environment=None, **pause):
    pause = {"class_path": "interrupt_helpers.PauseAfterBatch", "init_args": {"marker": str(marker), **pause}}
    args = _fit_args(
        root,
        save_dir,
        f"--data.num_workers={workers}",
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=6",
        "--trainer.num_sanity_val_steps=0",
        f"--trainer.callbacks+={json.dumps(pause)}",
        *extra,
    )
    return subprocess.Popen(
        [sys.executable, "-m", "fer_lightning.cli", *args],
        env=_subprocess_environment(environment),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, which a test may signal as a whole
    )


def _signal_when_paused(process, marker, signal_number, to_ranks="all") -> str:
    """Wait for ``marker``, send the signal (under DDP to ``to_ranks``: "all", or "1" for the second
    process alone; "group": to the run's whole process group, DataLoader workers included, as a
    cluster's time limit or a terminal's Ctrl-C does), and return the run's stderr once it ended; fail
    if it did not end within 2 minutes (a hang under DDP)."""
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), process.communicate()[1][-3000:]
        others = child_processes(process.pid)
        if to_ranks == "group":
            os.killpg(process.pid, signal_number)
        for pid in {"all": [process.pid, *others], "1": others}.get(to_ranks, []):
            os.kill(pid, signal_number)
        try:
            return process.communicate(timeout=120)[1]
        except subprocess.TimeoutExpired:
            pytest.fail("the run did not stop within 2 minutes of the signal")
    finally:
        for pid in child_processes(process.pid):
            os.kill(pid, signal.SIGKILL)
        process.kill()


def _interrupt_line(stderr, epoch: int) -> tuple[str, Path]:
    """The config and checkpoint of the one "interrupted at epoch ``epoch`` ..." line the run printed."""
    [line] = [line for line in stderr.splitlines() if line.startswith("interrupted at epoch")]
    assert line.startswith(f"interrupted at epoch {epoch} step"), line
    config, checkpoint = line.split("--config ")[1].split(" --ckpt_path ")
    return config, Path(checkpoint)


def _trained_when_saved(checkpoint) -> tuple[int, int]:
    """(global step, batches of the epoch trained) of the state ``checkpoint`` holds."""
    state = torch.load(checkpoint, weights_only=False)
    return state["global_step"], state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["ready"]


@pytest.mark.parametrize(
    ("signal_number", "to", "workers"),
    [
        # A cluster's time limit and `kill -- -PGID` signal the DataLoader workers too.
        (signal.SIGTERM, "group", 2),
        # A terminal's Ctrl-C does the same.
        pytest.param(signal.SIGINT, "group", 2, marks=pytest.mark.slow),
    ],
    ids=["SIGTERM-to-the-group-with-workers", "SIGINT-to-the-group-with-workers"],
)
def test_a_signal_mid_epoch_leaves_a_checkpoint_to_resume_from(
    tiny_rafdb, tmp_path, signal_number, to, workers
):
    marker = tmp_path / "paused"
    process = _fit_subprocess(tiny_rafdb, tmp_path / "runs", marker, workers=workers)
    stderr = _signal_when_paused(process, marker, signal_number, to)
    assert process.returncode == 128 + signal_number, stderr[-3000:]
    config, checkpoint = _interrupt_line(stderr, epoch=1)
    assert checkpoint.name == "last.ckpt"
    [epoch_end] = checkpoint.parent.glob("best-epoch00-*.ckpt")
    interrupted_step = torch.load(checkpoint, weights_only=False)["global_step"]
    assert interrupted_step > torch.load(epoch_end, weights_only=False)["global_step"]
    assert interrupted_step >= int(marker.read_text())  # the step running when the signal came completed
    if signal_number == signal.SIGTERM:  # the resume command it printed works
        cli = run_cli(
            ["fit", "--config", config, "--ckpt_path", str(checkpoint), "--trainer.enable_progress_bar=false"]
        )
        assert cli.trainer.global_step == 2 * 6  # the rest of epoch 1 and epoch 2: no batch lost or repeated


class _WorkerPids(torch.utils.data.Dataset):
    def __len__(self):
        return 1000

    def __getitem__(self, index):
        return os.getpid()


def test_a_dataloader_worker_outlives_signals_from_elsewhere_and_ends_on_its_parents_sigterm():
    """A SIGTERM to the process group reaches the workers too: they keep serving batches while the main
    process finishes its step and saves. Their parent's SIGTERM (the DataLoader's shutdown) ends them."""
    batches = iter(DataLoader(_WorkerPids(), batch_size=None, num_workers=1, worker_init_fn=_worker_init))
    pid = next(batches)
    for name in ("TERM", "INT"):  # sent by another process
        subprocess.run(["kill", f"-{name}", str(pid)], check=True)
    time.sleep(0.5)
    assert [next(batches) for _ in range(3)] == [pid] * 3
    [worker] = batches._workers
    worker.terminate()
    worker.join(timeout=10)
    assert worker.exitcode == 0


def test_a_process_leaving_dataloader_workers_alive_still_exits():
    """multiprocessing's exit handler SIGTERMs the workers still alive and waits for them: a worker that
    ignored every SIGTERM would hang the process there."""
    script = (
        "import torch.utils.data as data\n"
        "from fer_lightning.data.base import _worker_init\n"
        "batches = iter(data.DataLoader(range(100), num_workers=2, persistent_workers=True, worker_init_fn=_worker_init))\n"
        "next(batches)\n"
    )
    try:
        subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the process hung at exit")


@pytest.mark.parametrize("continues_itself", [False, True], ids=["plain_fit", "ckpt_path_last"])
def test_slurms_requeue_signal_stops_after_the_step_and_requeues_a_command_that_continues_itself(
    tiny_rafdb, tmp_path, continues_itself
):
    """``sbatch --signal=USR1@…`` asks Lightning to save from inside its signal handler and requeue the
    job. The CLI stops after the step with a checkpoint, as on SIGTERM, and requeues the job only when
    its command continues its own run when rerun (``--ckpt_path last``): a plain ``fit`` would start over."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    scontrol = fake_bin / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol_calls"}\n')
    scontrol.chmod(0o755)
    slurm = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "fer", "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0"}
    slurm |= {
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}",
    }
    marker = tmp_path / "paused"
    extra = ["--ckpt_path=last"] if continues_itself else []
    process = _fit_subprocess(tiny_rafdb, tmp_path / "runs", marker, *extra, environment=slurm)
    stderr = _signal_when_paused(process, marker, signal.SIGUSR1)
    assert process.returncode == 128 + signal.SIGUSR1, stderr[-3000:]
    requeued = "is requeued" if continues_itself else "is not requeued"
    assert f"SLURM's requeue signal (SIGUSR1; the job {requeued}): stopping after the current step" in stderr
    _, checkpoint = _interrupt_line(stderr, epoch=1)
    assert _trained_when_saved(checkpoint)[0] >= int(marker.read_text())
    assert not list(tmp_path.rglob("hpc_ckpt_*.ckpt"))
    calls = tmp_path / "scontrol_calls"
    if continues_itself:
        assert calls.read_text() == "requeue 4242\n" and "requeued SLURM job 4242" in stderr
    else:
        assert not calls.exists()


@pytest.mark.parametrize("command", ["fit", "test"])
def test_a_left_over_slurm_hpc_checkpoint_is_never_restored_unasked(
    tiny_rafdb, tmp_path, monkeypatch, capsys, command
):
    """Under SLURM Lightning restores the newest ``hpc_ckpt_N.ckpt`` of its root folder into any run given
    no checkpoint: a new run, or a test, would start from another run's weights without a word."""
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "fer")
    (tmp_path / "hpc_ckpt_1.ckpt").write_bytes(b"left over")
    with pytest.raises(SystemExit):
        main([command, *quickstart_args(tiny_rafdb, tmp_path), f"--trainer.default_root_dir={tmp_path}"])
    [error] = capsys.readouterr().err.splitlines()[-1:]
    assert error.startswith(f"error: {tmp_path / 'hpc_ckpt_1.ckpt'}: under SLURM Lightning would restore"), (
        error
    )


def test_a_signal_inside_an_accumulation_window_stops_at_its_end(tiny_rafdb, tmp_path):
    """Gradients accumulated over 3 batches: a signal after the first batch of the window [3, 4, 5]
    stops after batch 5. A checkpoint written inside the window would drop the gradients gathered in
    it, and the resumed run would step on a shorter window."""
    marker = tmp_path / "paused"
    accumulate = ["--trainer.accumulate_grad_batches=3", "--trainer.limit_train_batches=9"]
    process = _fit_subprocess(tiny_rafdb, tmp_path / "runs", marker, *accumulate, batch=3)
    stderr = _signal_when_paused(process, marker, signal.SIGTERM)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    _, checkpoint = _interrupt_line(stderr, epoch=1)
    assert _trained_when_saved(checkpoint) == (3 + 2, 6)  # epoch 0's 3 steps, then 2 windows of epoch 1


@pytest.mark.parametrize(
    "validation", [pytest.param("1.0", marks=pytest.mark.slow), "0"], ids=["then_validation", "no_validation"]
)
def test_a_signal_after_the_last_training_step_of_the_run_still_stops_it(tiny_rafdb, tmp_path, validation):
    """The signal lands when the last training epoch ends, after its last step (and validation): the run
    does not finish as if nothing had come (exit 0, going on to test); it stops when training ends."""
    marker = tmp_path / "paused"
    limit = f"--trainer.limit_val_batches={validation}"
    process = _fit_subprocess(tiny_rafdb, tmp_path / "runs", marker, limit, epoch_end=True, hold=1.0)
    stderr = _signal_when_paused(process, marker, signal.SIGTERM)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    _, checkpoint = _interrupt_line(stderr, epoch=2)
    assert _trained_when_saved(checkpoint)[0] == int(marker.read_text()) == 2 * 6


DDP_2_CPU = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]


@pytest.mark.parametrize(
    "to_ranks", ["all", pytest.param("1", marks=pytest.mark.slow)], ids=["every_rank", "second_rank_only"]
)
def test_sigterm_under_ddp_stops_every_rank_after_the_same_step(tiny_rafdb, tmp_path, to_ranks):
    """A cluster's time limit signals every process, each at its own point of the step; ``kill`` may
    reach one process only. Either way the ranks agree, stop after one common step and write one
    checkpoint. (Lightning's own handling hangs in both cases: it broadcasts from inside the signal
    handler and each rank checks its own flag.)"""
    marker = tmp_path / "paused"
    process = _fit_subprocess(tiny_rafdb, tmp_path / "runs", marker, *DDP_2_CPU)
    stderr = _signal_when_paused(process, marker, signal.SIGTERM, to_ranks)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "[rank 1] SIGTERM: stopping after the current step" in stderr
    assert ("[rank 0] SIGTERM" in stderr) == (to_ranks == "all")
    _, checkpoint = _interrupt_line(stderr, epoch=1)
    [epoch_end] = checkpoint.parent.glob("best-epoch00-*.ckpt")
    step, _ = _trained_when_saved(checkpoint)
    assert _trained_when_saved(epoch_end)[0] < int(marker.read_text()) <= step


@pytest.mark.slow
def test_an_error_on_one_rank_ends_every_rank_and_the_others_say_whose_it_is(tiny_rafdb, tmp_path):
    """The rank that met the error prints it in one line; the other, whose next collective lost its
    peer, points to it in one line instead of a traceback of the broken connection."""
    fail = {"class_path": "interrupt_helpers.FailOnRank", "init_args": {"rank": 1, "batch": 2}}
    args = _fit_args(tiny_rafdb, tmp_path / "runs", f"--trainer.callbacks+={json.dumps(fail)}", *DDP_2_CPU)
    done = subprocess.run(
        [sys.executable, "-m", "fer_lightning.cli", *args],
        env=_subprocess_environment(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "error:" in line or "Traceback" in line]
    assert len(errors) == 2, done.stderr[-3000:]
    assert any(line.startswith("error: image not found: /data/faces/2.jpg (only rank 1") for line in errors)
    assert any(
        line.startswith("error: local rank 0 stopped: another process of this run ended") for line in errors
    )


@pytest.mark.slow  # ~35 s; the every-rank test above keeps DDP interrupts in the default suite
def test_sigterm_during_validation_under_ddp_stops_every_rank_when_it_ends(tiny_rafdb, tmp_path):
    """The ranks may hold different numbers of validation batches, so they cannot agree per batch:
    validation runs to its end on every rank, then they stop together before training on."""
    marker = tmp_path / "paused"
    process = _fit_subprocess(
        tiny_rafdb,
        tmp_path / "runs",
        marker,
        *DDP_2_CPU,
        "--trainer.max_epochs=3",
        batch=0,
        validation=True,
        hold=1.0,
    )
    stderr = _signal_when_paused(process, marker, signal.SIGTERM)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "[rank 1] SIGTERM: stopping when validation ends" in stderr
    _, checkpoint = _interrupt_line(stderr, epoch=2)
    assert _trained_when_saved(checkpoint)[0] == int(marker.read_text())  # no training step after it
