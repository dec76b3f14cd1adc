"""Every POSTER++/BTN experiment config parses and runs one batch through the CLI on synthetic data."""

import csv
import glob
from pathlib import Path

import pytest

from fer_lightning.cli import main
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


def _paper_size_fast_dev_run(config, root, save_dir):
    main(
        [
            "fit",
            "--config",
            str(EXPERIMENTS / config),
            *_common(root, save_dir),
            "--data.batch_size=2",
            "--trainer.fast_dev_run=true",
        ]
    )


@pytest.mark.parametrize("config", ["btn_rafdb.yaml", "posterpp_rafdb.yaml", "btn_synthetic.yaml"])
def test_config_fast_dev_run(config, synthetic_rafdb, tmp_path):
    # Paper-size models at batch 2: the recipe (SAM, optimiser, scheduler, augmentation) runs as configured.
    _paper_size_fast_dev_run(config, synthetic_rafdb, tmp_path)


@pytest.mark.parametrize(
    "config",
    ["btn_affectnet7.yaml", "btn_affectnet8.yaml", "posterpp_affectnet7.yaml", "posterpp_affectnet8.yaml"],
)
def test_affectnet_config_fast_dev_run(config, synthetic_affectnet, tmp_path):
    """Paper-size models, imbalanced sampler, erasing p = 1, on AffectNet's CSV release (synthetic)."""
    _paper_size_fast_dev_run(config, synthetic_affectnet, tmp_path)


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
