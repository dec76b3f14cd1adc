"""Gather a batch from every DDP rank, with gradients flowing back to the rank each sample came from.

BTN's global-batch CBA needs it: under DDP each rank holds only its own share of the batch, and CBA
lets every image attend to the other images, so each rank gathers the features of all ranks, runs CBA on
the whole batch and keeps the rows of its own images.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def distributed_world_size() -> int:
    """Number of processes of the default process group; 1 when not running distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class _GatherRows(torch.autograd.Function):
    """Concatenate every rank's rows (rank order); the backward pass returns this rank's rows' gradient.

    Every rank's loss may depend on every gathered row, so a row's gradient is the sum of the gradients
    all ranks computed for it: an all-reduce, then this rank's slice. DDP then averages parameter
    gradients over ranks as usual, which makes R processes × B/R samples match 1 process × B.
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor, sizes: list[int], own_rows: slice) -> torch.Tensor:
        ctx.own_rows = own_rows
        # all_gather needs equal shapes; shares differ when a bad image was skipped from a batch.
        padded = rows.new_zeros((max(sizes), *rows.shape[1:]))
        padded[: rows.shape[0]] = rows
        gathered = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(gathered, padded)
        return torch.cat([block[:size] for block, size in zip(gathered, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.own_rows], None, None


def gather_batch(rows: torch.Tensor) -> tuple[torch.Tensor, slice]:
    """All ranks' ``rows`` concatenated along dim 0 in rank order, and the slice holding this rank's own.

    Differentiable: the gradient of every gathered row flows back to the rank that owns it. Outside a
    distributed run (or with one process) returns ``rows`` itself. Every rank must call it the same
    number of times (it is a collective).
    """
    world_size = distributed_world_size()
    if world_size == 1:
        return rows, slice(0, rows.shape[0])
    local_size = torch.tensor([rows.shape[0]], device=rows.device)
    sizes = [torch.zeros_like(local_size) for _ in range(world_size)]
    dist.all_gather(sizes, local_size)
    sizes_list = [int(size) for size in sizes]
    rank = dist.get_rank()
    start = sum(sizes_list[:rank])
    own_rows = slice(start, start + sizes_list[rank])
    return _GatherRows.apply(rows.contiguous(), sizes_list, own_rows), own_rows
