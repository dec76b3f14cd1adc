"""A callback the SIGTERM/Ctrl-C tests add to a ``fit`` subprocess so the signal lands mid-epoch."""

from __future__ import annotations

import time
from pathlib import Path

from lightning.pytorch import Callback


class PauseAfterBatch(Callback):
    """After batch ``batch`` of epoch ``epoch``, write ``marker`` (the test then sends its signal) and
    slow every later batch by ``seconds``, so the signal arrives while the epoch still has batches left."""

    def __init__(self, marker: str, epoch: int = 1, batch: int = 1, seconds: float = 0.5) -> None:
        self.marker, self.epoch, self.batch, self.seconds = Path(marker), epoch, batch, seconds
        self.paused = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            self.marker.write_text(str(trainer.global_step))
            self.paused = True
        elif self.paused:
            time.sleep(self.seconds)
