"""A resumed run's ``metrics.csv`` survives a kill at any moment of the resume: it is never only in memory."""

from __future__ import annotations

import csv
from pathlib import Path

from sqdr.loggers import RunCSVLogger

ROWS = [{"epoch": "0", "step": str(step), "train/loss": str(1 / (step + 1))} for step in range(6)]


def write_history(run: Path) -> None:
    run.mkdir(parents=True)
    with (run / "metrics.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(ROWS[0]))
        writer.writeheader()
        writer.writerows(ROWS)


def rows(path: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if v} for row in csv.DictReader(path.open(newline=""))]


def resume(root: Path, step: int) -> RunCSVLogger:
    return RunCSVLogger(save_dir=str(root), name="tiny", version=0, resume_step=step)


def test_resume_killed_after_moving_the_history_aside_keeps_it_for_the_next_resume(tmp_path):
    run = tmp_path / "tiny" / "version_0"
    write_history(run)
    resume(tmp_path, 4)._keep_history()  # the attempt dies here: before the writer has written anything
    assert not (run / "metrics.csv").exists() and (run / "metrics.csv.resumed").is_file()

    resume(tmp_path, 4).experiment  # the next attempt starts its writer
    assert rows(run / "metrics.csv") == ROWS[:4]
    assert not (run / "metrics.csv.resumed").exists()


def test_resume_keeps_the_newer_file_when_both_are_left(tmp_path):
    """Killed after the new file was written but before the kept one was removed: the new file is complete."""
    run = tmp_path / "tiny" / "version_0"
    write_history(run)
    (run / "metrics.csv.resumed").write_text("epoch,step,train/loss\n0,0,9.0\n")
    resume(tmp_path, 5).experiment
    assert rows(run / "metrics.csv") == ROWS[:5]
