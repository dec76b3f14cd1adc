"""Stop on SIGTERM or Ctrl-C after the current training step, with a checkpoint to resume from."""

from __future__ import annotations

import os
import signal
import sys
import threading

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from fer_lightning.callbacks.checkpoint import ValidationCheckpoint


class InterruptCheckpoint(Callback):
    """On SIGTERM (a scheduler's time limit, ``kill``) or a first Ctrl-C: finish the current training
    step, write ``last.ckpt`` into the run's checkpoint folder, stop, and print how to resume.

    Builds on Lightning's own SIGTERM handling: Lightning notes the signal, lets the running step finish
    and then ends ``fit`` with ``SIGTERMException`` (validation in progress is cut short). A first
    Ctrl-C is routed into the same path; a second one interrupts at once as usual. The checkpoint is
    written at the end of the step (or, when the signal arrives during validation, as ``fit`` stops),
    through the run's :class:`~fer_lightning.callbacks.ValidationCheckpoint` so that a model with
    non-finite weights is never saved. The process exits with status 128 + the signal number (143 for
    SIGTERM, 130 for Ctrl-C), as a shell reports a process a signal ended.
    """

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self.checkpoint_path: str | None = None
        self._previous_sigint_handler = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning installs its SIGTERM handler just before training; ours for SIGINT goes in after it.
        self.signal_number, self.checkpoint_path = None, None
        if threading.current_thread() is threading.main_thread():
            self._previous_sigint_handler = signal.signal(signal.SIGINT, self._on_sigint)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore_sigint_handler()

    def _on_sigint(self, signum: int, frame) -> None:
        if self.signal_number is not None:  # a second Ctrl-C: stop now, without a checkpoint
            self._restore_sigint_handler()
            raise KeyboardInterrupt
        self.signal_number = signum
        print("\nCtrl-C: stopping after the current step (press again to stop at once)", file=sys.stderr)
        lightning_handler = signal.getsignal(signal.SIGTERM)
        if callable(lightning_handler):
            lightning_handler(signum, frame)

    def _restore_sigint_handler(self) -> None:
        if (
            self._previous_sigint_handler is not None
            and threading.current_thread() is threading.main_thread()
        ):
            signal.signal(signal.SIGINT, self._previous_sigint_handler)
        self._previous_sigint_handler = None

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx
    ) -> None:
        if trainer.received_sigterm and self.checkpoint_path is None:
            self.checkpoint_path = self._save(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._restore_sigint_handler()
        if not isinstance(exception, SIGTERMException):
            return
        if self.checkpoint_path is None:  # the signal came during validation
            self.checkpoint_path = self._save(trainer)
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

    @staticmethod
    def _save(trainer: Trainer) -> str | None:
        checkpoint = trainer.checkpoint_callback
        if isinstance(checkpoint, ValidationCheckpoint):
            return checkpoint.save_latest(trainer)
        if not ValidationCheckpoint._state_is_finite(trainer):
            return None
        folder = checkpoint.dirpath if isinstance(checkpoint, ModelCheckpoint) else None
        path = os.path.join(folder or trainer.default_root_dir, "last.ckpt")
        trainer.save_checkpoint(path)
        return path
