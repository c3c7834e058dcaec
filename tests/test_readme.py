"""README's "First steps", replayed as a new user runs them after ``make train`` (shrunk to seconds)."""

from __future__ import annotations

import csv
import shlex
import shutil
from pathlib import Path

import pytest

from sqdr.__main__ import main

REPO = Path(__file__).resolve().parents[1]

#: Appended to each command so the whole sequence takes a minute instead of many.
SHRINK = {
    "fit": ["--trainer.max_epochs", "2", "--trainer.limit_train_batches", "4", "--model.certify_samples", "8"],
    "test": ["--model.certify_samples", "8"],
    "noise": ["--test_size", "64", "--levels", "[0, 0.1]"],
    "sweep": ["--n_trials", "1"],
}


def first_steps() -> list[list[str]]:
    """The ``sqdr ...`` lines of README's "First steps" block, comments dropped."""
    text = (REPO / "README.md").read_text()
    block = text.split("### First steps", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("sqdr ")]


@pytest.fixture
def checkout(tmp_path, monkeypatch) -> Path:
    """A working directory with the repository's configs and study files, as after a fresh clone."""
    for folder in ("conf", "sweeps"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_readme_first_steps_run_in_order_after_make_train(checkout, capsys):
    commands = first_steps()
    assert [c[0] for c in commands] == ["test", "fit", "noise", "report", "sweep", "report"]
    main(["fit", "--config", "conf/experiments/quickstart.yaml", "--trainer.max_epochs", "1", *SHRINK["fit"][2:]])
    for command in commands:
        main([*command, *SHRINK.get(command[0], [])])
    run = checkout / "runs/quickstart/version_0"
    trained = {int(r["epoch"]) for r in csv.DictReader(open(run / "metrics.csv")) if r.get("train/loss")}
    assert trained == {0, 1}  # epoch 1 came from the resumed run, in its own directory
    assert (run / "noise" / "noise.csv").is_file()
    assert "Pareto front" in capsys.readouterr().out
