"""ARBEx: shapes, the parameters it adds, reliability balancing by hand, the anchor and center losses in
our and the official form, the resumable trust ramp, frozen IR-50, and its configs through the CLI
(batch-independent predictions: tests/test_batch_independence.py)."""

from __future__ import annotations

import csv
import glob
import math
from pathlib import Path

import pytest
import torch
from cli_helpers import EXPERIMENTS, fast_dev_run, quickstart_args, write_tiny_rafdb
from test_batch_independence import predictions_alone_batched_and_permuted

from fer_lightning.cli import main
from fer_lightning.data.synthetic import write_synthetic
from fer_lightning.errors import ConfigurationError
from fer_lightning.losses import AnchorCenterLoss, AnchorSeparationLoss, inverse_frequency_weights
from fer_lightning.models.arbex import ARBEx, EmbeddingAnchors, normalized_confidence, reliability_balance
from fer_lightning.plots import read_metrics_csv

pytestmark = pytest.mark.filterwarnings("ignore:PosterBody")


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def paper_arbex():
    torch.manual_seed(0)
    return ARBEx(variant="paper", num_classes=7, temperature=2.0, delta=0.5).eval()


@pytest.fixture
def tiny_arbex():
    torch.manual_seed(0)
    return ARBEx(variant="tiny", num_classes=7)


def test_paper_shapes(paper_arbex):
    """768-d embedding, head logits, k = 10 anchors per class, similarity and attention per class."""
    images = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        embeddings = paper_arbex.body.embed(images)
        outputs = paper_arbex.balanced_outputs(embeddings, trust=0.5)
    assert embeddings.shape == (3, 768)
    assert paper_arbex.anchors.anchors.shape == (7, 10, 768)
    assert outputs["distances"].shape == (3, 7, 10)
    for name in ("logits", "prediction", "similarity", "attention", "final"):
        assert outputs[name].shape == (3, 7), name
    for name in ("prediction", "similarity", "attention", "final"):
        torch.testing.assert_close(outputs[name].sum(-1), torch.ones(3), msg=name)
    # δ (0.5) and T (2.0) are separate (the official script silently sets δ = T).
    expected = (-outputs["distances"].flatten(1) / 0.5).softmax(-1).view(3, 7, 10).sum(-1)
    torch.testing.assert_close(outputs["similarity"], expected)
    torch.testing.assert_close(outputs["prediction"], outputs["logits"].softmax(-1))
    torch.testing.assert_close(outputs["logits"], paper_arbex.head(embeddings) / 2.0)


def test_added_parameters_are_head_anchors_attention(paper_arbex):
    """Head 768→384→192→96→N (Linear + BatchNorm affine), N·k·768 anchors, and the attention: Q/K/V
    768→N·m plus the single-head in/out projections of width E = N·m (m = 1 as the official script)."""
    n, k, d = 7, 10, 768
    head = sum(i * o + o + 2 * o for i, o in ((d, 384), (384, 192), (192, 96))) + 96 * n + n
    width = n * 1
    attention = 3 * (d * width + width) + (3 * width * width + 3 * width) + (width * width + width)
    assert (_count(paper_arbex.head), _count(paper_arbex.anchors), _count(paper_arbex.attention)) == (
        head,
        n * k * d,
        attention,
    )
    # The body is POSTER++'s without its linear classifier.
    from fer_lightning.models.posterpp import POSTERPP

    assert _count(paper_arbex.body) == _count(POSTERPP(variant="paper", num_classes=n).body) - (d * n + n)
    assert _count(ARBEx(variant="tiny", num_classes=n, attention_slots=3).attention) == (
        3 * (96 * 21 + 21) + 4 * (21 * 21 + 21)
    )


def test_reliability_balancing_by_hand():
    """A 3-class example, each number worked out by hand from conf(q) = 1 − H(q)/log 3."""
    log3 = math.log(3)
    p = torch.tensor([[0.5, 0.5, 0.0]])  # H = log 2
    s = torch.tensor([[1.0, 0.0, 0.0]])  # one-hot: conf 1
    a = torch.tensor([[0.25, 0.25, 0.5]])  # H = 1.5·log 2
    conf_p, conf_s, conf_a = 1 - math.log(2) / log3, 1.0, 1 - 1.5 * math.log(2) / log3
    torch.testing.assert_close(
        normalized_confidence(torch.cat([p, s, a])), torch.tensor([conf_p, conf_s, conf_a])
    )
    corr = [
        (s_i * conf_s + a_i * conf_a) / (conf_s + conf_a) for s_i, a_i in zip((1, 0, 0), (0.25, 0.25, 0.5))
    ]
    corrected = [conf_p * p_i + (1 - conf_p) * c_i for p_i, c_i in zip((0.5, 0.5, 0.0), corr)]
    final = [0.7 * p_i + 0.3 * c_i for p_i, c_i in zip((0.5, 0.5, 0.0), corrected)]
    torch.testing.assert_close(reliability_balance(p, s, a, trust=0.3), torch.tensor([final]))

    uniform = torch.full((1, 3), 1 / 3)
    one_hot = torch.tensor([[0.0, 1.0, 0.0]])
    # conf(p) = 1: the prediction is kept whatever the correction says.
    torch.testing.assert_close(reliability_balance(s, uniform, one_hot, trust=1.0), s)
    # conf(p) = 0 and conf(s) = 0: p' is the attention alone; trust 0.5 mixes it half and half.
    torch.testing.assert_close(
        reliability_balance(uniform, uniform, one_hot, trust=0.5), torch.tensor([[1 / 6, 2 / 3, 1 / 6]])
    )
    # conf(s) = conf(a) = 0 (0/0 in the official code): the correction is their mean, finite.
    torch.testing.assert_close(reliability_balance(uniform, uniform, uniform, trust=1.0), uniform)
    # Trust 0: the plain prediction.
    torch.testing.assert_close(reliability_balance(p, s, a, trust=0.0), p)


def test_anchor_loss_is_bounded_ours_and_the_official_formula_upstream():
    torch.manual_seed(0)
    anchors = torch.randn(4, 3, 16)
    ours = AnchorSeparationLoss("margin", margin=0.5)
    # Bounded: margin when every anchor coincides, 0 once the classes are far apart, never below 0.
    assert ours(torch.zeros(4, 3, 16)).item() == pytest.approx(0.5)
    assert ours(anchors * 1000).item() == 0.0
    assert 0.0 <= ours(anchors).item() <= 0.5
    # Only anchors of different classes repel: one class's own anchors may coincide.
    same_class_together = torch.arange(4.0)[:, None, None].expand(4, 3, 16).clone()
    assert ours(same_class_together).item() == 0.0
    # Upstream: −Σ_{c,c'} ‖A_c − A_c'‖² / √D / k², with A_c the class's k anchors flattened.
    upstream = AnchorSeparationLoss("upstream")
    by_hand = (
        -sum(((anchors[c].flatten() - anchors[c2].flatten()) ** 2).sum() for c in range(4) for c2 in range(4))
        / math.sqrt(16)
        / 3
        / 3
    )
    torch.testing.assert_close(upstream(anchors), by_hand)
    assert upstream(anchors * 1000).item() < -1e6  # unbounded below
    # Official zero initialisation: no gradient at the start.
    zeros = torch.zeros(4, 3, 16, requires_grad=True)
    upstream(zeros).backward()
    assert zeros.grad.abs().max() == 0


def test_center_loss_detaches_the_confidence_unless_upstream():
    distances = torch.tensor([[[3.0, 1.0], [2.0, 5.0]], [[4.0, 4.0], [0.5, 2.0]]])  # (B=2, N=2, k=2)
    labels = torch.tensor([0, 1])
    for detach in (True, False):
        confidence = torch.tensor([0.5, 1.0], requires_grad=True)
        loss = AnchorCenterLoss(embedding_dim=4, detach_confidence=detach)(distances, labels, confidence)
        assert loss.item() == pytest.approx((1.0 * 0.5 + 0.5 * 1.0) / 2 / 2)  # nearest anchor of the label
        assert loss.requires_grad != detach


def test_class_weights_are_inverse_frequency():
    weights = inverse_frequency_weights(torch.tensor([10, 30, 20, 0]))
    torch.testing.assert_close(weights, torch.tensor([1.5, 0.5, 0.75, 0.0]))


def test_frozen_ir_stays_in_eval_mode_and_out_of_the_optimiser():
    torch.manual_seed(0)
    model = ARBEx(variant="tiny", num_classes=7, freeze_ir=True, class_weighting="none").train()
    assert not model.body.ir50.training and model.head.training
    groups = {group["name"]: group for group in model.parameter_groups()}
    assert set(groups) == {"body", "head", "anchors", "attention"}
    ir_params = {id(p) for p in model.body.ir50.parameters()}
    assert not ir_params & {id(p) for p in groups["body"]["params"]}
    statistics = [b.clone() for b in model.body.ir50.buffers()]
    loss, _ = model.training_loss(torch.randn(6, 3, 64, 64), torch.randint(0, 7, (6,)))
    loss.backward()
    assert all(torch.equal(a, b) for a, b in zip(statistics, model.body.ir50.buffers()))
    assert all(p.grad is None for p in model.body.ir50.parameters())
    # Upstream: frozen parameters, but the module follows the parent into train mode.
    drifting = ARBEx(variant="tiny", num_classes=7, freeze_ir=True, frozen_bn_mode="train_upstream").train()
    assert drifting.body.ir50.training
    # freeze_ir unset: frozen exactly when IR-50 weights are given (none here).
    assert not ARBEx(variant="tiny", num_classes=7).freeze_ir


def test_test_time_correction_is_per_image_and_uses_the_anchors(tiny_arbex):
    """With the trust reached in training, the anchor correction changes predictions, image by image."""
    tiny_arbex.eval()
    images = torch.randn(6, 3, 64, 64)
    with torch.no_grad():
        plain = tiny_arbex(images)
        tiny_arbex.test_time_correction = True
        tiny_arbex.trust_reached.fill_(1.0)
        corrected = tiny_arbex(images)
    assert (corrected.softmax(-1) - plain.softmax(-1)).abs().max() > 1e-3
    alone, batch, permuted = predictions_alone_batched_and_permuted(tiny_arbex, images)
    torch.testing.assert_close(alone, batch, rtol=0, atol=1e-5)
    torch.testing.assert_close(permuted, batch, rtol=0, atol=1e-5)


def test_the_balanced_training_output_does_depend_on_the_batch(tiny_arbex):
    """The batch attention mixes the images of a batch (training only, never at prediction)."""
    torch.manual_seed(1)
    embeddings = torch.randn(6, 96)
    with torch.no_grad():
        alone = torch.cat([tiny_arbex.attention(embeddings[i : i + 1]) for i in range(6)])
        together = tiny_arbex.attention(embeddings)
    assert (alone - together).abs().max() > 1e-4


# --- through the CLI --------------------------------------------------------------------------------------


def _trust_by_step(run: Path) -> dict[int, float]:
    return {step: value for _, step, value in read_metrics_csv(run / "metrics.csv")["train/trust"]}


@pytest.fixture(scope="module")
def tiny_rafdb(tmp_path_factory):
    return write_tiny_rafdb(tmp_path_factory.mktemp("arbex_rafdb"), num_images=48, seed=2)


def test_trust_ramp_continues_after_a_resume(tiny_rafdb, tmp_path):
    """τ = global_step / (steps of the whole run): a run resumed from its epoch-0 checkpoint continues the
    ramp where it stopped, step for step as the uninterrupted run."""
    args = quickstart_args(
        tiny_rafdb,
        tmp_path,
        "--trainer.max_epochs=2",
        "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=1",
        "--trainer.log_every_n_steps=1",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.save_top_k=-1",
        "--trainer.callbacks.filename={epoch}",
        batch_size=8,
        config=EXPERIMENTS / "arbex_synthetic.yaml",
    )
    main(["fit", *args])
    [run] = glob.glob(str(tmp_path / "arbex_synthetic" / "version_*"))
    run = Path(run)
    straight = _trust_by_step(run)
    with open(run / "metrics.csv") as handle:
        logged = {key: float(value) for row in csv.DictReader(handle) for key, value in row.items() if value}
    # each parameter group's learning rate is logged under its name (the config's 3e-4 body, 1e-3 rest)
    assert logged["train/lr_body"] == pytest.approx(3e-4) and logged["train/lr_anchors"] == pytest.approx(
        1e-3
    )
    steps = len(straight)
    assert steps >= 6 and sorted(straight) == list(range(steps))
    assert all(value == pytest.approx(step / steps) for step, value in straight.items())

    main(["fit", *args, f"--ckpt_path={run / 'checkpoints' / 'epoch=0.ckpt'}"])
    assert _trust_by_step(run) == straight
    trained = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert trained["trust_reached"].item() == pytest.approx((steps - 1) / steps)


@pytest.fixture(scope="module")
def synthetic_affectnet(tmp_path_factory):
    root = tmp_path_factory.mktemp("arbex_affectnet")
    write_synthetic("affectnet_csv", root, num_images=60, seed=3, progress=False)
    return root


@pytest.mark.parametrize(
    ("config", "num_classes"),
    [
        ("arbex_rafdb.yaml", 7),
        # The 7-class AffectNet reading runs in the BTN and POSTER++ config tests; here its twin is enough.
        pytest.param("arbex_affectnet7.yaml", 7, marks=pytest.mark.slow),
        ("arbex_affectnet8.yaml", 8),
        ("arbex_synthetic.yaml", 7),
    ],
)
def test_config_fast_dev_run(config, num_classes, tiny_rafdb, synthetic_affectnet, tmp_path):
    """Each config trains one batch through the CLI, with its four learning-rate groups and the NLL
    weights of its training split."""
    root = synthetic_affectnet if "affectnet" in config else tiny_rafdb
    cli = fast_dev_run(config, tmp_path, f"--data.root={root}", "--data.batch_size=2")
    model, trainer = cli.model, cli.trainer
    assert type(model) is ARBEx and model.num_classes == num_classes and trainer.global_step == 1
    [optimizer] = trainer.optimizers
    assert type(optimizer) is torch.optim.Adam
    learning_rates = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert learning_rates == {name: pytest.approx(lr) for name, lr in model.learning_rates.items()}
    labels = torch.as_tensor(cli.datamodule.tables["train"].labels)
    expected = inverse_frequency_weights(torch.bincount(labels, minlength=num_classes))
    torch.testing.assert_close(model.class_weights, expected)


def test_synthetic_config_lowers_the_loss(tiny_rafdb, tmp_path):
    """A few steps of the tiny ARBEx (the config as shipped) on one repeated batch: the loss falls. A long
    trust ramp keeps the anchor terms near 0 here, so the loss is the NLL moved by its own gradient (the
    center loss alone also lowers the NLL of the balanced distribution, through the anchor similarity)."""
    main(
        [
            "fit",
            "--config",
            str(EXPERIMENTS / "arbex_synthetic.yaml"),
            f"--data.root={tiny_rafdb}",
            "--data.num_workers=0",
            f"--trainer.logger.init_args.save_dir={tmp_path}",
            "--trainer.enable_model_summary=false",
            "--trainer.enable_progress_bar=false",
            "--data.batch_size=8",
            "--trainer.overfit_batches=1",
            "--trainer.max_steps=10",
            "--trainer.max_epochs=10",
            "--trainer.log_every_n_steps=1",
            "--trainer.limit_val_batches=0",
            "--model.init_args.trust_ramp_steps=1000",
        ]
    )
    [metrics] = glob.glob(str(tmp_path / "arbex_synthetic" / "version_*" / "metrics.csv"))
    with open(metrics) as handle:
        rows = list(csv.DictReader(handle))
    losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    assert len(losses) == 10
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3, losses


def test_similarity_softmax_runs_over_all_anchors():
    """The softmax spans all N·k anchors (not each class's k): a class with more nearby anchors gets more."""
    distances = torch.tensor([[[1.0, 1.0], [1.0, 9.0]]])  # (B=1, N=2, k=2)
    similarity = EmbeddingAnchors.similarity(distances, delta=1.0)
    weights = torch.tensor([1.0, 1.0, 1.0, math.exp(-8)])
    torch.testing.assert_close(similarity, torch.tensor([[2.0, 1.0 + math.exp(-8)]]) / weights.sum())


def test_another_classification_loss_is_refused_not_ignored():
    with pytest.raises(ConfigurationError, match="ARBEx trains with its own loss"):
        ARBEx(variant="tiny", num_classes=7, loss="fpdls", loss_prior="uniform")
