"""SAM through manual optimisation: two gradient passes per step, the update SAM's equations give."""

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fer_lightning.models.base import FERClassifier
from fer_lightning.optim import sam_perturb, sam_restore

RHO, LR = 0.05, 0.5


class _LinearModel(FERClassifier):
    def __init__(self, **kwargs):
        super().__init__(num_classes=3, optimizer=lambda p: torch.optim.SGD(p, lr=LR), **kwargs)
        self.linear = nn.Linear(4, 3)
        self.forward_calls = 0

    def forward(self, images):
        self.forward_calls += 1
        return self.linear(images)


def _batch():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(8, 4, generator=generator), torch.randint(0, 3, (8,), generator=generator)


def _fit_one_step(model, **trainer_kwargs):
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        limit_val_batches=0,
        **trainer_kwargs,
    )
    trainer.fit(model, DataLoader(TensorDataset(*_batch()), batch_size=8))


def _loss_gradient(weight, bias, images, labels):
    weight, bias = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    loss = nn.functional.cross_entropy(images @ weight.T + bias, labels)
    return torch.autograd.grad(loss, (weight, bias))


def test_sam_step_matches_the_equations():
    torch.manual_seed(0)
    model = _LinearModel(sam_rho=RHO)
    weight, bias = model.linear.weight.detach().clone(), model.linear.bias.detach().clone()
    images, labels = _batch()
    first = _loss_gradient(weight, bias, images, labels)
    norm = torch.sqrt(sum((g**2).sum() for g in first))
    perturbed = [p + RHO * g / norm for p, g in zip((weight, bias), first)]
    second = _loss_gradient(*perturbed, images, labels)
    expected = [p - LR * g for p, g in zip((weight, bias), second)]
    _fit_one_step(model)
    assert model.forward_calls == 2  # two gradient passes for one optimiser step
    torch.testing.assert_close(model.linear.weight.detach(), expected[0])
    torch.testing.assert_close(model.linear.bias.detach(), expected[1])
    # ... and not what one plain SGD step would give.
    assert not torch.allclose(model.linear.weight.detach(), weight - LR * first[0], atol=1e-5)


def test_without_sam_one_pass():
    model = _LinearModel()
    _fit_one_step(model)
    assert model.forward_calls == 1


def test_sam_runs_under_bf16_autocast():
    model = _LinearModel(sam_rho=RHO)
    before = model.linear.weight.detach().clone()
    _fit_one_step(model, precision="bf16-mixed")
    assert torch.isfinite(model.linear.weight).all() and not torch.equal(before, model.linear.weight)


def test_perturbation_ignores_the_amp_loss_scale_and_skips_overflow():
    """Under fp16 the first-pass gradients are still multiplied by the grad scaler's factor."""
    parameter = nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
    optimizer = torch.optim.Adam([parameter])
    offsets = []
    for loss_scale in (1.0, 65536.0):
        parameter.grad = torch.tensor([0.3, -0.4, 0.0]) * loss_scale
        perturbations = sam_perturb(optimizer, rho=RHO)
        offsets.append(perturbations[0][1].clone())
        sam_restore(perturbations)
        assert parameter.tolist() == [1.0, 2.0, 3.0]
    torch.testing.assert_close(offsets[0], torch.tensor([0.03, -0.04, 0.0]))
    torch.testing.assert_close(offsets[1], offsets[0])
    parameter.grad = torch.tensor([float("inf"), 0.0, 0.0])
    assert sam_perturb(optimizer, rho=RHO) == []  # a non-finite norm perturbs nothing
