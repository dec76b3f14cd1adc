"""``fer-lightning make-synthetic``: its options reach the writer, bad values give one error line."""

from __future__ import annotations

import pytest

from fer_lightning.cli import main
from fer_lightning.data.synthetic import read_manifest


def test_options_reach_the_writer_and_the_summary_is_readable(tmp_path, capsys):
    out = tmp_path / "raf"
    options = ["--imbalance", "1", "--label-noise", "0.25", "--test-fraction", "0.5", "--image-size", "24"]
    main(
        [
            "make-synthetic",
            "--format",
            "rafdb",
            "--out",
            str(out),
            "--num-images",
            "40",
            "--seed",
            "5",
            *options,
            "--nuisance",
            "0.5",
        ]
    )
    manifest = read_manifest(out)
    assert manifest["seed"] == 5
    assert {key: manifest["parameters"][key] for key in ("imbalance", "label_noise", "test_fraction")} == {
        "imbalance": 1.0,
        "label_noise": 0.25,
        "test_fraction": 0.5,
    }
    assert manifest["parameters"]["image_size"] == 24 and manifest["parameters"]["nuisance"] == 0.5
    assert sum(manifest["split_sizes"].values()) == 40 and abs(manifest["split_sizes"]["test"] - 20) <= 4
    assert manifest["num_noisy_labels"] == round(0.25 * manifest["split_sizes"]["train"])

    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("wrote 40 synthetic images in rafdb format (seed 5) to ")
    assert str(out) in lines[0]
    assert lines[1].split() == ["split", "images", *manifest["class_names"]]
    for line, split in zip(lines[2:4], ("train", "test")):
        counts = [str(count) for count in manifest["class_counts"][split]]
        assert line.split() == [split, str(manifest["split_sizes"][split]), *counts]
    assert lines[4].startswith(f"label noise: {manifest['num_noisy_labels']} of the labels")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--label-noise", "1.5"], "--label-noise 1.5: expected a fraction in [0, 1]"),
        (["--imbalance", "0.5"], "--imbalance 0.5: expected a ratio >= 1"),
        (["--nuisance", "-1"], "--nuisance -1.0: expected a scale >= 0"),
        (["--test-fraction", "1"], "--test-fraction 1.0: expected a fraction in [0, 1)"),
        (["--image-size", "0"], "--image-size 0: expected a size in pixels >= 1"),
        (["--num-images", "0"], "--num-images 0: expected at least 1"),
        (["--validation-fraction", "0.2"], "--validation-fraction does not apply to --format rafdb"),
        (["--label-noise", "lots"], "argument --label-noise: invalid float value: 'lots'"),
    ],
)
def test_bad_values_are_one_error_line(tmp_path, capsys, options, message):
    out = tmp_path / "raf"
    with pytest.raises(SystemExit) as exit_info:
        main(["make-synthetic", "--format", "rafdb", "--out", str(out), "--num-images", "5", *options])
    assert exit_info.value.code == 1
    stderr = capsys.readouterr().err.strip()
    assert len(stderr.splitlines()) == 1 and stderr.startswith("error: make-synthetic")
    assert message in stderr
    assert not out.exists()


def test_held_out_fractions_must_leave_training_images(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(
            [
                "make-synthetic",
                "--format",
                "fer2013",
                "--out",
                str(tmp_path / "f"),
                "--public-test-fraction",
                "0.9",
            ]
        )
    stderr = capsys.readouterr().err
    assert "--public-test-fraction 0.9, --private-test-fraction 0.1" in stderr and "sum to 1" in stderr


def test_overwrite_replaces_only_a_synthetic_dataset(tmp_path, capsys):
    out = tmp_path / "raf"
    args = ["make-synthetic", "--format", "rafdb", "--out", str(out), "--num-images", "5"]
    main(args)
    with pytest.raises(SystemExit):
        main([*args, "--seed", "1"])
    assert "pass --overwrite" in capsys.readouterr().err
    main([*args, "--seed", "1", "--overwrite"])
    assert read_manifest(out)["seed"] == 1

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit):
        main(
            ["make-synthetic", "--format", "rafdb", "--out", str(foreign), "--num-images", "5", "--overwrite"]
        )
    assert "holds other files" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "keep me"
