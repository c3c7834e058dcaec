"""``sqdr noise``: its options (a typed dataclass parsed by jsonargparse) and the steps of one study.

The order of the steps is deliberate: everything a user can get wrong (options, checkpoint, run config, data,
output folder) is checked before the first test image is encoded, so a mistake costs seconds, not a whole grid.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from jsonargparse import ArgumentParser
from jsonargparse.typing import ClosedUnitInterval, PositiveInt
from lightning.pytorch.cli import instantiate_class
from torch.utils.data import DataLoader

from sqdr.errors import UserError
from sqdr.files import check_writable
from sqdr.models import SQDRCNN
from sqdr.models.noise import CHANNEL_ORDER, PRESETS
from sqdr.options import options_from, options_parser
from sqdr.robustness.outputs import accuracy_table, log_to_wandb, write_outputs
from sqdr.robustness.study import GridPoint, Result, encode, evaluate, grid_points
from sqdr.runs import CONFIG, find_checkpoint, load_run_config, run_dir_of

Channel = Literal[CHANNEL_ORDER]  # type: ignore[valid-type]  # the names the noise model knows, in its order
Preset = Literal[tuple(PRESETS)]  # type: ignore[valid-type]  # the named noise models, e.g. paper
DEFAULT_LEVELS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5)

EXAMPLES = """examples:
  sqdr noise --ckpt runs/quickstart --preset paper
  sqdr noise --ckpt runs/quickstart/version_0 --channels '[depolarizing, bit_flip]' --levels '[0, 0.05, 0.1]'
  sqdr noise --ckpt runs/quickstart --config conf/noise/wide.yaml --test_size 360
"""


@dataclass(frozen=True)
class NoiseOptions:
    """What to evaluate, under which noise, and where the results go.

    Args:
        ckpt: A .ckpt file; a run directory (its best checkpoint as recorded by training, else last.ckpt); or an
            experiment directory (its newest version_* that has a checkpoint).
        channels: Single-qubit noise channels to sweep, one at a time, as a list such as '[depolarizing,
            bit_flip]'. Each acts after every rotation pair and entangler of the circuit.
        levels: Noise probabilities in [0, 1] evaluated for every channel, as a list such as '[0, 0.05, 0.1]'.
        preset: Also evaluate this named noise model (all of its channels at once).
        shots: Measurement shots per expectation value; unset for exact expectations.
        out: Output folder for noise.csv, noise.png and metrics.json; unset: <run dir>/noise.
        data_root: Root directory of the data set, if not the one the run was trained with.
        test_size: Evaluate only the first N test images of the data module's order; unset: all of them.
        batch_size: Images per evaluation batch.
        seed: Seed of rate coding's spikes and of shot sampling, the same for every grid point.
        logger: 'csv' writes the files only; 'wandb' also logs one W&B run in the experiment's group
            (offline without credentials).
    """

    ckpt: str
    channels: list[Channel] = field(default_factory=lambda: list(CHANNEL_ORDER))
    levels: list[ClosedUnitInterval] = field(default_factory=lambda: list(DEFAULT_LEVELS))
    preset: Preset | None = None
    shots: PositiveInt | None = None
    out: str | None = None
    data_root: str | None = None
    test_size: PositiveInt | None = None
    batch_size: PositiveInt = 256
    seed: int = 0
    logger: Literal["csv", "wandb"] = "csv"

    def __post_init__(self) -> None:
        """Empty lists pass the type check but leave nothing to evaluate."""
        if not self.channels:
            raise UserError(f"--channels is empty; give at least one of {', '.join(CHANNEL_ORDER)}.")
        if not self.levels:
            raise UserError("--levels is empty; give at least one noise probability, e.g. --levels '[0, 0.1]'.")


def build_parser() -> ArgumentParser:
    """The ``sqdr noise`` parser: the fields of :class:`NoiseOptions`, plus ``--config`` for a YAML grid."""
    return options_parser(
        NoiseOptions,
        prog="sqdr noise",
        description="Accuracy of a trained SQDR-CNN checkpoint under single-qubit noise channels, simulated exactly "
        "(density matrices) with the trained parameters unchanged.",
        examples=EXAMPLES,
        config_help="A YAML file of options, e.g. conf/noise/grid.yaml; options given after it on the command line win.",
    )


def parse_options(argv: list[str]) -> NoiseOptions:
    """Command line (and ``--config`` files) to options; bad values end in jsonargparse's usage error (exit 2)."""
    return options_from(NoiseOptions, build_parser(), argv)


def load_net(checkpoint: Path) -> SQDRCNN:
    """The trained network of an SQDR checkpoint, in evaluation mode."""
    from sqdr.module import SQDRModule

    try:
        module = SQDRModule.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    except Exception as error:  # hyperparameters or weights that do not build this version's SQDRModule
        raise UserError(
            f"{checkpoint} is a Lightning checkpoint but not of an SQDR-CNN this version of sqdr can load; "
            "pass a .ckpt file written by this version's `sqdr fit`."
        ) from error
    return module.net.eval()


def evaluation_loader(run_config: dict[str, Any], source: Path, options: NoiseOptions) -> DataLoader:
    """The test set of the run's data module (its ``class_path``/``init_args``), with the evaluation overrides."""
    data = run_config.get("data")
    if not isinstance(data, dict) or "class_path" not in data:
        raise UserError(f"{source} has no data.class_path; it must be the config.yaml that `sqdr fit` wrote.")
    overrides = {"root": options.data_root, "test_size": options.test_size, "batch_size": options.batch_size}
    init_args = {**(data.get("init_args") or {}), **{k: v for k, v in overrides.items() if v is not None}}
    try:
        datamodule = instantiate_class((), {"class_path": data["class_path"], "init_args": init_args})
        datamodule.setup("test")
    except ValueError as error:  # impossible data options; a missing data set raises a UserError of its own
        raise UserError(f"{data['class_path']}: {error}") from None
    return datamodule.test_dataloader()


def load_evaluation(checkpoint: Path, options: NoiseOptions) -> tuple[SQDRCNN, DataLoader]:
    """The network in ``checkpoint`` and its run's test set as ``options`` trim it, both checked."""
    run_dir = run_dir_of(checkpoint)
    return load_net(checkpoint), evaluation_loader(load_run_config(run_dir), run_dir / CONFIG, options)


def evaluate_net(net: SQDRCNN, loader: DataLoader, points: list[GridPoint], options: NoiseOptions) -> list[Result]:
    torch.manual_seed(options.seed)  # rate coding draws its spikes here, once for the whole grid
    return evaluate(net, encode(net, loader), points, options.shots, options.seed)


def evaluate_checkpoint(checkpoint: Path, options: NoiseOptions, points: list[GridPoint]) -> list[Result]:
    """The accuracy of the network in ``checkpoint`` at every grid point."""
    return evaluate_net(*load_evaluation(checkpoint, options), points, options)


def run(options: NoiseOptions) -> list[Result]:
    """One study: check every input and the output folder, evaluate the grid, then write and print the results."""
    checkpoint = find_checkpoint(options.ckpt)
    run_dir = run_dir_of(checkpoint)
    run_config = load_run_config(run_dir)
    net, loader = load_evaluation(checkpoint, options)
    out_dir = check_writable(Path(options.out) if options.out else run_dir / "noise")
    print(f"checkpoint: {checkpoint}", flush=True)
    results = evaluate_net(net, loader, grid_points(options.channels, options.levels, options.preset), options)

    paths = write_outputs(results, out_dir)
    print(accuracy_table(results))
    print(f"table: {paths.table}\nplot: {paths.plot}")
    if options.logger == "wandb":
        log_to_wandb(results, paths, {
            **asdict(options),
            "experiment": run_config.get("experiment") or run_dir.parent.name,
            "wandb_project": run_config.get("wandb_project") or "sqdr",
            "checkpoint": str(checkpoint), "n_samples": results[0].n_samples,
        })
    return results


def main(argv: list[str] | None = None) -> None:
    """``sqdr noise [options]``; user mistakes raise :class:`UserError`, which the ``sqdr`` dispatcher reports."""
    run(parse_options(list(sys.argv[1:] if argv is None else argv)))
