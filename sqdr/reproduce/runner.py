"""Training the runs of a plan, resumably: a run is finished exactly when its ``result.json`` exists.

``result.json`` is written last and atomically (:mod:`sqdr.files`), after the run's test, so its presence is the
whole truth: a run that has one is collected and never trained again; a run directory without one belongs to a
run that was killed or failed, and is deleted and trained again from the start. A ``result.json`` of other
``sqdr fit`` arguments (the experiment set changed since), or whose encoder came from a run trained again since,
is out of date and treated the same way. No lock or database is involved,
so a reproduction survives anything that kills the process, and a reader can inspect every run with the usual
tools (``sqdr report runs/reproduce/<budget>``, ``sqdr test --config <run>/config.yaml``).

A data set that is absent and cannot be downloaded makes its runs ``skipped`` with the reason; a run that fails
(for instance diverges) is ``failed`` with the reason. Neither is recorded on disk, so both are tried again by the
next reproduction (once the files are there, or the cause is fixed).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import os
import shlex
import shutil
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from sqdr.data import DatasetNotFoundError
from sqdr.errors import UserError
from sqdr.files import write_text
from sqdr.lifetime import exit_with_parent
from sqdr.models.sqdr_cnn import SQDRCNN
from sqdr.reproduce.plan import Plan, Run

RESULT = "result.json"
PARTS = SQDRCNN.PARTS

Record = dict[str, Any]


def read_result(run: Run, args: list[str]) -> Record | None:
    """The record of ``run`` if it finished with exactly these ``sqdr fit`` arguments and config files.

    A ``result.json`` that cannot be read (cut short, say) makes the run unfinished, so it is trained again
    instead of stopping the whole reproduction.
    """
    path = run.directory / RESULT
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):  # ValueError: not JSON, or not text
        record = None
    if not isinstance(record, dict):
        print(f"{path} is damaged (not a complete result record); training {run.name} again", flush=True)
        return None
    if record.get("args") != args:
        return None
    return record if record.get("configs") == config_digests(args) else None


def config_files(args: list[str]) -> list[str]:
    """The ``--config`` files in ``args`` that exist."""
    return [value for flag, value in itertools.pairwise(args) if flag == "--config" and Path(value).is_file()]


def config_digests(args: list[str]) -> dict[str, str]:
    """SHA-256 of the settings in every ``--config`` file in ``args``: a config whose values are edited in place
    makes its runs out of date too; an edited comment does not."""
    return {name: settings_digest(Path(name)) for name in config_files(args)}


def settings_digest(path: Path) -> str:
    settings = yaml.safe_load(path.read_text())
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def model_size(net: Any) -> dict[str, int]:
    """Parameters per part, frozen ones included: a frozen pretrained encoder is still part of the model's size."""
    return net.parameter_counts(frozen=True)


def mean_throughput(run_dir: Path) -> float | None:
    """The mean of the ``train/images_per_s`` values the run logged (training steps only, validation excluded)."""
    csv = run_dir / "metrics.csv"
    metrics = pd.read_csv(csv) if csv.is_file() else pd.DataFrame()
    values = metrics["train/images_per_s"].dropna() if "train/images_per_s" in metrics else pd.Series(dtype=float)
    return float(values.mean()) if len(values) else None


def train(run: Run, args: list[str], threads: int) -> Record:
    """Fit, test the best checkpoint, write ``result.json``; :class:`DatasetNotFoundError` before any training."""
    import torch

    from sqdr.cli import make_cli

    torch.set_num_threads(threads)
    configs = config_digests(args)  # the files as this run reads them, not as they may be after hours of training
    cli = make_cli(args, run=False)
    cli.datamodule.prepare_data()
    started = time.monotonic()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    fit_seconds = time.monotonic() - started
    val_acc_best = float(cli.trainer.callback_metrics["val/acc_best"])  # testing replaces the callback metrics
    tested = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best", verbose=False)[0]
    run_dir = Path(cli.trainer.log_dir)
    record = {
        **identity(run),
        "status": "done",
        "test_acc": float(tested["test/acc"]),
        "certified_acc": tested.get("test/acc_lightning"),
        "val_acc_best": val_acc_best,
        "params": model_size(cli.model.net),
        "images_per_s": mean_throughput(run_dir),
        "fit_seconds": round(fit_seconds, 1),
        "run_dir": str(run_dir),
        "args": args,
        "configs": configs,
        "command": f"OMP_NUM_THREADS={threads} sqdr fit {shlex.join(args)}",
    }
    write_text(run.directory / RESULT, json.dumps(record, indent=2) + "\n")
    return record


def identity(run: Run) -> Record:
    return {"dataset": run.dataset.name, "variant": run.variant.name, "group": run.variant.group, "seed": run.seed}


def execute(
    plan: Plan,
    threads: int,
    say: Callable[[str], None] = print,
    fit: Callable[[Run, list[str], int], Record] = train,
    workers: int = 1,
) -> list[Record]:
    """Every run of ``plan``: collected if finished, else trained, ``workers`` at a time in as many processes.

    A run starts once the run its encoder comes from has ended (so SQNN waits for its ``classical_layer``); one
    progress line per run as it ends; the records come back in the plan's order.
    """
    records: dict[str, Record] = {}
    missing_data: dict[str, str] = {}
    attempted: set[str] = set()
    waiting = list(plan.runs)
    running: dict[Future, Run] = {}

    def end(run: Run, record: Record, collected: bool = False, trained: bool = False) -> None:
        records[run.name] = record
        if trained and record["status"] == "skipped":  # its data set is absent: skip its other runs without looking
            missing_data[run.dataset.name] = record["reason"]
        say(f"[{len(records)}/{len(plan.runs)}] {run.name}: {describe(record, collected)}")

    pool = worker_pool(workers) if workers > 1 else None
    try:
        while waiting or running:
            ready = [run for run in waiting if _dependency_ended(plan, run, records)]
            ended_before = len(records)
            for run in ready:
                waiting.remove(run)
                dependency = plan.dependency(run)
                args = run.fit_args(dependency.directory if dependency else None)
                fresh_encoder = dependency is not None and dependency.name in attempted
                record = None if fresh_encoder else read_result(run, args)
                if record is not None:
                    end(run, record, collected=True)
                    continue
                attempted.add(run.name)
                skip = _skip(run, records[dependency.name] if dependency else None, missing_data)
                if skip is not None:
                    end(run, skip)
                elif pool is None:
                    end(run, _attempt(run, args, threads, fit), trained=True)
                else:
                    running[pool.submit(_attempt, run, args, threads, fit)] = run
            if len(records) > ended_before and waiting:
                continue  # runs that ended here (collected, skipped) may let others start without waiting
            if running:
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    end(running.pop(future), future.result(), trained=True)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return [records[run.name] for run in plan.runs]


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """Processes that train runs: spawned, not forked, so each starts clean instead of inheriting the parent's torch
    threads and imports; and each ends with the parent, so a killed `sqdr reproduce` leaves no run training."""
    return ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=exit_with_parent,
        initargs=(os.getpid(),),
    )


def _dependency_ended(plan: Plan, run: Run, records: dict[str, Record]) -> bool:
    dependency = plan.dependency(run)
    return dependency is None or dependency.name in records


def _skip(run: Run, source: Record | None, missing_data: dict[str, str]) -> Record | None:
    """The record of a run that cannot start: its data set is known to be absent, or the run its encoder comes
    from (``source``) did not finish."""
    if run.dataset.name in missing_data:
        return {**identity(run), "status": "skipped", "reason": missing_data[run.dataset.name]}
    if source is not None and source["status"] != "done":
        name = f"{source['dataset']}/{source['variant']}/seed_{source['seed']}"
        return {**identity(run), "status": "skipped", "reason": f"needs {name}, which did not finish"}
    return None


def _attempt(run: Run, args: list[str], threads: int, fit: Callable) -> Record:
    """Train ``run`` from a clean directory; a missing data set (``skipped``) or a failure becomes the record, with
    the reason."""
    if (run.directory / RESULT).is_file():  # a finished run, out of date: kept beside the new one
        run.directory.rename(unused_path(run.directory.with_name(f"{run.directory.name}.out_of_date")))
    elif run.directory.exists():
        shutil.rmtree(run.directory)  # left by a killed or failed attempt: start over
    try:
        return fit(run, args, threads)
    except DatasetNotFoundError as error:
        shutil.rmtree(run.directory, ignore_errors=True)
        return {**identity(run), "status": "skipped", "reason": str(error)}
    except (UserError, ValueError, RuntimeError) as error:
        write_text(run.directory / "FAILED", "".join(traceback.format_exception(error)))
        return {**identity(run), "status": "failed", "reason": f"{type(error).__name__}: {error}"}


def unused_path(path: Path) -> Path:
    """``path``, or ``path.1``, ``path.2``, ... whichever does not exist yet."""
    candidate, number = path, 0
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}.{number}")
    return candidate


def headline(reason: str) -> str:
    """What went wrong, without how to fix it (``A is missing from X: copy ...`` -> ``A is missing from X``), for
    progress lines and tables; the runs CSV keeps the whole reason."""
    return reason.splitlines()[0].split(": ")[0]


def describe(record: Record, collected: bool) -> str:
    """The progress line of one run."""
    if record["status"] != "done":
        return f"{record['status']}: {headline(record['reason'])}"
    speed = f", {record['images_per_s']:.0f} images/s" if record.get("images_per_s") else ""
    how = "collected" if collected else f"trained in {record['fit_seconds']:.0f} s"
    return f"test accuracy {record['test_acc']:.2%} ({record['params']['total']} parameters{speed}; {how})"
