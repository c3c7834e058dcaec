"""The ``sqdr sweep`` command line: check the whole study, then run its workers."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

from jsonargparse import ArgumentParser
from jsonargparse.typing import PositiveInt

from sqdr.errors import UserError
from sqdr.lifetime import exit_with_parent
from sqdr.sweep.storage import storage_kind
from sqdr.sweep.study import StudySpec, load_study, load_study_file, open_study_storage, study_keys
from sqdr.sweep.trial import validate_trial_args
from sqdr.sweep.workers import run_worker, run_workers, study_status


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="sqdr sweep",
        description=(
            "Run an Optuna study whose trials are `sqdr fit` runs, as a study file describes it (see sweeps/*.yaml). "
            "Interrupted studies resume where they stopped: run the same command again. "
            "Tables and figures of a study: `sqdr report STUDY.yaml`."
        ),
        epilog=f"A study file's keys: {', '.join(study_keys())} (see sweeps/*.yaml and the README).",
    )
    parser.add_argument("study", type=str, help="Study file, e.g. sweeps/params_vs_accuracy_digits.yaml.")
    parser.add_argument(
        "--workers",
        type=PositiveInt,
        default=1,
        help="Worker processes on this machine sharing the study; each trial uses the study's `threads`.",
    )
    parser.add_argument(
        "--n_trials",
        type=PositiveInt | None,
        default=None,
        help="Finished trials across all workers and machines (overrides the file's n_trials).",
    )
    parser.add_argument(
        "--storage",
        type=str | None,
        default=None,
        help=(
            "Where the study lives, overriding the file: sqlite:///FILE (one worker), journal:FILE (workers on "
            "one machine) or postgresql://USER:PASSWORD@HOST/DB (workers on several machines)."
        ),
    )
    parser.add_argument("--wandb", action="store_true", help="Log every trial to W&B, one run per trial.")
    parser.add_argument("--worker_index", type=int | None, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--parent_pid", type=int | None, default=None, help=argparse.SUPPRESS)
    return parser


def run(spec: StudySpec, argv: list[str], workers: int, worker_index: int | None, parent_pid: int | None = None) -> int:
    """Check everything a trial needs before the storage holds anything, then run the workers (or, in a worker
    process started by another, that one worker)."""
    signal.signal(signal.SIGTERM, _interrupt)
    if worker_index is not None:
        if parent_pid is not None:
            exit_with_parent(parent_pid)  # a worker started by `sqdr sweep --workers N` ends with it
        return run_worker(spec, worker_index)
    if workers > 1 and storage_kind(spec.storage) == "sqlite":
        raise UserError(
            f"SQLite storage is for one worker; for --workers {workers} pass "
            f"--storage journal:results/studies/{spec.name}.journal (one machine) or a postgresql:// URL."
        )
    validate_trial_args(spec)
    load_study(spec, open_study_storage(spec), create=True)
    code = run_workers(spec, argv, workers)
    print(study_status(spec), flush=True)
    print(f"tables and figures: sqdr report {spec.path}", flush=True)
    return code


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM ends a worker like Ctrl-C: its trial is told FAIL instead of lingering as RUNNING."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    spec = load_study_file(args.study, n_trials=args.n_trials, storage=args.storage, wandb=args.wandb)
    try:
        code = run(spec, argv, args.workers, args.worker_index, args.parent_pid)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume the study", file=sys.stderr)
        sys.exit(130)
    if code:
        sys.exit(code)
