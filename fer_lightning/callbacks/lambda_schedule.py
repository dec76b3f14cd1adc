"""A schedule for BTN's λ (the weight of the ViT head's loss in eq. 9), set before every training step.

The value is a function of the optimiser step (``trainer.global_step``) alone, so a resumed run, which
restores the step count, trains with exactly the values the uninterrupted run would have used.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn

from fer_lightning.errors import ConfigurationError

SCHEDULE_KINDS = ("constant", "linear", "step")
_SCHEDULE_FIELDS = ("kind", "start", "end", "ramp_steps", "num_jumps")


class LambdaSchedule(Callback):
    """Set ``model.lambda_vit`` from a schedule before each training step and log it as ``train/lambda_vit``.

    Args:
        kind: ``constant`` (λ = ``start`` throughout: the model's λ, logged), ``linear`` (from ``start``
            at step 0 to ``end`` at step ``ramp_steps``, then ``end``) or ``step`` (``start``, then
            ``num_jumps`` equal jumps at equal intervals, reaching ``end`` at ``ramp_steps``).
        start: λ at step 0; None takes the model's configured ``lambda_vit``.
        end: λ from ``ramp_steps`` on (``linear`` and ``step``).
        ramp_steps: optimiser steps the ramp lasts (``linear`` and ``step``); the batch-size note at the
            start of training says how many steps an epoch has.
        num_jumps: number of jumps of the ``step`` ramp (1: a single jump from ``start`` to ``end`` at
            ``ramp_steps``).

    Example, λ from 1 to 3 over the first 500 steps, in a config's ``trainer.callbacks``::

        - class_path: fer_lightning.callbacks.LambdaSchedule
          init_args: {kind: linear, start: 1.0, end: 3.0, ramp_steps: 500}
    """

    def __init__(
        self,
        kind: Literal["constant", "linear", "step"] = "constant",
        start: float | None = None,
        end: float | None = None,
        ramp_steps: int = 0,
        num_jumps: int = 1,
    ) -> None:
        if kind not in SCHEDULE_KINDS:
            raise ConfigurationError(
                f"LambdaSchedule: kind must be one of {', '.join(SCHEDULE_KINDS)}, got {kind!r}"
            )
        if kind != "constant":
            if end is None or ramp_steps < 1:
                raise ConfigurationError(
                    f"LambdaSchedule(kind={kind}) needs end (λ after the ramp) and ramp_steps ≥ 1 "
                    f"(got end={end}, ramp_steps={ramp_steps})"
                )
            if kind == "step" and not 1 <= num_jumps <= ramp_steps:
                raise ConfigurationError(
                    f"LambdaSchedule: num_jumps must be between 1 and ramp_steps ({ramp_steps}), got {num_jumps}"
                )
        self.kind = kind
        self.start = start
        self.end = end
        self.ramp_steps = ramp_steps
        self.num_jumps = num_jumps

    def value_at(self, step: int) -> float:
        """λ for the optimiser step ``step`` (0 = the first); ``start`` must be known."""
        if self.start is None:
            raise ValueError("LambdaSchedule.start is unset; setup() takes it from the model")
        if self.kind == "constant" or step >= self.ramp_steps:
            return self.start if self.kind == "constant" else float(self.end)
        if self.kind == "linear":
            progress = step / self.ramp_steps
        else:  # jump k of num_jumps happens at step ceil(k · ramp_steps / num_jumps)
            progress = math.floor(step * self.num_jumps / self.ramp_steps) / self.num_jumps
        return self.start + (float(self.end) - self.start) * progress

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not hasattr(pl_module, "lambda_vit"):
            raise ConfigurationError(
                f"LambdaSchedule schedules BTN's lambda_vit, but {type(pl_module).__name__} has none; "
                "remove the callback from trainer.callbacks for this model"
            )
        if self.start is None:
            self.start = float(pl_module.lambda_vit)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        pl_module.lambda_vit = self.value_at(trainer.global_step)
        pl_module.log("train/lambda_vit", pl_module.lambda_vit, on_step=True, on_epoch=False)

    def state_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in _SCHEDULE_FIELDS}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # A resumed run continues the schedule it started with (with start as resolved then, even if
        # the model's λ in the config changed); a different schedule in the config is named, not mixed in.
        saved = {key: state_dict[key] for key in _SCHEDULE_FIELDS if key in state_dict}
        configured = self.state_dict()
        changed = [key for key, value in saved.items() if value != configured[key]]
        if changed:
            rank_zero_warn(
                f"LambdaSchedule: the checkpoint's schedule ({saved}) differs from the configured one in "
                f"{', '.join(changed)}; the run continues with the checkpoint's"
            )
        for key, value in saved.items():
            setattr(self, key, value)
