"""Callbacks the fault tests add to a ``fit`` subprocess: a pause so a signal lands mid-epoch, a failure on one rank."""

from __future__ import annotations

import os
import time
from pathlib import Path

from lightning.pytorch import Callback


class PauseAfterBatch(Callback):
    """After batch ``batch`` of epoch ``epoch`` (a validation batch with ``validation``; with
    ``epoch_end``, when training epoch ``epoch`` ends instead), write ``marker`` (the test then sends its
    signal), wait ``hold`` seconds, and slow every later batch of that kind by ``seconds``, so the signal
    arrives while the epoch (or validation) still has batches left. Added with ``callbacks+=``, this
    callback's batch hooks run before the CLI's own."""

    def __init__(
        self,
        marker: str,
        epoch: int = 1,
        batch: int = 1,
        seconds: float = 0.5,
        validation: bool = False,
        hold: float = 0.0,
        epoch_end: bool = False,
    ) -> None:
        self.marker, self.epoch, self.batch, self.seconds = Path(marker), epoch, batch, seconds
        self.validation, self.hold, self.epoch_end = validation, hold, epoch_end
        self.paused = False

    def _after_batch(self, trainer, batch_idx) -> None:
        if self.paused:
            time.sleep(self.seconds)
        elif (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            if trainer.is_global_zero:
                self.marker.write_text(str(trainer.global_step))
            self.paused = True
            time.sleep(self.hold)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not (self.validation or self.epoch_end):
            self._after_batch(trainer, batch_idx)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.epoch_end:
            self._after_batch(trainer, self.batch)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if self.validation and not trainer.sanity_checking:
            self._after_batch(trainer, batch_idx)


def child_processes(pid: int) -> list[int]:
    """The processes ``pid`` started (Linux): under DDP, the ranks Lightning's launcher re-ran."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:  # ended meanwhile
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry))
    return children


class FailOnRank(Callback):
    """Raise a user error (one line) on process ``rank`` alone, before its training batch ``batch``."""

    def __init__(self, rank: int = 1, batch: int = 2) -> None:
        self.rank, self.batch = rank, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        from fer_lightning.errors import DatasetNotFoundError

        if trainer.global_rank == self.rank and batch_idx == self.batch:
            raise DatasetNotFoundError(
                f"image not found: /data/faces/{batch_idx}.jpg (only rank {self.rank} met it)"
            )
