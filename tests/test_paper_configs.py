"""Every POSTER++/BTN experiment config runs one batch through the CLI on synthetic data, with its\npaper's recipe in effect: SAM (two passes per step), optimiser, learning rate, scheduler, batch size,\naugmentation and sampler."""

import csv
import glob
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import count_training_loss_calls, run_cli

from fer_lightning.cli import main
from fer_lightning.data.samplers import ImbalancedDatasetSampler
from fer_lightning.data.synthetic import write_synthetic

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"

pytestmark = pytest.mark.filterwarnings("ignore:PosterBody")


@pytest.fixture(scope="module")
def synthetic_rafdb(tmp_path_factory):
    root = tmp_path_factory.mktemp("rafdb")
    write_synthetic("rafdb", root, num_images=120, seed=3, progress=False)
    return root


@pytest.fixture(scope="module")
def synthetic_affectnet(tmp_path_factory):
    root = tmp_path_factory.mktemp("affectnet")
    write_synthetic("affectnet_csv", root, num_images=120, seed=3, progress=False)
    return root


def _common(root, save_dir):
    return [
        f"--data.root={root}",
        "--data.num_workers=0",
        f"--trainer.logger.init_args.save_dir={save_dir}",
        "--trainer.enable_model_summary=false",
    ]


# The recipe each config must carry: the BTN paper's (lr, batch, erasing, sampler per dataset) or the
# POSTER++ code's, with SAM(ρ 0.05) around Adam without weight decay and ExponentialLR(γ 0.98).
# erasing = (scale, p) of the random erasing after the flip.
PAPER_RECIPES = {
    "btn_rafdb.yaml": dict(
        model="BTN", lr=2e-5, batch_size=64, erasing=((0.02, 0.1), 0.5), sampler="shuffle"
    ),
    "posterpp_rafdb.yaml": dict(
        model="POSTERPP", lr=3.5e-5, batch_size=144, erasing=((0.02, 0.1), 0.5), sampler="shuffle"
    ),
    "btn_affectnet7.yaml": dict(
        model="BTN",
        lr=0.8e-6,
        batch_size=144,
        erasing=((0.02, 0.1), 1.0),
        sampler="imbalanced",
        num_classes=7,
    ),
    "btn_affectnet8.yaml": dict(
        model="BTN", lr=1e-6, batch_size=144, erasing=((0.02, 0.1), 1.0), sampler="imbalanced", num_classes=8
    ),
    "posterpp_affectnet7.yaml": dict(
        model="POSTERPP",
        lr=1e-6,
        batch_size=144,
        erasing=((0.05, 0.05), 1.0),
        sampler="imbalanced",
        num_classes=7,
    ),
    "posterpp_affectnet8.yaml": dict(
        model="POSTERPP",
        lr=1e-6,
        batch_size=144,
        erasing=((0.05, 0.05), 1.0),
        sampler="imbalanced",
        num_classes=8,
    ),
}


def _paper_size_fast_dev_run(config, root, save_dir):
    """One batch of 2 through the paper-size model as configured; returns the CLI and the number of
    forward passes through the training objective."""
    calls = []
    cli = run_cli(
        [
            "fit",
            "--config",
            str(EXPERIMENTS / config),
            *_common(root, save_dir),
            "--data.batch_size=2",
            "--trainer.fast_dev_run=true",
        ],
        before_fit=lambda cli: calls.append(count_training_loss_calls(cli)),
    )
    return cli, len(calls[0])


def _check_paper_recipe(config, cli, forward_passes):
    recipe = PAPER_RECIPES[config]
    model, datamodule, trainer = cli.model, cli.datamodule, cli.trainer
    assert type(model).__name__ == recipe["model"]
    assert getattr(model, "lambda_vit", 2.0) == 2.0  # eq. 9's λ, BTN only
    # SAM is on: manual optimisation, the objective evaluated twice (at w and at w + ε) for one step.
    assert model.sam_rho == 0.05 and not model.automatic_optimization
    assert (trainer.global_step, forward_passes) == (1, 2)
    [optimizer] = trainer.optimizers
    assert type(optimizer) is torch.optim.Adam
    group = optimizer.param_groups[0]
    assert (group["initial_lr"], group["weight_decay"]) == (pytest.approx(recipe["lr"]), 0.0)
    [scheduler] = [config.scheduler for config in trainer.lr_scheduler_configs]
    assert isinstance(scheduler, torch.optim.lr_scheduler.ExponentialLR) and scheduler.gamma == 0.98
    assert group["lr"] == pytest.approx(recipe["lr"] * 0.98)  # stepped once at the epoch's end
    # The batch size as configured (the run itself overrides it to 2).
    written = yaml.safe_load((EXPERIMENTS / config).read_text())["data"]["init_args"]
    assert written["batch_size"] == recipe["batch_size"]
    assert datamodule.hparams.img_size == 224 and model.num_classes == recipe.get("num_classes", 7)
    augmentations = {type(t).__name__: t for t in datamodule.datasets["train"].transform.transforms}
    scale, p = recipe["erasing"]
    assert augmentations["HorizontalFlip"].p == 0.5
    assert (tuple(augmentations["Erasing"].scale), augmentations["Erasing"].p) == (scale, p)
    sampler = trainer.train_dataloader.sampler.sampler  # inside the wrapper that keys samples by epoch
    assert isinstance(sampler, ImbalancedDatasetSampler) == (recipe["sampler"] == "imbalanced")


@pytest.mark.parametrize("config", ["btn_rafdb.yaml", "posterpp_rafdb.yaml"])
def test_rafdb_paper_config_fast_dev_run(config, synthetic_rafdb, tmp_path):
    """Paper-size models at batch 2: the recipe (SAM, optimiser, scheduler, augmentation) runs as configured."""
    _check_paper_recipe(config, *_paper_size_fast_dev_run(config, synthetic_rafdb, tmp_path))


@pytest.mark.parametrize(
    "config",
    ["btn_affectnet7.yaml", "btn_affectnet8.yaml", "posterpp_affectnet7.yaml", "posterpp_affectnet8.yaml"],
)
def test_affectnet_paper_config_fast_dev_run(config, synthetic_affectnet, tmp_path):
    """Paper-size models, imbalanced sampler, erasing p = 1, on AffectNet's CSV release (synthetic)."""
    _check_paper_recipe(config, *_paper_size_fast_dev_run(config, synthetic_affectnet, tmp_path))


def test_btn_synthetic_config_fast_dev_run(synthetic_rafdb, tmp_path):
    """The CPU config: the tiny BTN at 64 px, plain Adam 3e-4 (no SAM: one pass per step), γ 0.95."""
    cli, forward_passes = _paper_size_fast_dev_run("btn_synthetic.yaml", synthetic_rafdb, tmp_path)
    assert cli.model.sam_rho is None and cli.model.automatic_optimization
    assert (cli.trainer.global_step, forward_passes) == (1, 1)
    [optimizer] = cli.trainer.optimizers
    assert type(optimizer) is torch.optim.Adam and optimizer.param_groups[0]["initial_lr"] == 3e-4
    assert cli.trainer.lr_scheduler_configs[0].scheduler.gamma == 0.95
    assert cli.datamodule.hparams.img_size == 64 and cli.model.body.level_sizes == (16, 8, 4)


def test_btn_synthetic_lowers_the_loss(synthetic_rafdb, tmp_path):
    """A few steps of the tiny BTN (the config as shipped) on one repeated batch: the training loss falls."""
    main(
        [
            "fit",
            "--config",
            str(EXPERIMENTS / "btn_synthetic.yaml"),
            *_common(synthetic_rafdb, tmp_path),
            "--data.batch_size=16",
            "--trainer.overfit_batches=1",
            "--trainer.max_steps=12",
            "--trainer.max_epochs=12",
            "--trainer.log_every_n_steps=1",
            "--trainer.limit_val_batches=0",
        ]
    )
    [metrics] = glob.glob(str(tmp_path / "btn_synthetic" / "version_*" / "metrics.csv"))
    with open(metrics) as handle:
        losses = [float(r["train/loss_step"]) for r in csv.DictReader(handle) if r.get("train/loss_step")]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3, losses
