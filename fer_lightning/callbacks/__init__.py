"""Lightning callbacks of the package."""

from fer_lightning.callbacks.batch_size import BatchSizeLog
from fer_lightning.callbacks.checkpoint import ValidationCheckpoint
from fer_lightning.callbacks.confusion_matrix import ConfusionMatrixPlot
from fer_lightning.callbacks.interrupt import InterruptCheckpoint
from fer_lightning.callbacks.lambda_schedule import LambdaSchedule
from fer_lightning.callbacks.restore_best import RestoreBestWeights
from fer_lightning.callbacks.training_curves import TrainingCurvesPlot

__all__ = [
    "BatchSizeLog",
    "ConfusionMatrixPlot",
    "InterruptCheckpoint",
    "LambdaSchedule",
    "RestoreBestWeights",
    "TrainingCurvesPlot",
    "ValidationCheckpoint",
]
