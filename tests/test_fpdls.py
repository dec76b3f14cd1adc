"""F-PDLS: the loss against hand computations and its special cases, the prior from FER+ votes and its
remap to other datasets by class name, the model's ``loss`` option, and ``loss: fpdls`` on BTN via the CLI."""

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli_helpers import fast_dev_run, finite_metrics

from fer_lightning.data import FER2013DataModule
from fer_lightning.data.formats import AIHUB_CLASS_NAMES, FERPLUS_CLASS_NAMES, RAFDB_CLASS_NAMES
from fer_lightning.data.label_prior import FERPLUS_RELEASED_PRIOR, dataset_label_prior, remap_prior
from fer_lightning.data.synthetic import write_synthetic
from fer_lightning.errors import ConfigurationError
from fer_lightning.losses import FPDLS, CrossEntropy, build_classification_loss
from fer_lightning.models import TimmClassifier

PRIOR_3 = [[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.25, 0.25, 0.5]]


def test_fpdls_equals_a_hand_computation():
    logits = [1.0, 2.0, 0.5]
    label, alpha, gamma = 0, 0.8, 2.0
    exps = [math.exp(z) for z in logits]
    probabilities = [e / sum(exps) for e in exps]
    targets = [alpha * (c == label) + (1 - alpha) * PRIOR_3[label][c] for c in range(3)]
    expected = -sum(t * (1 - p) ** gamma * math.log(p) for t, p in zip(targets, probabilities))
    loss = FPDLS(PRIOR_3, alpha=alpha, gamma=gamma)(torch.tensor([logits]), torch.tensor([label]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # A batch is the mean of its samples.
    second = FPDLS(PRIOR_3, alpha, gamma)(torch.tensor([[0.0, -1.0, 3.0]]), torch.tensor([2]))
    batch = FPDLS(PRIOR_3, alpha, gamma)(torch.tensor([logits, [0.0, -1.0, 3.0]]), torch.tensor([label, 2]))
    assert batch.item() == pytest.approx((expected + second.item()) / 2, rel=1e-6)


def test_fpdls_special_cases():
    torch.manual_seed(0)
    logits, labels = torch.randn(16, 3) * 2, torch.randint(0, 3, (16,))
    cross_entropy = F.cross_entropy(logits, labels, reduction="none")
    true_class_probability = torch.exp(-cross_entropy)
    focal = ((1 - true_class_probability) ** 2 * cross_entropy).mean()
    assert torch.allclose(FPDLS(PRIOR_3, alpha=1.0, gamma=2.0)(logits, labels), focal, atol=1e-6)
    assert torch.allclose(
        FPDLS(PRIOR_3, alpha=1.0, gamma=0.0)(logits, labels), cross_entropy.mean(), atol=1e-6
    )
    smoothed = F.cross_entropy(logits, labels, label_smoothing=0.1)
    assert torch.allclose(FPDLS.uniform(3, alpha=0.9)(logits, labels), smoothed, atol=1e-6)


def test_fpdls_computes_in_fp32_under_autocast():
    logits = torch.randn(4, 3, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = FPDLS(PRIOR_3)(logits, torch.tensor([0, 1, 2, 0]))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(FPDLS(PRIOR_3)(logits.float(), torch.tensor([0, 1, 2, 0])).item())


def test_a_prior_must_be_square_and_row_stochastic():
    with pytest.raises(ConfigurationError, match=r"row 1 sums to 0\.9"):
        FPDLS([[1.0, 0.0], [0.5, 0.4]])
    with pytest.raises(ConfigurationError, match=r"expected a 3×3 matrix"):
        build_classification_loss("fpdls", 3, loss_prior=[[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ConfigurationError, match="needs a prior matrix"):
        build_classification_loss("fpdls", 3)
    with pytest.raises(ConfigurationError, match="apply to loss=fpdls or pdls"):
        build_classification_loss("cross_entropy", 3, loss_prior="uniform")
    official = build_classification_loss("pdls", 3, dataset_prior=PRIOR_3)
    assert (official.alpha, official.gamma) == (0.5, 0.0)


def test_prior_from_ferplus_votes_before_setup(tmp_path):
    """The CLI asks for the prior before setup: it comes from the files as read, and setup reuses them."""
    write_synthetic("ferplus", tmp_path, num_images=80, seed=3, progress=False)
    datamodule = FER2013DataModule(
        root=str(tmp_path), labels="ferplus", batch_size=4, num_workers=0, img_size=32
    )
    prior = datamodule.vote_prior()
    assert not datamodule.tables  # not set up by it
    train = datamodule._read_tables()["train"]
    for label in np.unique(train.labels):
        assert np.allclose(prior[label], train.extras["votes"][train.labels == label].mean(axis=0))
    assert np.allclose(prior.sum(axis=1), 1.0)
    datamodule.setup("fit")
    assert datamodule.tables["train"] is train
    assert (
        FER2013DataModule(root=str(tmp_path), batch_size=4).vote_prior() is None
    )  # FER2013 labels: no votes


def test_remap_to_rafdb_keeps_rows_stochastic():
    remapped, note = remap_prior(FERPLUS_RELEASED_PRIOR, FERPLUS_CLASS_NAMES, RAFDB_CLASS_NAMES)
    assert remapped.shape == (7, 7)
    assert np.allclose(remapped.sum(axis=1), 1.0)
    assert "dropped contempt" in note
    ferplus = np.asarray(FERPLUS_RELEASED_PRIOR)
    fer_index = {name: FERPLUS_CLASS_NAMES.index(name) for name in FERPLUS_CLASS_NAMES}
    happiness, fear = RAFDB_CLASS_NAMES.index("Happiness"), RAFDB_CLASS_NAMES.index("Fear")
    row = ferplus[fer_index["happiness"], :7]  # contempt is FER+'s last column
    assert remapped[happiness, fear] == pytest.approx(row[fer_index["fear"]] / row.sum())


def test_remap_to_aihub_gives_unmatched_classes_a_one_hot_row():
    remapped, note = remap_prior(FERPLUS_RELEASED_PRIOR, FERPLUS_CLASS_NAMES, AIHUB_CLASS_NAMES)
    assert np.allclose(remapped.sum(axis=1), 1.0)
    for name in ("당황", "불안", "상처"):  # panic, anxiety, hurt: FER+ has no such class
        index = AIHUB_CLASS_NAMES.index(name)
        assert remapped[index, index] == 1.0 and remapped[:, index].sum() == 1.0
    assert "one-hot" in note
    same_order, note = dataset_label_prior(None, FERPLUS_CLASS_NAMES, "FER2013")
    assert np.allclose(same_order, FERPLUS_RELEASED_PRIOR, atol=1e-5) and "released prior" in note


def test_the_model_trains_and_evaluates_with_its_configured_loss():
    model = TimmClassifier(backbone="resnet10t", num_classes=3, loss="fpdls", loss_prior=PRIOR_3)
    assert isinstance(model.criterion, FPDLS) and (model.criterion.alpha, model.criterion.gamma) == (0.8, 2.0)
    logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    assert torch.equal(model.classification_loss(logits, labels), FPDLS(PRIOR_3)(logits, labels))
    model.update_evaluation("val", logits, labels)
    assert model.eval_loss["val"].compute().item() == pytest.approx(FPDLS(PRIOR_3)(logits, labels).item())
    assert isinstance(TimmClassifier(backbone="resnet10t", num_classes=3).criterion, CrossEntropy)
    with pytest.raises(ConfigurationError, match="needs a prior matrix"):
        TimmClassifier(backbone="resnet10t", num_classes=3, loss="fpdls")


def test_fpdls_on_btn_with_rafdb_data_through_the_cli(tmp_path, caplog):
    loss_calls = []

    def count_loss_calls(cli):
        configured = cli.model.classification_loss

        def counted(logits, labels):
            loss_calls.append(logits.shape)
            return configured(logits, labels)

        cli.model.classification_loss = counted

    with caplog.at_level(logging.INFO):
        cli = fast_dev_run(
            "btn_synthetic.yaml",
            tmp_path,
            "--data.synthetic_size=80",
            "--model.init_args.loss=fpdls",
            before_fit=count_loss_calls,
        )
    assert len(loss_calls) == 4  # the ViT, BT and CBA terms of one training step, and one validation batch
    finite_metrics(cli, "train/loss_step", "val/loss", "val/acc")
    expected, _ = remap_prior(FERPLUS_RELEASED_PRIOR, FERPLUS_CLASS_NAMES, RAFDB_CLASS_NAMES)
    assert isinstance(cli.model.criterion, FPDLS)
    assert torch.allclose(cli.model.criterion.prior, torch.tensor(expected, dtype=torch.float32))
    assert set(cli.model.loss_terms) == {"loss_vit", "loss_bt", "loss_cba"}
    assert "RAF-DB: no annotator votes; F-PDLS prior = FER+'s released prior" in caplog.text
