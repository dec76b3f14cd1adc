"""Send figures a callback saved in the run folder to the run's W&B loggers, as images."""

from __future__ import annotations

import os

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import WandbLogger


def log_figures(trainer: Trainer, figures: dict[str, str | os.PathLike], caption: str = "") -> None:
    """Log each ``{key: png path}`` as a ``wandb.Image`` to every W&B logger of ``trainer`` (no-op without one).

    W&B keeps every logged version in the run's history, and its summary shows the last one, so a figure
    redrawn during training ends as its final state in the run overview.
    """
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            for key, path in figures.items():
                caption_args = {"caption": [caption]} if caption else {}
                logger.log_image(key=key, images=[os.fspath(path)], step=trainer.global_step, **caption_args)
