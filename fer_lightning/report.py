"""``fer-lightning report RESULTS [--out DIR]``: markdown tables and PNG figures from a results table.

For each studied setting (λ, batch size, label-noise rate) the report finds the runs that differ in
that setting only — same model, variant and dataset, same other settings; seeds are repeats — and
tabulates test accuracy, mean class accuracy and macro F1 per value as mean ± standard deviation over
the seeds, with the BTN paper's number beside ours where it published one for that dataset
(:mod:`fer_lightning.paper_results`; never for synthetic data). Each study also gets a figure:
accuracy against the setting, error bars = standard deviation over seeds, the paper's numbers dashed.
``notebooks/results.ipynb`` shows the same tables and figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from fer_lightning.errors import ResultsError
from fer_lightning.paper_results import BTN_PAPER, paper_accuracy
from fer_lightning.results import STUDY_SETTINGS, read_results

#: Studied setting -> (label in tables, file stem of its figure).
STUDIES = {
    "lambda_vit": ("λ", "accuracy_vs_lambda"),
    "batch_size": ("batch size", "accuracy_vs_batch_size"),
    "label_noise_rate": ("label-noise rate", "accuracy_vs_noise_rate"),
}
METRICS = {"acc": "accuracy", "mean_class_acc": "mean class acc", "macro_f1": "macro F1"}
IDENTITY = ("model", "variant", "dataset")


@dataclass
class Series:
    """Runs that differ in one setting only: their identity, the fixed settings and a row per value."""

    model: str
    variant: str
    dataset: str
    fixed: dict[str, float]
    rows: list[dict]  # per value: value, runs, run_folders, <metric>_mean, <metric>_std, paper

    @property
    def label(self) -> str:
        name = f"{self.model} ({self.variant})" if self.variant else self.model
        fixed = ", ".join(
            f"{STUDIES[key][0] if key in STUDIES else key} {_number(v)}" for key, v in self.fixed.items()
        )
        return f"{name}, {self.dataset}" + (f" ({fixed})" if fixed else "")


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float | int) else str(value)


def _is_blank(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def study(frame, setting: str) -> list[Series]:
    """The series of ``frame`` (a results table, :func:`fer_lightning.results.read_results`) that vary
    ``setting`` with everything else but the seed fixed, at least two values each."""
    others = [column for column in STUDY_SETTINGS if column not in (setting, "seed")]
    rows = frame[frame[setting].notna()] if setting in frame else frame.iloc[0:0]
    keys = [*IDENTITY, *others]
    series = []
    for key, group in rows.groupby(keys, sort=True, dropna=False):
        if group[setting].nunique() < 2:
            continue
        identity = dict(zip(keys, key))
        values = []
        for value, runs in group.groupby(setting, sort=True):
            row = {"value": value, "runs": len(runs), "run_folders": list(runs["run_folder"])}
            for metric in METRICS:
                numbers = runs[metric].dropna()
                row[f"{metric}_mean"] = float(numbers.mean()) if len(numbers) else math.nan
                row[f"{metric}_std"] = float(numbers.std(ddof=1)) if len(numbers) > 1 else math.nan
            paper_applies = identity["model"] == "BTN" and identity["variant"] in ("", "paper")
            row["paper"] = paper_accuracy(setting, identity["dataset"], value) if paper_applies else None
            values.append(row)
        fixed = {column: identity[column] for column in others if not _is_blank(identity[column])}
        series.append(Series(identity["model"], identity["variant"], identity["dataset"], fixed, values))
    return series


def _percent(mean: float, std: float) -> str:
    if _is_blank(mean):
        return "–"
    return f"{100 * mean:.2f}" + ("" if _is_blank(std) else f" ± {100 * std:.2f}")


def study_markdown(series: list[Series], setting: str) -> str:
    """One markdown table of all the series of a study (``n``: runs, i.e. seeds, per value)."""
    label = STUDIES[setting][0]
    has_paper = any(row["paper"] is not None for one in series for row in one.rows)
    header = ["model, dataset (fixed settings)", label, "n", *(f"{name} (%)" for name in METRICS.values())]
    header += ["BTN paper accuracy (%)"] if has_paper else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for one in series:
        for row in one.rows:
            cells = [one.label, _number(row["value"]), str(row["runs"])]
            cells += [_percent(row[f"{metric}_mean"], row[f"{metric}_std"]) for metric in METRICS]
            if has_paper:
                cells.append("–" if row["paper"] is None else f"{row['paper']:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def majority_baseline_on_test(run_folders) -> float | None:
    """Test accuracy of always predicting the largest training class, when every run folder has a
    ``data_splits.csv`` and they all give the same value (the same data), else None."""
    from fer_lightning.plots import majority_baseline_from_splits

    values = set()
    for folder in run_folders:
        splits = Path(folder) / "data_splits.csv"
        if not splits.is_file():
            return None
        value = majority_baseline_from_splits(splits, split="test")
        if value is None:
            return None
        values.add(round(value, 9))
    return values.pop() if len(values) == 1 else None


def plot_study(
    series: list[Series], setting: str, path: str | Path, metric: str = "acc", majority: float | None = None
) -> None:
    """Test accuracy (%) against the setting, one line per series (error bars: std over seeds), the
    BTN paper's numbers dashed where it published them, and ``majority`` (the test accuracy of always
    predicting the largest training class, a fraction) as a horizontal line when given."""
    from matplotlib.figure import Figure

    label = STUDIES[setting][0]
    figure = Figure(figsize=(7.5, 4.2))
    axes = figure.subplots()
    for one in series:
        x = [row["value"] for row in one.rows]
        mean = [100 * row[f"{metric}_mean"] for row in one.rows]
        std = [0.0 if _is_blank(row[f"{metric}_std"]) else 100 * row[f"{metric}_std"] for row in one.rows]
        line = axes.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=f"ours: {one.label}")
        paper = [(row["value"], row["paper"]) for row in one.rows if row["paper"] is not None]
        if paper:
            axes.plot(
                *zip(*paper),
                "--",
                marker="s",
                color=line.lines[0].get_color(),
                alpha=0.7,
                label=f"BTN paper, {one.dataset}",
            )
    if majority is not None and metric == "acc":
        axes.axhline(
            100 * majority, color="black", ls="-.", lw=0.8, label="always the largest training class"
        )
    if setting == "batch_size":
        axes.set_xscale("log", base=2)
        ticks = sorted({row["value"] for one in series for row in one.rows})
        axes.set_xticks(ticks, labels=[_number(tick) for tick in ticks])
    axes.set_xlabel(label)
    axes.set_ylabel(f"test {METRICS[metric]} (%)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    axes.set_title(f"test {METRICS[metric]} vs {label} (mean ± std over seeds)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def runs_markdown(frame) -> str:
    """Every row of the table: run folder (last two parts), settings, metrics, selected epoch."""
    columns = ["model", "dataset", *STUDY_SETTINGS, *METRICS, "selected_epoch"]
    names = {
        **{c: STUDIES[c][0] for c in STUDIES},
        **METRICS,
        "seed": "seed",
        "selected_epoch": "selected epoch",
    }
    header = ["run", *(names.get(column, column) for column in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in frame.iterrows():
        run = "/".join(Path(row["run_folder"]).parts[-2:])
        cells = [run]
        for column in columns:
            value = row.get(column)
            if _is_blank(value) or value == "":
                cells.append("–")
            elif column in METRICS:
                cells.append(f"{100 * value:.2f}")
            else:
                cells.append(
                    _number(int(value))
                    if column in ("batch_size", "seed", "selected_epoch")
                    else _number(value)
                )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(results: str | Path, out: str | Path | None = None) -> Path:
    """Write ``report.md`` and one figure per study found into ``out`` (default: ``<results folder>/report``)."""
    results = Path(results)
    frame = read_results(results)
    out = Path(out) if out is not None else results.parent / "report"
    out.mkdir(parents=True, exist_ok=True)
    sections = [
        f"# Results: {results}",
        "",
        f"{len(frame)} test runs. Accuracies in %, on each dataset's test split, of the checkpoint selected "
        "on validation; mean ± standard deviation over the runs (seeds) of each value. Paper numbers: "
        f"{BTN_PAPER}, one run each, shown only for the real dataset they were measured on.",
    ]
    written = []
    for setting, (label, stem) in STUDIES.items():
        series = study(frame, setting)
        if not series:
            continue
        folders = [run for one in series for row in one.rows for run in row["run_folders"]]
        majority = majority_baseline_on_test(folders)
        plot_study(series, setting, out / f"{stem}.png", majority=majority)
        written.append(label)
        sections += ["", f"## Accuracy vs {label}", "", study_markdown(series, setting), ""]
        if majority is not None:
            sections += [
                f"Always predicting the largest training class gives {100 * majority:.2f} % test accuracy "
                "on these runs' data (their data_splits.csv).",
                "",
            ]
        sections.append(f"![]({stem}.png)")
    if not written:
        sections += ["", "No study: no runs differ in λ, batch size or noise rate with the rest fixed."]
    sections += ["", "## All runs", "", runs_markdown(frame), ""]
    report_file = out / "report.md"
    report_file.write_text("\n".join(sections), encoding="utf-8")
    return report_file


USAGE = (
    "usage: fer-lightning report RESULTS [--out DIR]\n\n"
    "Markdown tables and PNG figures from a results table (the results.csv every fer-lightning test\n"
    "appends to): accuracy vs λ, vs batch size and vs label-noise rate where runs differ in that setting\n"
    "only, mean ± std over seeds, with the BTN paper's numbers where the dataset matches. Writes\n"
    "DIR/report.md and DIR/accuracy_vs_*.png (default DIR: report/ beside RESULTS)."
)


def report(argv: list[str]) -> None:
    """``fer-lightning report RESULTS [--out DIR]``."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return
    results, out = None, None
    tokens = iter(argv)
    for token in tokens:
        if token == "--out" or token.startswith("--out="):
            out = token.partition("=")[2] or next(tokens, None)
            if not out:
                raise ResultsError("report: --out needs a folder (see fer-lightning report --help)")
        elif token.startswith("-") or results is not None:
            raise ResultsError(f"report: unexpected argument {token!r} (see fer-lightning report --help)")
        else:
            results = token
    if results is None:
        raise ResultsError(
            "report: which results table? e.g. fer-lightning report runs/sweeps/btn_lambda/results.csv"
        )
    report_file = write_report(results, out)
    figures = sorted(path.name for path in report_file.parent.glob("accuracy_vs_*.png"))
    print(f"report: {report_file}" + (f" (figures: {', '.join(figures)})" if figures else ""))
