"""The report of an Optuna study: every trial in a table, the best ones (or the Pareto front) on the terminal
with the command that re-runs each alone, and figures.

Figures: ``<study>_pareto.png`` for multi-objective studies (Optuna's own Pareto-front plot of
``study.best_trials``, parameters on a log axis when they are an objective), ``<study>_history.png`` for
single-objective ones (Optuna's optimisation history), and ``<study>_noise.png`` for studies that sweep a noise
level (accuracy against level: a measurement per level, which neither of Optuna's plots shows). With three or
more complete trials, ``<study>_importance.csv|md|png``: how much of the accuracy's variance each searched
option explains (Optuna's fANOVA evaluator, seeded so a report is the same every time).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
from optuna.distributions import CategoricalDistribution
from optuna.importance import FanovaImportanceEvaluator
from optuna.trial import FrozenTrial, TrialState

from sqdr.report.output import print_table, save_figure, short_names, write_tables
from sqdr.sweep.study import StudySpec, load_study, open_study_storage

PARAMS_METRIC = "params/total"


def accuracy_metric(spec: StudySpec) -> str:
    """The objective a figure puts on its y axis: the first one that is not a parameter count."""
    return next((o.metric for o in spec.objectives if not o.metric.startswith("params/")), spec.objectives[0].metric)


def noise_key(spec: StudySpec) -> str | None:
    """The numeric dimension that sets a noise level (``...noise.depolarizing``), if the study sweeps one."""
    return next((key for key, dist in spec.distributions.items() if ".noise" in key and _numeric(dist)), None)


def _numeric(dist: optuna.distributions.BaseDistribution) -> bool:
    if isinstance(dist, CategoricalDistribution):
        return all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in dist.choices)
    return True


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """``study.best_trials``: the Pareto front, or the one best trial; none before a trial completes."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    return study.best_trials


def trials_table(spec: StudySpec, study: optuna.Study) -> pd.DataFrame:
    """One row per trial: state, objectives (complete trials only), parameters, size, time, run, re-run command."""
    best = {t.number for t in best_trials(study)}
    names = short_names(list(spec.space))
    rows = []
    for trial in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {"trial": trial.number, "state": trial.state.name, "best": trial.number in best}
        for i, objective in enumerate(spec.objectives):
            row[objective.metric] = trial.values[i] if trial.values else None
        row.update({names[k]: trial.params.get(k) for k in spec.space})
        row[PARAMS_METRIC] = trial.user_attrs.get(PARAMS_METRIC)
        row["duration_s"] = trial.user_attrs.get("duration_s")
        row["run_dir"] = trial.user_attrs.get("run_dir")
        row["command"] = trial.user_attrs.get("command")
        rows.append(row)
    return pd.DataFrame(rows)


def shown_trials(spec: StudySpec, study: optuna.Study) -> tuple[str, list[FrozenTrial]]:
    """What the terminal shows: every level of a noise sweep, else the Pareto front or the best trial."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return "no complete trial yet", []
    key = noise_key(spec)
    if key:
        return "accuracy per noise level", sorted(complete, key=lambda t: (t.params.get(key, 0.0), t.number))
    reverse = spec.objectives[0].direction == "maximize"
    title = "Pareto front" if spec.multi_objective else "best trial"
    return title, sorted(best_trials(study), key=lambda t: t.values[0], reverse=reverse)


def print_best(spec: StudySpec, study: optuna.Study, table: pd.DataFrame) -> None:
    """The best trials / Pareto front / noise levels, then the command that re-runs each alone."""
    title, trials = shown_trials(spec, study)
    columns = ["trial", *(o.metric for o in spec.objectives), *short_names(list(spec.space)).values()]
    columns += [PARAMS_METRIC] if PARAMS_METRIC not in columns else []
    shown = table.set_index("trial", drop=False).loc[[t.number for t in trials]]
    print_table(f"{spec.name}: {title} ({len(trials)} of {len(table)} trials)", shown[columns])
    for number, command in shown["command"].items():
        print(f"re-run trial {number}: {command}")


def plot_pareto(spec: StudySpec, study: optuna.Study) -> Figure:
    """Optuna's Pareto-front plot, best trials labelled by number. With a parameter count among the objectives
    it goes on a log x axis against accuracy; otherwise the first two or three objectives are drawn."""
    metrics = [o.metric for o in spec.objectives]
    if PARAMS_METRIC in metrics:
        axes = [metrics.index(PARAMS_METRIC), metrics.index(accuracy_metric(spec))]
    else:
        axes = list(range(min(3, len(metrics))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = optuna.visualization.matplotlib.plot_pareto_front(
            study, targets=lambda t: [t.values[i] for i in axes], target_names=[metrics[i] for i in axes]
        )
    if len(axes) == 2:
        for trial in best_trials(study):
            xy = (trial.values[axes[0]], trial.values[axes[1]])
            ax.annotate(f"#{trial.number}", xy, textcoords="offset points", xytext=(4, 4), fontsize=8)
    if metrics[axes[0]] == PARAMS_METRIC:
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        _log_axis(ax, [t.values[axes[0]] for t in complete])
    ax.set_title(f"{spec.name}: Pareto front")
    return ax.figure


def plot_history(spec: StudySpec, study: optuna.Study) -> Figure:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = optuna.visualization.matplotlib.plot_optimization_history(study, target_name=spec.objectives[0].metric)
    ax.set_title(f"{spec.name}: optimisation history")
    return ax.figure


def _log_axis(ax: Axes, xs: list[float]) -> None:
    """Log x with plain 1-2-5 labels, at least a factor 4 wide so a narrow study still shows labelled ticks."""
    ax.set_xscale("log")
    if xs:
        low, high = min(xs), max(xs)
        pad = max(1.15, (4 * low / high) ** 0.5)
        ax.set_xlim(low / pad, high * pad)
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_noise(spec: StudySpec, table: pd.DataFrame, key: str) -> Figure:
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
    return fig


def importance_table(spec: StudySpec, study: optuna.Study) -> pd.DataFrame | None:
    """Optuna's fANOVA importance of every searched option for the accuracy objective, most important first;
    None with fewer than three complete trials (too few to split the variance)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 3:
        return None
    index = [o.metric for o in spec.objectives].index(accuracy_metric(spec))
    importances = optuna.importance.get_param_importances(
        study, target=lambda t: t.values[index], evaluator=FanovaImportanceEvaluator(seed=0)
    )
    names = short_names(list(spec.space))
    return pd.DataFrame({"option": [names.get(k, k) for k in importances], "importance": list(importances.values())})


def plot_importance(spec: StudySpec, importance: pd.DataFrame) -> Figure:
    """The importance table as horizontal bars (Optuna's own plot refits the evaluator unseeded)."""
    fig = Figure(figsize=(6.4, 0.35 * len(importance) + 1.2), layout="constrained")
    ax = fig.add_subplot()
    ax.barh(importance["option"][::-1], importance["importance"][::-1], color="C0")
    ax.set(xlabel=f"importance for {accuracy_metric(spec)} (fANOVA)", title=f"{spec.name}: what matters")
    ax.grid(True, axis="x", alpha=0.3)
    return fig


def study_figures(spec: StudySpec, study: optuna.Study, table: pd.DataFrame) -> dict[str, Figure]:
    """The figures of a study with complete trials, by kind (the suffix of their file names)."""
    figures = {"pareto": plot_pareto(spec, study)} if spec.multi_objective else {"history": plot_history(spec, study)}
    key = noise_key(spec)
    if key:
        figures["noise"] = plot_noise(spec, table, key)
    return figures


def report_study(spec: StudySpec, out: Path) -> list[Path]:
    """Print the best trials and write the table and figures of a study to ``out``; returns the files written."""
    study = load_study(spec, open_study_storage(spec), create=False)
    table = trials_table(spec, study)
    counts = {state.lower(): n for state, n in table.state.value_counts().items()} if len(table) else {}
    print(f"study {spec.name}: {len(table)} trials {counts}")
    written = write_tables(table, out, spec.name, markdown_drop=("command",))
    if best_trials(study):
        print_best(spec, study, table)
        figures = study_figures(spec, study, table)
        importance = importance_table(spec, study)
        if importance is not None:
            print_table(f"{spec.name}: importance", importance)
            written += write_tables(importance, out, f"{spec.name}_importance")
            figures["importance"] = plot_importance(spec, importance)
        for kind, figure in figures.items():
            written.append(save_figure(figure, out, f"{spec.name}_{kind}"))
            plt.close(figure)
    for path in written:
        print(f"wrote {path}")
    return written
