"""Sharpness-aware minimisation (SAM; Foret et al., ICLR 2021), as POSTER++ and BTN train.

SAM minimises the loss at the worst point of a ρ-ball around the weights: it takes the gradient g at
w, moves to w + e with e = ρ·g/‖g‖ (eq. 2 of the SAM paper; the adaptive variant scales by |w|²), takes
the gradient there, moves back to w, and lets the base optimiser (Adam in POSTER++/BTN) step with that
second gradient. This module only perturbs and restores weights; the base optimiser's step goes through
Lightning as usual, so AMP grad scaling, schedulers and logging keep working.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


@torch.no_grad()
def sam_perturb(
    optimizer: torch.optim.Optimizer, rho: float, adaptive: bool = False
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Move every parameter with a gradient to w + e and return the (parameter, e) pairs to undo it.

    The direction g/‖g‖ does not depend on a constant factor, so gradients still multiplied by an AMP
    loss scale give the same e. Callers check that the gradients are finite first (an fp16 overflow must
    reach the grad scaler instead, see ``FERClassifier._sam_step``); a norm that is zero or not finite
    leaves the weights where they are.
    """
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not params:
        return []
    scaled = [(p.abs() * p.grad) if adaptive else p.grad for p in params]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in scaled]))
    if not torch.isfinite(norm) or norm == 0:
        return []
    perturbations = []
    for param, gradient in zip(params, scaled):
        offset = (rho / (norm + 1e-12)) * gradient.float()
        if adaptive:
            offset = offset * param.abs()
        offset = offset.to(param.dtype)
        param.add_(offset)
        perturbations.append((param, offset))
    return perturbations


@torch.no_grad()
def sam_restore(perturbations: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Undo :func:`sam_perturb`."""
    for param, offset in perturbations:
        param.sub_(offset)


def all_finite(tensors: Iterable[torch.Tensor | None]) -> bool:
    """Whether every value of every floating-point tensor (``None`` skipped) is finite; one host sync per device.

    Uses the max-norm, which stays finite for any finite values (a 2-norm of finite values can overflow)
    and is NaN or inf as soon as one value is.
    """
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for tensor in tensors:
        if tensor is not None and tensor.is_floating_point():
            by_device.setdefault(tensor.device, []).append(tensor.detach())
    for group in by_device.values():
        maxima = torch.stack([m.float() for m in torch._foreach_norm(group, ord=float("inf"))])
        if not bool(torch.isfinite(maxima).all()):
            return False
    return True
