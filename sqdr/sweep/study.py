"""A study file (``sweeps/*.yaml``): its schema, its checks, and the Optuna study it names in storage.

The schema is :class:`StudySpec`: jsonargparse checks a file against its type hints (unknown keys, missing keys,
wrong types), then :func:`load_study_file` checks what types cannot say (config files exist, the space is
consistent, the sampler and pruner accept their arguments), so a broken file fails in one sentence before a
study, a storage or a worker exists. :func:`load_study` then creates or resumes the study, refusing a file
that no longer matches the trials already stored.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path
from typing import Any, Literal

import optuna
import yaml
from jsonargparse import ArgumentParser
from jsonargparse.typing import NonNegativeInt, PositiveInt
from optuna.distributions import BaseDistribution, check_distribution_compatibility
from optuna.pruners import BasePruner, NopPruner
from optuna.samplers import BaseSampler

from sqdr.errors import UserError
from sqdr.files import write_text
from sqdr.sweep import sampling
from sqdr.sweep.storage import StaleTrialCallback, masked, open_storage, storage_kind

#: Written into a trial's run directory when the trial failed or its worker died: not a finished result.
FAILED_MARKER = "FAILED"
#: Keys the sweep sets itself in every trial; a study file must not fix or search them.
RESERVED_CONFIG_KEYS = ("runs_dir", "experiment", "logger", "wandb_group")
#: Every metric a trial can report (logged by sqdr.module, sqdr.callbacks and sqdr.certify; ``test/...`` when the
#: study tests after fit): an objective outside it would fail every trial, so it is refused before the first.
LOGGED_METRICS = (
    "val/acc_best", "val/acc", "val/loss", "train/acc", "train/loss", "train/acc_running", "train/loss_running",
    "train/images_per_s", "test/acc", "test/loss", "test/acc_certified_subset",
    *(f"params/{part}" for part in ("total", "encoder", "circuit", "head")),
    *(f"grad_norm/{part}" for part in ("encoder", "circuit", "head")),
    *(f"test/{kind}_{engine}" for kind in ("acc", "max_logit_diff")
      for engine in ("lightning", "default.qubit", "default.mixed")),
)  # fmt: skip


@dataclass
class Objective:
    """One value the study optimises.

    Args:
        metric: A metric every trial logs: ``val/acc_best``, ``params/total``, ``test/acc`` (tested after fit), ...
        direction: ``maximize`` or ``minimize``.
    """

    metric: str
    direction: Literal["maximize", "minimize"]


@dataclass
class StudySpec:
    """The keys of a study file; see ``sweeps/*.yaml``.

    Args:
        study_name: The study's name in its storage; trials run in ``<runs_dir>/<study_name>/trial_<n>/``.
        base_config: ``sqdr fit`` config file(s), from the working directory or a folder above the study file.
        space: Searched ``sqdr fit`` config keys, e.g. ``model.net.init_args.n_qubits: {type: int, low: 3, high: 9}``.
        objectives: What the study optimises, e.g. ``[{metric: val/acc_best, direction: maximize}]``.
        n_trials: Finished (complete or pruned) trials across all workers.
        overrides: ``sqdr fit`` config keys fixed for every trial.
        sampler: An Optuna sampler as ``{class_path: TPESampler, init_args: {seed: 0}}`` (default: TPESampler).
            ``GridSampler`` takes its ``search_space`` from ``space``.
        pruner: An Optuna pruner as ``{class_path: MedianPruner}`` (default: MedianPruner for one objective,
            NopPruner for several; multi-objective studies cannot prune).
        storage: ``sqlite:///FILE`` (one worker), ``journal:FILE`` (workers on one machine) or
            ``postgresql://USER:PASSWORD@HOST/DB`` (workers on several machines).
        runs_dir: Folder of the trials' run directories.
        wandb: Log every trial to W&B as its own run, grouped by study.
        threads: Intra-op threads of every trial. Fixed per study, because the order of floating-point sums
            depends on it: the same parameters and seed then give the same metrics on any machine and worker.
        heartbeat_interval: Seconds between a worker's heartbeats (SQLite and PostgreSQL).
        grace_period: Seconds without a heartbeat after which a trial's worker counts as dead.
        max_retry: How often a trial whose worker died is retried with the same parameters.
    """

    study_name: str
    base_config: str | list[str]
    space: dict[str, sampling.Dimension]
    objectives: list[Objective]
    n_trials: PositiveInt
    overrides: dict[str, Any] = field(default_factory=dict)
    sampler: dict[str, Any] | None = None
    pruner: dict[str, Any] | None = None
    storage: str | None = None
    runs_dir: str = "runs"
    wandb: bool = False
    threads: PositiveInt = 1
    heartbeat_interval: PositiveInt = 10
    grace_period: PositiveInt = 60
    max_retry: NonNegativeInt = 2
    #: The study file this spec was read from (set by :func:`load_study_file`).
    path: Path = field(init=False, default=Path("study.yaml"))

    @property
    def name(self) -> str:
        return self.study_name

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def base_configs(self) -> list[str]:
        return [self.base_config] if isinstance(self.base_config, str) else list(self.base_config)

    @cached_property
    def distributions(self) -> dict[str, BaseDistribution]:
        return {key: dimension.distribution() for key, dimension in self.space.items()}

    @property
    def sampler_spec(self) -> sampling.ClassSpec:
        return self.sampler or sampling.default_sampler()

    @property
    def pruner_spec(self) -> sampling.ClassSpec:
        return self.pruner or sampling.default_pruner(self.multi_objective)

    @property
    def trials_dir(self) -> Path:
        """Where the trials' runs land: ``<runs_dir>/<study_name>/trial_<n>/version_0/``."""
        return Path(self.runs_dir) / self.name


def load_study_file(
    path: str | Path, *, n_trials: int | None = None, storage: str | None = None, wandb: bool = False
) -> StudySpec:
    """Read and check a study file, with command-line overrides; every problem is one :class:`UserError`."""
    path = Path(path)
    raw = _read_yaml(path)
    for key, base in (("sampler", BaseSampler), ("pruner", BasePruner)):
        hint = sampling.old_form_hint(key, raw.get(key), base) if key in raw else None
        if hint:
            raise UserError(f"{path}: {hint}")
    parser = _study_parser()
    try:
        spec: StudySpec = parser.instantiate(parser.parse_object({"study": raw})).study
    except Exception as error:  # jsonargparse's ArgumentError, or a value the dataclass refuses
        raise UserError(f"{path}: {_problem_in(raw, error)}") from None
    spec.path = path
    spec.n_trials = n_trials if n_trials is not None else spec.n_trials
    spec.storage = storage or spec.storage or f"sqlite:///results/studies/{spec.name}.db"
    spec.wandb = wandb or spec.wandb
    spec.base_config = [_find_config(path, config) for config in spec.base_configs]
    _check(spec)
    return spec


@cache
def _study_parser() -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--study", type=StudySpec)
    return parser


@cache
def _dimension_parser() -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--dimension", type=sampling.Dimension)
    return parser


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UserError(f"cannot read study file {path}: {exc.strerror}.") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}.") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path} must be a mapping of study keys, got {type(raw).__name__}.")
    return raw


def _problem_in(raw: dict[str, Any], error: Exception) -> str:
    """The parser's (nested, multi-line) message as ``key: problem``; a bad space entry is named by its key."""
    keys, problem = parse_error(error)
    if keys[:1] == ["space"] and isinstance(raw.get("space"), dict):
        for key, value in raw["space"].items():
            try:
                _dimension_parser().parse_object({"dimension": value})
            except Exception as dimension_error:
                inner, problem = parse_error(dimension_error)
                return f"space key {key}: {''.join(f'{k}: ' for k in inner)}{problem}"
    if problem.startswith("unknown key") and not keys:
        problem += f"; the keys of a study file are {', '.join(study_keys())}"
    return f"{'.'.join(keys)}: {problem}" if keys else problem


def study_keys() -> list[str]:
    """The keys a study file may have, in the order of :class:`StudySpec`."""
    return [name for name, f in StudySpec.__dataclass_fields__.items() if f.init]


def parse_error(error: Exception) -> tuple[list[str], str]:
    """``(key path, problem)`` from a jsonargparse error, in the study file's own words.

    jsonargparse nests the message of a nested value (``Parser key "x":`` then an indented cause, unions list
    every alternative's failure); the study file's reader wants the innermost cause, once.
    """
    lines = [line.strip().removeprefix("- ") for line in str(error).splitlines()]
    parsed = (re.fullmatch(r'Parser key "(.+)":', line) for line in lines)
    keys = [key for match in parsed if match for key in [_relative(match[1])] if key]
    subtypes = next((line for line in lines if line.startswith("Subtypes: ")), None)
    given = next((line.removeprefix("Given value: ") for line in lines if line.startswith("Given value: ")), None)
    if subtypes and given is not None and not any("class_path" in line for line in lines):
        expected = _pretty(subtypes.removeprefix("Subtypes: ").strip("[]")).replace(", ", " or ")
        return keys, f"expected {expected}, got {given}"
    skipped = ("Parser key", "Problem with given", "Does not validate", "Subtypes:", "Errors:", "Given value")
    detail = next((line for line in lines if line and not line.startswith(skipped)), str(error))
    if match := re.search(r"arguments are required: (.+)", detail):
        return keys, "missing key(s) " + ", ".join(_relative(key) for key in match[1].split(", "))
    if match := re.search(r"(?:does not accept option|Option) '([^']+)'", detail):
        return keys, f"unknown key {match[1]}"
    if match := re.fullmatch(r"Expected a dot import path string: (.*)", detail):
        return keys, f"no class {match[1]}; name an Optuna class (TPESampler, MedianPruner, ...) or an import path"
    if match := re.fullmatch(r"Expected a typing\.Literal\[(.*)\]\. Got value: (.*)", detail):
        return keys, f"{match[2]!r} is not one of {match[1].replace(chr(39), '')}"
    if match := re.fullmatch(r"Expected a (.*)\. Got value: (.*)", detail):
        return keys, f"expected {_pretty(match[1])}, got {match[2]}"
    if match := re.fullmatch(r"Not of type (\w+): (.*) does not conform to restriction (.*)", detail):
        return keys, f"must satisfy {match[3]}, got {match[2]}"
    return keys, detail


def _relative(key: str) -> str:
    """A key without the name the parsers here give the whole value (``study.n_trials`` -> ``n_trials``)."""
    return re.sub(r"^(study|dimension|algorithm)\.?", "", key)


def _pretty(types: str) -> str:
    """``<class 'int'>, <class 'NoneType'>`` -> ``int, null``."""
    types = re.sub(r"<class '(?:[\w.]+\.)?(\w+)'>", r"\1", types).replace("typing.", "")
    return types.replace("NoneType", "null")


def _find_config(path: Path, config: str) -> str:
    """A config path from here, else from a folder above the study file (``sweeps/x.yaml`` names repo-root paths)."""
    candidates = [Path(config), *(folder / config for folder in path.resolve().parents)]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise UserError(f"{path}: base_config {config} does not exist; name a `sqdr fit` config file.")
    return str(found)


def _check(spec: StudySpec) -> None:
    """What the types cannot say: a consistent space, a sampler and pruner that accept their arguments."""
    where = spec.path
    if not spec.objectives:
        raise UserError(f"{where}: objectives is empty; add one, e.g. [{{metric: val/acc_best, direction: maximize}}].")
    unknown = [o.metric for o in spec.objectives if o.metric not in LOGGED_METRICS]
    if unknown:
        raise UserError(
            f"{where}: objective metric(s) {', '.join(unknown)} are never logged by a trial; "
            f"choose from {', '.join(LOGGED_METRICS)}."
        )
    for key, dimension in spec.space.items():
        try:
            dimension.distribution()
        except ValueError as exc:
            raise UserError(f"{where}: space key {key}: {exc}.") from None
    both = sorted(set(spec.overrides) & set(spec.space))
    if both:
        raise UserError(f"{where}: {', '.join(both)} is both fixed in overrides and searched in space; keep one.")
    reserved = sorted(k for k in [*spec.overrides, *spec.space] if k in RESERVED_CONFIG_KEYS)
    if reserved:
        raise UserError(
            f"{where}: the sweep sets {', '.join(reserved)} itself; use runs_dir / wandb at the top of the file."
        )
    _build(spec, "sampler", lambda: sampling.make_sampler(spec.sampler_spec, spec.distributions))
    pruner = _build(spec, "pruner", lambda: sampling.make_pruner(spec.pruner_spec))
    if spec.multi_objective and not isinstance(pruner, NopPruner):
        raise UserError(f"{where}: multi-objective studies cannot prune; remove pruner or set it to NopPruner.")
    storage_kind(spec.storage)


def _build(spec: StudySpec, key: str, build: Callable[[], Any]) -> Any:
    try:
        return build()
    except Exception as error:  # an unknown class or argument, or a value the class refuses
        raise UserError(f"{spec.path}: {key}: {parse_error(error)[1]}") from None


# -- the study in storage -------------------------------------------------------------------------
def open_study_storage(
    spec: StudySpec, stale_trial_callback: StaleTrialCallback | None = None
) -> optuna.storages.BaseStorage:
    return open_storage(
        spec.storage,
        heartbeat_interval=spec.heartbeat_interval,
        grace_period=spec.grace_period,
        stale_trial_callback=stale_trial_callback,
    )


def load_study(spec: StudySpec, storage: optuna.storages.BaseStorage, *, create: bool) -> optuna.Study:
    """Create or resume the study, refusing a study file that no longer matches what the storage holds."""
    if create:
        study = optuna.create_study(
            study_name=spec.name,
            storage=storage,
            directions=spec.directions,
            pruner=sampling.make_pruner(spec.pruner_spec),
            load_if_exists=True,
        )
    else:
        try:
            study = optuna.load_study(study_name=spec.name, storage=storage)
        except KeyError:
            message = f"no study {spec.name} in {masked(spec.storage)}; run `sqdr sweep {spec.path}` first."
            raise UserError(message) from None
    _check_study_matches(spec, study)
    return study


def _check_study_matches(spec: StudySpec, study: optuna.Study) -> None:
    stored = [d.name.lower() for d in study.directions]
    metrics = [o.metric for o in spec.objectives]
    recorded = study.user_attrs.get("objectives")
    if stored != spec.directions or recorded not in (None, metrics):
        raise UserError(
            f"study {spec.name} in {masked(spec.storage)} optimises {recorded or stored}, but {spec.path} asks "
            f"for {metrics} {spec.directions}; give the study a new study_name."
        )
    if recorded is None:
        study.set_user_attr("objectives", metrics)
    for trial in study.get_trials(deepcopy=False):
        for key, old in trial.distributions.items():
            if key in spec.distributions:
                try:
                    check_distribution_compatibility(old, spec.distributions[key])
                except ValueError as exc:
                    raise UserError(
                        f"space key {key} no longer matches the trials stored in study {spec.name} ({exc}); "
                        "give the study a new study_name."
                    ) from None


def mark_run_failed(run_dir: str | Path, reason: str) -> None:
    """Leave :data:`FAILED_MARKER` in a trial's run directory, so no report reads its files as a finished run."""
    write_text(Path(run_dir) / FAILED_MARKER, reason.rstrip() + "\n")
