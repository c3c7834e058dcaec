"""The search space and the algorithms that search it.

A dimension of the space is a :class:`Dimension` (``{type: int|float|categorical, ...}`` in a study file) and
becomes an Optuna distribution. Samplers and pruners are jsonargparse subclass specs, resolved against Optuna's
``BaseSampler`` and ``BasePruner``, so every sampler and pruner Optuna has (or a user's subclass, by import path)
works with its own arguments, checked against its signature::

    sampler: {class_path: TPESampler, init_args: {seed: 0, n_startup_trials: 4}}
    pruner: {class_path: MedianPruner, init_args: {n_warmup_steps: 2}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal, TypeVar

from jsonargparse import ArgumentParser
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler, GridSampler
from optuna.trial import Trial

#: A sampler or pruner as a study file writes it: ``{"class_path": ..., "init_args": {...}}``.
ClassSpec = dict[str, Any]
Algorithm = TypeVar("Algorithm", BaseSampler, BasePruner)


@dataclass
class Dimension:
    """One searched config key.

    Args:
        type: ``int`` and ``float`` search ``low``..``high`` (``log`` scale, or every ``step``);
            ``categorical`` picks one of ``choices``.
        low: Smallest value (int and float).
        high: Largest value (int and float).
        step: Spacing of the values; a float dimension without it is continuous.
        log: Sample on a log scale (not with ``step`` for float).
        choices: The values of a categorical dimension; lists and mappings (channel widths, noise models) too.
    """

    type: Literal["int", "float", "categorical"]
    low: int | float | None = None
    high: int | float | None = None
    step: int | float | None = None
    log: bool = False
    choices: list[Any] | None = None

    def distribution(self) -> BaseDistribution:
        """The Optuna distribution; ``ValueError`` names what is missing or impossible."""
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical dimension needs choices")
            return CategoricalDistribution([choice_value(c) for c in self.choices])
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} dimensions need low and high")
        if self.type == "int":
            if not all(float(v).is_integer() for v in (self.low, self.high, self.step or 1)):
                raise ValueError("an int dimension needs whole numbers for low, high and step")
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)


def choice_value(value: Any) -> None | bool | int | float | str:
    """Optuna stores only primitive choices, so lists and dicts (widths, noise models) are kept as JSON text."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def first_value(dist: BaseDistribution) -> Any:
    """A value every dimension can take, to build one trial's config before the study starts."""
    return dist.choices[0] if isinstance(dist, CategoricalDistribution) else dist.low


def suggest(trial: Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def grid(space: dict[str, BaseDistribution]) -> dict[str, list[Any]]:
    """Every value of every dimension: categorical choices, or int/float ranges with a step."""
    values: dict[str, list[Any]] = {}
    for key, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            values[key] = list(dist.choices)
        elif dist.step is not None and not dist.log:
            n = round((dist.high - dist.low) / dist.step) + 1
            values[key] = [round(dist.low + i * dist.step, 12) for i in range(n)]  # 0.06, not 0.06000000000000001
        else:
            raise ValueError(f"GridSampler needs choices or a step (without log) for {key}")
    return values


@cache
def _spec_parser(base: type) -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--algorithm", type=base)
    return parser


def instantiate(base: type[Algorithm], spec: ClassSpec, **init_args: Any) -> Algorithm:
    """Build ``spec`` (a subclass of ``base``) with ``init_args`` added; jsonargparse's ``ArgumentError`` on a
    class or argument the signature does not accept."""
    spec = {**spec, "init_args": {**(spec.get("init_args") or {}), **init_args}}
    parser = _spec_parser(base)
    return parser.instantiate(parser.parse_object({"algorithm": spec})).algorithm


def is_grid(spec: ClassSpec) -> bool:
    """Whether ``spec`` names Optuna's ``GridSampler``, whose ``search_space`` is the study's space."""
    return spec["class_path"].rsplit(".", 1)[-1] == GridSampler.__name__


def make_sampler(spec: ClassSpec, space: dict[str, BaseDistribution], seed_offset: int = 0) -> BaseSampler:
    """The study's sampler. A ``seed`` is shifted by ``seed_offset`` so that workers, and a study resumed later,
    never replay each other's suggestions; a grid sampler gets the space's grid as its ``search_space``."""
    extra: dict[str, Any] = {"search_space": grid(space)} if is_grid(spec) else {}
    seed = (spec.get("init_args") or {}).get("seed")
    if seed is not None:
        extra["seed"] = (int(seed) * 1_000_003 + seed_offset) % 2**32
    return instantiate(BaseSampler, spec, **extra)


def make_pruner(spec: ClassSpec) -> BasePruner:
    return instantiate(BasePruner, spec)


def default_sampler() -> ClassSpec:
    return {"class_path": "TPESampler"}


def default_pruner(multi_objective: bool) -> ClassSpec:
    """Multi-objective studies cannot prune; single-objective ones stop a trial below the median by default."""
    return {"class_path": "NopPruner" if multi_objective else "MedianPruner"}


def old_form_hint(key: str, value: Any, base: type) -> str | None:
    """For the name forms study files once used (``tpe``, ``{type: tpe, seed: 0}``), the message with the new form."""
    name = value if isinstance(value, str) else value.get("type") if isinstance(value, dict) else None
    if name is None or (isinstance(value, dict) and "class_path" in value):
        return None
    options = {k: v for k, v in value.items() if k != "type"} if isinstance(value, dict) else {}
    wanted = str(name).replace("_", "").lower() + base.__name__.removeprefix("Base").lower()
    classes = [c.__name__ for c in _subclasses(base) if c.__name__.lower() == wanted]
    class_name = classes[0] if classes else "NopPruner" if name == "none" else f"<a {base.__name__} subclass>"
    new = f"{{class_path: {class_name}" + (f", init_args: {_flow(options)}}}" if options else "}")
    return f"{key}: {value!r} is the old form; write {key}: {new}."


def _flow(mapping: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in mapping.items()) + "}"


def _subclasses(base: type) -> list[type]:
    found = []
    for cls in base.__subclasses__():
        found += [cls, *_subclasses(cls)]
    return found

