"""``sqdr sweep STUDY.yaml``: an Optuna study whose trials are ordinary ``sqdr fit`` runs.

A study file (see ``sweeps/``) names the base config(s), fixed overrides, the search space over any config
key, the objectives and the budget. Every trial is a fit run in ``<runs_dir>/<study>/trial_<n>/`` whose exact
CLI arguments are stored with the trial, so any trial can be re-run alone. N workers share one study through
its storage: SQLite for one worker, a journal file for several on one machine, PostgreSQL across machines.

The budget is exact: ``n_trials`` counts COMPLETE and PRUNED trials across all workers, and a worker only asks
for a trial while holding a study-wide lock (a file lock beside SQLite/journal files, an advisory lock in
PostgreSQL), so N workers never overshoot. A worker that dies mid-trial leaves a RUNNING trial that is failed
and retried with the same parameters: by Optuna's heartbeats on SQLite/PostgreSQL, and on journal files
(which have no heartbeat in Optuna) by checking that the worker process recorded with the trial is gone.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import io
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import optuna
import yaml
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    check_distribution_compatibility,
)
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, Trial, TrialState
from sqlalchemy.exc import SQLAlchemyError

# Heartbeats, stale-trial failing and their retry callback are marked experimental; they are what we want.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
# Trials call LightningCLI with explicit args from inside `sqdr sweep`; that is intended here.
warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")

REQUIRED_KEYS = ("study_name", "base_config", "space", "objectives", "n_trials")
OPTIONAL_KEYS = (
    "overrides",
    "sampler",
    "pruner",
    "storage",
    "runs_dir",
    "wandb",
    "heartbeat_interval",
    "grace_period",
    "max_retry",
)
DISTRIBUTION_KEYS = {"type", "low", "high", "log", "step", "choices"}
RESERVED_CONFIG_KEYS = ("runs_dir", "experiment", "logger", "wandb_group")

SAMPLERS: dict[str, type[optuna.samplers.BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
    "nsgaii": optuna.samplers.NSGAIISampler,
    "grid": optuna.samplers.GridSampler,
}
PRUNERS: dict[str, type[optuna.pruners.BasePruner]] = {
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "threshold": optuna.pruners.ThresholdPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "none": optuna.pruners.NopPruner,
}

#: A RUNNING trial without a recorded worker this old was orphaned between ``ask`` and its first line.
ORPHAN_AGE = timedelta(seconds=60)
#: How often an idle worker looks again while other workers hold the last trials of the budget.
POLL_SECONDS = 2.0
#: A worker stops after this many failed trials in a row (a broken config would otherwise loop forever).
MAX_CONSECUTIVE_FAILURES = 3


class StudyFileError(ValueError):
    """A study file or command line that cannot run; the message is one sentence for the user."""


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: Literal["maximize", "minimize"]


@dataclass
class StudySpec:
    """A parsed study file, with command-line overrides applied."""

    name: str
    path: Path
    base_configs: list[str]
    space: dict[str, BaseDistribution]
    objectives: list[Objective]
    n_trials: int
    overrides: dict[str, Any] = field(default_factory=dict)
    sampler: dict[str, Any] = field(default_factory=dict)
    pruner: dict[str, Any] = field(default_factory=dict)
    storage: str = ""
    runs_dir: str = "runs"
    wandb: bool = False
    heartbeat_interval: int = 10
    grace_period: int = 60
    max_retry: int = 2

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]


# -- study file -----------------------------------------------------------------------------------
def load_study_file(
    path: str | Path, *, n_trials: int | None = None, storage: str | None = None, wandb: bool = False
) -> StudySpec:
    """Read and check a study file; every problem becomes one :class:`StudyFileError` sentence."""
    path = Path(path)
    raw = _read_yaml(path)
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise StudyFileError(f"{path}: missing key(s) {', '.join(missing)}.")
    unknown = sorted(set(raw) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
    if unknown:
        known = ", ".join(REQUIRED_KEYS + OPTIONAL_KEYS)
        raise StudyFileError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {known}.")
    objectives = _parse_objectives(path, raw["objectives"])
    default_pruner = "none" if len(objectives) > 1 else "median"
    spec = StudySpec(
        name=str(raw["study_name"]),
        path=path,
        base_configs=_parse_base_configs(path, raw["base_config"]),
        space={key: parse_distribution(key, value) for key, value in _mapping(path, raw, "space").items()},
        objectives=objectives,
        n_trials=_count(path, "n_trials", n_trials if n_trials is not None else raw["n_trials"]),
        overrides=_mapping(path, raw, "overrides"),
        sampler=_named_options(path, "sampler", raw.get("sampler", "tpe"), SAMPLERS),
        pruner=_named_options(path, "pruner", raw.get("pruner", default_pruner), PRUNERS),
        runs_dir=str(raw.get("runs_dir", "runs")),
        wandb=bool(wandb or raw.get("wandb", False)),
        heartbeat_interval=_count(path, "heartbeat_interval", raw.get("heartbeat_interval", 10)),
        grace_period=_count(path, "grace_period", raw.get("grace_period", 60)),
        max_retry=_count(path, "max_retry", raw.get("max_retry", 2), minimum=0),
    )
    spec.storage = storage or raw.get("storage") or f"sqlite:///results/studies/{spec.name}.db"
    _check_consistency(spec)
    return spec


def _mapping(path: Path, raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise StudyFileError(f"{path}: {key} must be a mapping of config key -> value, got {type(value).__name__}.")
    return dict(value)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise StudyFileError(f"cannot read study file {path}: {exc.strerror}.") from exc
    except yaml.YAMLError as exc:
        raise StudyFileError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}.") from exc
    if not isinstance(raw, dict):
        raise StudyFileError(f"{path} must be a mapping of study keys, got {type(raw).__name__}.")
    return raw


def _parse_base_configs(path: Path, value: Any) -> list[str]:
    """Config paths from here, else from a folder above the study file (``sweeps/x.yaml`` names repo-root paths)."""
    configs = [value] if isinstance(value, str) else list(value or [])
    if not configs:
        raise StudyFileError(f"{path}: base_config must name at least one config file.")
    resolved = []
    for config in map(str, configs):
        candidates = [Path(config), *(folder / config for folder in path.resolve().parents)]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise StudyFileError(f"{path}: base_config {config} does not exist.")
        resolved.append(str(found))
    return resolved


def _parse_objectives(path: Path, value: Any) -> list[Objective]:
    if not isinstance(value, list) or not value:
        raise StudyFileError(f"{path}: objectives must be a non-empty list of {{metric, direction}}.")
    objectives = []
    for item in value:
        if not isinstance(item, dict) or set(item) != {"metric", "direction"}:
            raise StudyFileError(f"{path}: each objective needs exactly metric and direction, got {item!r}.")
        if item["direction"] not in ("maximize", "minimize"):
            raise StudyFileError(
                f"{path}: objective {item['metric']} has direction {item['direction']!r}; use maximize or minimize."
            )
        objectives.append(Objective(str(item["metric"]), item["direction"]))
    return objectives


def _count(path: Path, key: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise StudyFileError(f"{path}: {key} must be an integer >= {minimum}, got {value!r}.")
    return value


def _named_options(path: Path, key: str, value: Any, known: dict[str, type]) -> dict[str, Any]:
    """``tpe`` or ``{type: tpe, seed: 0, ...}`` -> ``{"type": "tpe", "seed": 0, ...}``."""
    options = {"type": value} if isinstance(value, str) else dict(value or {})
    if options.get("type") not in known:
        choices = ", ".join(known)
        raise StudyFileError(f"{path}: {key} type {options.get('type')!r} is unknown; choose one of {choices}.")
    return options


def parse_distribution(key: str, spec: Any) -> BaseDistribution:
    """``{type: int|float|categorical, low, high, log, step, choices}`` -> an Optuna distribution."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise StudyFileError(f"space key {key} needs a mapping with a type (int, float or categorical), got {spec!r}.")
    unknown = sorted(set(spec) - DISTRIBUTION_KEYS)
    if unknown:
        known = ", ".join(sorted(DISTRIBUTION_KEYS))
        raise StudyFileError(f"space key {key} has unknown option(s) {', '.join(unknown)}; known: {known}.")
    kind = spec["type"]
    needed = {"categorical": ("choices",), "int": ("low", "high"), "float": ("low", "high")}
    if kind not in needed:
        raise StudyFileError(f"space key {key} has unknown distribution type {kind!r}; use int, float or categorical.")
    missing = [option for option in needed[kind] if spec.get(option) in (None, [])]
    if missing:
        raise StudyFileError(f"space key {key} is {kind} and needs {' and '.join(missing)}.")
    try:
        return _distribution(kind, spec)
    except (TypeError, ValueError) as exc:
        raise StudyFileError(f"space key {key}: {exc}") from exc


def _distribution(kind: str, spec: dict[str, Any]) -> BaseDistribution:
    log = bool(spec.get("log", False))
    if kind == "categorical":
        return CategoricalDistribution([choice_value(c) for c in spec["choices"]])
    if kind == "int":
        return IntDistribution(int(spec["low"]), int(spec["high"]), log=log, step=int(spec.get("step", 1)))
    return FloatDistribution(float(spec["low"]), float(spec["high"]), log=log, step=spec.get("step"))


def choice_value(value: Any) -> None | bool | int | float | str:
    """Optuna stores only primitive choices, so lists and dicts (widths, noise models) are kept as JSON text."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _check_consistency(spec: StudySpec) -> None:
    both = sorted(set(spec.overrides) & set(spec.space))
    if both:
        raise StudyFileError(f"{spec.path}: {', '.join(both)} is both fixed in overrides and searched in space.")
    reserved = sorted(k for k in [*spec.overrides, *spec.space] if k in RESERVED_CONFIG_KEYS)
    if reserved:
        raise StudyFileError(
            f"{spec.path}: the sweep sets {', '.join(reserved)} itself (use runs_dir / wandb at the top of the file)."
        )
    if spec.multi_objective and spec.pruner["type"] != "none":
        raise StudyFileError(f"{spec.path}: multi-objective studies cannot prune; set pruner: none.")
    make_sampler(spec, worker_index=0, n_existing=0)  # unknown sampler options fail now, not in a worker
    make_pruner(spec)
    storage_kind(spec.storage)


# -- samplers, pruners, storage -------------------------------------------------------------------
def make_sampler(spec: StudySpec, worker_index: int, n_existing: int) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded differently per worker and per resume so they never replay each other."""
    options = {k: v for k, v in spec.sampler.items() if k != "type"}
    if options.get("seed") is not None:
        options["seed"] = (int(options["seed"]) * 1_000_003 + worker_index * 10_007 + n_existing) % 2**32
    if spec.sampler["type"] == "grid":
        options["search_space"] = _grid(spec)
    try:
        return SAMPLERS[spec.sampler["type"]](**options)
    except (TypeError, ValueError) as exc:
        raise StudyFileError(f"{spec.path}: sampler {spec.sampler['type']}: {exc}") from exc


def _grid(spec: StudySpec) -> dict[str, list[Any]]:
    """Every value of every dimension: categorical choices, or int/float ranges with a step."""
    grid: dict[str, list[Any]] = {}
    for key, dist in spec.space.items():
        if isinstance(dist, CategoricalDistribution):
            grid[key] = list(dist.choices)
        elif dist.step is not None and not dist.log:
            n = round((dist.high - dist.low) / dist.step) + 1
            grid[key] = [round(dist.low + i * dist.step, 12) for i in range(n)]  # 0.06, not 0.06000000000000001
        else:
            raise StudyFileError(f"{spec.path}: the grid sampler needs choices or a step (without log) for {key}.")
    return grid


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    options = {k: v for k, v in spec.pruner.items() if k != "type"}
    try:
        return PRUNERS[spec.pruner["type"]](**options)
    except (TypeError, ValueError) as exc:
        raise StudyFileError(f"{spec.path}: pruner {spec.pruner['type']}: {exc}") from exc


def storage_kind(url: str) -> Literal["sqlite", "journal", "postgresql"]:
    if url.startswith("journal:"):
        return "journal"
    if url.startswith("sqlite:///"):
        return "sqlite"
    if url.startswith(("postgresql://", "postgresql+")):
        return "postgresql"
    raise StudyFileError(
        f"storage {url!r} is not supported; use sqlite:///FILE, journal:FILE or postgresql://USER@HOST/DB."
    )


def _local_file(url: str) -> Path:
    """The file behind a SQLite URL or a ``journal:`` path."""
    return Path(url.removeprefix("journal:") if url.startswith("journal:") else url.removeprefix("sqlite:///"))


def sql_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 to SQLAlchemy 2.1; use psycopg2 (our dependency) when psycopg is absent."""
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def open_storage(spec: StudySpec) -> optuna.storages.BaseStorage:
    """Journal files get a plain JournalStorage (no heartbeat in Optuna); SQL databases get heartbeats + retry."""
    kind = storage_kind(spec.storage)
    if kind != "postgresql":
        _local_file(spec.storage).parent.mkdir(parents=True, exist_ok=True)
    if kind == "journal":
        return JournalStorage(JournalFileBackend(str(_local_file(spec.storage))))
    try:
        return RDBStorage(
            sql_url(spec.storage),
            heartbeat_interval=spec.heartbeat_interval,
            grace_period=spec.grace_period,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=spec.max_retry),
        )
    except (ImportError, SQLAlchemyError) as exc:
        reason = str(exc.__cause__ or exc).strip().splitlines()[0]
        raise StudyFileError(f"cannot open storage {spec.storage}: {reason}") from exc


def load_study(spec: StudySpec, storage: optuna.storages.BaseStorage, *, create: bool) -> optuna.Study:
    """Create or resume the study, refusing a study file that no longer matches what the storage holds."""
    if create:
        study = optuna.create_study(
            study_name=spec.name,
            storage=storage,
            directions=spec.directions,
            pruner=make_pruner(spec),
            load_if_exists=True,
        )
    else:
        try:
            study = optuna.load_study(study_name=spec.name, storage=storage)
        except KeyError as exc:
            message = f"no study {spec.name} in {spec.storage}; run `sqdr sweep {spec.path}` first."
            raise StudyFileError(message) from exc
    _check_study_matches(spec, study)
    return study


def _check_study_matches(spec: StudySpec, study: optuna.Study) -> None:
    stored = [d.name.lower() for d in study.directions]
    metrics = [o.metric for o in spec.objectives]
    recorded = study.user_attrs.get("objectives")
    if stored != spec.directions or recorded not in (None, metrics):
        raise StudyFileError(
            f"study {spec.name} in {spec.storage} optimises {recorded or stored}, but {spec.path} asks for "
            f"{metrics} {spec.directions}; give the study a new study_name."
        )
    if recorded is None:
        study.set_user_attr("objectives", metrics)
    for trial in study.get_trials(deepcopy=False):
        for key, old in trial.distributions.items():
            if key in spec.space:
                try:
                    check_distribution_compatibility(old, spec.space[key])
                except ValueError as exc:
                    raise StudyFileError(
                        f"space key {key} no longer matches the trials stored in study {spec.name} ({exc}); "
                        "give the study a new study_name."
                    ) from exc


class BudgetLock:
    """A study-wide mutex around "count the trials, then ask for one", so N workers never overshoot ``n_trials``.

    File lock (``fcntl``) beside SQLite and journal files, session advisory lock in PostgreSQL; both vanish with
    a killed process, so a dead worker never blocks the others.
    """

    def __init__(self, spec: StudySpec) -> None:
        self.url = spec.storage
        self.key = zlib.crc32(spec.name.encode())
        self._held: Any = None
        self._engine: Any = None

    def acquire(self) -> None:
        if storage_kind(self.url) == "postgresql":
            import sqlalchemy

            if self._engine is None:
                self._engine = sqlalchemy.create_engine(sql_url(self.url), poolclass=sqlalchemy.pool.NullPool)
            connection = self._engine.connect()
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": self.key})
            self._held = connection
        else:
            handle = open(f"{_local_file(self.url)}.sweep-lock", "a")
            fcntl.flock(handle, fcntl.LOCK_EX)
            self._held = handle

    def release(self) -> None:
        """Idempotent: a trial releases the lock once it has its parameters; the worker loop releases it again."""
        held, self._held = self._held, None
        if held is None:
            return
        if storage_kind(self.url) == "postgresql":
            import sqlalchemy

            held.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
            held.close()
        else:
            fcntl.flock(held, fcntl.LOCK_UN)
            held.close()


# -- one trial ------------------------------------------------------------------------------------
def cli_value(value: Any) -> str:
    """A config value as the fit CLI reads it (strings as they are; everything else as JSON, a YAML subset)."""
    return value if isinstance(value, str) else json.dumps(value)


def config_args(spec: StudySpec, params: dict[str, Any]) -> list[str]:
    """Base configs, then fixed overrides, then the trial's parameters (later arguments win)."""
    args: list[str] = []
    for config in spec.base_configs:
        args += ["--config", config]
    for key, value in [*spec.overrides.items(), *params.items()]:
        args += [f"--{key}", cli_value(value)]
    return args


def trial_args(spec: StudySpec, params: dict[str, Any], number: int) -> list[str]:
    """The complete ``sqdr fit`` arguments of trial ``number``: its run lands in ``runs/<study>/trial_<n>/``."""
    args = config_args(spec, params)
    args += ["--runs_dir", f"{spec.runs_dir}/{spec.name}", "--experiment", f"trial_{number}"]
    if spec.wandb:
        args += ["--logger", "wandb", "--wandb_group", spec.name]
    return args


def validate_trial_args(spec: StudySpec) -> None:
    """Build (not train) one trial from the first value of every dimension, so a key the CLI rejects fails now."""
    from sqdr.cli import make_cli

    params = {key: _first_value(dist) for key, dist in spec.space.items()}
    stderr = io.StringIO()
    with tempfile.TemporaryDirectory() as runs_dir:
        try:
            with contextlib.redirect_stderr(stderr):
                make_cli(config_args(spec, params) + ["--runs_dir", runs_dir], run=False)
        except SystemExit as exc:
            lines = stderr.getvalue().splitlines()
            error = next((i for i, line in enumerate(lines) if line.startswith("error:")), len(lines) - 1)
            message = " ".join(line.strip() for line in lines[error:]).removeprefix("error:").strip()
            raise StudyFileError(f"{spec.path}: the fit CLI rejects the trial arguments: {message}") from exc
        except Exception as exc:  # the model or data module refused the values
            raise StudyFileError(f"{spec.path}: building a trial fails: {exc}") from exc


def _first_value(dist: BaseDistribution) -> Any:
    return dist.choices[0] if isinstance(dist, CategoricalDistribution) else dist.low


def suggest(trial: Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def fit_trial(trial: Trial, spec: StudySpec, args: list[str]) -> dict[str, float]:
    """Train one run (the pruning callback only for single-objective studies) and return its scalar metrics."""
    from sqdr.cli import make_cli

    callbacks = [] if spec.multi_objective else [_pruning_callback(trial, spec.objectives[0].metric)]
    cli = make_cli(args, run=False, callbacks=callbacks)
    trial.set_user_attr("run_dir", cli.trainer.log_dir)
    metrics = {f"params/{k}": float(v) for k, v in cli.model.net.parameter_counts().items()}
    for key, value in metrics.items():
        trial.set_user_attr(key, value)
    try:
        try:
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        except SystemExit as exc:  # Lightning turns Ctrl-C / SIGTERM into sys.exit(1)
            raise KeyboardInterrupt from exc
        metrics.update({k: float(v) for k, v in cli.trainer.callback_metrics.items() if v.numel() == 1})
        if any(o.metric.startswith("test/") for o in spec.objectives):
            results = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)
            metrics.update({k: float(v) for k, v in results[0].items()})
    finally:
        if spec.wandb:
            import wandb

            wandb.finish()
    return metrics


def _pruning_callback(trial: Trial, metric: str):
    from optuna_integration import PyTorchLightningPruningCallback

    return PyTorchLightningPruningCallback(trial, monitor=metric if metric.startswith("val/") else "val/acc")


# -- workers --------------------------------------------------------------------------------------
def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (None if it is gone): with the pid it names one process, reuse-proof."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def this_worker() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid())}


def _worker_is_gone(trial: FrozenTrial, now: datetime) -> bool:
    """Only processes on this machine can be checked; a trial never claimed by a worker is gone after a while."""
    worker = trial.user_attrs.get("worker")
    if worker is None:
        return trial.datetime_start is not None and now - trial.datetime_start > ORPHAN_AGE
    if worker["host"] != socket.gethostname():
        return False
    return worker["start"] != _process_start(worker["pid"]) or worker["pid"] == os.getpid()


def fail_orphaned_trials(study: optuna.Study, spec: StudySpec, storage: optuna.storages.BaseStorage) -> None:
    """Fail RUNNING trials whose worker died, and queue a retry with the same parameters (``max_retry`` times)."""
    if isinstance(storage, RDBStorage):
        optuna.storages.fail_stale_trials(study)
        return
    retry = RetryHeartbeatStaleTrialCallback(max_retry=spec.max_retry)
    study_id = storage.get_study_id_from_name(study.study_name)
    now = datetime.now()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _worker_is_gone(trial, now):
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            if storage.set_trial_state_values(trial_id, TrialState.FAIL):
                print(f"trial {trial.number}: its worker is gone; marked FAIL and queued for retry", flush=True)
                retry(study, storage.get_trial(trial_id))


Step = Literal["run", "wait", "done"]


def next_step(study: optuna.Study, n_trials: int) -> Step:
    """Run while finished + running trials leave room in the budget; wait while others hold the last slots."""
    states = Counter(t.state for t in study.get_trials(deepcopy=False))
    finished = states[TrialState.COMPLETE] + states[TrialState.PRUNED]
    if finished >= n_trials:
        return "done"
    return "run" if finished + states[TrialState.RUNNING] < n_trials else "wait"


def make_objective(spec: StudySpec, lock: BudgetLock) -> Callable[[Trial], list[float]]:
    def objective(trial: Trial) -> list[float]:
        trial.set_user_attr("worker", this_worker())
        params = {key: suggest(trial, key, dist) for key, dist in spec.space.items()}
        lock.release()  # the trial now holds its slot and parameters; other workers may ask
        args = trial_args(spec, params, trial.number)
        trial.set_user_attr("cli_args", args)
        trial.set_user_attr("command", "sqdr fit " + shlex.join(args))
        started = time.monotonic()
        metrics = fit_trial(trial, spec, args)
        for key, value in metrics.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("duration_s", round(time.monotonic() - started, 1))
        missing = [o.metric for o in spec.objectives if o.metric not in metrics]
        if missing:
            raise ValueError(f"objective metric(s) {missing} were not logged; logged: {sorted(metrics)}")
        return [metrics[o.metric] for o in spec.objectives]

    return objective


def run_worker(spec: StudySpec, index: int, threads: int) -> int:
    """One worker: ask, train and tell trials until the study's budget is finished. Returns an exit code."""
    import torch

    torch.set_num_threads(threads)
    storage = open_storage(spec)
    study = load_study(spec, storage, create=True)
    study.sampler = make_sampler(spec, index, n_existing=len(study.get_trials(deepcopy=False)))
    lock = BudgetLock(spec)
    objective = make_objective(spec, lock)
    ran: list[FrozenTrial] = []
    failures = 0
    waiting_said = False
    while True:
        lock.acquire()
        try:
            fail_orphaned_trials(study, spec, storage)
            step = next_step(study, spec.n_trials)
            if step == "run":
                study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[lambda s, t: ran.append(t)])
        finally:
            lock.release()
        if step == "done":
            return 0
        if step == "wait":
            if not waiting_said:
                print(f"worker {index}: the last trials are running elsewhere; waiting for them", flush=True)
                waiting_said = True
            time.sleep(POLL_SECONDS)
            continue
        failures = failures + 1 if ran and ran[-1].state == TrialState.FAIL else 0
        if failures >= MAX_CONSECUTIVE_FAILURES:
            print(f"error: worker {index}: {failures} trials failed in a row; see the errors above.", file=sys.stderr)
            return 1


def _threads_per_worker(workers: int) -> int:
    return max(1, len(os.sched_getaffinity(0)) // workers)


def run_workers(spec: StudySpec, argv: list[str], workers: int) -> int:
    """Worker 0 runs here; workers 1..N-1 are ``python -m sqdr.sweep ... --worker-index i`` processes."""
    threads = _threads_per_worker(workers)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    children = [
        subprocess.Popen([sys.executable, "-m", "sqdr.sweep", *argv, "--worker-index", str(i)], env=env)
        for i in range(1, workers)
    ]
    try:
        code = run_worker(spec, 0, threads)
        return max([code, *(child.wait() for child in children)])
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
                child.wait()


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM ends a worker like Ctrl-C: its trial is told FAIL instead of lingering as RUNNING."""
    raise KeyboardInterrupt


def study_status(spec: StudySpec) -> str:
    study = load_study(spec, open_storage(spec), create=False)
    states = Counter(t.state.name.lower() for t in study.get_trials(deepcopy=False))
    counts = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
    return f"study {spec.name} ({spec.storage}): {counts}"


# -- command line ---------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sqdr sweep",
        description="Run an Optuna study whose trials are `sqdr fit` runs (see sweeps/*.yaml).",
    )
    parser.add_argument("study", help="study file, e.g. sweeps/params_vs_accuracy_digits.yaml")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    parser.add_argument("--n-trials", type=int, help="total finished trials across all workers (overrides the file)")
    parser.add_argument(
        "--storage", help="sqlite:///FILE (one worker), journal:FILE (workers on one machine) or postgresql://..."
    )
    parser.add_argument("--wandb", action="store_true", help="log every trial to W&B (one run per trial)")
    parser.add_argument("--summary", action="store_true", help="print best trials / Pareto front, write table+figure")
    parser.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    return args


def run(spec: StudySpec, args: argparse.Namespace, argv: list[str]) -> int:
    """Check what a trial would be, then run the workers (or, in a spawned process, one worker)."""
    signal.signal(signal.SIGTERM, _interrupt)
    if args.worker_index is not None:
        return run_worker(spec, args.worker_index, _threads_per_worker(args.workers))
    if args.workers > 1 and storage_kind(spec.storage) == "sqlite":
        raise StudyFileError(
            f"SQLite storage is for one worker; for --workers {args.workers} pass "
            f"--storage journal:results/studies/{spec.name}.journal (one machine) or a postgresql:// URL."
        )
    load_study(spec, open_storage(spec), create=True)
    validate_trial_args(spec)
    code = run_workers(spec, argv, args.workers)
    print(study_status(spec), flush=True)
    print(f"best trials, table and figure: sqdr sweep --summary {spec.path}", flush=True)
    return code


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    try:
        spec = load_study_file(args.study, n_trials=args.n_trials, storage=args.storage, wandb=args.wandb)
        if args.summary:
            from sqdr.report import report_study

            report_study(spec)
            return
        code = run(spec, args, argv)
    except StudyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume the study", file=sys.stderr)
        sys.exit(130)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
