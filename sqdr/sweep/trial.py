"""One trial: one ``sqdr fit`` run with the trial's parameters, whose metrics are the trial's values.

A trial's result depends only on its arguments: the study's ``seed_everything`` (in its config) fixes weights and
data order, and :attr:`StudySpec.threads` fixes the intra-op thread count, which decides how PyTorch splits a
floating-point sum and hence its rounding (a spiking network's thresholds turn those last bits into different
spikes). So a trial scores the same on any worker, under any load, and when re-run alone with its stored
``command`` (which sets ``OMP_NUM_THREADS`` for that reason).
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from optuna.exceptions import TrialPruned
from optuna.trial import Trial

from sqdr.errors import UserError
from sqdr.sweep.sampling import first_value, suggest
from sqdr.sweep.study import StudySpec, mark_run_failed

if TYPE_CHECKING:  # torch and Lightning load only when a trial trains: a new worker claims its trial first
    from lightning.pytorch.callbacks import Callback


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
    args += ["--runs_dir", str(spec.trials_dir), "--experiment", f"trial_{number}"]
    if spec.wandb:
        args += ["--logger", "wandb", "--wandb_group", spec.name]
    return args


def rerun_command(spec: StudySpec, args: list[str]) -> str:
    """The shell command that re-runs a trial alone, with the trial's thread count, to the same metrics."""
    return f"OMP_NUM_THREADS={spec.threads} sqdr fit {shlex.join(args)}"


def validate_trial_args(spec: StudySpec) -> None:
    """Build (not train) one trial from the first value of every dimension, so a key the CLI rejects fails now."""
    from sqdr.cli import make_cli

    params = {key: first_value(dist) for key, dist in spec.distributions.items()}
    stderr = io.StringIO()
    with tempfile.TemporaryDirectory() as runs_dir:
        try:
            with contextlib.redirect_stderr(stderr):
                make_cli(config_args(spec, params) + ["--runs_dir", runs_dir], run=False)
        except SystemExit:
            lines = stderr.getvalue().splitlines()
            error = next((i for i, line in enumerate(lines) if line.startswith("error:")), len(lines) - 1)
            message = " ".join(line.strip() for line in lines[error:]).removeprefix("error:").strip()
            raise UserError(f"{spec.path}: the fit CLI rejects the trial arguments: {message}") from None
        except Exception as exc:  # the model or data module refused the values
            raise UserError(f"{spec.path}: building a trial fails: {exc}") from None


def fit_trial(trial: Trial, spec: StudySpec, args: list[str]) -> dict[str, float]:
    """Train one run (the pruning callback only for single-objective studies) and return its scalar metrics.

    Whatever ends the run early, except pruning, leaves the :data:`~sqdr.sweep.study.FAILED_MARKER` in its
    run directory before the error goes on to Optuna, which records the trial as failed.
    """
    import torch

    from sqdr.cli import make_cli

    torch.set_num_threads(spec.threads)
    callbacks = [] if spec.multi_objective else [_pruning_callback(trial, spec.objectives[0].metric)]
    cli = make_cli(args, run=False, callbacks=callbacks)
    run_dir = cli.trainer.log_dir
    trial.set_user_attr("run_dir", run_dir)
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
    except TrialPruned:
        raise
    except BaseException as error:
        mark_run_failed(run_dir, "".join(traceback.format_exception(error)))
        raise
    finally:
        if spec.wandb:
            import wandb

            wandb.finish()
    return metrics


def _pruning_callback(trial: Trial, metric: str) -> Callback:
    from optuna_integration import PyTorchLightningPruningCallback

    return PyTorchLightningPruningCallback(trial, monitor=metric if metric.startswith("val/") else "val/acc")


def make_objective(spec: StudySpec, on_parameters: Callable[[Trial], None]) -> Callable[[Trial], list[float]]:
    """Optuna's objective: suggest, call ``on_parameters`` (the worker claims the trial and lets others ask),
    train, score."""

    def objective(trial: Trial) -> list[float]:
        params = {key: suggest(trial, key, dist) for key, dist in spec.distributions.items()}
        on_parameters(trial)
        args = trial_args(spec, params, trial.number)
        trial.set_user_attr("cli_args", args)
        trial.set_user_attr("threads", spec.threads)
        trial.set_user_attr("command", rerun_command(spec, args))
        started = time.monotonic()
        metrics = fit_trial(trial, spec, args)
        for key, value in metrics.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("duration_s", round(time.monotonic() - started, 1))
        missing = [o.metric for o in spec.objectives if o.metric not in metrics]
        if missing:
            mark_run_failed(trial.user_attrs["run_dir"], f"objective metric(s) {missing} were not logged")
            raise ValueError(f"objective metric(s) {missing} were not logged; logged: {sorted(metrics)}")
        return [metrics[o.metric] for o in spec.objectives]

    return objective
