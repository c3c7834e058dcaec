"""Noise-trained against noiseless-trained models: every finished run of the compared variants, under every noise.

A model trained under one noise model may have learned to live with it, or only with it; the question needs every
trained model (every variant, every seed) evaluated at the same settings: the noiseless circuit, depolarizing noise
at rising strengths and the named presets. Each run is scored by the noise study's own code
(:func:`sqdr.robustness.command.evaluate_checkpoint`) on its run's test set.

Writes ``<out>/tables/noise_<budget>.csv`` (every run and setting), ``noise_<budget>.md`` (mean ± std over seeds
per trained variant and setting) and ``<out>/figures/noise_<budget>.png`` (the curves and the presets).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from sqdr.files import atomic_write, write_figure, write_text
from sqdr.models.noise import PRESETS
from sqdr.reproduce.runner import Record
from sqdr.robustness.study import NOISELESS, GridPoint, grid_points

#: Depolarizing strengths of the curves (0 is the zero-probability noise model, a check on the noisy simulation).
LEVELS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)
CURVE_CHANNEL = "depolarizing"


def settings() -> list[GridPoint]:
    """The noiseless model, depolarizing at every ``LEVELS``, then every named preset."""
    return grid_points([CURVE_CHANNEL], LEVELS, None) + [GridPoint(name, None, name) for name in PRESETS]


def evaluate_runs(records: list[Record], variants: list[str], test_size: int | None) -> pd.DataFrame:
    """One row per (variant, seed, setting) of the finished runs of ``variants``: the test accuracy in percent."""
    from sqdr.robustness import NoiseOptions
    from sqdr.robustness.command import evaluate_checkpoint
    from sqdr.runs import find_checkpoint

    rows: list[dict[str, Any]] = []
    for record in records:
        if record["variant"] not in variants or record["status"] != "done":
            continue
        checkpoint = find_checkpoint(record["run_dir"])
        options = NoiseOptions(ckpt=str(checkpoint), test_size=test_size)
        for result in evaluate_checkpoint(checkpoint, options, settings()):
            rows.append({
                "trained": record["variant"], "seed": record["seed"], "setting": result.metric.removeprefix("test/acc@")
                if result.channel != NOISELESS else NOISELESS, "channel": result.channel, "level": result.level,
                "accuracy": 100 * result.accuracy, "n_samples": result.n_samples,
            })
    return pd.DataFrame(rows)


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds, a row per trained variant, a column per setting (in order)."""
    order = list(dict.fromkeys(frame["setting"]))
    grouped = frame.groupby(["trained", "setting"], sort=False)["accuracy"]
    cells = (grouped.mean().map("{:.2f}".format) + " ± " + grouped.std().fillna(0).map("{:.2f}".format)).unstack()
    seeds = frame.groupby("trained", sort=False)["seed"].nunique().rename("seeds")
    return pd.concat([seeds, cells[order]], axis=1).reset_index(names="trained under")


def plot(frame: pd.DataFrame, title: str) -> Figure:
    """Left: accuracy against depolarizing strength per trained variant (mean over seeds, shaded min to max).
    Right: the noiseless circuit and every preset, a bar per trained variant (error bars: std over seeds)."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    curves, presets = fig.subplots(1, 2, width_ratios=[3, 2])
    trained = list(dict.fromkeys(frame["trained"]))
    for variant in trained:
        rows = frame[(frame["trained"] == variant) & (frame["channel"] == CURVE_CHANNEL)]
        stats = rows.groupby("level")["accuracy"].agg(["mean", "min", "max"])
        line = curves.plot(stats.index, stats["mean"], marker="o", label=f"trained: {variant}")[0]
        curves.fill_between(stats.index, stats["min"], stats["max"], color=line.get_color(), alpha=0.15)
    curves.set(xlabel=f"{CURVE_CHANNEL} strength at evaluation", ylabel="test accuracy (%)", title=title)
    curves.grid(True, alpha=0.3)
    curves.legend(fontsize=8)
    names = [NOISELESS, *PRESETS]
    width = 0.8 / len(trained)
    for position, variant in enumerate(trained):
        rows = frame[(frame["trained"] == variant) & frame["setting"].isin(names)]
        stats = rows.groupby("setting")["accuracy"].agg(["mean", "std"]).reindex(names)
        x = [index + (position - (len(trained) - 1) / 2) * width for index in range(len(names))]
        presets.bar(x, stats["mean"], width, yerr=stats["std"].fillna(0), capsize=3, label=variant)
    presets.set_xticks(range(len(names)), [f"evaluated: {name}" for name in names], fontsize=8)
    presets.set(ylabel="test accuracy (%)", title="noiseless and preset noise")
    presets.grid(True, axis="y", alpha=0.3)
    return fig


def write_noise_comparison(records: list[Record], spec: dict[str, Any], out: Path, budget: str) -> list[Path]:
    """Evaluate, then write the table, the per-run CSV and the figure; nothing is written without a finished run."""
    dataset_records = [r for r in records if r["dataset"] == spec["dataset"]]
    frame = evaluate_runs(dataset_records, list(spec["compare"]), spec.get("test_size"))
    if frame.empty:
        return []
    name = f"noise_{budget}"
    samples = int(frame["n_samples"].iloc[0])
    text = (
        f"Test accuracy (%, mean ± std over seeds) of each trained variant under every evaluation setting, "
        f"{spec['dataset']}, {samples} test images.\n\n" + summary(frame).to_markdown(index=False) + "\n"
    )
    return [
        atomic_write(out / "tables" / f"{name}.csv", lambda f: frame.to_csv(f, index=False, float_format="%.4f")),
        write_text(out / "tables" / f"{name}.md", text),
        write_figure(plot(frame, f"{spec['dataset']}: noise-trained vs noiseless-trained"),
                     out / "figures" / f"{name}.png", dpi=120),
    ]
