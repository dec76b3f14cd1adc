"""Bad input in every reader: a one-line error naming the file or row by default; counted skips on request.

Cases (issue 4): a corrupt or truncated image, a file listed but missing, a label out of range, a
malformed CSV/JSON row. Annotation problems are found at setup; undecodable images only when a
DataLoader (worker) loads them, so those are counted through the run folder's ``bad_samples.tsv``.
"""

import csv
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from cli_helpers import quickstart_args

from fer_lightning.cli import main
from fer_lightning.data import AIHubKoreanDataModule, FER2013DataModule, RAFDBDataModule
from fer_lightning.data.base import BadSampleWarning, read_bad_sample_log
from fer_lightning.data.io import BadSampleError
from fer_lightning.data.synthetic import write_synthetic

OPTIONS = dict(batch_size=4, num_workers=0, img_size=32)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Pristine tiny datasets; each test edits its own copy."""
    base = tmp_path_factory.mktemp("bad_input")
    sizes = {"rafdb": 40, "aihub": 28, "fer2013": 40, "ferplus": 40}
    extra = {"aihub": dict(validation_fraction=0.25, list_boxes=0)}
    for fmt, size in sizes.items():
        write_synthetic(fmt, base / fmt, num_images=size, seed=11, progress=False, **extra.get(fmt, {}))
    return base


def _copy(written, fmt, tmp_path):
    return Path(shutil.copytree(written / fmt, tmp_path / fmt))


def _expect_bad(make, message, reason, count=1):
    """Default: a one-line BadSampleError matching ``message``; skip: ``count`` rows counted under ``reason``."""
    with pytest.raises(BadSampleError, match=message) as raised:
        make(on_bad_sample="raise").setup("fit")
    assert "\n" not in str(raised.value)
    assert "data.on_bad_sample=skip" in str(raised.value)
    datamodule = make(on_bad_sample="skip")
    with pytest.warns(BadSampleWarning, match=rf"skipped {count} bad rows \({count} {reason}\)"):
        datamodule.setup("fit")
    assert sum(counts[reason] for counts in datamodule.skipped_rows.values()) == count
    return datamodule


# ---------------------------------------------------------------------------------------------------
# Annotation problems, found at setup
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "message", "reason"),
    [
        (
            lambda rows: rows.__setitem__(3, "train_00004.jpg 8"),
            r"list_patition_label\.txt:4: label 8 is outside 1\.\.7",
            "label out of range",
        ),
        (
            lambda rows: rows.__setitem__(3, "train_00004.jpg four"),
            r"list_patition_label\.txt:4: expected",
            "malformed row",
        ),
        (
            lambda rows: rows.append("train_09999.jpg 2"),
            r"lists train_09999\.jpg, but .*train_09999_aligned\.jpg does not exist",
            "missing image",
        ),
    ],
)
def test_rafdb_annotation_problems(written, tmp_path, edit, message, reason):
    root = _copy(written, "rafdb", tmp_path)
    list_file = root / "EmoLabel" / "list_patition_label.txt"
    rows = list_file.read_text().splitlines()
    edit(rows)
    list_file.write_text("\n".join(rows) + "\n")
    _expect_bad(lambda **kw: RAFDBDataModule(root=str(root), **OPTIONS, **kw), message, reason)


def _edit_aihub_record(root, edit):
    """Apply ``edit(records)`` to the first Training label file; return that file's path."""
    [json_path] = sorted((root / "Training").glob("*/*(기쁨).json"))
    records = json.loads(json_path.read_text(encoding="utf-8"))
    edit(records)
    json_path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return json_path


def _break_json(json_path):
    json_path.write_text(json_path.read_text(encoding="utf-8")[:-20], encoding="utf-8")


@pytest.mark.parametrize(
    ("edit", "message", "reason"),
    [
        (
            lambda records: records[0].__setitem__("filename", "gone_기쁨.jpg"),
            r"img_emotion_training_data\(기쁨\)\.json\[0\] gone_기쁨\.jpg: no such image file under .*Training",
            "missing image",
        ),
        (
            lambda records: [
                r.__setitem__("faceExp_uploader", "행복") or r["annot_A"].__setitem__("faceExp", "행복")
                for r in records[:1]
            ],
            r"json\[0\] .*: annot_A\.faceExp '행복' is not one of 기쁨 당황",
            "unknown emotion label",
        ),
        (
            lambda records: records[0]["annot_A"]["boxes"].__setitem__("maxX", -5),
            r"json\[0\] .*: annot_A\.boxes .* is not a valid box",
            "invalid face box",
        ),
        (
            lambda records: records.insert(0, ["not", "a", "record"]),
            r"json\[0\]: expected a record",
            "malformed record",
        ),
    ],
)
def test_aihub_annotation_problems(written, tmp_path, edit, message, reason):
    root = _copy(written, "aihub", tmp_path)
    _edit_aihub_record(root, edit)
    options = dict(OPTIONS, crop_cache=False)
    _expect_bad(lambda **kw: AIHubKoreanDataModule(root=str(root), **options, **kw), message, reason)


def test_aihub_malformed_json_file(written, tmp_path):
    # The Validation (test) file: skipping a Training file would leave 기쁨 without training images,
    # which is an error of its own (tests/test_data_mistakes.py).
    root = _copy(written, "aihub", tmp_path)
    [json_path] = sorted((root / "Validation").glob("*/*(기쁨).json"))
    _break_json(json_path)
    options = dict(OPTIONS, crop_cache=False)
    datamodule = _expect_bad(
        lambda **kw: AIHubKoreanDataModule(root=str(root), **options, **kw),
        r"img_emotion_validation_data\(기쁨\)\.json: cannot read the JSON",
        "malformed JSON",
    )
    # The class's other records are gone with the file; the rest is read.
    assert 0 not in set(datamodule.tables["test"].labels)
    assert 0 in set(datamodule.tables["train"].labels)


def _edit_csv(path, row_index, column, value):
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if column is None:
        rows[row_index] = rows[row_index][:1]
    else:
        rows[row_index][rows[0].index(column)] = value
    with open(path, "w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)


@pytest.mark.parametrize(
    ("column", "value", "message", "reason"),
    [
        ("emotion", "9", r"fer2013\.csv:3: label 9 is outside 0\.\.6", "label out of range"),
        ("emotion", "sad", r"fer2013\.csv:3: emotion 'sad' is not an integer", "malformed row"),
        ("pixels", "1 2 3", r"fer2013\.csv:3: pixels are not 2304 integers in 0\.\.255", "malformed pixels"),
        (
            "Usage",
            "Valid",
            r"fer2013\.csv:3: Usage 'Valid' is not one of Training, PublicTest",
            "malformed row",
        ),
        (None, None, r"fer2013\.csv:3: fewer fields than the header names", "malformed row"),
    ],
)
def test_fer2013_row_problems(written, tmp_path, column, value, message, reason):
    root = _copy(written, "fer2013", tmp_path)
    _edit_csv(root / "fer2013.csv", 2, column, value)
    _expect_bad(lambda **kw: FER2013DataModule(root=str(root), **OPTIONS, **kw), message, reason)


def test_ferplus_row_problems(written, tmp_path):
    root = _copy(written, "ferplus", tmp_path)
    _edit_csv(root / "fer2013new.csv", 2, "happiness", "many")
    _expect_bad(
        lambda **kw: FER2013DataModule(root=str(root), labels="ferplus", **OPTIONS, **kw),
        r"fer2013new\.csv:3: votes are not numbers",
        "malformed row",
    )
    # A vote file that does not pair row by row with fer2013.csv cannot be skipped around.
    rows = (root / "fer2013new.csv").read_text().splitlines()
    (root / "fer2013new.csv").write_text("\n".join(rows[:-1]) + "\n")
    with pytest.raises(BadSampleError, match=r"fer2013new\.csv has \d+ rows but .*fer2013\.csv has \d+"):
        FER2013DataModule(root=str(root), labels="ferplus", on_bad_sample="skip", **OPTIONS).setup("fit")


# ---------------------------------------------------------------------------------------------------
# Images that only fail when loaded
# ---------------------------------------------------------------------------------------------------


def _damage_test_images(root):
    """Corrupt the first test image and truncate the second; return their paths."""
    first, second = (root / "Image" / "aligned" / f"test_000{i}_aligned.jpg" for i in (1, 2))
    first.write_bytes(b"not a jpeg at all")
    data = second.read_bytes()
    second.write_bytes(data[: len(data) // 2])
    return first, second


def test_undecodable_images_raise_by_default(written, tmp_path):
    root = _copy(written, "rafdb", tmp_path)
    corrupt, _ = _damage_test_images(root)
    datamodule = RAFDBDataModule(root=str(root), **OPTIONS)
    datamodule.setup("test")
    with pytest.raises(BadSampleError, match=rf"cannot decode image \(corrupt or truncated\?\): {corrupt}"):
        next(iter(datamodule.test_dataloader()))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_undecodable_images_are_skipped_counted_and_reported(written, tmp_path, num_workers):
    root = _copy(written, "rafdb", tmp_path)
    corrupt, truncated = _damage_test_images(root)
    datamodule = RAFDBDataModule(
        root=str(root), **dict(OPTIONS, num_workers=num_workers), on_bad_sample="skip"
    )
    datamodule.setup("test")
    for _ in range(2):  # two epochs: each bad image is still counted once
        sizes = [len(labels) for _, labels in datamodule.test_dataloader()]
    assert sum(sizes) == len(datamodule.tables["test"]) - 2
    assert sizes[0] == 2  # the first batch lost both
    assert datamodule.load_failures() == {"test": Counter({"corrupt image": 1, "truncated image": 1})}
    with pytest.warns(
        BadSampleWarning, match=r"RAF-DB: skipped 2 images that failed to load \(test: 1 corrupt"
    ):
        datamodule.teardown("test")
    logged = datamodule.bad_sample_log.read_text()
    assert str(corrupt) in logged and str(truncated) in logged


def test_cli_run_reports_skipped_images_in_the_run_folder(written, tmp_path, monkeypatch, capsys):
    """The first validation batch holds a corrupt image: training goes on and the run folder lists it."""
    root = _copy(written, "rafdb", tmp_path)
    probe = RAFDBDataModule(root=str(root), batch_size=4, num_workers=0, img_size=32)
    probe.setup("fit")
    first_val = probe.tables["val"].sources[0]
    first_val.write_bytes(b"broken")
    monkeypatch.chdir(tmp_path)
    args = [
        "fit",
        *quickstart_args(
            root,
            tmp_path,
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=0.2",  # a float: "1" would parse as 100 %
            "--trainer.limit_val_batches=0.5",
            "--trainer.num_sanity_val_steps=0",
        ),
    ]
    with pytest.raises(SystemExit):  # the CLI prints a bad sample as one error line
        main(args)
    last_line = capsys.readouterr().err.strip().splitlines()[-1]  # after Lightning's own warnings
    assert re.fullmatch(rf"error: cannot decode image .*{first_val.name}", last_line)
    with pytest.warns(
        BadSampleWarning, match=r"skipped 1 images that failed to load \(val: 1 corrupt image\)"
    ):
        main([*args, "--data.on_bad_sample=skip"])
    [log] = sorted(tmp_path.glob("quickstart/version_*/bad_samples.tsv"))
    assert read_bad_sample_log(log) == {"val": Counter({"corrupt image": 1})}
    assert str(first_val) in log.read_text()
