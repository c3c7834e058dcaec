"""``sqdr report``: fit runs side by side (finished, unfinished and failed ones told apart), a study's tables and
figures, and where they are written. Studies and runs are made directly (no training), so this file is fast."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.distributions import FloatDistribution, IntDistribution

from sqdr.__main__ import main as sqdr_main
from sqdr.report.command import build_parser
from sqdr.sweep.study import FAILED_MARKER, load_study_file, open_study_storage

REPO = Path(__file__).resolve().parents[1]


def report(*argv: str) -> None:
    sqdr_main(["report", *argv])


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def write_run(folder: Path, lr: float, epochs: int, max_epochs: int = 3, failed: bool = False) -> Path:
    """A run directory as ``sqdr fit`` leaves it: config.yaml and the CSV logger's metrics.csv."""
    folder.mkdir(parents=True)
    config = {"seed_everything": 1, "trainer": {"max_epochs": max_epochs}, "model": {"lr": lr, "optimizer": "adam"}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    rows = [{"epoch": None, "step": 0, "params/total": 800}]
    for epoch in range(epochs):
        step = 10 * (epoch + 1)
        rows.append({"epoch": epoch, "step": step, "val/acc": 0.5 + lr * epoch, "val/acc_best": 0.5 + lr * epoch})
        rows.append({"epoch": epoch, "step": step, "train/loss": 2.0 - lr * epoch})
    pd.DataFrame(rows).to_csv(folder / "metrics.csv", index=False)
    if failed:
        (folder / FAILED_MARKER).write_text("RuntimeError: out of memory\n")
    return folder


def test_runs_report_lists_config_differences_and_metrics_of_finished_runs_only(tmp_path, capsys):
    write_run(tmp_path / "runs/quick/version_0", lr=0.01, epochs=3)
    write_run(tmp_path / "runs/quick/version_1", lr=0.02, epochs=1)  # still running, or killed
    write_run(tmp_path / "runs/quick/version_2", lr=0.05, epochs=2, failed=True)
    killed_early = tmp_path / "runs/quick/version_3"  # its worker died before the run wrote its config
    killed_early.mkdir()
    (killed_early / FAILED_MARKER).write_text("worker gone")
    report("runs")
    out = capsys.readouterr().out
    assert "wrote runs/report/tables/runs.csv" in out and "wrote runs/report/figures/runs_curves.png" in out
    table = pd.read_csv("runs/report/tables/runs.csv").set_index("run")
    assert list(table.columns[:3]) == ["status", "epochs", "lr"]  # max_epochs, optimizer, seed: all the same
    assert table.status.to_dict() == {
        "quick/version_0": "finished",
        "quick/version_1": "unfinished",
        "quick/version_2": "failed",
        "quick/version_3": "failed",
    }
    assert table.loc["quick/version_0", "val/acc_best"] == pytest.approx(0.52)
    assert table.loc["quick/version_0", "train/loss"] == pytest.approx(1.98)
    assert table.loc["quick/version_0", "params/total"] == 800
    not_finished = table.loc[["quick/version_1", "quick/version_2"], ["val/acc", "val/acc_best", "train/loss"]]
    assert not_finished.isna().all().all()
    assert Path("runs/report/figures/runs_curves.png").stat().st_size > 10_000
    assert not list(Path("runs/report").rglob("*.part"))


def test_runs_report_of_one_experiment_or_one_run_and_out(tmp_path):
    write_run(tmp_path / "runs/quick/version_0", lr=0.01, epochs=3)
    report("runs/quick/version_0", "--out", "elsewhere")
    table = pd.read_csv("elsewhere/tables/version_0.csv")
    assert table.run.tolist() == ["version_0"] and table.status.tolist() == ["finished"]


def write_study_file(tmp_path: Path, objectives: list[dict], storage: str | None = None) -> Path:
    study = {
        "study_name": "made",
        "base_config": str(REPO / "conf/experiments/quickstart.yaml"),
        "space": {
            "model.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
            "model.net.init_args.n_qubits": {"type": "int", "low": 2, "high": 6},
        },
        "objectives": objectives,
        "n_trials": 4,
        "storage": storage or f"journal:{tmp_path}/made.journal",
    }
    path = tmp_path / "made.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def fill(path: Path, values: list[list[float]]) -> optuna.Study:
    """Complete trials with the given objective values (and one failed trial), as workers would leave them."""
    spec = load_study_file(path)
    study = optuna.create_study(study_name=spec.name, storage=open_study_storage(spec), directions=spec.directions)
    distributions = {
        "model.lr": FloatDistribution(1e-3, 1e-1, log=True),
        "model.net.init_args.n_qubits": IntDistribution(2, 6),
    }
    for number, value in enumerate(values):
        params = {"model.lr": 0.01 * (number + 1), "model.net.init_args.n_qubits": 2 + number}
        attrs = {"params/total": value[-1], "command": f"OMP_NUM_THREADS=1 sqdr fit --n {number}", "run_dir": "r"}
        trial = optuna.trial.create_trial(params=params, distributions=distributions, values=value, user_attrs=attrs)
        study.add_trial(trial)
    failed = optuna.trial.create_trial(
        params={"model.lr": 0.05, "model.net.init_args.n_qubits": 3},
        distributions=distributions,
        state=optuna.trial.TrialState.FAIL,
    )
    study.add_trial(failed)
    return study


def test_study_report_marks_the_pareto_front_and_plots_it(tmp_path, capsys):
    objectives = [
        {"metric": "val/acc_best", "direction": "maximize"},
        {"metric": "params/total", "direction": "minimize"},
    ]
    path = write_study_file(tmp_path, objectives)
    study = fill(path, [[0.6, 700.0], [0.8, 2000.0], [0.5, 1500.0], [0.9, 6000.0]])
    report(str(path))
    out = capsys.readouterr().out
    assert "Pareto front (3 of 5 trials)" in out and "re-run trial 1: OMP_NUM_THREADS=1 sqdr fit --n 1" in out
    table = pd.read_csv("runs/made/report/tables/made.csv")
    assert set(table[table.best].trial) == {t.number for t in study.best_trials} == {0, 1, 3}
    failed = table.set_index("trial").loc[4]
    assert failed.state == "FAIL" and pd.isna(failed["val/acc_best"])
    assert Path("runs/made/report/figures/made_pareto.png").stat().st_size > 10_000
    assert "command" not in Path("runs/made/report/tables/made.md").read_text().splitlines()[0]


def test_single_objective_study_gets_a_history_and_no_pareto_figure(tmp_path, capsys):
    path = write_study_file(tmp_path, [{"metric": "val/acc_best", "direction": "maximize"}])
    fill(path, [[0.6], [0.8]])
    report(str(path), "--out", "results")
    assert "best trial (1 of 3 trials)" in capsys.readouterr().out
    assert sorted(p.name for p in Path("results/figures").iterdir()) == ["made_history.png"]


def test_importance_ranks_the_option_that_drives_accuracy_first(tmp_path, capsys):
    path = write_study_file(tmp_path, [{"metric": "val/acc_best", "direction": "maximize"}])
    spec = load_study_file(path)
    study = optuna.create_study(study_name=spec.name, storage=open_study_storage(spec), direction="maximize")
    distributions = {
        "model.lr": FloatDistribution(1e-3, 1e-1, log=True),
        "model.net.init_args.n_qubits": IntDistribution(2, 6),
    }
    for number in range(12):  # accuracy follows n_qubits; lr wanders independently of it
        n_qubits, lr = 2 + number % 5, 10 ** (-3 + 2 * ((number * 7) % 12) / 11)
        params = {"model.lr": lr, "model.net.init_args.n_qubits": n_qubits}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, values=[0.1 * n_qubits]))

    report(str(path), "--out", "results")

    importance = pd.read_csv("results/tables/made_importance.csv")
    assert importance["option"].tolist() == ["n_qubits", "lr"]
    assert importance["importance"][0] > 0.9 and importance["importance"].sum() == pytest.approx(1.0)
    assert Path("results/figures/made_importance.png").stat().st_size > 5_000
    assert "made: importance" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["missing.yaml"], "missing.yaml does not exist"),
        (["empty"], "no `sqdr fit` runs under empty"),
        (["made.yaml"], "no study made in journal:"),
        (["made.yaml", "--out", "a-file"], "cannot write to a-file"),
    ],
    ids=["no-target", "no-runs", "no-study", "unwritable-out"],
)
def test_report_errors_are_one_sentence(tmp_path, capsys, argv, message):
    write_study_file(tmp_path, [{"metric": "val/acc_best", "direction": "maximize"}])
    Path("empty").mkdir()
    Path("a-file").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        report(*argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.splitlines()[0]


def test_help_explains_every_option():
    text = build_parser().format_help()
    for option in ("target", "--out", "--storage"):
        assert option in text
    assert "results" in text and "report/" in text
