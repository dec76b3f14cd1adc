"""A new user's mistakes through the CLI, in-process: each ends in ONE line naming the thing and a non-zero exit.

Parse errors (a misspelled or mistyped option) print jsonargparse's message as one line plus a
``see: fer-lightning fit --help`` hint and exit 2; errors found while building or running (a missing
file, a wrong checkpoint) print one ``error:`` line and exit 1. ``--debug``/``FER_LIGHTNING_DEBUG=1``
show the traceback instead. Dataset-root hints, empty classes and AI-Hub duplicates are tested in
test_data_mistakes.py.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from cli_helpers import EXPERIMENTS, QUICKSTART, quickstart_args, write_tiny_rafdb
from torch.utils.data import DataLoader, Dataset

# Imported here, not first inside a test: Lightning's log handlers keep the stderr they find at import,
# and a test's captured stderr is closed after it ("Logging error ... I/O operation on closed file").
import fer_lightning.cli.lightning_cli  # noqa: F401
from fer_lightning import cli
from fer_lightning.cli import main
from fer_lightning.cli.parse_errors import condense_parse_error, did_you_mean
from fer_lightning.data.formats import AFFECTNET_CLASS_NAMES, RAFDB_CLASS_NAMES
from fer_lightning.errors import ConfigurationError, DatasetNotFoundError, FERLightningError, WeightsError
from fer_lightning.models.backbones.checkpoint import read_state_dict


@pytest.fixture(scope="module")
def tiny_rafdb(tmp_path_factory):
    return write_tiny_rafdb(tmp_path_factory.mktemp("tiny_rafdb"), num_images=40, seed=3)


def _fit(root, tmp_path, *extra, config=QUICKSTART):
    return ["fit", *quickstart_args(root, tmp_path, "--trainer.fast_dev_run=true", *extra, config=config)]


def _fails(capsys, args, status=1) -> str:
    """Run the CLI, expect exit ``status`` and exactly one ``error:`` line (and no traceback); return it."""
    with pytest.raises(SystemExit) as raised:
        main(args)
    assert raised.value.code == status
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert "Traceback" not in err and "Namespace(" not in err and "usage:" not in err, err
    if status == 2:  # a parse error: the message and one hint line, nothing else
        message, hint = err.strip().splitlines()[-2:]
        assert message == errors[0] and hint.startswith("see: fer-lightning fit --"), err
    return errors[0]


# --- data ----------------------------------------------------------------------------------------------


def test_missing_data_root_option(capsys):
    line = _fails(capsys, ["fit", "--config", QUICKSTART, "--data.synthetic_size=0"])
    assert "set data.root to the dataset folder, or data.synthetic_size" in line


def test_nonexistent_data_root(capsys, tmp_path):
    line = _fails(capsys, _fit(tmp_path / "does-not-exist", tmp_path))
    assert "RAF-DB" in line and "does-not-exist" in line


def test_batch_larger_than_the_training_split(capsys, tiny_rafdb, tmp_path):
    line = _fails(capsys, _fit(tiny_rafdb, tmp_path, "--data.batch_size=64"))
    assert "fewer than one batch of 64" in line and "data.batch_size" in line


# --- parse errors -----------------------------------------------------------------------------------------


def test_misspelled_key_on_the_command_line_says_did_you_mean(capsys):
    line = _fails(capsys, ["fit", "--config", QUICKSTART, "--data.batch_sise=8"], status=2)
    assert line == (
        "error: data.batch_sise: RAFDBDataModule has no option 'batch_sise'; did you mean batch_size?"
    )


@pytest.mark.parametrize("option", ["--data.label_noise.rat=0.1", "--data.label_noise={rat: 0.1}"])
def test_a_misspelled_option_of_a_nested_class_is_named_by_its_whole_path(capsys, option):
    config = str(EXPERIMENTS / "label_noise_synthetic.yaml")
    with pytest.raises(SystemExit):
        main(["fit", "--config", config, option])
    error, hint = capsys.readouterr().err.strip().splitlines()[-2:]
    assert error == "error: data.label_noise.rat: LabelNoise has no option 'rat'; did you mean rate?"
    assert hint == "see: fer-lightning fit --help"  # LabelNoise has no --data.help page


def test_a_class_option_error_points_at_that_class_help(capsys):
    # fit --help does not list a subclass's own options; the hint names the help that does.
    with pytest.raises(SystemExit):
        main(["fit", "--config", QUICKSTART, "--model.init_args.backbon=resnet18"])
    hint = capsys.readouterr().err.strip().splitlines()[-1]
    assert hint == "see: fer-lightning fit --model.help TimmClassifier"
    with pytest.raises(SystemExit):
        main(["fit", "--config", QUICKSTART, "--trainer.max_epoks=3"])
    assert capsys.readouterr().err.strip().splitlines()[-1] == "see: fer-lightning fit --help"


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"data": {"init_args": {"batch_sise": 8}}}, "did you mean batch_size?"),
        (
            {"trainer": {"max_epoch": 3}},
            "trainer.max_epoch: no such option; did you mean trainer.max_epochs?",
        ),
    ],
)
def test_misspelled_key_in_a_yaml_says_did_you_mean(capsys, tmp_path, section, expected):
    typo = tmp_path / "typo.yaml"
    typo.write_text(yaml.safe_dump(section))
    line = _fails(capsys, ["fit", "--config", QUICKSTART, "--config", str(typo)], status=2)
    assert expected in line


def test_option_without_its_group_and_misspelled_class(capsys):
    line = _fails(capsys, ["fit", "--config", QUICKSTART, "--max_epochs=3"], status=2)
    assert line.endswith("did you mean --trainer.max_epochs?")
    line = _fails(capsys, ["fit", "--config", QUICKSTART, "--model=TimmClassifer"], status=2)
    assert line == "error: model: no class named 'TimmClassifer'; did you mean TimmClassifier?"


def test_wrong_type(capsys):
    line = _fails(capsys, ["fit", "--config", QUICKSTART, "--data.batch_size=lots"], status=2)
    assert line == "error: data.batch_size: expected int, got 'lots'"
    line = _fails(capsys, ["fit", "--config", QUICKSTART, "--model.optimizer.lr=fast"], status=2)
    assert line == "error: model.optimizer.lr: expected float, got 'fast'"


def test_a_timm_argument_the_classifier_sets_itself_is_refused_in_model_kwargs(capsys):
    line = _fails(capsys, ["fit", "--config", QUICKSTART, "--model.init_args.model_kwargs.drop_rate=0.5"])
    assert line.endswith(
        "model_kwargs.drop_rate: not a timm argument here; set model.init_args.drop_rate instead"
    )


def test_condensed_message_keeps_an_unknown_shape_readable():
    message = "Parser key \"x\":\n  Something odd happened\n  Given value type: <class 'str'>"
    assert condense_parse_error(message) == "x: Something odd happened"
    assert did_you_mean("max_epoch", ["max_epochs", "min_epochs", "max_steps"]) == "max_epochs"
    assert (
        did_you_mean("--max_epochs", ["--trainer.max_epochs", "--trainer.min_epochs"])
        == "--trainer.max_epochs"
    )
    assert did_you_mean("zzz", ["max_epochs"]) is None


# --- weights and checkpoints ------------------------------------------------------------------------------


def _posterpp(tiny_rafdb, tmp_path, weights):
    return _fit(
        tiny_rafdb,
        tmp_path,
        f"--model.ir50_weights={weights}",
        config=str(EXPERIMENTS / "posterpp_rafdb.yaml"),
    )


def test_missing_weights_file(capsys, tiny_rafdb, tmp_path):
    line = _fails(capsys, _posterpp(tiny_rafdb, tmp_path, tmp_path / "ir50.pth"))
    assert line.startswith("error: model.init_args.ir50_weights: weights file not found: ")
    assert str(tmp_path / "ir50.pth") in line


def test_text_file_as_weights(capsys, tiny_rafdb, tmp_path):
    text = tmp_path / "ir50.pth"
    text.write_text("<html>404 Not Found</html>\n")
    line = _fails(capsys, _posterpp(tiny_rafdb, tmp_path, text))
    assert f"model.init_args.ir50_weights: {text}: not a PyTorch checkpoint" in line
    assert "expected a state dict saved with torch.save" in line


def test_weights_that_pickle_python_objects_are_refused_in_one_line(tmp_path):
    path = tmp_path / "trainer_state.pth"
    torch.save({"state_dict": {}, "recorder": argparse.Namespace}, path)
    with pytest.raises(
        WeightsError, match=r"trainer_state\.pth: refused by torch\.load\(weights_only=True\)"
    ):
        read_state_dict(path)


def _checkpoint(path: Path, class_path: str, class_names) -> Path:
    """A stand-in for a fit checkpoint: the checks read its hyper_parameters before any weights."""
    hyper_parameters = {
        "_class_path": class_path,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "_instantiator": "lightning.pytorch.cli.instantiate_module",
    }
    torch.save({"state_dict": {}, "hyper_parameters": hyper_parameters}, path)
    return path


def test_ckpt_path_that_does_not_exist(capsys, tiny_rafdb, tmp_path):
    missing = tmp_path / "best.ckpt"
    line = _fails(capsys, ["test", *_fit(tiny_rafdb, tmp_path)[1:], f"--ckpt_path={missing}"])
    assert line.startswith(f"error: --ckpt_path {missing}: no such file")


def test_ckpt_path_of_another_model(capsys, tiny_rafdb, tmp_path):
    ckpt = _checkpoint(tmp_path / "posterpp.ckpt", "fer_lightning.models.POSTERPP", RAFDB_CLASS_NAMES)
    line = _fails(capsys, ["test", *_fit(tiny_rafdb, tmp_path)[1:], f"--ckpt_path={ckpt}"])
    assert f"--ckpt_path {ckpt} holds a POSTERPP model but the config builds TimmClassifier" in line


def test_ckpt_path_of_another_class_count(capsys, tiny_rafdb, tmp_path):
    ckpt = _checkpoint(
        tmp_path / "affectnet.ckpt", "fer_lightning.models.TimmClassifier", AFFECTNET_CLASS_NAMES
    )
    line = _fails(capsys, ["test", *_fit(tiny_rafdb, tmp_path)[1:], f"--ckpt_path={ckpt}"])
    assert f"--ckpt_path {ckpt} was trained on 8 classes" in line
    assert "RAFDBDataModule has 7" in line


def test_ckpt_path_that_is_not_a_checkpoint(capsys, tiny_rafdb, tmp_path):
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    line = _fails(capsys, ["validate", *_fit(tiny_rafdb, tmp_path)[1:], f"--ckpt_path={text}"])
    assert f"--ckpt_path {text}: not a Lightning checkpoint" in line


# --- tracebacks on request, wrapped errors ----------------------------------------------------------------


def _chain(error: BaseException) -> list[BaseException]:
    chain = []
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def test_debug_flag_and_environment_show_the_traceback(monkeypatch):
    args = ["fit", "--config", QUICKSTART, "--data.synthetic_size=0"]
    with pytest.raises(Exception) as raised:
        main([*args, "--debug"])
    assert any(isinstance(error, ConfigurationError) for error in _chain(raised.value))
    monkeypatch.setenv("FER_LIGHTNING_DEBUG", "1")
    with pytest.raises(Exception) as raised:
        main(args)
    assert any(isinstance(error, ConfigurationError) for error in _chain(raised.value))
    with pytest.raises(argparse.ArgumentError, match="batch_sise"):
        main(["fit", "--config", QUICKSTART, "--data.batch_sise=8"])


class _MissingImages(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        raise DatasetNotFoundError(f"image {index} not found: /data/faces/{index}.jpg")


def test_error_from_a_dataloader_worker_is_one_line(capsys, monkeypatch):
    # torch re-raises a worker's exception with the worker's traceback in its message.
    monkeypatch.setattr(cli, "run", lambda argv: next(iter(DataLoader(_MissingImages(), num_workers=1))))
    with pytest.raises(SystemExit) as raised:
        main(["fit"])
    assert raised.value.code == 1
    assert capsys.readouterr().err == "error: image 0 not found: /data/faces/0.jpg\n"


GLOO_LOST_PEER = (
    "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:41136. "
    "This is typically caused by a remote worker crashing."
)


def test_a_process_that_lost_its_peer_under_ddp_says_so_in_one_line(capsys, monkeypatch):
    """The process whose collective failed because another process ended first points to that one's
    error instead of printing a traceback of the broken connection."""

    def lost_peer(argv):
        raise RuntimeError(GLOO_LOST_PEER)

    monkeypatch.setattr(cli, "run", lost_peer)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(SystemExit) as raised:
        main(["fit"])
    assert raised.value.code == 1
    assert capsys.readouterr().err.startswith(
        "error: local rank 1 stopped: another process of this run ended"
    )
    with pytest.raises(RuntimeError, match="Connection closed by peer"):
        main(["fit", "--debug"])


def test_a_plain_bug_keeps_its_traceback(monkeypatch):
    def broken(argv):
        raise KeyError("not a user mistake")

    monkeypatch.setattr(cli, "run", broken)
    with pytest.raises(KeyError):
        main(["fit"])
    assert not issubclass(KeyError, FERLightningError)


# --- options read right -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "expected"), [("1", 1), ("3", 3), ("0.5", 0.5), ("1.0", 1.0)])
def test_limit_batches_int_counts_batches_and_float_is_a_fraction(capsys, given, expected):
    keys = [f"limit_{split}_batches" for split in ("train", "val", "test", "predict")]
    with pytest.raises(SystemExit):
        main(["fit", "--config", QUICKSTART, *(f"--trainer.{key}={given}" for key in keys), "--print_config"])
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    for key in keys:
        assert trainer[key] == expected and type(trainer[key]) is type(expected), key


def test_complexity_prints_only_its_three_lines(tmp_path):
    # A real process: the warning it used to print depends on sys.argv, which pytest's tests share.
    done = subprocess.run(
        [sys.executable, "-m", "fer_lightning.cli", "complexity", "--config", QUICKSTART],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0] == "model: TimmClassifier (7 classes), input 3x112x112" and len(lines) == 3


def test_data_summary_takes_a_fit_command_line_and_reports_one_line(capsys, tiny_rafdb, tmp_path):
    out = tmp_path / "classes.png"
    fit_options = ["--trainer.max_epochs", "3", "--model.init_args.backbone=resnet18", "--seed_everything=1"]
    main(
        ["data-summary", "--config", QUICKSTART, f"--data.root={tiny_rafdb}", "--out", str(out), *fit_options]
    )
    assert out.is_file()
    capsys.readouterr()
    line = _fails(
        capsys, ["data-summary", "--config", QUICKSTART, f"--data.root={tiny_rafdb}", "--data.batch_sise=4"]
    )
    assert (
        line == "error: data.batch_sise: RAFDBDataModule has no option 'batch_sise'; did you mean batch_size?"
    )
    line = _fails(capsys, ["data-summary", "--config", QUICKSTART, "--dta.root=/x"])
    assert "did you mean --data.root?" in line
