"""The tables and figures of a reproduction, from its run records and the published spiking results.

Tables (``<out>/tables/reproduce_<budget>.csv|md``): one row per (data set, variant) with the mean and standard
deviation of the test accuracy over seeds, its difference to the data set's first row (of the means, and paired
seed by seed with a 95 % confidence interval: :mod:`sqdr.reproduce.paired`), the parameters per part,
the training throughput and, where published spiking results for the data set are given, the paper's two ratios:
accuracy as a percentage of the mean accuracy of those spiking networks, and parameters as a percentage of the
smallest of them. Rows of skipped or failed runs
say why; ``reproduce_<budget>_runs.csv`` holds every run, with the whole reason and how to fix it. Figures
(``<out>/figures/``): per data set, validation accuracy per epoch (mean over seeds) and test accuracy against
parameters, published networks included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sqdr.errors import UserError
from sqdr.files import atomic_write, write_figure, write_text
from sqdr.reproduce.paired import CONFIDENCE, interval, paired_difference, paired_findings, plot_paired
from sqdr.reproduce.runner import PARTS, Record, headline

PUBLISHED_COLUMNS = ("dataset", "model", "accuracy", "params", "source")


def read_published(path: str | Path) -> pd.DataFrame:
    """Published spiking results: ``dataset, model, accuracy`` (percent), ``params`` (may be empty), ``source``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"published results {path} not found; pass --published with a CSV of {', '.join(PUBLISHED_COLUMNS)}."
        )
    table = pd.read_csv(path, comment="#")
    missing = [column for column in PUBLISHED_COLUMNS if column not in table]
    if missing:
        raise UserError(
            f"{path} lacks the column(s) {', '.join(missing)}; its header must be {','.join(PUBLISHED_COLUMNS)}."
        )
    return table


def summary_table(records: list[Record], published: pd.DataFrame) -> pd.DataFrame:
    """One row per (data set, variant), in the order the records came (the plan's order)."""
    rows = []
    keys = list(dict.fromkeys((r["dataset"], r["variant"]) for r in records))
    for dataset, variant in keys:
        runs = [r for r in records if (r["dataset"], r["variant"]) == (dataset, variant)]
        done = [r for r in runs if r["status"] == "done"]
        row: dict[str, Any] = {"dataset": dataset, "variant": variant, "group": runs[0]["group"], "seeds": len(done)}
        accuracy = pd.Series([100 * r["test_acc"] for r in done], dtype=float)
        row["test_acc_mean"] = accuracy.mean() if len(done) else np.nan
        row["test_acc_std"] = accuracy.std() if len(done) > 1 else np.nan
        row["test_acc_ci_low"], row["test_acc_ci_high"] = interval(accuracy)
        first = next(key for key in keys if key[0] == dataset)  # the plan lists each data set's reference first
        paired = paired_difference(runs, [r for r in records if (r["dataset"], r["variant"]) == first])
        row.update(paired_seeds=paired.seeds, paired_diff=paired.mean, paired_low=paired.low, paired_high=paired.high,
                   paired_significant=paired.significant)
        for part in (*PARTS, "total"):
            row[f"params_{part}"] = done[0]["params"][part] if done else np.nan
        speeds = [r["images_per_s"] for r in done if r.get("images_per_s")]
        row["images_per_s"] = float(np.mean(speeds)) if speeds else np.nan
        row.update(snn_ratios(dataset, row["test_acc_mean"], row["params_total"], published))
        undone = [r for r in runs if r["status"] != "done"]
        row["status"] = "ok" if not undone else f"{undone[0]['status']}: {headline(undone[0]['reason'])}"
        rows.append(row)
    table = pd.DataFrame(rows)
    # An ablation reads as a difference: each row's mean minus that of its data set's first row (the plan lists the
    # reference model first: the paper model, or the tuned model whose choices are put back one at a time).
    # A first row without a result leaves its data set without a reference (``transform("first")`` would skip it).
    reference = table.groupby("dataset", sort=False)["test_acc_mean"].transform(lambda accuracy: accuracy.iloc[0])
    table["vs_first"] = table["test_acc_mean"] - reference
    return table


def snn_ratios(dataset: str, accuracy: float, params: float, published: pd.DataFrame) -> dict[str, float]:
    """``acc_vs_snn``: accuracy in percent of the mean published spiking accuracy on ``dataset``;
    ``params_vs_snn``: parameters in percent of the smallest published spiking network on it (NaN without rows)."""
    rows = published[published["dataset"] == dataset]
    sizes = rows["params"].dropna()
    return {
        "acc_vs_snn": 100 * accuracy / rows["accuracy"].mean() if len(rows) else np.nan,
        "params_vs_snn": 100 * params / sizes.min() if len(sizes) else np.nan,
    }


def merge_unavailable(table: pd.DataFrame) -> pd.DataFrame:
    """A data set none of whose runs could start, all for the same reason (its files are absent), as one row."""
    parts = []
    for _, rows in table.groupby("dataset", sort=False):
        if (rows["seeds"] == 0).all() and rows["status"].nunique() == 1:
            merged = rows.iloc[:1].copy()
            merged["variant"] = ", ".join(rows["variant"])
            merged["group"] = ", ".join(rows["group"].unique())
            rows = merged
        parts.append(rows)
    return pd.concat(parts, ignore_index=True)


def markdown(table: pd.DataFrame) -> str:
    """The summary for reading: accuracy as ``mean ± std`` percent, ratios as percent, statuses in the last column."""
    table = merge_unavailable(table)
    shown = pd.DataFrame({
        "data set": table["dataset"],
        "variant": table["variant"],
        "group": table["group"],
        "seeds": table["seeds"],
        "test accuracy %": [_mean_std(m, s) for m, s in zip(table["test_acc_mean"], table["test_acc_std"])],
        "vs first row, points": [
            "-" if pd.isna(v) else "reference" if first else f"{v:+.2f}"
            for first, v in zip(~table["dataset"].duplicated(), table["vs_first"])
        ],
        f"paired difference ({CONFIDENCE:.0%} CI)": [
            "reference" if first else _paired(row)
            for first, (_, row) in zip(~table["dataset"].duplicated(), table.iterrows())
        ],
        f"parameters ({' + '.join(PARTS)})": [_split(row) for _, row in table.iterrows()],
        "images/s": table["images_per_s"].map(lambda v: "-" if pd.isna(v) else f"{v:.0f}"),
        "% of SNN accuracy": table["acc_vs_snn"].map(lambda v: "-" if pd.isna(v) else f"{v:.1f}"),
        "% of SNN parameters": table["params_vs_snn"].map(lambda v: "-" if pd.isna(v) else f"{v:.3g}"),
        "status": table["status"],
    })
    return shown.to_markdown(index=False) + "\n"


def _paired(row: pd.Series) -> str:
    """``+0.52 [-0.10, +1.14]``, with ``*`` when the interval excludes 0; ``-`` without two paired seeds."""
    if pd.isna(row["paired_low"]) or row["paired_seeds"] < 2:
        return "-"
    mark = " *" if row["paired_significant"] else ""
    return f"{row['paired_diff']:+.2f} [{row['paired_low']:+.2f}, {row['paired_high']:+.2f}]{mark}"


def _mean_std(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "-"
    return f"{mean:.2f}" if pd.isna(std) else f"{mean:.2f} ± {std:.2f}"


def _split(row: pd.Series) -> str:
    """``803 (649 + 54 + 100)``: the total, then the parts in the order of ``PARTS``."""
    if pd.isna(row["params_total"]):
        return "-"
    return f"{int(row['params_total'])} ({' + '.join(str(int(row[f'params_{part}'])) for part in PARTS)})"


def _integer(value: float) -> str:
    return "-" if pd.isna(value) else str(int(value))


def epoch_curves(record: Record) -> pd.Series:
    """``val/acc`` per epoch of one finished run, from its ``metrics.csv``."""
    csv = Path(record["run_dir"]) / "metrics.csv"
    metrics = pd.read_csv(csv) if csv.is_file() else pd.DataFrame()
    if "val/acc" not in metrics or "epoch" not in metrics:
        return pd.Series(dtype=float)
    return metrics.dropna(subset=["val/acc"]).groupby("epoch")["val/acc"].last()


def plot_curves(records: list[Record], dataset: str) -> Figure:
    """Validation accuracy per epoch, the mean over seeds per variant (shaded: min to max)."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    for variant in dict.fromkeys(r["variant"] for r in records if r["dataset"] == dataset):
        curves = [
            epoch_curves(r) for r in records if (r["dataset"], r["variant"], r["status"]) == (dataset, variant, "done")
        ]
        frame = pd.concat([c for c in curves if len(c)], axis=1) if any(len(c) for c in curves) else None
        if frame is None:
            continue
        line = ax.plot(frame.index, 100 * frame.mean(axis=1), marker=".", label=variant)[0]
        low, high = 100 * frame.min(axis=1), 100 * frame.max(axis=1)
        ax.fill_between(frame.index, low, high, color=line.get_color(), alpha=0.15)
    ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title=f"{dataset}: training curves (mean over seeds)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return fig


def plot_pareto(table: pd.DataFrame, published: pd.DataFrame, dataset: str) -> Figure:
    """Test accuracy against parameters (log scale): our variants (error bars: the 95 % confidence interval of the
    mean over seeds), their Pareto front, and the published spiking networks on the same data set."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    ours = table[(table["dataset"] == dataset) & table["test_acc_mean"].notna()]
    markers = {"paper": "*", "baseline": "s", "ablation": "o", "tuned": "D", "twin": "v"}
    for group, rows in ours.groupby("group", sort=False):
        spread = [(rows["test_acc_mean"] - rows["test_acc_ci_low"]).fillna(0),
                  (rows["test_acc_ci_high"] - rows["test_acc_mean"]).fillna(0)]
        ax.errorbar(
            rows["params_total"], rows["test_acc_mean"], yerr=spread,
            fmt=markers.get(group, "o"), markersize=12 if group == "paper" else 6, capsize=3, label=group,
            zorder=3 if group == "paper" else 2,  # the paper model stays visible among its ablations
        )
        for _, row in rows.iterrows():
            ax.annotate(row["variant"], (row["params_total"], row["test_acc_mean"]), fontsize=7,
                        textcoords="offset points", xytext=(4, 3))
    front = pareto_front(ours)
    if len(front) > 1:
        ax.step(
            front["params_total"], front["test_acc_mean"], where="post", color="grey", alpha=0.6, label="Pareto front"
        )
    snn = published[(published["dataset"] == dataset) & published["params"].notna()]
    if len(snn):
        ax.scatter(snn["params"], snn["accuracy"], marker="^", color="black", label="published SNNs")
        for _, row in snn.iterrows():
            ax.annotate(
                row["model"], (row["params"], row["accuracy"]), fontsize=7, textcoords="offset points", xytext=(4, -9)
            )
    ax.set_xscale("log")
    ax.set(xlabel="parameters (log scale)", ylabel="test accuracy (%, 95 % CI over seeds)", title=f"{dataset}: accuracy vs parameters")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def pareto_front(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows no other row beats on both fewer parameters and higher accuracy, by increasing parameters."""
    ordered = rows.sort_values(["params_total", "test_acc_mean"], ascending=[True, False])
    best = -np.inf
    keep = []
    for index, row in ordered.iterrows():
        if row["test_acc_mean"] > best:
            keep.append(index)
            best = row["test_acc_mean"]
    return ordered.loc[keep]


def claims(table: pd.DataFrame, published: pd.DataFrame) -> list[str]:
    """The paper's headline comparison, one sentence per data set with published rows and a finished paper model."""
    lines = []
    for _, row in table[(table["variant"] == "paper") & table["acc_vs_snn"].notna()].iterrows():
        rows = published[published["dataset"] == row["dataset"]]
        sentence = (
            f"{row['dataset']}: the paper model reaches {row['acc_vs_snn']:.1f} % of the mean accuracy of "
            f"{len(rows)} published spiking networks ({rows['accuracy'].mean():.2f} %)"
        )
        if not pd.isna(row["params_vs_snn"]):
            smallest = int(rows["params"].min())
            sentence += f" with {row['params_vs_snn']:.3g} % of the parameters of the smallest ({smallest})"
        lines.append(sentence + ".")
    return lines


def sources(published: pd.DataFrame, datasets: list[str]) -> str:
    """The published rows the ratios come from, with their sources, for the data sets of the table."""
    rows = published[published["dataset"].isin(datasets)]
    if not len(rows):
        return ""
    shown = rows.assign(params=rows["params"].map(_integer))[["dataset", "model", "accuracy", "params", "source"]]
    return "\nPublished spiking networks the ratios compare with:\n\n" + shown.to_markdown(index=False) + "\n"


def write_report(records: list[Record], published: pd.DataFrame, out: Path, budget: str) -> list[Path]:
    """Every table and figure of a reproduction; returns the files written."""
    name = f"reproduce_{budget}"
    table = summary_table(records, published)
    runs = pd.json_normalize(records, sep="_")
    text = markdown(table) + "".join(f"\n{line}\n" for line in [*paired_findings(table), *claims(table, published)])
    text += sources(published, list(table["dataset"].unique()))
    written = [
        atomic_write(out / "tables" / f"{name}.csv", lambda f: table.to_csv(f, index=False, float_format="%.6g")),
        write_text(out / "tables" / f"{name}.md", text),
        atomic_write(out / "tables" / f"{name}_runs.csv", lambda f: runs.to_csv(f, index=False)),
    ]
    figures = out / "figures"
    for dataset in table.loc[table["seeds"] > 0, "dataset"].unique():
        written.append(write_figure(plot_curves(records, dataset), figures / f"{name}_{dataset}_curves.png", dpi=120))
        pareto = plot_pareto(table, published, dataset)
        written.append(write_figure(pareto, figures / f"{name}_{dataset}_params.png", dpi=120))
        others = table[(table["dataset"] == dataset) & table["paired_low"].notna()]
        if len(others) > 1:  # the first row pairs with itself
            paired = plot_paired(table, dataset)
            written.append(write_figure(paired, figures / f"{name}_{dataset}_paired.png", dpi=120))
    return written
