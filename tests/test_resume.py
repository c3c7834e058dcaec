"""Long runs survive interruption: SIGKILL, then ``--ckpt_path last``, ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_cli import tiny_run_args

from sqdr.__main__ import main
from sqdr.module import batches_done_within_epoch

EPOCHS = 4


def run_args(runs_dir: Path, *extra: str) -> list[str]:
    """A tiny run whose every epoch draws random numbers: shuffling, flips and rate-coded spikes."""
    return tiny_run_args(
        runs_dir,
        "--trainer.max_epochs", str(EPOCHS),
        "--model.net.init_args.coding", "rate",
        "--data.augment", "true",
        "--data.n_train", "480",
        "--model.certify_engine", "none",
        *extra,
    )  # fmt: skip


def metrics(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(open(run / "metrics.csv")))


def final_epoch_row(run: Path) -> dict[str, str]:
    return [r for r in metrics(run) if r.get("val/acc") and int(r["epoch"]) == EPOCHS - 1][-1]


def saved_mid_epoch_after_the_first(path: Path) -> bool:
    """``last.ckpt`` exists and was taken within an epoch after the first (not at an epoch's end)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # absent, or being written
        return False
    return checkpoint["epoch"] >= 1 and batches_done_within_epoch(checkpoint) > 0


def test_sigkill_mid_epoch_then_resume_equals_the_uninterrupted_run(tmp_path):
    """Killed right after a checkpoint taken within an epoch: the resumed run leaves out the batches that epoch
    had done and ends exactly where the uninterrupted run ends."""
    main(["fit", *run_args(tmp_path / "whole")])
    uninterrupted = final_epoch_row(tmp_path / "whole" / "tiny" / "version_0")

    killed = tmp_path / "killed"
    last = killed / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    command = [sys.executable, "-m", "sqdr", "fit", *run_args(killed, "--checkpoint_every_n_steps", "5")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not saved_mid_epoch_after_the_first(last) and process.poll() is None:
        assert time.monotonic() < deadline, "the run never saved a checkpoint within its second epoch"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)  # within the second epoch or later: no goodbye, no final save
    process.wait()
    assert process.returncode == -signal.SIGKILL

    assert batches_done_within_epoch(torch.load(last, map_location="cpu", weights_only=True)) > 0
    main(["fit", *run_args(killed, "--checkpoint_every_n_steps", "5", "--ckpt_path", "last")])
    run = killed / "tiny" / "version_0"
    resumed = final_epoch_row(run)
    for key in ("val/acc", "val/loss", "val/acc_best", "train/loss", "train/acc"):
        assert resumed[key] == uninterrupted[key], key
    rows = [(r["epoch"], r["step"], tuple(k for k, v in r.items() if v)) for r in metrics(run)]
    assert len(rows) == len(set(rows)), "metrics.csv has duplicated rows"
    epochs = sorted({int(r["epoch"]) for r in metrics(run) if r.get("train/loss")})
    assert epochs == list(range(EPOCHS))
    # Every row, the interrupted epoch's training averages and gradient norms included, is the uninterrupted
    # run's (throughput aside, which measures the machine).
    assert history(run) == history(tmp_path / "whole" / "tiny" / "version_0")
    assert not (run / "metrics.csv.resumed").exists()


def history(run: Path) -> list[dict[str, str]]:
    rows = [{k: v for k, v in r.items() if v and k != "train/images_per_s"} for r in metrics(run)]
    return sorted((row for row in rows if len(row) > 2), key=lambda row: (int(row["step"]), sorted(row)))


def test_an_explicit_option_that_contradicts_the_checkpoint_is_an_error(tmp_path, capsys):
    main(["fit", *tiny_run_args(tmp_path, "--trainer.max_epochs", "1", "--model.certify_engine", "none")])
    checkpoint = tmp_path / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    with pytest.raises(SystemExit) as exit_info:
        main(["test", *tiny_run_args(tmp_path, "--model.net.init_args.n_qubits", "4", "--ckpt_path", str(checkpoint))])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--model.net.init_args.n_qubits is 4" in err and "n_qubits=3" in err and "Traceback" not in err


def test_predict_writes_the_test_split_as_csv(tmp_path, capsys):
    main(["fit", *tiny_run_args(tmp_path, "--trainer.max_epochs", "1", "--model.certify_engine", "none")])
    checkpoint = tmp_path / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    main(["predict", *tiny_run_args(tmp_path, "--ckpt_path", str(checkpoint))])
    out = capsys.readouterr().out
    path = Path(out.split("predictions written to ")[1].split()[0])
    rows = list(csv.DictReader(open(path)))
    assert len(rows) == 32  # the synthetic test split
    assert set(rows[0]) == {"index", "label", "prediction", *(f"p_{k}" for k in range(4))}
    assert abs(sum(float(rows[0][f"p_{k}"]) for k in range(4)) - 1) < 1e-5
