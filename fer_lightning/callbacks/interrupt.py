"""Stop on SIGTERM or Ctrl-C after the current training step, with a checkpoint to resume from."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from fer_lightning.callbacks.checkpoint import ValidationCheckpoint

_HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class InterruptCheckpoint(Callback):
    """On SIGTERM (a scheduler's time limit, ``kill``) or a first Ctrl-C: finish the current training
    step, write ``last.ckpt`` into the run's checkpoint folder, stop, and print how to resume.

    From the sanity check to the end of training this callback handles both signals itself; Lightning's
    SIGTERM handler is put back afterwards. The handler only notes the signal. The decision to stop is
    taken at the end of a training step (at the end of an accumulation window when gradients are
    accumulated), and under DDP it is collective: the ranks all-reduce what each received, so a signal
    that reached one process, or every process at a different moment (a cluster's time limit), stops
    all of them after the same step, and they write one checkpoint together. Lightning's own handling
    broadcasts from inside the signal handler and checks each process's own flag, which under DDP
    pairs collectives wrongly and hangs.

    On one process a signal that arrives during validation cuts validation short and the state is
    saved as ``fit`` stops; under DDP validation runs to its end first (the ranks may have different
    numbers of validation batches, so they cannot agree per batch), and they agree when it ends. The
    checkpoint is written through the run's :class:`~fer_lightning.callbacks.ValidationCheckpoint`, so
    a model with non-finite weights is never saved. A second Ctrl-C interrupts at once, without a
    checkpoint. The process exits with status 128 + the signal number (143 for SIGTERM, 130 for
    Ctrl-C), as a shell reports a process a signal ended.

    Under SLURM, Lightning's auto-requeue signal (SIGUSR1, sent by ``sbatch --signal=USR1@…``) is
    handled the same way: the run stops after the step with ``last.ckpt`` (Lightning's own handler
    saves from inside the signal handler, in the middle of a step, with a collective under DDP). The
    job is then requeued (``scontrol requeue``, by the first process) only with ``requeue=True``, which
    the CLI sets when the command continues its own run when rerun (``fit --ckpt_path last``); rerun
    otherwise, it would start a new run.
    """

    def __init__(self, requeue: bool = False) -> None:
        self.requeue = requeue
        self.signal_number: int | None = None
        self.checkpoint_path: str | None = None
        self._saved = False  # tried to: a diverged state is refused, and that is said once
        self._previous_handlers: dict[int, object] = {}
        self._trainer: Trainer | None = None

    # ---- the handlers ----------------------------------------------------------------------------

    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._install(trainer)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._install(trainer)  # when there is no sanity check

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # A signal that came after the last step's check (in its callbacks, at the epoch's end) still
        # stops the run here, instead of letting it go on (to `--test_after_fit`) and end with status 0.
        agreed = None if self._saved or not self._previous_handlers else self._agreed_signal(trainer)
        self._restore_handlers()
        if agreed is not None:
            self.signal_number = agreed
            self._save(trainer)
            raise SIGTERMException

    def _install(self, trainer: Trainer) -> None:
        # Lightning installs its SIGTERM handler just before the sanity check; ours replace it from here.
        if self._previous_handlers or threading.current_thread() is not threading.main_thread():
            return
        self.signal_number, self.checkpoint_path, self._saved = None, None, False
        self._trainer = trainer
        for signum in (*_HANDLED_SIGNALS, *_slurm_requeue_signal(trainer)):
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _restore_handlers(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._previous_handlers.items():
                signal.signal(signum, handler)
        self._previous_handlers = {}

    def _on_signal(self, signum: int, frame) -> None:
        # No collective and no I/O beyond one line here: the signal interrupts arbitrary code.
        if self.signal_number is not None:
            if signum == signal.SIGINT:  # a second Ctrl-C: stop now, without a checkpoint
                self._restore_handlers()
                raise KeyboardInterrupt
            return
        self.signal_number = signum
        trainer = self._trainer
        what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        if signum in _slurm_requeue_signal(trainer):
            what = f"SLURM's requeue signal ({what}; the job {'is' if self.requeue else 'is not'} requeued)"
        rank = f"[rank {trainer.global_rank}] " if trainer.world_size > 1 else ""
        again = " (press again to stop at once)" if signum == signal.SIGINT else ""
        validating = trainer.validating or trainer.sanity_checking
        when = "when validation ends" if validating and trainer.world_size > 1 else "after the current step"
        try:
            print(f"\n{rank}{what}: stopping {when}{again}", file=sys.stderr)
        except RuntimeError:  # the signal came while the main code was writing to stderr
            pass
        if trainer.world_size == 1 and validating:
            # Alone, the process can let Lightning cut a running validation short.
            trainer._signal_connector.received_sigterm = True

    # ---- the collective decision -----------------------------------------------------------------

    def _agreed_signal(self, trainer: Trainer) -> int | None:
        """The signal any rank received (the largest number if they differ), the same on every rank."""
        if trainer.world_size == 1:
            return self.signal_number
        received = torch.tensor([self.signal_number or 0], device=trainer.strategy.root_device)
        agreed = int(trainer.strategy.reduce(received, reduce_op="max").item())
        return agreed or None

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx
    ) -> None:
        if self._saved or _inside_accumulation_window(trainer, batch_idx):
            return
        agreed = self._agreed_signal(trainer)
        if agreed is None:
            return
        self.signal_number = agreed
        self._save(trainer)
        raise SIGTERMException

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Under DDP a signal that came during validation is agreed on here, once every rank is done;
        # Lightning then stops at the end of the step (or epoch) and on_exception writes the checkpoint.
        if trainer.world_size == 1 or not self._previous_handlers or self._saved:
            return
        agreed = self._agreed_signal(trainer)
        if agreed is not None:
            self.signal_number = agreed
            trainer._signal_connector.received_sigterm = True

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore_handlers()
        if not isinstance(exception, SIGTERMException):
            return
        if not self._saved:  # the signal came during validation
            self._save(trainer)
        signal_number = self.signal_number or signal.SIGTERM
        exception.code = 128 + signal_number
        log_dir = trainer.log_dir  # a broadcast from rank 0 under DDP: every rank must ask
        if not trainer.is_global_zero:
            return
        if self.checkpoint_path is None:
            print(
                f"interrupted at epoch {trainer.current_epoch} step {trainer.global_step}; "
                "no checkpoint written (see the warning above)",
                file=sys.stderr,
            )
            return
        config = os.path.join(log_dir, "config.yaml") if log_dir else None
        config = config if config and os.path.isfile(config) else "<the run's config.yaml>"
        print(
            f"interrupted at epoch {trainer.current_epoch} step {trainer.global_step}; resume with: "
            f"fer-lightning fit --config {config} --ckpt_path {self.checkpoint_path}",
            file=sys.stderr,
        )
        if self.requeue and signal_number in _slurm_requeue_signal(trainer):
            _requeue_slurm_job()

    def _save(self, trainer: Trainer) -> None:
        self._saved = True
        self.checkpoint_path = _save_latest(trainer)


def _save_latest(trainer: Trainer) -> str | None:
    """Write ``last.ckpt`` with the current state; its path, ``None`` if the state is not finite."""
    checkpoint = trainer.checkpoint_callback
    if isinstance(checkpoint, ValidationCheckpoint):
        return checkpoint.save_latest(trainer)
    if not ValidationCheckpoint._state_is_finite(trainer):
        return None
    folder = checkpoint.dirpath if isinstance(checkpoint, ModelCheckpoint) else None
    path = os.path.join(folder or trainer.default_root_dir, "last.ckpt")
    trainer.save_checkpoint(path)
    return path


def _slurm_requeue_signal(trainer: Trainer) -> tuple[int, ...]:
    """The signal Lightning would requeue a SLURM job on, if it would."""
    environment = trainer._accelerator_connector.cluster_environment
    if isinstance(environment, SLURMEnvironment) and environment.auto_requeue and environment.requeue_signal:
        return (environment.requeue_signal,)
    return ()


def _requeue_slurm_job() -> None:
    """``scontrol requeue`` this job (an array job's own task); its rerun continues the run."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        print(f"could not requeue SLURM job {job}: {error}; resubmit it", file=sys.stderr)
        return
    if done.returncode:
        print(f"could not requeue SLURM job {job}: {done.stderr.strip()}; resubmit it", file=sys.stderr)
    else:
        print(f"requeued SLURM job {job}: its rerun continues this run", file=sys.stderr)


def _inside_accumulation_window(trainer: Trainer, batch_idx: int) -> bool:
    """Whether this batch's gradients wait for the next batch's (a checkpoint here would lose them)."""
    # Lightning steps at the end of a window and at the epoch's last batch (limit_train_batches included).
    window_ends = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
    return not (window_ends or batch_idx + 1 == trainer.num_training_batches)
