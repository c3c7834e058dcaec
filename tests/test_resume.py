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


def checkpoint_epoch(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # being written
        return -1


def test_sigkill_mid_epoch_then_resume_equals_the_uninterrupted_run(tmp_path):
    main(["fit", *run_args(tmp_path / "whole")])
    uninterrupted = final_epoch_row(tmp_path / "whole" / "tiny" / "version_0")

    killed = tmp_path / "killed"
    last = killed / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    command = [sys.executable, "-m", "sqdr", "fit", *run_args(killed)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (last.is_file() and checkpoint_epoch(last) >= 1) and process.poll() is None:
        assert time.monotonic() < deadline, "the run never reached its second checkpoint"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)  # somewhere in the third epoch: no goodbye, no final save
    process.wait()
    assert process.returncode == -signal.SIGKILL

    main(["fit", *run_args(killed, "--ckpt_path", "last")])
    run = killed / "tiny" / "version_0"
    resumed = final_epoch_row(run)
    for key in ("val/acc", "val/loss", "val/acc_best", "train/loss", "train/acc"):
        assert resumed[key] == uninterrupted[key], key
    rows = [(r["epoch"], r["step"], tuple(k for k, v in r.items() if v)) for r in metrics(run)]
    assert len(rows) == len(set(rows)), "metrics.csv has duplicated rows"
    epochs = sorted({int(r["epoch"]) for r in metrics(run) if r.get("train/loss")})
    assert epochs == list(range(EPOCHS))


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
