"""Damage stays local: one unreadable run file costs that run, not the reproduction or the report around it."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from test_report import write_run
from test_reproduce import CountingFit, experiment_set

from sqdr.__main__ import main as sqdr_main
from sqdr.reproduce import runner
from sqdr.reproduce.plan import load_plan

pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter is intended")


def test_a_cut_short_result_json_is_trained_again_not_the_end_of_the_reproduction(tmp_path, capsys):
    path = experiment_set(tmp_path, {"synthetic": {"variants": ["cnn", "classical_layer"]}}, seeds=[0])
    plan = load_plan(path, "quick", tmp_path / "runs")
    first = runner.execute(plan, threads=1, say=lambda line: None, fit=CountingFit())
    assert [r["status"] for r in first] == ["done", "done"]
    damaged = plan.runs[0].directory / runner.RESULT
    cut = damaged.read_bytes()[:40]  # the disk filled up, or the file was copied half-way
    damaged.write_bytes(cut)
    capsys.readouterr()

    again, lines = CountingFit(), []
    records = runner.execute(plan, threads=1, say=lines.append, fit=again)

    assert again.trained == ["synthetic/cnn/seed_0"]  # the damaged run only; the other is collected
    assert [r["status"] for r in records] == ["done", "done"]
    assert "trained in" in lines[0] and "collected" in lines[1]
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if "damaged" in line] == [
        f"{damaged} is damaged (not a complete result record); training synthetic/cnn/seed_0 again"
    ]
    assert json.loads(damaged.read_text())["status"] == "done"
    kept = damaged.parent.with_name(f"{damaged.parent.name}.out_of_date") / runner.RESULT
    assert kept.read_bytes() == cut  # the damaged file stays beside the new run, for a look


def test_a_run_with_an_empty_or_unreadable_metrics_csv_is_skipped_and_the_others_reported(tmp_path, capsys):
    runs = tmp_path / "runs"
    write_run(runs / "quick/version_0", lr=0.01, epochs=3)
    write_run(runs / "quick/version_1", lr=0.02, epochs=3)
    (runs / "quick/version_1/metrics.csv").write_bytes(b"")  # killed between creating the file and writing it
    write_run(runs / "quick/version_2", lr=0.03, epochs=3)
    with open(runs / "quick/version_2/metrics.csv", "a") as file:
        file.write("1,20,0.5,0.5,0.5,0.5,0.5,0.5,0.5\n")  # a row with more cells than the header
    write_run(runs / "quick/version_3", lr=0.05, epochs=3)
    capsys.readouterr()

    sqdr_main(["report", str(runs)])

    out = capsys.readouterr().out
    assert "skipped quick/version_1, which is damaged: metrics.csv cannot be read" in out
    assert "skipped quick/version_2, which is damaged: metrics.csv cannot be read" in out
    table = pd.read_csv(runs / "report/tables/runs.csv").set_index("run")
    assert table.status.to_dict() == {"quick/version_0": "finished", "quick/version_3": "finished"}
    assert table.loc["quick/version_3", "val/acc_best"] == pytest.approx(0.6)
    assert (runs / "report/figures/runs_curves.png").is_file()


def test_a_folder_of_damaged_runs_only_is_one_clear_error(tmp_path, capsys):
    write_run(tmp_path / "runs/quick/version_0", lr=0.01, epochs=1)
    (tmp_path / "runs/quick/version_0/config.yaml").write_text("trainer: [max_epochs: 3\n")  # cut short
    with pytest.raises(SystemExit) as exit_info:
        sqdr_main(["report", str(tmp_path / "runs")])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert "skipped quick/version_0, which is damaged: config.yaml cannot be read" in captured.out
    assert f"every run under {tmp_path / 'runs'} is damaged" in captured.err
    assert not (tmp_path / "runs/report/tables").exists()
