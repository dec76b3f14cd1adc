"""Lightning callbacks of the package."""

from fer_lightning.callbacks.checkpoint import ValidationCheckpoint
from fer_lightning.callbacks.confusion_matrix import ConfusionMatrixPlot

__all__ = ["ConfusionMatrixPlot", "ValidationCheckpoint"]
