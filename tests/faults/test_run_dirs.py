"""Run directories are claimed, not guessed: runs started at the same moment never share a ``version_N``."""

from __future__ import annotations

import csv
import multiprocessing
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sqdr.loggers import RunCSVLogger
from sqdr.runs import claim_run_dir

REPO = Path(__file__).resolve().parents[2]
SQDR = str(Path(sys.executable).with_name("sqdr"))
PROCESSES = 6


def _claim_after(barrier, save_dir: str, results) -> None:
    """One process's run start: wait for the others, then take a run directory the way ``sqdr fit`` does."""
    logger = RunCSVLogger(save_dir=save_dir, name="same")
    barrier.wait()
    log_dir = Path(logger.log_dir)
    (log_dir / f"owner-{os.getpid()}").write_text("")
    results.put(str(log_dir))


def test_processes_claiming_at_the_same_moment_get_distinct_run_directories(tmp_path):
    context = multiprocessing.get_context("fork")  # this process has imported Lightning already: starts at once
    barrier, results = context.Barrier(PROCESSES), context.Queue()
    processes = [context.Process(target=_claim_after, args=(barrier, str(tmp_path), results)) for _ in range(PROCESSES)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=30)
    assert [process.exitcode for process in processes] == [0] * PROCESSES
    claimed = [results.get(timeout=5) for _ in range(PROCESSES)]
    assert len(set(claimed)) == PROCESSES
    assert sorted(Path(path).name for path in claimed) == [f"version_{n}" for n in range(PROCESSES)]
    for path in claimed:
        assert len(list(Path(path).glob("owner-*"))) == 1  # no directory was handed to two processes


def test_a_claim_skips_numbers_taken_by_folders_or_files(tmp_path):
    (tmp_path / "version_0").mkdir()
    (tmp_path / "version_2").mkdir()
    (tmp_path / "version_3").write_text("not a run, but the name is taken")
    assert claim_run_dir(tmp_path) == tmp_path / "version_4"
    assert claim_run_dir(tmp_path) == tmp_path / "version_5"
    assert not (tmp_path / "version_1").exists()  # never goes back below the newest run


def test_a_given_version_is_reused_and_nothing_else_is_claimed(tmp_path):
    (tmp_path / "exp" / "version_0").mkdir(parents=True)
    resumed = RunCSVLogger(save_dir=str(tmp_path), name="exp", version=0)  # what `--ckpt_path last` passes
    assert Path(resumed.log_dir) == tmp_path / "exp" / "version_0"
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["version_0"]


def test_a_run_failing_before_it_wrote_anything_leaves_no_empty_directory(tmp_path):
    failed = RunCSVLogger(save_dir=str(tmp_path), name="exp")
    assert Path(failed.log_dir).is_dir()
    failed.finalize("failed")
    assert not Path(failed.log_dir).exists()
    wrote = RunCSVLogger(save_dir=str(tmp_path), name="exp")
    (Path(wrote.log_dir) / "config.yaml").write_text("seed_everything: 1\n")
    wrote.finalize("failed")
    assert (Path(wrote.log_dir) / "config.yaml").is_file()  # what a failed run wrote stays


def tiny_fit(runs_dir: Path, *extra: str) -> list[str]:
    """``sqdr fit`` of the quickstart on the embedded digits data, cut down to one batch each way."""
    return [
        SQDR, "fit", "--config", str(REPO / "conf/experiments/quickstart.yaml"),
        "--runs_dir", str(runs_dir), "--experiment", "together",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
        "--trainer.log_every_n_steps", "1", "--trainer.enable_model_summary", "false",
        "--model.certify_engine", "none", "--test_after_fit", "false", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_real_fits_started_together_each_write_their_own_run(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    processes = [
        subprocess.Popen(tiny_fit(tmp_path), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
        for _ in range(PROCESSES)
    ]  # fmt: skip
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert [process.returncode for process in processes] == [0] * PROCESSES, outputs
    written = [re.search(r"run written to (\S+)", output).group(1) for output in outputs]
    assert len(set(written)) == PROCESSES
    for run in map(Path, written):
        rows = list(csv.DictReader(open(run / "metrics.csv")))
        assert len([row for row in rows if row.get("train/loss")]) == 1  # one run's epoch, not several interleaved
    resumed = subprocess.run(
        tiny_fit(tmp_path, "--trainer.max_epochs", "2", "--ckpt_path", "last"),
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    newest = max(written, key=lambda path: int(path.rsplit("_", 1)[1]))
    assert f"run written to {newest}" in resumed.stdout  # continued in its own directory, claimed none
    assert len(list((tmp_path / "together").iterdir())) == PROCESSES
