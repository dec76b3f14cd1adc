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
from datetime import timedelta
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from cli_helpers import run_cli
from lightning.pytorch.strategies import DDPStrategy
from ops_helpers import TRITON_RUNS_ON_CPU
from torch.utils.data import DataLoader, Sampler, TensorDataset

from fer_lightning.cli import main
from fer_lightning.data import FERDataModule
from fer_lightning.errors import NonFiniteLossError
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


# ---- a step that is not finite on one rank is skipped by every rank (forked processes) -----------

STEP_BATCH, STEPS, FAULTY_STEP = 4, 3, 1


def _sgd(params):
    # With momentum, a skipped step that reached the optimiser with zero gradients would still move the weights.
    return torch.optim.SGD(params, lr=0.1, momentum=0.9)


class _FaultOnRank1(FERClassifier):
    """BatchNorm + linear. At step ``FAULTY_STEP``, forward pass ``fault_pass`` of that step (SAM makes
    two) on rank 1 only produces ``fault``: "loss" (NaN logits) or "grad" (a finite loss, NaN gradient)."""

    def __init__(self, fault: str, fault_pass: int = 0, **kwargs):
        super().__init__(num_classes=3, optimizer=_sgd, **kwargs)
        self.norm = torch.nn.BatchNorm1d(4)
        self.linear = torch.nn.Linear(4, 3)
        self.kink = torch.nn.Parameter(torch.zeros(()))
        self.fault, self.fault_pass = fault, fault_pass
        self.passes_this_step = 0
        self.report_dir: Path | None = None

    def _skip_step(self, reason: str) -> None:
        # A worker's exception reaches the test as the launcher's, from one rank: each rank writes its own.
        try:
            super()._skip_step(reason)
        except NonFiniteLossError as error:
            (self.report_dir / f"rank{self.global_rank}.error").write_text(str(error))
            raise

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        self.passes_this_step = 0

    def forward(self, images):
        where = (self.global_rank, self._batch_idx, self.passes_this_step)
        at_fault = self.training and self.fault is not None and where == (1, FAULTY_STEP, self.fault_pass)
        self.passes_this_step += 1
        if at_fault and self.fault == "loss":
            images = images * float("nan")
        # sqrt(x) at x = kink - kink (exactly 0, whatever kink has become) plus an offset: the same
        # logits, but d sqrt/dx is inf at offset 0, so kink's gradient is not finite while the loss is.
        # Every rank uses kink, as DDP needs.
        offset = 0.0 if at_fault and self.fault == "grad" else 1.0
        return self.linear(self.norm(images)) + torch.sqrt(self.kink - self.kink.detach() + offset)


class _InterleavedShares(Sampler[int]):
    """Rank r takes samples r, r + 2, ... in order: step k of both ranks uses the samples
    2 k STEP_BATCH ... 2 (k + 1) STEP_BATCH - 1 (Lightning's distributed sampler would shuffle)."""

    def __init__(self, samples: int) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return self.samples // 2

    def __iter__(self):
        return iter(range(dist.get_rank(), self.samples, 2))


class _EveryRankReports(L.Callback):
    """Each rank saves its state after every step."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir

    def setup(self, trainer, pl_module, stage) -> None:
        torch.set_num_threads(1)  # a forked child must not enter its parent's OpenMP pool

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        state = {name: value.detach().clone() for name, value in pl_module.state_dict().items()}
        torch.save(state, self.out_dir / f"rank{trainer.global_rank}_step{batch_idx}.pt")


def _fit_on_two_ranks(
    model: FERClassifier, data: tuple[torch.Tensor, torch.Tensor], out_dir: Path
) -> L.Trainer:
    out_dir.mkdir()
    model.report_dir = out_dir
    trainer = L.Trainer(
        # A rank left waiting in a collective fails after a minute instead of outliving the test.
        strategy=DDPStrategy(start_method="fork", timeout=timedelta(seconds=60)),
        devices=2,
        accelerator="cpu",
        max_epochs=1,
        use_distributed_sampler=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[_EveryRankReports(out_dir)],
    )
    model.take_over_gradient_clipping(trainer)
    sampler = _InterleavedShares(len(data[1]))
    trainer.fit(model, DataLoader(TensorDataset(*data), batch_size=STEP_BATCH, sampler=sampler))
    return trainer  # holding rank 0's callback metrics


def _state_after(out_dir: Path, rank: int, step: int) -> dict[str, torch.Tensor]:
    return torch.load(out_dir / f"rank{rank}_step{step}.pt")


def _assert_same_state(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    for name, value in state.items():
        # Not bitwise: SAM's w + e - e rounds.
        torch.testing.assert_close(value, expected[name], msg=f"{name}: {what}")


def _training_data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    samples = 2 * STEP_BATCH * STEPS
    return torch.randn(samples, 4, generator=generator), torch.randint(0, 3, (samples,), generator=generator)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("fault", "fault_pass", "sam_rho"),
    [
        ("loss", 0, None),
        # DDP averages the gradients before the check, so rank 0 sees rank 1's NaN too.
        ("grad", 0, None),
        pytest.param("loss", 0, 0.05, marks=pytest.mark.slow),  # the same check as the first case
        ("loss", 1, 0.05),
    ],
    ids=["loss", "gradient", "SAM first-pass loss", "SAM perturbed loss"],
)
def test_a_step_not_finite_on_one_rank_is_skipped_by_every_rank(tmp_path, fault, fault_pass, sam_rho):
    """The weights of both ranks equal those of a run without that step's batches, BatchNorm
    statistics included (rank 0's finite forward pass moved them too)."""
    torch.manual_seed(0)
    model = _FaultOnRank1(fault, fault_pass, sam_rho=sam_rho, max_nonfinite_steps=2)
    reference = _FaultOnRank1(None, sam_rho=sam_rho)
    reference.load_state_dict(model.state_dict())
    images, labels = _training_data()
    faulty_samples = slice(2 * STEP_BATCH * FAULTY_STEP, 2 * STEP_BATCH * (FAULTY_STEP + 1))
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[faulty_samples] = False

    trainer = _fit_on_two_ranks(model, (images, labels), tmp_path / "faulty")
    assert trainer.callback_metrics["train/nonfinite_steps"] == 1  # synced over ranks, counted once
    _fit_on_two_ranks(reference, (images[keep], labels[keep]), tmp_path / "reference")
    for rank in range(2):  # BatchNorm statistics differ between ranks until DDP's next broadcast
        expected = _state_after(tmp_path / "reference", rank, STEPS - 2)
        before = _state_after(tmp_path / "faulty", rank, FAULTY_STEP - 1)
        _assert_same_state(
            _state_after(tmp_path / "faulty", rank, FAULTY_STEP), before, f"rank {rank}'s skipped step"
        )
        _assert_same_state(
            _state_after(tmp_path / "faulty", rank, STEPS - 1), expected, f"rank {rank} at the end"
        )


@pytest.mark.timeout(120)
def test_every_rank_stops_when_one_rank_diverges(tmp_path):
    model = _FaultOnRank1("loss", max_nonfinite_steps=1)
    with pytest.raises(Exception, match="NonFiniteLossError"):
        _fit_on_two_ranks(model, _training_data(), tmp_path / "run")
    for rank in range(2):
        error = (tmp_path / "run" / f"rank{rank}.error").read_text()
        assert error.startswith("training stopped at epoch 0, batch 1 (global step 1)"), error
        assert "the loss was not finite on rank 1 of 2 processes (loss=nan" in error
