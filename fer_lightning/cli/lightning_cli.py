"""LightningCLI for ``fit``/``validate``/``test``/``predict``: run folders, argument links, default callbacks.

Imported only when one of those subcommands runs (see :mod:`fer_lightning.cli`).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import warnings
from pathlib import Path

import torch
import yaml
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info

# Every datamodule and model class is imported, so that subclass mode knows them by short name too.
import fer_lightning.data.affectnet
import fer_lightning.data.aihub
import fer_lightning.data.fer2013
import fer_lightning.data.rafdb
import fer_lightning.models  # noqa: F401
from fer_lightning.callbacks import (
    BatchSizeLog,
    ConfusionMatrixPlot,
    InterruptCheckpoint,
    TrainingCurvesPlot,
    ValidationCheckpoint,
)
from fer_lightning.callbacks.inference_metadata import InferenceMetadata
from fer_lightning.callbacks.random_state import StepSeededRandomState
from fer_lightning.cli import EXTRA_COMMANDS_HELP, debugging, run_folders
from fer_lightning.cli.parse_errors import class_init_options, condense_parse_error
from fer_lightning.data import FERDataModule
from fer_lightning.data.label_prior import dataset_label_prior
from fer_lightning.errors import ConfigurationError, WeightsError
from fer_lightning.losses import prior_loss_needs_dataset_prior
from fer_lightning.models import FERClassifier
from fer_lightning.results import RESULTS_FILE, append_row, config_digest, relative_to_table, results_row
from fer_lightning.run_checkpoint import read_run_checkpoint

SELECTION_METRIC = "val/acc"
#: What ``selection_metric`` can name: every model logs these on the validation split.
SELECTION_METRICS = ("val/acc", "val/mean_class_acc", "val/macro_f1", "val/loss")


class _DropAdvertisement(logging.Filter):
    """Lightning 2.6 suggests installing its cloud logger at the start of every run that lacks it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


# rank_zero_info logs through whichever of these two module loggers was set last.
for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(_DropAdvertisement())

# Lightning 2.6 + torch 2.14 print this on every step; it is theirs to fix and says nothing about the run.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
# The dispatcher hands LightningCLI the command line on purpose (without our --debug), so the warning
# about passing both args and sys.argv would greet every run.
warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended to run from within")
# POSTER++/BTN keep their frozen landmark network in eval mode on purpose
# (docs/models.md#deviations-from-the-official-code).
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")


class FERSaveConfigCallback(SaveConfigCallback):
    """Save ``config.yaml`` into the run folder and, when a W&B logger is active, into the W&B run too.

    The CSV logger comes first in our defaults, so ``trainer.log_dir`` is a fresh ``version_N`` folder
    per run; with W&B first it would be ``.`` and a second run would clash (docs/design.md#wb-offline).
    """

    def save_config(self, trainer, pl_module, stage: str) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
                logger.log_hyperparams({"config": config})


#: Base class of each subclass-mode option, for "did you mean" on a misspelled class name.
_SUBCLASS_BASES = {"model": FERClassifier, "data": FERDataModule}
#: Trainer options where an int counts batches and a float is a fraction of them.
_COUNT_OR_FRACTION = tuple(f"trainer.limit_{split}_batches" for split in ("train", "val", "test", "predict"))
#: --ckpt_path values Lightning resolves itself rather than reading a file.
_CKPT_PATH_KEYWORDS = ("last", "best", "hpc")


class FERArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, reporting a parse error as one line and where to look, not a usage dump."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error:  # jsonargparse probing an alternative: it catches this itself
            return super().error(message, ex)
        if debugging():
            raise argparse.ArgumentError(None, message) from ex
        parser = getattr(ex, "subcommand_parser", None) or self
        command = parser.prog.replace(" [options]", "")
        line = condense_parse_error(message, parser.suggest)
        sys.stderr.write(f"error: {line}\nsee: {command} {help_option_for(line)}\n")
        self.exit(2)

    def suggest(self, kind: str, key: str) -> list[str]:
        """Valid names for "did you mean" (see :data:`fer_lightning.cli.parse_errors.Suggest`)."""
        # The root parser reports errors of a config read before the subcommand is known: ask them all.
        subcommands = self._subcommands_action._name_parser_map.values() if self._subcommands_action else ()
        options = [
            option.removeprefix("--")
            for parser in (self, *subcommands)
            for action in parser._actions
            for option in action.option_strings
            if option.startswith("--") and not option.endswith(".help")
        ]
        if kind == "argument":
            return [f"--{option}" for option in options]
        if kind == "group":
            return [option for option in options if option.startswith(f"{key}.")]
        if kind == "subclass" and key in _SUBCLASS_BASES:
            return [cls.__name__ for cls in _all_subclasses(_SUBCLASS_BASES[key])]
        if kind == "class":
            return class_init_options(key)
        return []


_CLASS_OPTION_ERROR = re.compile(r"^(data|model)\.[\w.]*: (\w+) has no option ")


def help_option_for(error_line: str) -> str:
    """Where the options of an error's subject are listed: ``--data.help RAFDBDataModule`` for an option of
    the datamodule or model class (``fit --help`` does not list those in subclass mode), else ``--help``
    (also for a class nested in their options, such as data.label_noise's LabelNoise: its error line
    names the valid options already)."""
    match = _CLASS_OPTION_ERROR.match(error_line)
    if match is None:
        return "--help"
    group, owner = match.groups()
    if owner not in {cls.__name__ for cls in _all_subclasses(_SUBCLASS_BASES[group])}:
        return "--help"
    return f"--{group}.help {owner}"


def _all_subclasses(cls: type) -> list[type]:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *_all_subclasses(direct))]


def read_checkpoint_header(path: str) -> tuple[dict, int]:
    """The model's ``hyper_parameters`` and the ``global_step`` of a Lightning checkpoint; a one-line
    :class:`WeightsError` if unreadable. Memory-mapped: the weights themselves are not read."""
    checkpoint = read_run_checkpoint(
        path,
        label="--ckpt_path",
        mmap=True,
        hint=", or give backbone weights to their model option (e.g. model.init_args.ir50_weights)",
    )
    return dict(checkpoint.get("hyper_parameters") or {}), int(checkpoint.get("global_step", 0))


class FERCLI(LightningCLI):
    """LightningCLI with the dataset's classes linked into the model and a per-run folder."""

    def add_arguments_to_parser(self, parser) -> None:
        # Fixed per dataset and set in the datamodule's __init__, so they exist at instantiation.
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.class_names", "model.init_args.class_names", apply_on="instantiate")
        # The F-PDLS prior, as plain lists: read from the data only for a model whose loss needs it.
        parser.link_arguments(
            "data", "model.init_args.dataset_prior", compute_fn=self._dataset_prior, apply_on="instantiate"
        )
        parser.add_argument(
            "--selection_metric",
            type=str,
            default=SELECTION_METRIC,
            help=(
                "validation metric that selects the best checkpoint and the validation confusion matrix: "
                f"{', '.join(SELECTION_METRICS)} (or val/class_acc/<class>); losses are minimised, the rest "
                "maximised. On an imbalanced validation split, val/mean_class_acc does not favour the "
                "majority classes."
            ),
        )
        add_results_arguments(parser)

    def _dataset_prior(self, datamodule) -> list[list[float]] | None:
        """The dataset's F-PDLS prior when the model's ``loss`` takes it from the data, else ``None``.

        FER+ computes it from its training votes; a dataset without votes gets FER+'s, remapped by class
        name. One log line says which.
        """
        config = self.config[self.subcommand] if self.subcommand else self.config
        model_args = config.model.get("init_args") or {}
        loss, loss_prior = model_args.get("loss", "cross_entropy"), model_args.get("loss_prior")
        if not prior_loss_needs_dataset_prior(loss, loss_prior):
            return None
        vote_prior = getattr(datamodule, "vote_prior", lambda: None)()
        name = getattr(datamodule, "DATASET_NAME", type(datamodule).__name__)
        prior, note = dataset_label_prior(vote_prior, datamodule.class_names, name)
        rank_zero_info(note)
        return prior

    def before_instantiate_classes(self) -> None:
        if self.subcommand is None:  # run=False (fer-lightning complexity): no run, no run folder
            return
        config = self.config[self.subcommand]
        check_selection_metric(config.selection_metric)
        # One run, one folder: a run's checkpoint brings its own folder (see run_folders).
        self._continued_run = None
        run = run_folders.run_folder_of_checkpoint(config.get("ckpt_path"))
        if run is None and config.get("run_dir"):
            run = Path(config.run_dir).expanduser().resolve()
            point_wandb_logger_at(config.trainer.logger, run)
        if run is None or self.subcommand == "predict":
            return
        folder = run if self.subcommand == "fit" else run / self.subcommand
        if self.subcommand != "fit":
            # The checkpoint callback of an evaluation saves nothing; its note that the folder moved is noise.
            warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
        if run_folders.point_csv_logger_at(config.trainer.logger, folder) and self.subcommand == "fit":
            self._continued_run = run
            # Lightning's note about writing into a non-empty checkpoint folder: here that is the point.
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")

    def instantiate_trainer(self, **kwargs):
        # The default callbacks watch the selection metric, known only now that the config is parsed.
        selection_metric = self.config[self.subcommand].selection_metric
        self.trainer_defaults["callbacks"] = trainer_defaults(selection_metric)["callbacks"]
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        # Under SAM the model clips gradients itself: Lightning refuses trainer-level clipping with
        # manual optimisation, so the trainer's gradient_clip_val moves into the model here.
        self.model.take_over_gradient_clipping(self.trainer)
        for callback in self.trainer.callbacks:
            if isinstance(callback, InterruptCheckpoint):
                callback.requeue = self._continues_itself
        # Lightning's model summary counts FLOPs by running this input (eval mode, no grad), one image of
        # the datamodule's size; without it the summary prints "0 Total Flops".
        if getattr(self.model, "example_input_array", None) is None:
            size = self.datamodule.hparams.img_size
            self.model.example_input_array = torch.zeros(1, 3, size, size)
        if self._continued_run is None or not self.trainer.is_global_zero:
            return
        csv_logger = next((lg for lg in self.trainer.loggers if isinstance(lg, CSVLogger)), None)
        if csv_logger is None:
            return
        rows = run_folders.metrics_rows_before(self._continued_run / "metrics.csv", self._checkpoint_step)
        run_folders.continue_metrics_history(csv_logger, rows)

    def _run_subcommand(self, subcommand: str) -> None:
        # A folder this process creates and leaves without a checkpoint (the run failed before training
        # produced one) is removed, so failed attempts do not pile up as empty version_N folders.
        log_dir = self.trainer.log_dir  # a broadcast under DDP: every rank must ask
        created_here = log_dir is not None and not os.path.isdir(log_dir)
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            if created_here and self.trainer.is_global_zero:
                run_folders.remove_if_empty_run(Path(log_dir))
            raise

    def __init__(self, *args, parser_class=FERArgumentParser, **kwargs) -> None:
        super().__init__(*args, parser_class=parser_class, **kwargs)

    def add_core_arguments_to_parser(self, parser) -> None:
        super().add_core_arguments_to_parser(parser)
        # Trainer declares these Optional[Union[int, float]], but typing hands back an equal Union cached
        # earlier in the order (float, int), so jsonargparse tried float first and read
        # "--trainer.limit_val_batches 1" as 1.0, i.e. all batches. Ask for int first.
        for action in parser._actions:
            if action.dest in _COUNT_OR_FRACTION and hasattr(action, "_typehint"):
                action._typehint = int | float | None

    def init_parser(self, **kwargs):
        kwargs.setdefault("prog", "fer-lightning")
        kwargs.setdefault("epilog", EXTRA_COMMANDS_HELP)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        return super().init_parser(**kwargs)

    def _parse_ckpt_path(self) -> None:
        # Lightning replaces the configured model by the one saved in the checkpoint, and a wrong class
        # count ends in a state-dict size-mismatch dump: say which checkpoint and what differs first.
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        # Rerun unchanged, this command continues its own run: a SLURM requeue signal may requeue it.
        self._continues_itself = subcommand == "fit" and ckpt_path == "last"
        if ckpt_path in ("last", "best"):
            ckpt_path = self.config[subcommand].ckpt_path = self._newest_run_checkpoint(subcommand, ckpt_path)
        if subcommand and ckpt_path is None:
            self._refuse_a_silent_hpc_restore(subcommand)
        self._checkpoint_hparams, self._checkpoint_step = {}, 0
        if ckpt_path and ckpt_path not in _CKPT_PATH_KEYWORDS and not str(ckpt_path).startswith("registry"):
            self._checkpoint_hparams, self._checkpoint_step = read_checkpoint_header(ckpt_path)
            saved_class = self._checkpoint_hparams.get("_class_path")
            configured = self.config[subcommand].get("model", {}).get("class_path")
            if saved_class and configured and saved_class != configured:
                raise WeightsError(
                    f"--ckpt_path {ckpt_path} holds a {saved_class.rsplit('.', 1)[-1]} model but the config "
                    f"builds {configured.rsplit('.', 1)[-1]}; use the config the checkpoint was trained with "
                    "(config.yaml in its run folder)"
                )
        super()._parse_ckpt_path()

    def _newest_run_checkpoint(self, subcommand: str, keyword: str) -> str | None:
        """``--ckpt_path last`` / ``best``: the checkpoint of the newest run of this config's logger.

        A fresh process has no checkpoint of its own for Lightning's "last" and "best" to name: Lightning
        would start ``fit`` over and evaluate untrained weights in ``test``. Here ``fit --ckpt_path last``
        continues the run that trained last, or starts one when there is none yet, so one command can be
        resubmitted as it is (a requeued cluster job).
        """
        runs = run_folders.csv_logger_runs(self.config[subcommand].trainer.logger)
        if runs is None:
            raise ConfigurationError(
                f"--ckpt_path {keyword} looks for the newest run folder of the CSV logger, and this config "
                "has none; pass the checkpoint file instead"
            )
        if subcommand == "fit" and keyword == "best":
            raise ConfigurationError("fit continues a run from its last.ckpt: use --ckpt_path last")
        checkpoint = run_folders.newest_run_checkpoint(runs, keyword)
        if checkpoint is not None:
            rank_zero_info(f"--ckpt_path {keyword}: {checkpoint}")
            return str(checkpoint)
        if subcommand == "fit":
            rank_zero_info(f"--ckpt_path last: no run in {runs} has a last.ckpt yet; starting a new run")
            return None
        name = "last.ckpt" if keyword == "last" else "best-….ckpt"
        raise ConfigurationError(
            f"--ckpt_path {keyword}: no run in {runs} has a {name}; pass a checkpoint file"
        )

    def _refuse_a_silent_hpc_restore(self, subcommand: str) -> None:
        """Under SLURM, Lightning restores the newest ``hpc_ckpt_N.ckpt`` of the trainer's root folder into
        any run given no checkpoint (written there by Lightning's own auto-requeue handler, which this CLI
        replaces): a new run, or a test, would silently start from another run's weights."""
        if not SLURMEnvironment.detect():
            return
        folder = Path(self.config[subcommand].trainer.get("default_root_dir") or os.getcwd())
        found = sorted(folder.glob("hpc_ckpt_*.ckpt"))
        if found:
            raise ConfigurationError(
                f"{found[-1]}: under SLURM Lightning would restore this checkpoint of its auto-requeue into "
                f"this run without being asked; continue from it with --ckpt_path hpc, or move it out of {folder}"
            )

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        saved_names = self._checkpoint_hparams.get("class_names")
        if saved_names is not None and list(saved_names) != list(self.datamodule.class_names):
            ckpt_path = self.config[self.subcommand].get("ckpt_path")
            raise WeightsError(
                f"--ckpt_path {ckpt_path} was trained on {len(saved_names)} classes ({', '.join(saved_names)}) "
                f"but {type(self.datamodule).__name__} has {self.datamodule.num_classes} "
                f"({', '.join(self.datamodule.class_names)}); use the checkpoint's dataset and class count"
            )

    def after_fit(self) -> None:
        checkpoint = self.trainer.checkpoint_callback
        run_folder = self.trainer.log_dir  # a broadcast under DDP: every rank must ask
        if checkpoint is not None and checkpoint.best_model_path and self.config.fit.test_after_fit:
            # Every rank tests (the test loop is collective); the row is written by rank 0 in after_test.
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=checkpoint.best_model_path)
            self.after_test()
        if not self.trainer.is_global_zero or checkpoint is None:
            return
        if not checkpoint.best_model_path:
            self._explain_missing_best_checkpoint(checkpoint)
            return
        score = checkpoint.best_model_score
        score_text = f"{float(score):.4f}" if score is not None else "n/a"
        print(
            f"\nrun folder: {run_folder}\n"
            f"best checkpoint ({checkpoint.monitor} = {score_text}): {checkpoint.best_model_path}\n"
            f"test it with: fer-lightning test --config <same config> --ckpt_path {checkpoint.best_model_path}"
        )

    def after_test(self) -> None:
        """Append the test's row to the results table (see :mod:`fer_lightning.results`)."""
        log_dir = self.trainer.log_dir  # a broadcast under DDP: every rank must ask
        if not self.trainer.is_global_zero or self.trainer.fast_dev_run or log_dir is None:
            return
        ckpt_path = self.trainer.ckpt_path
        run = run_folders.run_folder_of_checkpoint(ckpt_path)
        if run is None:  # no checkpoint of a run folder: the folder this test wrote is the run
            run = Path(log_dir).resolve()
        config_file = run / "config.yaml"
        if config_file.is_file():
            config_text = config_file.read_bytes()
            config = yaml.safe_load(config_text) or {}
        else:
            config = self.config[self.subcommand].as_dict()
            config_text = yaml.safe_dump(config, sort_keys=True).encode()
        results_csv = Path(self.config[self.subcommand].results_csv or run.parent / RESULTS_FILE)
        metrics = {name: float(value) for name, value in self.trainer.callback_metrics.items()}
        row = results_row(
            run_folder=relative_to_table(run, results_csv),
            config=config,
            config_hash=config_digest(config_text),
            model=self.model,
            datamodule=self.datamodule,
            metrics=metrics,
            selected_epoch=checkpoint_epoch(ckpt_path) if ckpt_path else None,
            checkpoint=str(ckpt_path) if ckpt_path else None,
        )
        print(f"results: appended a row to {append_row(results_csv, row)}")

    def _explain_missing_best_checkpoint(self, checkpoint) -> None:
        trainer = self.trainer
        if trainer.fast_dev_run or trainer.interrupted:
            return
        if trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
            print(
                f"\nno best checkpoint: training stopped at trainer.max_steps={trainer.max_steps} before any "
                f"validation measured {checkpoint.monitor} (an epoch has {trainer.num_training_batches} "
                "training batches); raise --trainer.max_steps past an epoch, or validate sooner with "
                "--trainer.val_check_interval N (every N training batches)"
            )


def add_results_arguments(parser) -> None:
    """Options of where a run writes and where its test results go (sweeps set them per run)."""
    parser.add_argument(
        "--run_dir",
        type=str | None,
        default=None,
        help=(
            "the run folder: fit writes its logs, config and checkpoints into exactly this folder (instead "
            "of a new <save_dir>/<name>/version_N), validate/test of it into <run_dir>/validate or "
            "<run_dir>/test; the W&B logger's files go there too. A checkpoint in a run folder "
            "(--ckpt_path <run>/checkpoints/...) brings its own folder and wins."
        ),
    )
    parser.add_argument(
        "--results_csv",
        type=str | None,
        default=None,
        help=(
            f"table that every test appends its row to; default: {RESULTS_FILE} beside the run folder "
            f"(runs/<name>/{RESULTS_FILE})"
        ),
    )
    parser.add_argument(
        "--test_after_fit",
        type=bool,
        default=False,
        help=(
            "fit only: after training, test the selected checkpoint on the test split (its metrics go to "
            "the same loggers and its row to the results table), as a sweep run needs"
        ),
    )


def point_wandb_logger_at(logger_config, folder: Path) -> None:
    """Give every W&B logger of a parsed ``trainer.logger`` config ``folder`` as its ``save_dir``."""
    for entry in logger_config if isinstance(logger_config, list | tuple) else [logger_config]:
        if str(getattr(entry, "class_path", "") or "").endswith("WandbLogger"):
            entry.init_args.save_dir = str(folder)


def checkpoint_epoch(path: str) -> int | None:
    """The epoch a Lightning checkpoint was written in (the epoch of the selected validation)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    epoch = checkpoint.get("epoch") if isinstance(checkpoint, dict) else None
    return int(epoch) if epoch is not None else None


def check_selection_metric(metric: str) -> None:
    """Checkpoints are selected on validation metrics only; anything else is a configuration mistake."""
    if metric in SELECTION_METRICS or metric.startswith("val/class_acc/"):
        return
    raise ConfigurationError(
        f"selection_metric={metric!r} is not a validation metric; choose one of "
        f"{', '.join(SELECTION_METRICS)} or val/class_acc/<class> (test metrics never select checkpoints)"
    )


def selection_mode(metric: str) -> str:
    """Losses are minimised, accuracies and F1 maximised."""
    return "min" if metric.endswith("loss") else "max"


def trainer_defaults(selection_metric: str = SELECTION_METRIC) -> dict:
    """Defaults every run gets: a CSV log per run, the best-on-validation checkpoint, confusion and curve plots.

    ``selection_metric`` picks the best checkpoint (its file name says which metric, e.g.
    ``best-epoch03-val_mean_class_acc0.4123.ckpt``) and the epoch of the validation confusion matrix.
    """
    mode = selection_mode(selection_metric)
    metric_in_name = selection_metric.replace("/", "_")
    return {
        "logger": {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": "runs", "name": "default"},
        },
        "callbacks": [
            ValidationCheckpoint(
                monitor=selection_metric,
                mode=mode,
                filename=f"best-epoch{{epoch:02d}}-{metric_in_name}{{{selection_metric}:.4f}}",
                auto_insert_metric_name=False,
                save_last=True,
                # A run resumed in its folder from an older checkpoint rewrites last.ckpt, not last-v1.ckpt.
                enable_version_counter=False,
            ),
            ConfusionMatrixPlot(monitor=selection_metric, mode=mode),
            TrainingCurvesPlot(),
            InterruptCheckpoint(),
            StepSeededRandomState(),
            # Per-device, global and CBA batch sizes: a few scalars per step, no communication.
            BatchSizeLog(),
            # What `fer-lightning predict` needs to use a checkpoint without its config.
            InferenceMetadata(),
        ],
    }


def run_lightning_cli(argv: list[str]) -> None:
    """``fer-lightning fit|validate|test|predict ...`` (``argv`` without the program name)."""
    FERCLI(
        FERClassifier,
        FERDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_callback=FERSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        trainer_defaults=trainer_defaults(),
        args=argv,
    )
