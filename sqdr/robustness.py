"""``sqdr noise``: the accuracy of a trained SQDR-CNN under hardware noise, channel by channel and level by level.

The trained circuit angles are kept and only the simulator's noise model changes (``ReuploadCircuit.set_engine``),
so every number answers one question: how much accuracy does this model lose on noisy hardware? The encoder does
not see the noise, so its outputs are computed once and every grid point reuses them: the grid costs little more
than one pass of the circuit per point, and with ``rate`` coding every point sees the very same spike trains.

Writes ``noise.csv``, ``noise.png`` and ``metrics.json`` (metrics ``test/acc`` for the noiseless model,
``test/acc@<channel>=<p>`` per grid point, ``test/acc@<preset>``) to ``<run>/noise/`` and, with ``--logger wandb``,
one W&B run in the experiment's group.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import sys
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml
from torch import Tensor
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy

from sqdr.models.noise import CHANNEL_ORDER, PRESETS, NoiseSpec

DEFAULT_LEVELS = "0,0.02,0.05,0.1,0.2,0.35,0.5"
GRID_KEYS = ("channels", "levels", "preset", "shots", "test_size", "batch_size", "seed")
NOISELESS = "none"

Batches = list[tuple[Tensor, Tensor]]  # (circuit inputs, labels) per test batch
GridPoint = tuple[str, float | None, NoiseSpec]  # (channel or preset name, level, noise spec)


class UsageError(Exception):
    """A problem the user can fix from the command line; reported as one sentence with exit code 2."""


@dataclass(frozen=True)
class Result:
    """One evaluated noise setting; ``level`` is None for a named preset, ``shots`` None for exact expectations."""

    channel: str
    level: float | None
    accuracy: float
    n_samples: int
    shots: int | None

    @property
    def on_grid(self) -> bool:
        """A (channel, level) point, as opposed to the noiseless reference or a preset."""
        return self.level is not None and self.channel != NOISELESS

    @property
    def metric(self) -> str:
        if self.channel == NOISELESS:
            return "test/acc"
        if self.level is None:
            return f"test/acc@{self.channel}"
        return f"test/acc@{self.channel}={self.level:g}"


# -- arguments ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sqdr noise",
        description="Accuracy of a trained SQDR-CNN checkpoint under single-qubit noise channels "
        "(applied after every rotation pair and entangler, on the fused density-matrix simulator).",
        epilog="example: sqdr noise --ckpt runs/quickstart --test-size 360 --preset paper",
    )
    parser.add_argument(
        "--ckpt", required=True, type=Path,
        help="a .ckpt file, a run directory (its best checkpoint, else last.ckpt) or an experiment directory "
        "(its newest version_* with a checkpoint)",
    )
    add = parser.add_argument
    add("--channels", default=",".join(CHANNEL_ORDER), help="comma-separated noise channels (default: all five)")
    add("--levels", default=DEFAULT_LEVELS, help="comma-separated probabilities in [0, 1] (default: %(default)s)")
    add("--preset", choices=sorted(PRESETS), help="also evaluate this named noise preset")
    add("--shots", type=int, help="measurement shots per expectation (default: exact)")
    add("--config", type=Path, help="YAML grid, e.g. conf/noise/grid.yaml; options given here win")
    add("--out", type=Path, help="output directory (default: <run dir>/noise)")
    add("--data-root", help="override the data module's root directory")
    add("--test-size", type=int, help="evaluate the first N test samples of the data module's order (default: all)")
    add("--batch-size", type=int, default=256, help="evaluation batch size (default: %(default)s)")
    add("--seed", type=int, default=0, help="seed for rate coding and shot sampling (default: %(default)s)")
    add("--logger", choices=["csv", "wandb"], default="csv",
        help="csv always; wandb adds one W&B run (offline without credentials)")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """Command line over ``--config`` over built-in defaults: the YAML file only replaces defaults."""
    args = parser.parse_args(argv)
    if args.config is not None:
        parser.set_defaults(**read_grid_file(args.config))
        args = parser.parse_args(argv)
    args.channels = parse_channels(args.channels)
    args.levels = parse_levels(args.levels)
    if args.preset is not None and args.preset not in PRESETS:
        raise UsageError(f"unknown noise preset {args.preset!r}; use one of {', '.join(sorted(PRESETS))}.")
    for name in ("shots", "test_size", "batch_size"):
        value = getattr(args, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}.")
    return args


def read_grid_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(f"noise grid file {path} does not exist; pass a YAML file such as conf/noise/grid.yaml.")
    grid = yaml.safe_load(path.read_text()) or {}
    if not isinstance(grid, dict):
        raise UsageError(f"{path} must be a YAML mapping with keys among {', '.join(GRID_KEYS)}.")
    grid = {str(key).replace("-", "_"): value for key, value in grid.items()}
    unknown = sorted(set(grid) - set(GRID_KEYS))
    if unknown:
        raise UsageError(f"{path} has unknown key(s) {', '.join(unknown)}; allowed keys are {', '.join(GRID_KEYS)}.")
    return grid


def as_items(value: str | Sequence[Any]) -> list[str]:
    """Comma-separated text (command line) or a list (YAML) as a list of non-empty strings."""
    items = value.split(",") if isinstance(value, str) else [str(item) for item in value]
    return [item.strip() for item in items if item.strip()]


def parse_channels(value: str | Sequence[str]) -> list[str]:
    channels = as_items(value)
    unknown = [name for name in channels if name not in CHANNEL_ORDER]
    if unknown or not channels:
        raise UsageError(
            f"unknown noise channel(s) {', '.join(unknown) or '(none given)'}; "
            f"use --channels with names among {','.join(CHANNEL_ORDER)}."
        )
    return list(dict.fromkeys(channels))


def parse_levels(value: str | Sequence[Any]) -> list[float]:
    try:
        levels = [float(item) for item in as_items(value)]
    except ValueError:
        raise UsageError(f"--levels must be comma-separated numbers such as {DEFAULT_LEVELS}, got {value!r}.") from None
    outside = [f"{level:g}" for level in levels if not 0.0 <= level <= 1.0]
    if outside or not levels:
        raise UsageError(
            f"noise level(s) {', '.join(outside) or '(none given)'} outside [0, 1]; "
            "give probabilities between 0 and 1 with --levels."
        )
    return sorted(set(levels))


# -- run directory, model and data ---------------------------------------------------------------------
def find_checkpoint(path: Path) -> Path:
    """A checkpoint file itself; in a run directory the best checkpoint, else ``last.ckpt``; in an experiment
    directory the newest ``version_*`` that has a checkpoint."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise UsageError(
            f"checkpoint {path} does not exist; pass a .ckpt file or a run directory written by `sqdr fit`."
        )
    if (path / "checkpoints").is_dir():
        return best_checkpoint(path)
    versions = sorted(
        (p for p in path.glob("version_*") if p.name.removeprefix("version_").isdigit()),
        key=lambda p: int(p.name.removeprefix("version_")),
    )
    for version in reversed(versions):
        if any((version / "checkpoints").glob("*.ckpt")):
            return best_checkpoint(version)
    raise UsageError(
        f"no checkpoint under {path} (looked for checkpoints/*.ckpt and version_*/checkpoints/*.ckpt); "
        "train first with `sqdr fit` or pass a .ckpt file."
    )


def best_checkpoint(run_dir: Path) -> Path:
    """Lightning's ``best-*.ckpt`` (newest if several), else ``last.ckpt``, else the newest ``*.ckpt``."""
    checkpoints = sorted((run_dir / "checkpoints").glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    best = [p for p in checkpoints if p.name.startswith("best")]
    last = run_dir / "checkpoints" / "last.ckpt"
    if best:
        return best[-1]
    if last.is_file():
        return last
    if checkpoints:
        return checkpoints[-1]
    raise UsageError(
        f"run directory {run_dir} has no checkpoints/*.ckpt; train it with `sqdr fit` or pass a .ckpt file."
    )


def run_dir_of(checkpoint: Path) -> Path:
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def load_run_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UsageError(
            f"{path} not found, so the test data is unknown; pass a checkpoint inside a run directory "
            "written by `sqdr fit` (<run>/checkpoints/*.ckpt beside <run>/config.yaml)."
        )
    config = yaml.safe_load(path.read_text()) or {}
    if not isinstance(config.get("data"), dict) or "class_path" not in config["data"]:
        raise UsageError(f"{path} has no data.class_path; it must be the config.yaml that `sqdr fit` wrote.")
    return config


def load_net(checkpoint: Path) -> torch.nn.Module:
    from sqdr.module import SQDRModule

    try:
        module = SQDRModule.load_from_checkpoint(checkpoint, map_location="cpu")
    except Exception as error:  # any failure here means the file is not a usable sqdr checkpoint
        raise UsageError(
            f"cannot load {checkpoint} as an SQDR checkpoint ({type(error).__name__}: {error}); "
            "pass a .ckpt written by `sqdr fit`."
        ) from None
    return module.net.eval()


def make_test_loader(data: dict[str, Any], root: str | None, test_size: int | None, batch_size: int) -> DataLoader:
    """The run's data module from its ``class_path``/``init_args``, with the evaluation overrides."""
    from sqdr.data import DatasetNotFoundError

    module_name, _, class_name = data["class_path"].rpartition(".")
    overrides = {"root": root, "test_size": test_size, "batch_size": batch_size}
    init_args = {**(data.get("init_args") or {}), **{k: v for k, v in overrides.items() if v is not None}}
    try:
        datamodule = getattr(importlib.import_module(module_name), class_name)(**init_args)
        datamodule.setup("test")
    except (DatasetNotFoundError, ValueError) as error:
        raise UsageError(f"{data['class_path']}: {error}") from None
    return datamodule.test_dataloader()


# -- evaluation ------------------------------------------------------------------------------------
@torch.no_grad()
def encode(net: torch.nn.Module, loader: DataLoader) -> Batches:
    """The circuit's inputs for the whole test set (``SQDRCNN.forward`` up to the circuit), computed once."""
    return [(net.encode(images), labels) for images, labels in loader]


@torch.no_grad()
def accuracy(net: torch.nn.Module, batches: Batches, noise: NoiseSpec, shots: int | None) -> float:
    """Test accuracy of ``net`` with its circuit run by the fused engine under ``noise``."""
    net.circuit.set_engine("fused", shots=shots, noise=noise)
    metric = MulticlassAccuracy(net.num_classes, average="micro")
    for features, labels in batches:
        metric.update(net.classify(features).argmax(1), labels)
    return round(float(metric.compute()), 6)  # k/n in float32 carries noise in the 8th digit


def grid_points(channels: list[str], levels: list[float], preset: str | None) -> list[GridPoint]:
    """The noiseless reference, every (channel, level) (level 0 as a zero-probability model), then the preset."""
    points: list[GridPoint] = [(NOISELESS, 0.0, None)]
    points += [(channel, level, {channel: level}) for channel in channels for level in levels]
    return points + ([(preset, None, preset)] if preset else [])


def evaluate(net: torch.nn.Module, batches: Batches, args: argparse.Namespace) -> list[Result]:
    from rich.progress import track

    n_samples = sum(len(labels) for _, labels in batches)
    results = []
    points = grid_points(args.channels, args.levels, args.preset)
    for channel, level, noise in track(points, description="noise grid", disable=not sys.stdout.isatty()):
        torch.manual_seed(args.seed)  # the same shot samples for every point
        results.append(Result(channel, level, accuracy(net, batches, noise, args.shots), n_samples, args.shots))
    return results


# -- outputs ---------------------------------------------------------------------------------------
def write_csv(results: list[Result], path: Path) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([f.name for f in fields(Result)])
        writer.writerows(["" if value is None else value for value in astuple(result)] for result in results)


def plot(results: list[Result], path: Path) -> None:
    """Accuracy against noise level, one line per channel; dashed: noiseless; star: the preset."""
    from matplotlib.figure import Figure  # no pyplot: no global backend, Agg renders the PNG

    figure = Figure(figsize=(6.4, 4.2), layout="constrained")
    axes = figure.subplots()
    for channel in dict.fromkeys(r.channel for r in results if r.on_grid):
        points = [(r.level, r.accuracy) for r in results if r.channel == channel]
        axes.plot(*zip(*points), marker="o", label=channel)
    for result in results:
        if result.channel == NOISELESS:
            axes.axhline(result.accuracy, color="black", linestyle="--", linewidth=1, label="noiseless")
        elif result.level is None:
            strongest = max(v for v in PRESETS[result.channel].values() if not isinstance(v, str))
            axes.plot([strongest], [result.accuracy], marker="*", markersize=14, linestyle="none",
                      color="crimson", label=f"{result.channel} preset")
    shots = results[0].shots
    axes.set(xlabel="noise probability p", ylabel="test accuracy", ylim=(0, 1.02),
             title=f"accuracy under noise ({results[0].n_samples} test images, "
             f"{'exact' if shots is None else f'{shots} shots'})")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.savefig(path, dpi=120)


def format_table(results: list[Result]) -> str:
    """Channels as rows and levels as columns, then the noiseless and preset accuracies."""
    levels = sorted({r.level for r in results if r.on_grid})
    cells = {(r.channel, r.level): r.accuracy for r in results}
    channels = list(dict.fromkeys(r.channel for r in results if r.on_grid))
    lines = ["channel".ljust(18) + "".join(f"p={level:g}".rjust(9) for level in levels)]
    lines += [channel.ljust(18) + "".join(f"{cells[channel, level]:9.1%}" for level in levels) for channel in channels]
    lines += [f"{'noiseless' if r.channel == NOISELESS else r.channel + ' preset'}: {r.accuracy:.1%}"
              for r in results if not r.on_grid]
    return "\n".join(lines)


def log_to_wandb(results: list[Result], png: Path, config: dict[str, Any], out_dir: Path) -> None:
    """One W&B run per evaluation, grouped with the experiment's training runs; offline without credentials."""
    import wandb

    from sqdr.cli import wandb_mode

    run = wandb.init(
        project=config["wandb_project"], group=config["experiment"], name=f"{config['experiment']}/noise",
        job_type="noise", dir=os.environ.get("WANDB_DIR") or str(out_dir.resolve()), mode=wandb_mode(), config=config,
    )
    table = wandb.Table(columns=[f.name for f in fields(Result)], data=[list(astuple(r)) for r in results])
    run.log({**{r.metric: r.accuracy for r in results}, "noise/table": table, "noise/plot": wandb.Image(str(png))})
    run.finish()


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    try:
        run(parse_args(parser, list(sys.argv[1:] if argv is None else argv)))
    except UsageError as error:
        parser.error(str(error))


def run(args: argparse.Namespace) -> list[Result]:
    checkpoint = find_checkpoint(args.ckpt)
    run_dir = run_dir_of(checkpoint)
    run_config = load_run_config(run_dir)
    net = load_net(checkpoint)
    torch.manual_seed(args.seed)  # rate coding draws its spikes here, once for the whole grid
    batches = encode(net, make_test_loader(run_config["data"], args.data_root, args.test_size, args.batch_size))
    print(f"checkpoint: {checkpoint}", flush=True)
    results = evaluate(net, batches, args)

    out_dir = args.out or run_dir / "noise"
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out_dir / "noise.csv", out_dir / "noise.png"
    write_csv(results, csv_path)
    plot(results, png_path)
    (out_dir / "metrics.json").write_text(json.dumps({r.metric: r.accuracy for r in results}, indent=2) + "\n")
    print(format_table(results))
    print(f"table: {csv_path}\nplot: {png_path}")
    if args.logger == "wandb":
        log_to_wandb(results, png_path, {
            "experiment": run_config.get("experiment") or run_dir.parent.name,
            "wandb_project": run_config.get("wandb_project") or "sqdr",
            "checkpoint": str(checkpoint), "channels": args.channels, "levels": args.levels,
            "preset": args.preset, "shots": args.shots, "n_samples": results[0].n_samples,
        }, out_dir)
    return results
