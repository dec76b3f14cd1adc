"""The ``fer-lightning`` command.

Usage::

    fer-lightning fit --config experiments/quickstart.yaml
    fer-lightning test --config experiments/quickstart.yaml --ckpt_path runs/.../checkpoints/best-....ckpt
    fer-lightning make-synthetic --format rafdb --out data/synthetic-rafdb --num-images 3000 --seed 0

This module only dispatches: each command imports what it needs when it runs, so ``--help`` and the
light commands do not pay for importing torch and Lightning. Errors a user can fix
(:class:`~fer_lightning.errors.FERLightningError`) are printed as one line with a non-zero exit status;
``--debug`` (anywhere on the command line) or ``FER_LIGHTNING_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Sequence
from contextvars import ContextVar

from fer_lightning.errors import FERLightningError

#: LightningCLI's subcommands, run by :mod:`fer_lightning.cli.lightning`.
LIGHTNING_SUBCOMMANDS: dict[str, str] = {
    "fit": "train a model, selecting the checkpoint on validation data",
    "validate": "evaluate a checkpoint on the validation split",
    "test": "evaluate a checkpoint on the test split (reported separately, never used for selection)",
}

#: Our own commands: name -> ("module:function", one-line help). Modules are imported on use.
EXTRA_COMMANDS: dict[str, tuple[str, str]] = {
    "make-synthetic": (
        "fer_lightning.cli.commands:make_synthetic",
        "write generated faces in a real dataset's on-disk format",
    ),
    "complexity": (
        "fer_lightning.cli.commands:complexity",
        "parameters and MACs of a config's model, per image",
    ),
    "data-summary": (
        "fer_lightning.cli.data_summary:data_summary",
        "counts per split and class, dropped rows, and a class histogram PNG",
    ),
    "plot-curves": (
        "fer_lightning.cli.commands:plot_curves",
        "draw a run's loss and accuracy curves from its metrics.csv",
    ),
    "sweep": (
        "fer_lightning.sweep:sweep",
        "check a W&B sweep file offline (validate) or run it here, one run after another (run)",
    ),
    "report": (
        "fer_lightning.report:report",
        "markdown tables and figures from a results.csv (accuracy vs λ, batch size, noise rate)",
    ),
    "predict": (
        "fer_lightning.cli.predict:predict",
        "expressions of the faces in images, folders and videos, from a checkpoint or .onnx",
    ),
    "export": (
        "fer_lightning.cli.predict:export",
        "a checkpoint's inference path as ONNX or TorchScript, checked against PyTorch",
    ),
}
EXTRA_COMMANDS_HELP = "more commands:\n" + "\n".join(
    f"  {name:<16} {summary}" for name, (_, summary) in EXTRA_COMMANDS.items()
)

DEBUG_FLAG = "--debug"
DEBUG_ENV = "FER_LIGHTNING_DEBUG"


def usage() -> str:
    """The top-level help, written without importing Lightning."""
    commands = "\n".join(f"  {name:<16} {summary}" for name, summary in LIGHTNING_SUBCOMMANDS.items())
    return (
        "usage: fer-lightning COMMAND [options]   (fer-lightning COMMAND --help for its options)\n\n"
        "Facial-expression recognition experiments with PyTorch Lightning.\n\n"
        f"training and evaluation (LightningCLI):\n{commands}\n{EXTRA_COMMANDS_HELP}\n\n"
        f"options anywhere:\n  {DEBUG_FLAG:<16} show the full traceback of an error "
        f"(or set {DEBUG_ENV}=1)"
    )


# Set by main() for the command it runs, so parsers deep inside LightningCLI can ask debugging().
_debug_requested: ContextVar[bool] = ContextVar("fer_lightning_debug", default=False)


def debug_enabled(argv: Sequence[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def debugging() -> bool:
    """Whether the running command should show tracebacks (``--debug`` or ``FER_LIGHTNING_DEBUG=1``)."""
    return _debug_requested.get() or debug_enabled(())


def user_error_in(error: BaseException) -> FERLightningError | None:
    """The :class:`FERLightningError` behind ``error``, which may arrive wrapped.

    jsonargparse re-raises an error from a class's ``__init__`` as its own "Does not validate against any
    of the Union subtypes" ``ValueError`` (the original is its cause or context).
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, FERLightningError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def one_line(error: BaseException) -> str:
    """The error's message; for one re-raised from a DataLoader worker, the original message only.

    torch re-raises a worker's exception as the same type with "Caught X in DataLoader worker process N.
    Original Traceback …" and the worker's traceback in the message; its last line is the original.
    """
    message = str(error)
    if "\nOriginal Traceback" in message:
        last = message.rstrip().splitlines()[-1]
        original = re.match(rf"[\w.]*{type(error).__name__}: (.*)", last)
        message = original[1] if original else last
    return message


#: What gloo and NCCL raise in a process whose collective lost a peer process that has ended.
_LOST_PEER = re.compile(r"gloo.*Connection (closed|reset) by peer|NCCL communicator was aborted", re.DOTALL)


def lost_peer_message(error: BaseException) -> str | None:
    """One line for a process of a multi-process run whose collective failed because another process
    ended first: that process's own error, printed by it, is the one to read. ``None`` otherwise."""
    import torch.distributed

    lost_peer = isinstance(error, torch.distributed.DistBackendError) or (
        isinstance(error, RuntimeError) and _LOST_PEER.search(str(error))
    )
    if not lost_peer:
        return None
    if "RANK" in os.environ:  # torchrun
        process = f"rank {os.environ['RANK']}"
    else:  # Lightning's launcher leaves the local rank (and node rank) of each process it started set
        process = f"local rank {os.environ.get('LOCAL_RANK', '0')}"
        if os.environ.get("NODE_RANK", "0") != "0":
            process += f" of node {os.environ['NODE_RANK']}"
    return (
        f"{process} stopped: another process of this run ended first (its error is printed above, or in "
        f"its own log); add {DEBUG_FLAG} for this process's traceback"
    )


def run(argv: list[str]) -> None:
    """Run one command; errors propagate (:func:`main` turns the user's into one line)."""
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    if argv[0] in EXTRA_COMMANDS:
        module_name, function_name = EXTRA_COMMANDS[argv[0]][0].split(":")
        getattr(importlib.import_module(module_name), function_name)(argv[1:])
        return
    from fer_lightning.cli.lightning_cli import run_lightning_cli

    run_lightning_cli(argv)


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``fer-lightning``; ``args`` lets tests run it in-process."""
    argv = list(sys.argv[1:] if args is None else args)
    debug = debug_enabled(argv)
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    token = _debug_requested.set(debug)
    try:
        run(argv)
    except Exception as error:
        user_error = user_error_in(error)
        message = one_line(user_error) if user_error is not None else lost_peer_message(error)
        if debug or message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(1) from None
    finally:
        _debug_requested.reset(token)


if __name__ == "__main__":
    main()
