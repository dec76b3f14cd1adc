"""Training-curve figures from a CSV logger's metrics.csv: parsing, the selected epoch, the CLI command."""

import csv

import pytest
from cli_helpers import write_data_splits

from fer_lightning.cli import main
from fer_lightning.plots import plot_per_class_accuracy, plot_training_curves, read_metrics_csv

# Sparse rows as Lightning's CSVLogger writes them: step rows, epoch-end train rows, validation rows.
COLUMNS = ["epoch", "step", "train/loss_step", "train/loss_epoch", "val/acc", "val/heads/acc_vit"]
COLUMNS += [f"val/class_acc/c{i}" for i in range(4)]
VAL_ACC = [0.30, 0.55, 0.50]


def _write_metrics(path):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        for epoch, acc in enumerate(VAL_ACC):
            writer.writerow({"epoch": epoch, "step": 10 * epoch + 4, "train/loss_step": 2.0 - epoch / 2})
            writer.writerow({"epoch": epoch, "step": 10 * epoch + 9, "train/loss_epoch": 1.9 - epoch / 2})
            row = {"epoch": epoch, "step": 10 * epoch + 9, "val/acc": acc, "val/heads/acc_vit": acc}
            row.update({f"val/class_acc/c{i}": acc for i in range(4)})
            writer.writerow(row)
    return path


def test_read_metrics_keeps_each_column_sparse(tmp_path):
    series = read_metrics_csv(_write_metrics(tmp_path / "metrics.csv"))
    assert [value for *_, value in series["val/acc"]] == VAL_ACC
    assert [(epoch, step) for epoch, step, _ in series["train/loss_step"]] == [(0, 4), (1, 14), (2, 24)]


def test_plot_marks_the_best_validation_epoch_and_chance(tmp_path):
    out = tmp_path / "curves.png"
    summary = plot_training_curves(_write_metrics(tmp_path / "metrics.csv"), out, majority_fraction=0.4)
    assert summary == {"best_epoch": 1.0, "best_val_acc": 0.55, "chance": 0.25, "majority": 0.4}
    assert out.stat().st_size > 1000


def test_plot_without_validation_says_so(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,train/loss_step\n0,1,2.0\n")
    with pytest.raises(ValueError, match=r"metrics.csv: no 'val/acc' column"):
        plot_training_curves(path, tmp_path / "x.png")


def test_plot_curves_command(tmp_path, capsys):
    _write_metrics(tmp_path / "metrics.csv")
    main(["plot-curves", str(tmp_path)])
    assert (tmp_path / "training_curves.png").stat().st_size > 1000
    assert "best val acc 0.5500 at epoch=1" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["plot-curves", str(tmp_path / "missing")])


def test_plot_curves_command_reads_the_majority_baseline_from_the_run_folder(tmp_path, capsys):
    _write_metrics(tmp_path / "metrics.csv")
    # Training's largest class is 1; it is 2 of the 5 validation samples. Test rows must not count.
    rows = [("train", 0), ("train", 1), ("train", 1), ("val", 0), ("val", 1), ("val", 1), ("val", 2)]
    rows += [("val", 0), ("test", 1), ("test", 1)]
    write_data_splits(tmp_path, rows)
    main(["plot-curves", str(tmp_path)])
    assert "majority class 0.4000" in capsys.readouterr().out
    main(["plot-curves", str(tmp_path), "--majority", "0.25"])  # an explicit value wins
    assert "majority class 0.2500" in capsys.readouterr().out


def test_per_class_accuracy_chart(tmp_path):
    confusion = [[3, 1, 0], [0, 0, 0], [1, 1, 2]]  # rows: true class; class b has no samples
    out = tmp_path / "per_class.png"
    accuracies = plot_per_class_accuracy(confusion, ["a", "b", "c"], out, title="val")
    assert accuracies[0] == pytest.approx(3 / 4) and accuracies[2] == pytest.approx(2 / 4)
    assert accuracies[1] != accuracies[1]  # NaN: no samples, not 0 %
    assert out.stat().st_size > 1000
