"""Workers: processes that share one study through its storage, within an exact budget.

``n_trials`` counts COMPLETE and PRUNED trials across all workers, and a worker only asks for a trial while
holding the study's :class:`~sqdr.sweep.storage.BudgetLock`, so N workers never overshoot. A worker that dies
mid-trial leaves a RUNNING trial that is failed and retried with the same parameters: by Optuna's heartbeats on
SQLite/PostgreSQL, and on journal files (which have no heartbeat in Optuna) by checking that the worker process
recorded with the trial is gone. Either way its run directory is marked failed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, Trial, TrialState

from sqdr.sweep.sampling import make_sampler
from sqdr.sweep.storage import BudgetLock, masked
from sqdr.sweep.study import StudySpec, load_study, mark_run_failed, open_study_storage
from sqdr.sweep.trial import make_objective

#: A RUNNING trial without a recorded worker this old was orphaned between ``ask`` and its first line.
ORPHAN_AGE = timedelta(seconds=60)
#: How often an idle worker looks again while other workers hold the last trials of the budget.
POLL_SECONDS = 2.0
#: A worker stops after this many failed trials in a row (a broken config would otherwise loop forever).
MAX_CONSECUTIVE_FAILURES = 3

Step = Literal["run", "wait", "done"]


class FailAndRetry:
    """What happens to the trial of a dead worker: its run directory is marked failed, then Optuna queues a
    retry with the same parameters (at most ``max_retry`` times). Optuna calls it for stale heartbeats;
    :func:`fail_orphaned_trials` calls it on journal files."""

    def __init__(self, max_retry: int) -> None:
        self.retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if "run_dir" in trial.user_attrs:
            mark_run_failed(trial.user_attrs["run_dir"], f"the worker of trial {trial.number} died mid-trial")
        self.retry(study, trial)


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


def fail_orphaned_trials(study: optuna.Study, storage: optuna.storages.BaseStorage, on_fail: FailAndRetry) -> None:
    """Fail RUNNING trials whose worker died, and hand each to ``on_fail``."""
    if isinstance(storage, RDBStorage):
        optuna.storages.fail_stale_trials(study)  # calls the storage's stale-trial callback, ``on_fail``
        return
    study_id = storage.get_study_id_from_name(study.study_name)
    now = datetime.now()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _worker_is_gone(trial, now):
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            if storage.set_trial_state_values(trial_id, TrialState.FAIL):
                print(f"trial {trial.number}: its worker is gone; marked FAIL and queued for retry", flush=True)
                on_fail(study, storage.get_trial(trial_id))


def next_step(study: optuna.Study, n_trials: int) -> Step:
    """Run while finished + running trials leave room in the budget; wait while others hold the last slots."""
    states = Counter(t.state for t in study.get_trials(deepcopy=False))
    finished = states[TrialState.COMPLETE] + states[TrialState.PRUNED]
    if finished >= n_trials:
        return "done"
    return "run" if finished + states[TrialState.RUNNING] < n_trials else "wait"


def run_worker(spec: StudySpec, index: int) -> int:
    """One worker: ask, train and tell trials until the study's budget is finished. Returns an exit code."""
    on_fail = FailAndRetry(spec.max_retry)
    storage = open_study_storage(spec, stale_trial_callback=on_fail)
    study = load_study(spec, storage, create=True)
    n_existing = len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(spec.sampler_spec, spec.distributions, seed_offset=index * 10_007 + n_existing)
    lock = BudgetLock(spec.storage, spec.name)

    def claim(trial: Trial) -> None:
        trial.set_user_attr("worker", this_worker())
        lock.release()  # the trial now holds its slot and parameters; other workers may ask

    objective = make_objective(spec, on_parameters=claim)
    ran: list[FrozenTrial] = []
    failures = 0
    waiting_said = False
    while True:
        lock.acquire()
        try:
            fail_orphaned_trials(study, storage, on_fail)
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


def run_workers(spec: StudySpec, argv: list[str], workers: int) -> int:
    """Worker 0 runs here; workers 1..N-1 are ``python -m sqdr.sweep ... --worker_index i`` processes.

    Every trial pins itself to ``spec.threads`` intra-op threads; the environment tells the children the same,
    so libraries that read it (OpenMP, MKL) never start more threads than the trial uses.
    """
    threads = str(spec.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "sqdr.sweep", *argv, "--worker_index", str(i), "--parent_pid", str(os.getpid())],
            env=env,
        )
        for i in range(1, workers)
    ]
    try:
        code = run_worker(spec, 0)
        return max([code, *(child.wait() for child in children)])
    finally:
        for child in children:
            if child.poll() is None:
                child.terminate()
                child.wait()


def study_status(spec: StudySpec) -> str:
    study = load_study(spec, open_study_storage(spec), create=False)
    states = Counter(t.state.name.lower() for t in study.get_trials(deepcopy=False))
    counts = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
    return f"study {spec.name} ({masked(spec.storage)}): {counts}"
