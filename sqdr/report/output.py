"""Where a report writes and how: ``<out>/tables/<name>.csv|md`` and ``<out>/figures/<name>_<kind>.png``, each
file written whole (:mod:`sqdr.files`), so an interrupted report never leaves a half table for a reader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from sqdr.files import atomic_write, write_figure, write_text


def short_names(keys: list[str]) -> dict[str, str]:
    """``model.net.init_args.n_qubits`` -> ``n_qubits``, unless two keys would share a name."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: name if last.count(name) == 1 else key for key, name in zip(keys, last)}


def write_tables(table: pd.DataFrame, out: Path, name: str, *, markdown_drop: tuple[str, ...] = ()) -> list[Path]:
    """``table`` as CSV (every column) and as a GitHub Markdown table (without the long ``markdown_drop`` ones)."""
    csv_path = out / "tables" / f"{name}.csv"
    markdown = table.drop(columns=list(markdown_drop), errors="ignore").to_markdown(index=False, floatfmt=".4g")
    return [
        atomic_write(csv_path, lambda file: table.to_csv(file, index=False)),
        write_text(csv_path.with_suffix(".md"), markdown + "\n"),
    ]


def save_figure(figure: Figure, out: Path, name: str) -> Path:
    return write_figure(figure, out / "figures" / f"{name}.png", dpi=120)


def print_table(title: str, table: pd.DataFrame) -> None:
    """A table on the terminal, as wide as its content: never squeezed into cut-off cells."""
    shown = Table(title=title)
    for column in table.columns:
        shown.add_column(str(column), justify="right")
    for row in table.itertuples(index=False):
        shown.add_row(*(format_value(value) for value in row))
    console = Console()
    natural = console.measure(shown, options=console.options.update(max_width=100_000)).maximum
    console.width = max(console.width, natural)
    console.print(shown)


def format_value(value: Any, missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return missing
    return f"{value:.4g}" if isinstance(value, float) else str(value)
