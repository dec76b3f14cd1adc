"""Distributed (DDP, gloo on CPU) runs give the one-process results.

* BTN's global-batch CBA: 2 processes with their shares of a batch give the outputs and gradients of
  1 process with the whole batch, with every CBA backend (spawned gloo processes).
* ``fer-lightning test`` / ``validate`` under 2-process DDP report exactly the 1-process metrics on a
  split of odd size (Lightning's default sampler would count a padded duplicate), and the loss is the
  mean over every sample of both processes.
* ``fer-lightning fit`` of the BTN config under DDP with ``cba_scope global`` runs.

The CLI runs are subprocesses (``python -m fer_lightning.cli``): Lightning's DDP launcher starts the
second process by re-running the command line.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from cli_helpers import run_cli
from ops_helpers import TRITON_RUNS_ON_CPU
from torch.utils.data import TensorDataset

from fer_lightning.cli import main
from fer_lightning.data import FERDataModule
from fer_lightning.models.base import FERClassifier
from fer_lightning.models.btn import BatchTransformer

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "experiments" / "quickstart.yaml")
BTN_SYNTHETIC = str(REPO / "experiments" / "btn_synthetic.yaml")
DDP_2_CPU = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]

# ---- global-batch CBA: 2 processes x their share == 1 process x the whole batch -------------------

BATCH, CHANNELS, CLASSES, SIDE = 8, 6, 7, 3
# Uneven on purpose: a batch can lose a skipped bad image on one rank.
SHARES = (slice(0, 5), slice(5, 8))
CBA_BACKENDS = ["reference", "fast"] + (["triton"] if TRITON_RUNS_ON_CPU else [])


def _cba_step(backend: str, rows: slice) -> dict[str, torch.Tensor]:
    """Forward and backward of a global-scope batch transformer on ``rows`` of one fixed batch.

    The loss is a sum over the rows, so the two processes' losses add up to the one-process loss and
    gradients of shared parameters add up likewise.
    """
    generator = torch.Generator().manual_seed(0)
    f_mla = torch.randn(BATCH, CHANNELS, SIDE, SIDE, generator=generator)[rows].requires_grad_()
    p_vit = torch.randn(BATCH, CLASSES, generator=generator)[rows].requires_grad_()
    loss_weights = torch.randn(2, BATCH, CLASSES, generator=generator)[:, rows]
    torch.manual_seed(0)
    module = BatchTransformer(CHANNELS, CLASSES, SIDE * SIDE, backend=backend, scope="global").train()
    p_cba, p_bt = module(f_mla, p_vit)
    ((p_cba * loss_weights[0]).sum() + (p_bt * loss_weights[1]).sum()).backward()
    result = {"p_cba": p_cba.detach(), "p_bt": p_bt.detach(), "f_mla": f_mla.grad, "p_vit": p_vit.grad}
    for name, parameter in module.named_parameters():
        grad = parameter.grad.clone()
        if dist.is_initialized():
            dist.all_reduce(grad)  # what DDP's averaging does, up to the factor of the world size
        result[f"param.{name}"] = grad
    return result


def _cba_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    # A forked child must not enter the OpenMP pool its parent already started (it would wait forever
    # for threads that were not forked); DataLoader workers do the same.
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        for backend in CBA_BACKENDS:
            torch.save(_cba_step(backend, SHARES[rank]), os.path.join(out_dir, f"{backend}_{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_cba(tmp_path_factory) -> Path:
    out_dir = tmp_path_factory.mktemp("global_cba")
    # Forked, not spawned: a spawned child would spend most of the test importing torch and Lightning again.
    mp.start_processes(
        _cba_worker, args=(2, str(out_dir / "init"), str(out_dir)), nprocs=2, join=True, start_method="fork"
    )
    return out_dir


@pytest.mark.parametrize("backend", CBA_BACKENDS)
def test_global_cba_on_two_processes_equals_one_process_with_the_whole_batch(two_process_cba, backend):
    whole = _cba_step(backend, slice(0, BATCH))  # not distributed: global is local
    shares = [torch.load(two_process_cba / f"{backend}_{rank}.pt") for rank in range(2)]
    for name in ("p_cba", "p_bt", "f_mla", "p_vit"):
        torch.testing.assert_close(torch.cat([share[name] for share in shares]), whole[name], msg=name)
    for name in (key for key in whole if key.startswith("param.")):
        for rank, share in enumerate(shares):
            torch.testing.assert_close(share[name], whole[name], msg=f"{name} on rank {rank}")


def test_cba_scope_is_checked():
    with pytest.raises(ValueError, match="cba_scope must be local or global"):
        BatchTransformer(CHANNELS, CLASSES, SIDE * SIDE, scope="world")


# ---- the CLI under 2-process DDP ---------------------------------------------------------------


@pytest.fixture(scope="module")
def odd_rafdb(tmp_path_factory) -> Path:
    """45 images: a test split of 9 and, with val_fraction 0.15, a validation split of 5."""
    root = tmp_path_factory.mktemp("odd_rafdb")
    main(["make-synthetic", "--format", "rafdb", "--out", str(root), "--num-images", "45", "--seed", "0"])
    return root


def _evaluation_args(root: Path, save_dir: Path) -> list[str]:
    return [
        "--config",
        QUICKSTART,
        f"--data.root={root}",
        "--data.synthetic_size=0",
        "--data.val_fraction=0.15",
        "--data.batch_size=4",
        "--data.num_workers=0",
        "--data.img_size=32",
        f"--trainer.logger.init_args.save_dir={save_dir}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]


def _run_module_cli(args: list[str], cwd: Path) -> None:
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "fer_lightning.cli", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def _logged_metrics(save_dir: Path, split: str) -> dict[str, float]:
    [metrics_file] = save_dir.rglob("metrics.csv")
    with open(metrics_file) as handle:
        rows = [row for row in csv.DictReader(handle) if row.get(f"{split}/acc")]
    [row] = rows
    return {name: float(value) for name, value in row.items() if name.startswith(f"{split}/") and value}


def _confusion_total(save_dir: Path, split: str) -> int:
    [confusion_file] = save_dir.rglob(f"confusion_matrix_{split}.csv")
    with open(confusion_file) as handle:
        next(handle)
        return sum(int(count) for line in handle for count in line.strip().split(",")[1:])


@pytest.mark.parametrize("command", ["test", pytest.param("validate", marks=pytest.mark.slow)])
def test_two_process_evaluation_reports_the_one_process_metrics(odd_rafdb, tmp_path, command):
    split = "test" if command == "test" else "val"
    one_process = run_cli([command, *_evaluation_args(odd_rafdb, tmp_path / "one"), "--trainer.devices=1"])
    samples = len(one_process.datamodule.datasets[split])
    assert samples % 2 == 1, "the split must be odd, else padding would go unnoticed"
    expected = {name: float(value) for name, value in one_process.trainer.callback_metrics.items()}

    _run_module_cli([command, *_evaluation_args(odd_rafdb, tmp_path / "two"), *DDP_2_CPU], cwd=tmp_path)
    measured = _logged_metrics(tmp_path / "two", split)
    assert _confusion_total(tmp_path / "two", split) == samples  # each sample counted once
    assert measured.keys() == {name for name in expected if name.startswith(f"{split}/")}
    for name, value in measured.items():
        # The loss sums in another order on two processes; everything else is counts.
        tolerance = 1e-6 if name == f"{split}/loss" else 0.0
        assert value == pytest.approx(expected[name], rel=tolerance, abs=tolerance), name


@pytest.mark.slow
def test_btn_fit_with_global_cba_runs_under_ddp(odd_rafdb, tmp_path):
    _run_module_cli(
        [
            "fit",
            "--config",
            BTN_SYNTHETIC,
            f"--data.root={odd_rafdb}",
            "--data.synthetic_size=0",
            "--data.batch_size=4",
            "--data.num_workers=0",
            "--data.img_size=32",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1",
            "--trainer.num_sanity_val_steps=0",
            f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
            "--trainer.enable_progress_bar=false",
            "--model.init_args.cba_scope=global",
            *DDP_2_CPU,
        ],
        cwd=tmp_path,
    )
    assert list((tmp_path / "runs").rglob("last.ckpt"))


# ---- the model's metrics under DDP with predictions fixed by the test (forked processes) -------------

# 9 samples, one of them wrong: 8/9. Lightning's padding sampler would score sample 0 twice (0.8).
TARGETS = [0, 1, 2, 0, 1, 2, 0, 1, 2]
PREDICTIONS = [0, 1, 2, 0, 1, 2, 0, 1, 1]


class _PassThrough(FERClassifier):
    """Its "images" are already logits, so the predictions are fixed by the test."""

    def forward(self, images):
        return images


class _FixedPredictions(FERDataModule):
    """A validation split of the test's logits and targets, served by the datamodule's own loaders."""

    CLASS_NAMES = ("a", "b", "c")

    def __init__(self) -> None:
        super().__init__(synthetic_size=1, batch_size=2, num_workers=0)

    def prepare_data(self) -> None:
        pass

    def setup(self, stage: str | None = None) -> None:
        logits = torch.nn.functional.one_hot(torch.tensor(PREDICTIONS), 3).float() * 3.0
        self.datasets = {"val": TensorDataset(logits, torch.tensor(TARGETS))}


def test_validation_metrics_under_ddp_count_each_sample_once():
    trainer = L.Trainer(
        strategy="ddp_fork",
        devices=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = _PassThrough(num_classes=3, class_names=["a", "b", "c"])
    [metrics] = trainer.validate(model, datamodule=_FixedPredictions(), verbose=False)
    logits = torch.nn.functional.one_hot(torch.tensor(PREDICTIONS), 3).float() * 3.0
    assert metrics["val/acc"] == pytest.approx(8 / 9)
    assert metrics["val/class_acc/c"] == pytest.approx(2 / 3)
    expected_loss = float(torch.nn.functional.cross_entropy(logits, torch.tensor(TARGETS)))
    assert metrics["val/loss"] == pytest.approx(expected_loss, rel=1e-6)
