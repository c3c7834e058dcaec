"""``sqdr report STUDY.yaml`` (also ``sqdr sweep --summary``): best trials, tables and figures of a study.

Writes ``results/tables/<study>.csv`` and ``.md`` (every trial, with the command that re-runs it alone),
``results/figures/<study>_pareto.png`` (accuracy vs parameters, log x, the Pareto front highlighted) and, for
studies that sweep a noise level, ``results/figures/<study>_noise.png`` (accuracy vs noise level).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table

from sqdr.sweep import StudyFileError, StudySpec, load_study, load_study_file, open_storage

RESULTS_DIR = Path("results")
PARAMS_METRIC = "params/total"


def short_names(keys: list[str]) -> dict[str, str]:
    """``model.net.init_args.n_qubits`` -> ``n_qubits``, unless two keys would share a name."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: name if last.count(name) == 1 else key for key, name in zip(keys, last)}


def accuracy_metric(spec: StudySpec) -> str:
    """The objective a figure puts on its y axis: the first one that is not a parameter count."""
    return next((o.metric for o in spec.objectives if not o.metric.startswith("params/")), "val/acc_best")


def noise_key(spec: StudySpec) -> str | None:
    """The numeric dimension that sets a noise level (``...noise.depolarizing``), if the study sweeps one."""
    return next((key for key, dist in spec.space.items() if ".noise" in key and _numeric(dist)), None)


def _numeric(dist: optuna.distributions.BaseDistribution) -> bool:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in dist.choices)
    return True


def trials_table(spec: StudySpec, study: optuna.Study) -> pd.DataFrame:
    """One row per trial: state, objectives, parameters, size, time, run directory and re-run command."""
    best = {t.number for t in study.best_trials} if _has_complete(study) else set()
    names = short_names(list(spec.space))
    rows = []
    for trial in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {"trial": trial.number, "state": trial.state.name, "best": trial.number in best}
        for i, objective in enumerate(spec.objectives):
            row[objective.metric] = trial.values[i] if trial.values else trial.user_attrs.get(objective.metric)
        row.update({names[k]: trial.params.get(k) for k in spec.space})
        row[PARAMS_METRIC] = trial.user_attrs.get(PARAMS_METRIC)
        row["duration_s"] = trial.user_attrs.get("duration_s")
        row["run_dir"] = trial.user_attrs.get("run_dir")
        row["command"] = trial.user_attrs.get("command")
        rows.append(row)
    return pd.DataFrame(rows)


def _has_complete(study: optuna.Study) -> bool:
    return bool(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def shown_trials(spec: StudySpec, study: optuna.Study) -> tuple[str, list[FrozenTrial]]:
    """What the summary prints: every level of a noise sweep, else the Pareto front or the best trial."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return "no complete trial yet", []
    key = noise_key(spec)
    if key:
        return "accuracy per noise level", sorted(complete, key=lambda t: (t.params.get(key, 0.0), t.number))
    reverse = spec.objectives[0].direction == "maximize"
    title = "Pareto front" if spec.multi_objective else "best trial"
    return title, sorted(study.best_trials, key=lambda t: t.values[0], reverse=reverse)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the (parameters, accuracy) points no other point beats on both: fewer parameters, higher accuracy."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(spec: StudySpec, table: pd.DataFrame, path: Path) -> Path:
    """Accuracy vs parameters for every complete trial, log x, the accuracy/size Pareto front drawn on top."""
    metric = accuracy_metric(spec)
    done = table[(table.state == "COMPLETE") & table[PARAMS_METRIC].notna() & table[metric].notna()]
    points = list(zip(done[PARAMS_METRIC].astype(float), done[metric].astype(float)))
    front = [done.iloc[i] for i in pareto_front(points)]
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(done[PARAMS_METRIC], done[metric], color="0.65", label="trials")
    if front:
        xs, ys = [r[PARAMS_METRIC] for r in front], [r[metric] for r in front]
        ax.step(xs, ys, where="post", color="C3", linewidth=1.2)
        ax.scatter(xs, ys, color="C3", zorder=3, label="Pareto front")
        for row in front:
            xy = (row[PARAMS_METRIC], row[metric])
            ax.annotate(f"#{row['trial']}", xy, textcoords="offset points", xytext=(4, 4), fontsize=8)
    _log_axis(ax, [x for x, _ in points])
    ax.set(xlabel="trainable parameters (params/total)", ylabel=metric, title=f"{spec.name}: accuracy vs size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best")
    return _save(fig, path)


def _log_axis(ax, xs: list[float]) -> None:
    """Log x with plain 1-2-5 labels, at least a factor 4 wide so a narrow study still shows labelled ticks."""
    ax.set_xscale("log")
    if xs:
        low, high = min(xs), max(xs)
        pad = max(1.15, (4 * low / high) ** 0.5)
        ax.set_xlim(low / pad, high * pad)
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_noise(spec: StudySpec, table: pd.DataFrame, key: str, path: Path) -> Path:
    """Accuracy vs the swept noise level: every complete trial, and the best accuracy reached at each level."""
    metric, column = accuracy_metric(spec), short_names(list(spec.space))[key]
    done = table[(table.state == "COMPLETE") & table[column].notna() & table[metric].notna()]
    best = done.groupby(column)[metric].max().sort_index()
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter(done[column], done[metric], color="0.65", label="trials")
    ax.plot(best.index, best.values, marker="o", color="C0", label="best per level")
    ax.set(xlabel=f"noise level ({column})", ylabel=metric, title=f"{spec.name}: accuracy under noise")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub table (pandas' own ``to_markdown`` needs an extra package)."""
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(_format(v, missing="").replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines) + "\n"


def print_best(spec: StudySpec, study: optuna.Study, table: pd.DataFrame) -> None:
    """A rich table of the best trials / Pareto front / noise levels, then the command that re-runs each alone."""
    title, trials = shown_trials(spec, study)
    shown = table.set_index("trial").loc[[t.number for t in trials]]
    columns = [o.metric for o in spec.objectives] + list(short_names(list(spec.space)).values())
    columns += [PARAMS_METRIC] if PARAMS_METRIC not in columns else []
    rich_table = Table(title=f"{spec.name}: {title} ({len(trials)} of {len(table)} trials)")
    for column in ["trial", *columns]:
        rich_table.add_column(column, justify="right")
    for number, row in shown.iterrows():
        rich_table.add_row(str(number), *(_format(row[c]) for c in columns))
    console = Console(width=max(120, Console().width))
    console.print(rich_table)
    for number, row in shown.iterrows():
        console.print(f"re-run trial {number}: {row['command']}", soft_wrap=True, highlight=False)


def _format(value: Any, missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return missing
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def report_study(spec: StudySpec) -> list[Path]:
    """Print the best trials and write the table and figures of a study; returns the files written."""
    study = load_study(spec, open_storage(spec), create=False)
    table = trials_table(spec, study)
    counts = {state.lower(): n for state, n in table.state.value_counts().items()} if len(table) else {}
    print(f"study {spec.name}: {len(table)} trials {counts}")
    written = write_tables(spec, table)
    if len(table):
        print_best(spec, study, table)
        written.append(plot_pareto(spec, table, RESULTS_DIR / "figures" / f"{spec.name}_pareto.png"))
        key = noise_key(spec)
        if key:
            written.append(plot_noise(spec, table, key, RESULTS_DIR / "figures" / f"{spec.name}_noise.png"))
    for path in written:
        print(f"wrote {path}")
    return written


def write_tables(spec: StudySpec, table: pd.DataFrame) -> list[Path]:
    """All trials as CSV (with re-run commands) and as a Markdown table (without: they are long)."""
    csv_path = RESULTS_DIR / "tables" / f"{spec.name}.csv"
    md_path = csv_path.with_suffix(".md")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(csv_path, index=False)
    md_path.write_text(to_markdown(table.drop(columns=["command"], errors="ignore")))
    return [csv_path, md_path]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="sqdr report", description="Tables and figures of an Optuna study.")
    parser.add_argument("study", help="study file, e.g. sweeps/params_vs_accuracy_digits.yaml")
    parser.add_argument("--storage", help="where the study lives, if not the study file's storage")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        report_study(load_study_file(args.study, storage=args.storage))
    except StudyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
