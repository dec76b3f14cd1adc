"""Parameter and compute counts, in the package's convention (docs/models.md#size-and-compute).

Compute is reported in **MACs** (multiply-accumulates). It is measured with
``torch.utils.flop_counter.FlopCounterMode``, which counts matmuls, convolutions and attention at
**2 FLOPs per MAC**, so MACs = its total ÷ 2. Element-wise ops (norms, activations, softmax, additions)
are not counted, as in every published MAC figure we compare with. Parameter counts cover the modules
that exist; our models build no dead modules, so that is also the count of what runs.

Custom ops are invisible to the counter unless they register a formula: the routing attention op does
(``fer_lightning/ops/bra``), counting the routed token pairs only, and is imported here so that its
formula is registered before any counter is built.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import fer_lightning.ops  # noqa: F401  (registers the FLOP formula of the routing attention op)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared parameters once); ``trainable_only``: requires_grad ones."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _count_flops(model: nn.Module, input_shape: Sequence[int]) -> FlopCounterMode:
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        # The fused CPU attention kernels have no FLOP formula in the counter and would count as zero;
        # the math backend runs the same attention as matmuls, which it counts.
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
            model(torch.zeros(*input_shape, device=device))
    finally:
        model.train(was_training)
    return counter


def count_flops(model: nn.Module, input_shape: Sequence[int] = (1, 3, 224, 224)) -> int:
    """FLOPs of one eval-mode forward pass on an input of ``input_shape``: FlopCounterMode's total, which
    counts 2 FLOPs per multiply-add (so always twice :func:`count_macs`).

    Quote per image: use batch 1 or divide by the batch size. The model is left in the mode it was in.
    """
    return _count_flops(model, input_shape).get_total_flops()


def count_macs(model: nn.Module, input_shape: Sequence[int] = (1, 3, 224, 224)) -> int:
    """MACs of one eval-mode forward pass on an input of ``input_shape`` (FlopCounterMode FLOPs ÷ 2).

    Quote per image: use batch 1 or divide by the batch size. The model is left in the mode it was in.
    """
    return count_flops(model, input_shape) // 2


def macs_by_module(
    model: nn.Module, input_shape: Sequence[int] = (1, 3, 224, 224), depth: int = 1
) -> dict[str, int]:
    """MACs split over the submodules ``depth`` levels below ``model`` (dotted paths); sums to :func:`count_macs`.

    Each counted op is attributed to the innermost module that ran it, then grouped by the first
    ``depth`` parts of that module's path. A module with work of its own outside its listed submodules
    (e.g. an attention block's matmuls) appears as ``"<path> (own)"``; work outside every submodule as
    ``"(top level)"``.
    """
    counter = _count_flops(model, input_shape)
    raw = counter.get_flop_counts()
    # Keys are "<ModelClass>.<path>" with cumulative counts; drop the root and the "Global" total.
    counts = {name.split(".", 1)[1]: sum(per_op.values()) // 2 for name, per_op in raw.items() if "." in name}

    def outermost(names) -> list[str]:
        return [n for n in names if not any(n.startswith(other + ".") for other in names if other != n)]

    grouped: dict[str, int] = {}
    for name, value in counts.items():
        below = [other for other in counts if other.startswith(name + ".")]
        own = value - sum(counts[child] for child in outermost(below))
        if own:
            key = ".".join(name.split(".")[:depth])
            grouped[key] = grouped.get(key, 0) + own
    top_level = counter.get_total_flops() // 2 - sum(counts[name] for name in outermost(list(counts)))
    if top_level:
        grouped["(top level)"] = top_level
    return {
        (f"{key} (own)" if any(other.startswith(key + ".") for other in grouped) else key): value
        for key, value in grouped.items()
    }
