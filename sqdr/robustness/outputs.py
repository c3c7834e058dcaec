"""What a noise study leaves behind: ``noise.csv``, ``noise.png``, ``metrics.json``, a printed table, a W&B run.

Everything is rendered in memory first and each file is then replaced atomically (:mod:`sqdr.files`), the figure
first because rendering it is the step most likely to fail: a failing study leaves the previous outputs as they
were, never a mix of old and new files or a half-written one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, astuple, dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry, Agg renders the PNG

from sqdr.files import write_figure, write_text
from sqdr.models.noise import PRESETS
from sqdr.robustness.study import NOISELESS, Result

COLUMNS = [field.name for field in fields(Result)]


@dataclass(frozen=True)
class OutputPaths:
    """The files one study writes into its output folder."""

    table: Path
    plot: Path
    metrics: Path

    @classmethod
    def in_folder(cls, folder: Path) -> OutputPaths:
        return cls(folder / "noise.csv", folder / "noise.png", folder / "metrics.json")


def results_frame(results: list[Result]) -> pd.DataFrame:
    """One row per result, columns as in ``noise.csv``; a missing level or shot count is an empty cell there."""
    return pd.DataFrame([asdict(result) for result in results], columns=COLUMNS)


def metrics(results: list[Result]) -> dict[str, float]:
    """``test/acc``, ``test/acc@<channel>=<p>`` and ``test/acc@<preset>``, as written to ``metrics.json``."""
    return {result.metric: result.accuracy for result in results}


def accuracy_table(results: list[Result]) -> str:
    """Channels as rows and levels as columns (as percentages), then the noiseless and preset accuracies."""
    grid = results_frame([result for result in results if result.on_grid])
    table = grid.pivot(index="channel", columns="level", values="accuracy")
    table = table.reindex(index=list(dict.fromkeys(grid["channel"])))  # the order asked for, not alphabetical
    table.columns = [f"p={level:g}" for level in table.columns]
    table.index.name = None
    lines = [table.to_string(float_format="{:.1%}".format)]
    lines += [
        f"{'noiseless' if result.channel == NOISELESS else result.channel + ' preset'}: {result.accuracy:.1%}"
        for result in results if not result.on_grid
    ]
    return "\n".join(lines)


def plot(results: list[Result]) -> Figure:
    """Accuracy against noise level: one line per channel, the noiseless accuracy dashed, the preset a star.

    The preset has no single level; its star sits at its strongest constant probability.
    """
    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    axes = figure.subplots()
    for channel in dict.fromkeys(result.channel for result in results if result.on_grid):
        points = [(result.level, result.accuracy) for result in results if result.channel == channel]
        axes.plot(*zip(*points), marker="o", label=channel)
    for result in results:
        if result.channel == NOISELESS:
            axes.axhline(result.accuracy, color="black", linestyle="--", linewidth=1, label="noiseless")
        elif result.level is None:
            strongest = max(value for value in PRESETS[result.channel].values() if not isinstance(value, str))
            axes.plot([strongest], [result.accuracy], marker="*", markersize=14, linestyle="none",
                      color="crimson", label=f"{result.channel} preset")
    shots = results[0].shots
    axes.set(xlabel="noise probability p", ylabel="test accuracy", ylim=(0, 1.02),
             title=f"accuracy under noise ({results[0].n_samples} test images, "
             f"{'exact' if shots is None else f'{shots} shots'})")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return figure


def write_outputs(results: list[Result], folder: Path) -> OutputPaths:
    """``noise.png``, ``noise.csv`` and ``metrics.json`` in ``folder``, each replaced whole or not at all."""
    paths = OutputPaths.in_folder(folder)
    csv_text = results_frame(results).to_csv(index=False)
    metrics_text = json.dumps(metrics(results), indent=2) + "\n"
    write_figure(plot(results), paths.plot, dpi=120)
    write_text(paths.table, csv_text)
    write_text(paths.metrics, metrics_text)
    return paths


def log_to_wandb(results: list[Result], paths: OutputPaths, config: dict[str, Any]) -> None:
    """One W&B run per study, grouped with the experiment's training runs; offline without credentials."""
    import wandb

    from sqdr.cli import wandb_mode

    run = wandb.init(
        project=config["wandb_project"], group=config["experiment"], name=f"{config['experiment']}/noise",
        job_type="noise", dir=os.environ.get("WANDB_DIR") or str(paths.table.parent.resolve()), mode=wandb_mode(),
        config=config,
    )
    table = wandb.Table(columns=COLUMNS, data=[list(astuple(result)) for result in results])
    run.log({**metrics(results), "noise/table": table, "noise/plot": wandb.Image(str(paths.plot))})
    run.finish()
    wandb.teardown()  # finish() can return before the run's log file is written; teardown waits for it
