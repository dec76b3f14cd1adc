"""Sharpness-aware minimisation (SAM; Foret et al., ICLR 2021), as POSTER++ and BTN train.

SAM minimises the loss at the worst point of a ρ-ball around the weights: it takes the gradient g at
w, moves to w + e with e = ρ·g/‖g‖ (eq. 2 of the SAM paper; the adaptive variant scales by |w|²), takes
the gradient there, moves back to w, and lets the base optimiser (Adam in POSTER++/BTN) step with that
second gradient. This module only perturbs and restores weights; the base optimiser's step goes through
Lightning as usual, so AMP grad scaling, schedulers and logging keep working.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def sam_perturb(
    optimizer: torch.optim.Optimizer, rho: float, adaptive: bool = False
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Move every parameter with a gradient to w + e and return the (parameter, e) pairs to undo it.

    The direction g/‖g‖ does not depend on a constant factor, so gradients still multiplied by an AMP
    loss scale give the same e; if they overflowed (inf/nan), nothing is perturbed and the step is an
    ordinary one — the grad scaler then skips it as usual.
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
