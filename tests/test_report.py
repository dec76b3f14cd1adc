"""``fer-lightning report`` on a hand-written results table, and the results table itself."""

from __future__ import annotations

import csv

import pytest
from cli_helpers import write_data_splits

from fer_lightning.cli import main
from fer_lightning.results import append_row, study_settings

TABLE = """\
run_folder,config_hash,model,variant,dataset,lambda_vit,batch_size,seed,label_noise_rate,acc,mean_class_acc,macro_f1,selected_epoch,checkpoint
lam/run-001,h1,BTN,tiny,synthetic RAF-DB,1.0,8,0,0,0.5,0.4,0.3,2,
lam/run-002,h2,BTN,tiny,synthetic RAF-DB,1.0,8,1,0,0.6,0.5,0.4,3,
lam/run-003,h3,BTN,tiny,synthetic RAF-DB,2.0,8,0,0,0.7,0.6,0.5,1,
bs/run-001,h4,BTN,paper,RAF-DB,2.0,64,0,,0.9,0.8,0.85,10,
bs/run-003,h9,BTN,paper,RAF-DB,1.0,64,0,,0.8,0.7,0.75,9,
tiny/run-001,h10,BTN,tiny,RAF-DB,1.0,64,0,,0.3,0.2,0.1,1,
tiny/run-002,h11,BTN,tiny,RAF-DB,2.0,64,0,,0.4,0.3,0.2,1,
bs/run-002,h5,BTN,paper,RAF-DB,2.0,16,0,,0.88,0.8,0.85,10,
noise/run-001,h6,POSTERPP,tiny,synthetic RAF-DB,,8,0,0.0,0.6,0.5,0.4,4,
noise/run-002,h7,POSTERPP,tiny,synthetic RAF-DB,,8,0,0.2,0.4,0.3,0.2,4,
lone/run-001,h8,TimmClassifier,,synthetic RAF-DB,,8,0,0.0,0.4,0.3,0.2,1,
"""

LAMBDA_TABLE = """\
| model, dataset (fixed settings) | λ | n | accuracy (%) | mean class acc (%) | macro F1 (%) | BTN paper accuracy (%) |
|---|---|---|---|---|---|---|
| BTN (paper), RAF-DB (batch size 64) | 1 | 1 | 80.00 | 70.00 | 75.00 | 91.88 |
| BTN (paper), RAF-DB (batch size 64) | 2 | 1 | 90.00 | 80.00 | 85.00 | 92.54 |
| BTN (tiny), RAF-DB (batch size 64) | 1 | 1 | 30.00 | 20.00 | 10.00 | – |
| BTN (tiny), RAF-DB (batch size 64) | 2 | 1 | 40.00 | 30.00 | 20.00 | – |
| BTN (tiny), synthetic RAF-DB (batch size 8, label-noise rate 0) | 1 | 2 | 55.00 ± 7.07 | 45.00 ± 7.07 | 35.00 ± 7.07 | – |
| BTN (tiny), synthetic RAF-DB (batch size 8, label-noise rate 0) | 2 | 1 | 70.00 | 60.00 | 50.00 | – |"""

BATCH_TABLE = """\
| model, dataset (fixed settings) | batch size | n | accuracy (%) | mean class acc (%) | macro F1 (%) | BTN paper accuracy (%) |
|---|---|---|---|---|---|---|
| BTN (paper), RAF-DB (λ 2) | 16 | 1 | 88.00 | 80.00 | 85.00 | 91.13 |
| BTN (paper), RAF-DB (λ 2) | 64 | 1 | 90.00 | 80.00 | 85.00 | 92.54 |"""

NOISE_TABLE = """\
| model, dataset (fixed settings) | label-noise rate | n | accuracy (%) | mean class acc (%) | macro F1 (%) |
|---|---|---|---|---|---|
| POSTERPP (tiny), synthetic RAF-DB (batch size 8) | 0 | 1 | 60.00 | 50.00 | 40.00 |
| POSTERPP (tiny), synthetic RAF-DB (batch size 8) | 0.2 | 1 | 40.00 | 30.00 | 20.00 |"""


def test_report_tabulates_each_study_with_the_papers_numbers_where_the_dataset_matches(tmp_path, capsys):
    results = tmp_path / "results.csv"
    results.write_text(TABLE)
    main(["report", str(results), "--out", str(tmp_path / "out")])
    assert "report: " in capsys.readouterr().out
    report = (tmp_path / "out" / "report.md").read_text()
    for table in (LAMBDA_TABLE, BATCH_TABLE, NOISE_TABLE):
        assert table in report, report
    for figure in ("accuracy_vs_lambda.png", "accuracy_vs_batch_size.png", "accuracy_vs_noise_rate.png"):
        assert (tmp_path / "out" / figure).stat().st_size > 0
    # Every run is listed; the lone TimmClassifier row belongs to no study.
    assert report.count("| lone/run-001 | TimmClassifier |") == 1
    assert "TimmClassifier, synthetic" not in report


def test_report_of_a_missing_table_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        main(["report", str(tmp_path / "nothing.csv")])
    assert raised.value.code == 1
    error = capsys.readouterr().err
    assert (
        error.startswith(f"error: results table {tmp_path / 'nothing.csv'} not found")
        and error.count("\n") == 1
    )


def test_a_row_with_new_classes_widens_the_table_and_keeps_the_earlier_rows(tmp_path):
    table = tmp_path / "results.csv"
    append_row(table, {"run_folder": "a", "acc": "0.5", "class_acc/Happy": "0.9"})
    append_row(table, {"run_folder": "b", "acc": "0.6", "class_acc/Happy": "0.8"})
    append_row(table, {"run_folder": "c", "acc": "0.7", "class_acc/Contempt": "0.1"})
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["run_folder"], row["class_acc/Happy"], row["class_acc/Contempt"]) for row in rows] == [
        ("a", "0.9", ""),
        ("b", "0.8", ""),
        ("c", "", "0.1"),
    ]


def test_the_studied_settings_are_read_from_the_config_and_blank_where_there_is_no_such_option():
    btn = {
        "seed_everything": 3,
        "model": {"class_path": "fer_lightning.models.BTN", "init_args": {"lambda_vit": 2.25}},
        "data": {"init_args": {"batch_size": 144, "label_noise": {"rate": 0.2, "kind": "symmetric"}}},
    }
    assert study_settings(btn) == {"lambda_vit": 2.25, "batch_size": 144, "seed": 3, "label_noise_rate": 0.2}
    plain = {
        "seed_everything": 0,
        "model": {"init_args": {}},
        "data": {"init_args": {"batch_size": 8, "label_noise": None}},
    }
    assert study_settings(plain) == {"lambda_vit": "", "batch_size": 8, "seed": 0, "label_noise_rate": 0.0}
    assert study_settings({"data": {"init_args": {}}})["label_noise_rate"] == ""


def _write_splits(folder, test_labels):
    write_data_splits(folder, [("train", 0), ("train", 1), ("train", 1)] + [("test", y) for y in test_labels])


def test_report_states_the_majority_baseline_when_the_runs_share_their_data(tmp_path):
    results = tmp_path / "results.csv"
    results.write_text(TABLE)
    # The largest training class (1) is 1 of the 4 test images of both noise runs.
    for run in ("run-001", "run-002"):
        _write_splits(tmp_path / "noise" / run, [0, 1, 2, 2])
    main(["report", str(results), "--out", str(tmp_path / "out")])
    assert (
        "largest training class gives 25.00 % test accuracy" in (tmp_path / "out" / "report.md").read_text()
    )
    # Runs on different data have no single baseline: none is stated.
    _write_splits(tmp_path / "noise" / "run-002", [1, 1, 2, 2])
    main(["report", str(results), "--out", str(tmp_path / "out")])
    assert "largest training class" not in (tmp_path / "out" / "report.md").read_text()
