"""The experiment set of one budget, read from its YAML file and expanded into runs: (data set, variant, seed).

A variant is the paper's configuration plus a few ``sqdr fit`` overrides, so an ablation is one line in the file
rather than one more near-identical config. A data set names the config that trains the paper model on it, the
budget's overrides (epochs, subset sizes) and the variants trained on it. Every run's arguments are the data
set's config, then its overrides, then the variant's, then the seed, later ones winning, as in ``sqdr fit``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sqdr.errors import UserError

GROUPS = ("paper", "baseline", "ablation", "tuned", "twin", "noise")


@dataclass(frozen=True)
class Variant:
    """A model variant: ``overrides`` of ``sqdr fit`` options; ``encoder_from`` names the variant whose run (same
    data set, same seed) supplies the encoder weights, which is how SQNN's two stages are expressed."""

    name: str
    group: str
    about: str
    overrides: dict[str, Any] = field(default_factory=dict)
    encoder_from: str | None = None


@dataclass(frozen=True)
class DataSet:
    name: str
    config: str
    overrides: dict[str, Any]
    variants: tuple[str, ...]


@dataclass(frozen=True)
class Run:
    """One training run of the set; ``directory`` is ``<runs>/<budget>/<data set>/<variant>/seed_<s>``."""

    dataset: DataSet
    variant: Variant
    seed: int
    directory: Path

    @property
    def name(self) -> str:
        return f"{self.dataset.name}/{self.variant.name}/seed_{self.seed}"

    def fit_args(self, encoder_from: Path | None = None) -> list[str]:
        """The ``sqdr fit`` arguments of this run; its ``version_0/`` lands inside :attr:`directory`."""
        args = ["--config", self.dataset.config]
        for key, value in [*self.dataset.overrides.items(), *self.variant.overrides.items()]:
            args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
        args += ["--seed_everything", str(self.seed), "--trainer.enable_model_summary", "false"]
        if encoder_from is not None:
            args += ["--model.encoder_from", str(encoder_from)]
        return args + ["--runs_dir", str(self.directory.parent), "--experiment", self.directory.name]


@dataclass(frozen=True)
class Plan:
    """The runs of one budget, in the order they train: seed by seed, so an early stop leaves whole seeds."""

    budget: str
    about: str
    seeds: tuple[int, ...]
    datasets: tuple[DataSet, ...]
    noise: dict[str, Any] | None
    runs: tuple[Run, ...]

    def dependency(self, run: Run) -> Run | None:
        """The run whose encoder ``run`` starts from (same data set and seed), if its variant names one."""
        if run.variant.encoder_from is None:
            return None
        return next(
            other for other in self.runs
            if (other.dataset.name, other.variant.name, other.seed)
            == (run.dataset.name, run.variant.encoder_from, run.seed)
        )


def load_plan(path: str | Path, budget: str, runs_dir: str | Path, seeds: list[int] | None = None) -> Plan:
    """The plan of ``budget`` in the experiment-set file ``path``; every mistake is a :class:`UserError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"experiment set {path} not found; pass --experiments with the file, e.g. conf/reproduce/experiments.yaml."
        )
    document = yaml.safe_load(path.read_text()) or {}
    variants = {name: _variant(path, name, spec) for name, spec in (document.get("variants") or {}).items()}
    budgets = document.get("budgets") or {}
    if budget not in budgets:
        raise UserError(f"{path}: no budget {budget!r}; the file defines {', '.join(budgets) or 'none'}.")
    spec = budgets[budget]
    datasets = tuple(_dataset(path, name, entry, variants) for name, entry in (spec.get("datasets") or {}).items())
    seeds = tuple(seeds if seeds is not None else spec.get("seeds") or [0])
    root = Path(runs_dir) / budget
    runs = tuple(
        Run(dataset, variants[name], seed, root / dataset.name / name / f"seed_{seed}")
        for seed in seeds
        for dataset in datasets
        for name in dataset.variants
    )
    noise = spec.get("noise")
    if noise is not None and noise.get("dataset") not in {d.name for d in datasets}:
        raise UserError(f"{path}: budget {budget}: noise.dataset must be one of the budget's data sets.")
    if noise is not None and "compare" in noise:
        trained = next(d for d in datasets if d.name == noise["dataset"]).variants
        unknown = [name for name in noise["compare"] or [None] if name not in trained]
        if unknown:
            raise UserError(
                f"{path}: budget {budget}: noise.compare lists {unknown}, which the data set {noise['dataset']} "
                f"does not train; choose among {', '.join(trained)}."
            )
    return Plan(budget, " ".join(str(spec.get("about", "")).split()), seeds, datasets, noise, runs)


def _variant(path: Path, name: str, spec: dict[str, Any] | None) -> Variant:
    spec = spec or {}
    unknown = set(spec) - {"group", "about", "overrides", "encoder_from"}
    if unknown or spec.get("group") not in GROUPS:
        raise UserError(
            f"{path}: variant {name!r} needs group: {'|'.join(GROUPS)} and may have about, overrides, encoder_from"
            + (f" (unknown: {', '.join(sorted(unknown))})." if unknown else ".")
        )
    overrides = dict(spec.get("overrides") or {})
    return Variant(name, spec["group"], spec.get("about", ""), overrides, spec.get("encoder_from"))


def _dataset(path: Path, name: str, spec: dict[str, Any], variants: dict[str, Variant]) -> DataSet:
    if not isinstance(spec, dict) or "config" not in spec:
        raise UserError(f"{path}: data set {name!r} needs config: <a sqdr fit config file> and variants: [...].")
    if not Path(spec["config"]).is_file():
        raise UserError(
            f"{path}: data set {name!r}: config {spec['config']} not found (paths are relative to the working directory)."
        )
    names = list(spec.get("variants") or [])
    for position, variant in enumerate(names):
        if variant not in variants:
            raise UserError(f"{path}: data set {name!r} lists variant {variant!r}, which `variants` does not define.")
        source = variants[variant].encoder_from
        if source is not None and source not in names[:position]:
            raise UserError(
                f"{path}: data set {name!r}: variant {variant!r} takes its encoder from {source!r}, "
                f"which must be listed before it."
            )
    return DataSet(name, spec["config"], dict(spec.get("overrides") or {}), tuple(names))
