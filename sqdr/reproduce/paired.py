"""Paired comparisons of a reproduction's rows: each variant against its data set's first row, seed by seed.

Runs of one seed share the data split, the data order and (for the circuit's twins) the encoder's initial
weights, so the seed-to-seed spread that two unpaired means carry cancels in their difference. The
difference of each seed, its mean and a Student-t 95 % confidence interval answer "is this row better or
worse than the reference?" with the uncertainty five seeds leave; a difference is called significant when its
interval excludes zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

from sqdr.reproduce.runner import Record

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Paired:
    """The differences (row minus reference, in accuracy points) over the seeds both finished."""

    seeds: int
    mean: float
    low: float
    high: float

    @property
    def significant(self) -> bool:
        return self.seeds > 1 and not self.low <= 0.0 <= self.high


def interval(values: pd.Series) -> tuple[float, float]:
    """The two-sided ``CONFIDENCE`` interval of the mean of ``values`` (NaN, NaN below two values)."""
    if len(values) < 2:
        return np.nan, np.nan
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, len(values) - 1) * values.std() / math.sqrt(len(values))
    return values.mean() - half, values.mean() + half


def paired_difference(runs: list[Record], reference: list[Record]) -> Paired:
    """Test accuracy of ``runs`` minus ``reference``, in points, over the seeds that finished in both."""
    accuracy = {r["seed"]: 100 * r["test_acc"] for r in reference if r["status"] == "done"}
    differences = pd.Series(
        [100 * r["test_acc"] - accuracy[r["seed"]] for r in runs if r["status"] == "done" and r["seed"] in accuracy],
        dtype=float,
    )
    low, high = interval(differences)
    return Paired(len(differences), differences.mean() if len(differences) else np.nan, low, high)


def paired_findings(table: pd.DataFrame) -> list[str]:
    """One sentence per row with a paired interval: how it compares with its data set's first row, and whether
    the difference is significant at ``CONFIDENCE``."""
    lines = []
    first = table.groupby("dataset", sort=False)["variant"].transform("first")
    for (_, row), reference in zip(table.iterrows(), first):
        if row["variant"] == reference or pd.isna(row["paired_low"]):
            continue
        direction = "above" if row["paired_diff"] > 0 else "below"
        verdict = "significant" if row["paired_significant"] else "not significant (the interval includes 0)"
        lines.append(
            f"{row['dataset']}: {row['variant']} is {abs(row['paired_diff']):.2f} points {direction} {reference} "
            f"(paired over {int(row['paired_seeds'])} seeds, {CONFIDENCE:.0%} CI {row['paired_low']:+.2f} to "
            f"{row['paired_high']:+.2f}): {verdict}."
        )
    return lines


def plot_paired(table: pd.DataFrame, dataset: str) -> Figure:
    """Each row's paired difference to the data set's first row, with its interval: rows at one parameter count
    (a hybrid and its twins) overlap in accuracy against parameters, and here they do not."""
    reference = table.loc[table["dataset"] == dataset, "variant"].iloc[0]
    rows = table[(table["dataset"] == dataset) & table["paired_low"].notna() & (table["variant"] != reference)]
    rows = rows.iloc[::-1]  # top to bottom in the table's order
    fig = Figure(figsize=(7, 0.5 * len(rows) + 1.5), layout="constrained")
    ax = fig.subplots()
    for position, (_, row) in enumerate(rows.iterrows()):
        error = [[row["paired_diff"] - row["paired_low"]], [row["paired_high"] - row["paired_diff"]]]
        color = "tab:red" if row["paired_significant"] else "tab:grey"
        ax.errorbar(row["paired_diff"], position, xerr=error, fmt="o", color=color, capsize=4)
    ax.axvline(0, color="black", linewidth=0.8)
    labels = [f"{v} ({int(n)} seeds)" for v, n in zip(rows["variant"], rows["paired_seeds"])]
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.set(xlabel=f"test accuracy minus {reference}'s, same seeds (points; {CONFIDENCE:.0%} CI, red: excludes 0)",
           title=f"{dataset}: paired differences to {reference}")
    ax.grid(True, axis="x", alpha=0.3)
    return fig
