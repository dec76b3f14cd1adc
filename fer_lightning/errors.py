"""The one exception family the ``fer-lightning`` command prints as a single line.

Raise a :class:`FERLightningError` (or a subclass) for anything a user can fix — a wrong path, a
misspelled option, a file in the wrong format — with a message that names the thing, says what was
expected and what to do. The CLI prints ``error: <message>`` and exits non-zero; the traceback is shown
only with ``--debug`` or ``FER_LIGHTNING_DEBUG=1``. Subclasses also derive from the built-in exception a
Python caller would expect (``FileNotFoundError``, ``ValueError``), so ``except ValueError`` keeps working.

This module imports nothing heavy: the CLI loads it before deciding what else to import.
"""

from __future__ import annotations


class FERLightningError(Exception):
    """A mistake the user can fix; the message is one line naming the thing and what to do."""


class ConfigurationError(FERLightningError, ValueError):
    """An option or a combination of options that cannot work (wrong value, wrong type, conflicting)."""


class DatasetNotFoundError(FERLightningError, FileNotFoundError):
    """A dataset root, annotation file or image that is not where the options say."""


class WeightsError(FERLightningError, ValueError):
    """A weights or checkpoint file that is missing, unreadable, or made for another model."""


class NonFiniteLossError(FERLightningError, FloatingPointError):
    """Training diverged: the loss or its gradients stayed NaN/inf for too many steps in a row."""


class ResultsError(FERLightningError, ValueError):
    """A sweep file, results table or run folder that is missing or not in the expected form."""
