"""The base classifier's metrics equal hand-computed values on a fixed confusion example."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from fer_lightning.models.base import FERClassifier

# true class -> predictions; confusion rows [3,1,0], [0,1,1], [0,1,3]
TARGETS = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
PREDICTIONS = [0, 0, 0, 1, 1, 2, 2, 2, 1, 2]


class _PassThrough(FERClassifier):
    """Its "images" are already logits, so the predictions are fixed by the test."""

    def forward(self, images):
        return images


def _loader(predictions, targets, batch_size: int) -> DataLoader:
    logits = F.one_hot(torch.tensor(predictions), 3).float() * 5.0
    return DataLoader(TensorDataset(logits, torch.tensor(targets)), batch_size=batch_size)


def _trainer() -> L.Trainer:
    return L.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )


def _validate(batch_size: int) -> dict[str, float]:
    model = _PassThrough(num_classes=3, class_names=["a", "b", "c"])
    [metrics] = _trainer().validate(model, _loader(PREDICTIONS, TARGETS, batch_size), verbose=False)
    return metrics, model


@pytest.mark.parametrize("batch_size", [10, 3])
def test_metrics_match_hand_computation(batch_size):
    metrics, model = _validate(batch_size)
    # Batches of 3 make per-batch accuracies 2/3, 2/3, 2/3, 1/1: a mean of batch means would give 0.75.
    assert metrics["val/acc"] == pytest.approx(7 / 10)
    recalls = [3 / 4, 1 / 2, 3 / 4]
    assert metrics["val/mean_class_acc"] == pytest.approx(sum(recalls) / 3)
    assert [metrics[f"val/class_acc/{name}"] for name in "abc"] == pytest.approx(recalls)
    precisions = [3 / 3, 1 / 3, 3 / 4]
    f1 = [2 * p * r / (p + r) for p, r in zip(precisions, recalls)]
    assert metrics["val/macro_f1"] == pytest.approx(sum(f1) / 3)
    assert model.last_confusion["val"].tolist() == [[3, 1, 0], [0, 1, 1], [0, 1, 3]]


def test_each_evaluation_epoch_counts_only_its_own_samples():
    """A second validation (and a test run) with the same model starts from empty metric states."""
    _, model = _validate(batch_size=4)
    all_right = _loader(TARGETS[:6], TARGETS[:6], batch_size=4)  # six samples, every prediction right
    [second] = _trainer().validate(model, all_right, verbose=False)
    assert second["val/acc"] == 1.0  # 13/16 if the first run's counts were still there
    assert model.last_confusion["val"].sum() == 6
    assert model.last_confusion["val"].tolist() == [[4, 0, 0], [0, 2, 0], [0, 0, 0]]
    [tested] = _trainer().test(model, all_right, verbose=False)
    [tested_again] = _trainer().test(model, _loader(PREDICTIONS, TARGETS, batch_size=4), verbose=False)
    assert (tested["test/acc"], tested_again["test/acc"]) == (1.0, pytest.approx(7 / 10))
    assert model.last_confusion["test"].sum() == 10


def test_class_names_must_match_num_classes():
    with pytest.raises(ValueError, match="2 class names given for 3 classes"):
        _PassThrough(num_classes=3, class_names=["a", "b"])
