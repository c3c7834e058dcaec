"""The report of plain ``sqdr fit`` runs: every ``version_N/`` under a folder, side by side.

A run is a ``version_N/`` folder with a ``config.yaml`` (and, once it has logged, ``metrics.csv``). Its status
decides what the report shows: ``failed`` (a ``FAILED`` marker, left by a sweep trial's error path or a dead
worker's retry), ``unfinished`` (fewer epochs logged than ``trainer.max_epochs``: still running, killed, or
pruned by a sweep), or ``finished``. Only finished runs show final and best metrics; the others show how far
they got.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sqdr.errors import UserError
from sqdr.report.output import print_table, save_figure, short_names, write_tables
from sqdr.sweep.study import FAILED_MARKER

Status = Literal["finished", "unfinished", "failed"]
#: Curves drawn per run, one panel each.
CURVES = ("val/acc", "train/loss")
#: Summary columns of a finished run: (column, metric, how), "last" value or "max" over epochs.
SUMMARY = (
    ("val/acc", "val/acc", "last"),
    ("val/acc_best", "val/acc", "max"),
    ("train/loss", "train/loss", "last"),
    ("test/acc", "test/acc", "last"),
    ("params/total", "params/total", "last"),
)


@dataclass
class Run:
    """One ``sqdr fit`` run directory, read."""

    name: str
    path: Path
    config: dict[str, Any]
    metrics: pd.DataFrame  # metrics.csv as Lightning's CSV logger writes it: a row per logging call
    status: Status

    @classmethod
    def read(cls, path: Path, name: str) -> Run:
        config_file = path / "config.yaml"  # absent when a trial's worker died before the run wrote it
        config = _flatten(_read(config_file, _read_config)) if config_file.is_file() else {}
        csv = path / "metrics.csv"  # absent when the run died before its first log line
        metrics = _read(csv, pd.read_csv) if csv.is_file() else pd.DataFrame()
        return cls(name, path, config, metrics, _status(path, config, _per_epoch(metrics)))

    @property
    def epochs(self) -> pd.DataFrame:
        return _per_epoch(self.metrics)

    def summary(self, metric: str, how: str) -> float | None:
        values = self.metrics[metric].dropna() if metric in self.metrics else pd.Series(dtype=float)
        if not len(values):
            return None
        return float(values.max() if how == "max" else values.iloc[-1])


class DamagedFile(Exception):
    """A file of a run that exists but cannot be read: empty, cut short, or not what ``sqdr fit`` writes."""


def _read(path: Path, reader: Callable[[Path], Any]) -> Any:
    try:
        return reader(path)
    except (OSError, ValueError, yaml.YAMLError) as error:  # pandas' parser errors are ValueErrors
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DamagedFile(f"{path.name} cannot be read: {reason}") from None


def _read_config(path: Path) -> dict[str, Any]:
    config = yaml.safe_load(path.read_text()) or {}
    if not isinstance(config, dict):
        raise ValueError("not a mapping of options")
    return config


def _per_epoch(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per epoch (the last value each metric logged in it); rows outside an epoch are dropped."""
    return metrics.groupby("epoch").last() if "epoch" in metrics else pd.DataFrame()


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _status(path: Path, config: dict[str, Any], epochs: pd.DataFrame) -> Status:
    if (path / FAILED_MARKER).exists():
        return "failed"
    max_epochs = config.get("trainer.max_epochs")
    if max_epochs in (None, -1):
        return "finished" if (path / "checkpoints" / "last.ckpt").exists() else "unfinished"
    return "finished" if _epochs_done(epochs) >= max_epochs else "unfinished"


def _epochs_done(epochs: pd.DataFrame) -> int:
    """Epochs whose training ended (Lightning logs the epoch's ``train/loss`` then)."""
    return int(epochs["train/loss"].notna().sum()) if "train/loss" in epochs else 0


def find_runs(folder: Path, say: Callable[[str], None] = print) -> list[Run]:
    """Every run under ``folder`` (itself a run, an experiment, or a folder of experiments), in path order.

    A run with a file that cannot be read (an empty or cut-short ``metrics.csv``, say) is named through ``say``
    and left out, so one damaged run does not hide the others.
    """
    markers = [*folder.rglob("config.yaml"), *folder.rglob(FAILED_MARKER)]  # a run killed early has only the latter
    paths = sorted({p.parent for p in markers if p.parent.name.startswith("version_")})
    runs = []
    for path in paths:
        name = str(path.relative_to(folder)) if path != folder else path.name
        try:
            runs.append(Run.read(path, name))
        except DamagedFile as error:
            say(f"skipped {name}, which is damaged: {error}")
    return runs


def runs_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run: status, epochs, the config keys that differ between runs, final and best metrics."""
    keys = sorted({key for run in runs for key in run.config})
    differing = [k for k in keys if len({repr(run.config.get(k)) for run in runs}) > 1]
    names = short_names(differing)
    rows = []
    for run in runs:
        row: dict[str, Any] = {"run": run.name, "status": run.status, "epochs": _epochs_done(run.epochs)}
        row.update({names[k]: _cell(run.config.get(k)) for k in differing})
        for column, metric, how in SUMMARY:
            if any(metric in r.metrics for r in runs):
                row[column] = run.summary(metric, how) if run.status == "finished" else None
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(value: Any) -> Any:
    return str(value) if isinstance(value, (list, dict)) else value


def plot_curves(runs: list[Run], title: str) -> Figure:
    """``val/acc`` and ``train/loss`` per epoch, one line per run; runs that did not finish are dashed."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, len(CURVES))
    for ax, metric in zip(axes, CURVES):
        for run in runs:
            if metric in run.epochs and run.epochs[metric].notna().any():
                values = run.epochs[metric].dropna()
                label = run.name if run.status == "finished" else f"{run.name} ({run.status})"
                style = "-" if run.status == "finished" else "--"
                ax.plot(values.index, values.values, style, marker=".", label=label)
        ax.set(xlabel="epoch", ylabel=metric, title=metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    fig.suptitle(title)
    return fig


def report_runs(folder: Path, out: Path) -> list[Path]:
    """Print and write the table of the runs under ``folder``, and their training curves; returns the files."""
    damaged: list[str] = []
    runs = find_runs(folder, say=damaged.append)
    for line in damaged:
        print(line)
    if not runs and damaged:
        raise UserError(f"every run under {folder} is damaged (see above); nothing to report.")
    if not runs:
        raise UserError(
            f"no `sqdr fit` runs under {folder} (a run is a version_N/ folder with a config.yaml); "
            "pass a runs folder such as runs/ or runs/quickstart, or a study file."
        )
    name = folder.resolve().name
    table = runs_table(runs)
    print_table(f"{name}: {len(runs)} runs", table)
    written = write_tables(table, out, name)
    written.append(save_figure(plot_curves(runs, f"{name}: training curves"), out, f"{name}_curves"))
    for path in written:
        print(f"wrote {path}")
    return written
