"""``sqdr sweep`` / ``sqdr report``: exact budgets across workers, crash recovery, resume, pruning, summaries.

Trials train a tiny SQDR-CNN on the synthetic data module for a batch or a few, so a trial takes seconds; the
multi-process tests run the real ``sqdr`` command in subprocesses, on a journal file, SQLite or a throwaway
PostgreSQL cluster started in a temporary directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState
from test_reproduce import running

from sqdr.__main__ import main as sqdr_main
from sqdr.sweep.study import FAILED_MARKER, load_study_file, open_study_storage
from sqdr.sweep.trial import validate_trial_args

pytestmark = [
    pytest.mark.filterwarnings("ignore:LightningCLI's args parameter is intended"),
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
]

REPO = Path(__file__).resolve().parents[1]
SQDR = str(Path(sys.executable).with_name("sqdr"))
PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_PASSWORD = "s3cret-Pw"

TINY_OVERRIDES = {
    "data.class_path": "sqdr.data.SyntheticDataModule",
    "data.init_args.n_train": 160,
    "data.init_args.n_test": 16,
    "data.init_args.batch_size": 16,
    "trainer.max_epochs": 1,
    "trainer.limit_train_batches": 2,
    "trainer.enable_model_summary": False,
    "trainer.log_every_n_steps": 1,
    "test_after_fit": False,
    "model.certify_engine": "none",
    "model.net.init_args.n_qubits": 2,
    "model.net.init_args.n_blocks": 1,
    "model.net.init_args.time_steps": 2,
    "model.net.init_args.encoder_channels": [2, 2],
}
#: Trials of several seconds: a second worker process (~10 s to import torch) joins in time, a kill lands mid-trial.
LONGER_TRIALS = {"data.init_args.n_train": 1280, "trainer.limit_train_batches": 60}


def write_study(tmp_path: Path, name: str, **changes) -> Path:
    """A study on synthetic 8x8 images with a 2-qubit model: one continuous dimension, so no two trials repeat."""
    study = {
        "study_name": name,
        "base_config": str(REPO / "conf/experiments/quickstart.yaml"),
        "overrides": dict(TINY_OVERRIDES),
        "space": {"model.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}},
        "objectives": [{"metric": "val/acc_best", "direction": "maximize"}],
        "sampler": {"class_path": "RandomSampler", "init_args": {"seed": 0}},
        "pruner": {"class_path": "NopPruner"},
        "n_trials": 2,
        "storage": f"journal:{tmp_path}/{name}.journal",
    }
    overrides = changes.pop("overrides", {})
    study.update(changes)
    study["overrides"].update(overrides)
    for key in study["space"]:
        study["overrides"].pop(key, None)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def sweep(*argv: str) -> None:
    """``sqdr sweep ARGV`` in this process, through the dispatcher (which turns user errors into exit code 2)."""
    sqdr_main(["sweep", *argv])


def report(*argv: str) -> None:
    sqdr_main(["report", *argv])


def stored_study(path: Path) -> optuna.Study:
    spec = load_study_file(path)
    return optuna.load_study(study_name=spec.name, storage=open_study_storage(spec))


def stored_states(path: Path) -> dict[str, int]:
    """Trial states of a study another process is running; empty until that process has created the study."""
    try:
        return states(stored_study(path))
    except KeyError:
        return {}


def states(study: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def start_sweep(argv: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [SQDR, "sweep", *argv], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.3)


def finish(process: subprocess.Popen, timeout: float = 240) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def assert_exact_budget(study: optuna.Study, n: int) -> None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert len(complete) == n, states(study)
    params = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(params)) == n, params
    for trial in complete:
        assert 0.0 <= trial.values[0] <= 1.0
        assert trial.user_attrs["params/total"] > 0
        placement = ["--runs_dir", f"runs/{study.study_name}", "--experiment", f"trial_{trial.number}"]
        assert trial.user_attrs["cli_args"][-4:] == placement
        assert Path(trial.user_attrs["run_dir"], "metrics.csv").is_file()


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs, studies, tables and figures land in the test's own directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


# -- study files ----------------------------------------------------------------------------------
TWO_OBJECTIVES = [
    {"metric": "val/acc", "direction": "maximize"},
    {"metric": "params/total", "direction": "minimize"},
]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"n_trials": None}, "missing key(s) n_trials"),
        ({"n_trails": 3}, "unknown key n_trails; the keys of a study file are study_name,"),
        ({"space": {"model.lr": {"type": "gaussian", "low": 0, "high": 1}}}, "space key model.lr: type: 'gaussian'"),
        ({"space": {"model.lr": {"type": "float", "high": 1}}}, "model.lr: float dimensions need low"),
        ({"space": {"model.net.init_args.n_qbits": {"type": "int", "low": 2, "high": 3}}}, "n_qbits"),
        ({"pruner": {"class_path": "MedianPruner"}, "objectives": TWO_OBJECTIVES}, "cannot prune"),
        ({"sampler": "tpe"}, "sampler: 'tpe' is the old form; write sampler: {class_path: TPESampler}"),
        (
            {"sampler": {"type": "tpe", "seed": 0}},
            "write sampler: {class_path: TPESampler, init_args: {seed: 0}}",
        ),
        ({"pruner": "none"}, "write pruner: {class_path: NopPruner}"),
        ({"sampler": {"class_path": "TPESampler", "init_args": {"sed": 0}}}, "sampler: unknown key sed"),
        ({"sampler": {"class_path": "TPESamplr"}}, "sampler: "),
        ({"storage": "mysql://u@h/db"}, "storage 'mysql://u@h/db' is not supported"),
    ],
    ids=[
        "missing-key",
        "unknown-key",
        "unknown-distribution",
        "missing-bound",
        "unknown-config-key",
        "multi-objective-pruner",
        "old-sampler-name",
        "old-sampler-mapping",
        "old-pruner-name",
        "unknown-sampler-argument",
        "unknown-sampler-class",
        "unknown-storage",
    ],
)
def test_bad_study_file_exits_2_with_one_sentence_before_creating_anything(tmp_path, capsys, change, message):
    path = write_study(tmp_path, "bad")
    study = yaml.safe_load(path.read_text())
    study.update(change)
    path.write_text(yaml.safe_dump({k: v for k, v in study.items() if v is not None}))
    with pytest.raises(SystemExit) as exit_info:
        sweep(str(path))
    assert exit_info.value.code == 2
    error, *rest = capsys.readouterr().err.strip().splitlines()
    assert error.startswith(f"error: {path}: ") or error.startswith("error: storage"), error
    assert message in error
    assert "Traceback" not in error and rest == ["(set SQDR_DEBUG=1 to see the traceback)"]
    assert not (tmp_path / "bad.journal").exists()  # validated before the storage holds anything


def test_changed_study_file_is_refused_and_keeps_the_stored_trials(tmp_path, capsys):
    path = write_study(tmp_path, "keep", n_trials=1)
    sweep(str(path))
    changed = write_study(tmp_path, "keep", n_trials=2, space={"model.lr": {"type": "int", "low": 1, "high": 3}})
    with pytest.raises(SystemExit) as exit_info:
        sweep(str(changed))
    assert exit_info.value.code == 2
    assert "no longer matches" in capsys.readouterr().err
    assert states(stored_study(path)) == {"COMPLETE": 1}


def test_several_workers_on_sqlite_are_refused(tmp_path, capsys):
    path = write_study(tmp_path, "lite", storage=f"sqlite:///{tmp_path}/lite.db")
    with pytest.raises(SystemExit) as exit_info:
        sweep(str(path), "--workers", "2")
    assert exit_info.value.code == 2
    assert "--storage journal:" in capsys.readouterr().err


# -- budgets across workers -----------------------------------------------------------------------
def test_two_workers_on_a_journal_file_complete_exactly_four_distinct_trials(tmp_path):
    # trials of a few seconds each, so the second worker (a new process) joins while trials remain
    path = write_study(tmp_path, "journal2", n_trials=4, overrides=LONGER_TRIALS)
    output = finish(start_sweep([str(path), "--workers", "2"], tmp_path))
    study = stored_study(path)
    assert_exact_budget(study, 4)
    assert states(study) == {"COMPLETE": 4}
    assert len({t.user_attrs["worker"]["pid"] for t in study.trials}) == 2, output[-2000:]
    assert "4 complete" in output


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL 15 cluster on loopback, owned by ``postgres`` when the tests run as root."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL server binaries not found in {PG_BIN} (apt-get install postgresql-15)")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    root = Path(tempfile.mkdtemp(prefix="sqdr-pg-"))  # outside pytest's 0700 tmp tree, so postgres can enter
    if as_postgres:
        shutil.chown(root, "postgres", "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = root / "data"

    def run(*args: str) -> None:
        subprocess.run([*as_postgres, *args], check=True, capture_output=True, text=True)

    run(str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start")
    try:
        # trust authentication accepts any password: this one must never be shown or stored
        yield f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:{port}/postgres"
    finally:
        run(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_on_postgresql_complete_exactly_four_distinct_trials(tmp_path, postgres_url, capsys):
    path = write_study(tmp_path, "postgres2", n_trials=4, storage=postgres_url, overrides=LONGER_TRIALS)
    output = finish(start_sweep([str(path), "--workers", "2"], tmp_path))
    study = stored_study(path)
    assert_exact_budget(study, 4)
    assert states(study) == {"COMPLETE": 4}
    assert len({t.user_attrs["worker"]["pid"] for t in study.trials}) == 2, output[-2000:]
    assert "postgresql://postgres:***@127.0.0.1" in output
    report(str(path))
    stored = repr([study.user_attrs, *(t.user_attrs for t in study.trials)])
    written = [f.read_bytes() for f in tmp_path.rglob("*") if f.is_file() and f != path]
    assert PG_PASSWORD not in output + capsys.readouterr().out + stored
    assert not any(PG_PASSWORD.encode() in content for content in written)


def test_storage_password_is_masked_in_connection_errors(tmp_path, capsys):
    url = f"postgresql://someone:{PG_PASSWORD}@127.0.0.1:1/nowhere"  # nothing listens on port 1
    path = write_study(tmp_path, "unreachable", storage=url)
    for command in (sweep, report):
        with pytest.raises(SystemExit) as exit_info:
            command(str(path))
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "cannot open storage postgresql://someone:***@127.0.0.1:1/nowhere" in err
        assert PG_PASSWORD not in err


# -- crashes and interruptions --------------------------------------------------------------------
def wait_running_trial(path: Path, process: subprocess.Popen) -> None:
    """Until a trial has built its fit run (its run directory is known) and is training for several seconds."""

    def running() -> bool:
        assert process.poll() is None, process.stdout.read()[-3000:]
        if not stored_states(path).get("RUNNING"):
            return False
        trials = stored_study(path).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return any("run_dir" in t.user_attrs for t in trials)

    wait_for(running, 120, "a running trial")


def assert_failed_trial_was_retried(study: optuna.Study, n_trials: int) -> None:
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    assert len(failed) == 1, states(study)
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == failed[0].number]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == failed[0].params
    assert states(study) == {"COMPLETE": n_trials, "FAIL": 1}


def test_worker_processes_end_when_the_sweep_is_killed(tmp_path):
    path = write_study(tmp_path, "orphans", n_trials=20, overrides=LONGER_TRIALS)
    process = start_sweep([str(path), "--workers", "2"], tmp_path)

    def worker_pids() -> list[int]:
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        return [int(pid) for pid in children if "--worker_index" in Path(f"/proc/{pid}/cmdline").read_text()]

    def worker_trains() -> bool:
        if not (workers := worker_pids()) or not stored_states(path).get("RUNNING"):
            return False
        trials = stored_study(path).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return any(t.user_attrs.get("worker", {}).get("pid") in workers for t in trials)

    wait_for(worker_trains, 180, "the second worker to train a trial")
    (worker,) = worker_pids()
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    wait_for(lambda: not running(worker), 30, "the worker to end with its sweep")
    assert stored_states(path).get("COMPLETE", 0) + stored_states(path).get("RUNNING", 0) >= 1  # the study is kept


def test_worker_killed_mid_trial_is_failed_and_retried_on_a_journal_file(tmp_path):
    path = write_study(tmp_path, "killed", n_trials=1, overrides=LONGER_TRIALS)
    process = start_sweep([str(path)], tmp_path)
    wait_running_trial(path, process)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert states(stored_study(path)) == {"RUNNING": 1}
    sweep(str(path))
    study = stored_study(path)
    assert_failed_trial_was_retried(study, 1)
    failed, retried = study.trials
    assert Path(failed.user_attrs["run_dir"], FAILED_MARKER).is_file()
    assert not Path(retried.user_attrs["run_dir"], FAILED_MARKER).exists()
    report("runs/killed")
    table = pd.read_csv("runs/killed/report/tables/killed.csv").set_index("run")
    assert table.loc["trial_0/version_0", "status"] == "failed" and pd.isna(table.loc["trial_0/version_0", "val/acc"])
    assert table.loc["trial_1/version_0", "status"] == "finished"


def test_worker_killed_mid_trial_is_failed_by_heartbeat_and_retried_on_sqlite(tmp_path):
    path = write_study(
        tmp_path,
        "heartbeat",
        n_trials=1,
        storage=f"sqlite:///{tmp_path}/heartbeat.db",
        heartbeat_interval=1,
        grace_period=3,
        overrides=LONGER_TRIALS,
    )
    process = start_sweep([str(path)], tmp_path)
    wait_running_trial(path, process)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    sweep(str(path))  # waits out the 3 s grace period, then fails the stale trial and retries it
    assert_failed_trial_was_retried(stored_study(path), 1)


def test_interrupted_study_resumes_with_only_the_remaining_trials(tmp_path):
    # three epochs a trial: the stop must land inside the second trial even on a busy machine
    path = write_study(tmp_path, "resume", n_trials=2, overrides={**LONGER_TRIALS, "trainer.max_epochs": 3})
    process = start_sweep([str(path)], tmp_path)
    wait_for(lambda: stored_states(path).get("COMPLETE", 0) >= 1, 120, "a first complete trial")
    os.kill(process.pid, signal.SIGTERM)  # as a scheduler or Ctrl-C would stop it
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output[-2000:]
    before = stored_study(path)
    done_before = states(before).get("COMPLETE", 0)
    assert done_before == 1 and "RUNNING" not in states(before)
    n_before = len(before.trials)
    sweep(str(path))
    after = stored_study(path)
    new = after.trials[n_before:]
    assert len(new) == 1 and new[0].state == TrialState.COMPLETE
    assert states(after).get("COMPLETE") == 2
    sweep(str(path))  # nothing left to do
    assert len(stored_study(path).trials) == len(after.trials)


# -- pruning, reports -----------------------------------------------------------------------------
def test_pruned_trials_are_recorded_as_pruned_and_count_towards_the_budget(tmp_path):
    # val/acc is never above 1.01, so the threshold pruner stops every trial after its first validation
    pruner = {"class_path": "ThresholdPruner", "init_args": {"lower": 1.01}}
    path = write_study(tmp_path, "pruned", n_trials=2, pruner=pruner, overrides={"trainer.max_epochs": 3})
    sweep(str(path))
    study = stored_study(path)
    assert states(study) == {"PRUNED": 2}
    for trial in study.trials:
        assert list(trial.intermediate_values) == [0]  # stopped after epoch 0 of 3
        assert 0.0 <= trial.intermediate_values[0] <= 1.0


def pareto_front(points: list[tuple[float, float]]) -> set[tuple[float, float]]:
    """The (parameters, accuracy) points no other point beats: no more parameters and higher accuracy, or fewer
    parameters and no lower accuracy."""
    return {
        (x, y)
        for x, y in points
        if not any((u <= x and v > y) or (u < x and v >= y) for u, v in points)
    }


def test_report_prints_the_pareto_front_and_writes_figure_and_tables_beside_the_runs(tmp_path, capsys):
    objectives = [
        {"metric": "val/acc_best", "direction": "maximize"},
        {"metric": "params/total", "direction": "minimize"},
    ]
    space = {
        "model.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
        "model.net.init_args.n_qubits": {"type": "int", "low": 2, "high": 4},
    }
    path = write_study(tmp_path, "front", n_trials=3, objectives=objectives, space=space)
    sweep(str(path))
    capsys.readouterr()
    report(str(path))
    out = capsys.readouterr().out
    assert "Pareto front" in out and "re-run trial" in out and "OMP_NUM_THREADS=1 sqdr fit --config" in out
    png = Path("runs/front/report/figures/front_pareto.png")
    assert f"wrote {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert not Path("results").exists()  # the committed results change only with --out results
    table = pd.read_csv("runs/front/report/tables/front.csv")
    assert len(table) == 3 and set(table.state) == {"COMPLETE"}
    assert set(table.n_qubits) <= {2, 3, 4} and (table["params/total"] > 0).all()
    front = table[table.best]
    points = list(zip(table["params/total"], table["val/acc_best"]))
    assert pareto_front(points) == set(zip(front["params/total"], front["val/acc_best"]))
    header = Path("runs/front/report/tables/front.md").read_text().splitlines()[0]
    assert [cell.strip() for cell in header.strip("|").split("|")][:4] == ["trial", "state", "best", "val/acc_best"]


def test_noise_study_sweeps_a_grid_of_levels_and_plots_accuracy_vs_noise(tmp_path, capsys):
    path = write_study(
        tmp_path,
        "noise",
        n_trials=2,
        sampler={"class_path": "GridSampler", "init_args": {"seed": 0}},
        space={"model.net.init_args.noise.depolarizing": {"type": "float", "low": 0.0, "high": 0.1, "step": 0.1}},
    )
    sweep(str(path))
    study = stored_study(path)
    assert sorted(t.params["model.net.init_args.noise.depolarizing"] for t in study.trials) == [0.0, 0.1]
    report(str(path), "--out", "results")
    out = capsys.readouterr().out
    assert "wrote results/figures/noise_noise.png" in out and "wrote results/figures/noise_history.png" in out
    assert Path("results/figures/noise_noise.png").stat().st_size > 10_000
    assert not Path("results/figures/noise_pareto.png").exists()  # one objective: no Pareto front


def test_failed_trials_leave_a_failed_marker_and_the_report_shows_no_result(tmp_path, capsys):
    # A metric sqdr logs, but not in these trials: they certify on lightning, not default.mixed.
    objectives = [{"metric": "test/acc_default.mixed", "direction": "maximize"}]
    path = write_study(tmp_path, "broken", n_trials=1, objectives=objectives)
    with pytest.raises(SystemExit) as exit_info:
        sweep(str(path))
    assert exit_info.value.code == 1  # the worker stops after 3 failed trials in a row
    study = stored_study(path)
    assert states(study) == {"FAIL": 3}
    for trial in study.trials:
        assert "were not logged" in Path(trial.user_attrs["run_dir"], FAILED_MARKER).read_text()
    report("runs/broken")
    table = pd.read_csv("runs/broken/report/tables/broken.csv")
    assert set(table.status) == {"failed"} and table["val/acc"].isna().all()


def test_a_trial_re_run_alone_in_another_process_gives_identical_metrics(tmp_path):
    # the sweep runs in this process (PyTorch's default thread count), the re-run in a fresh one with the
    # trial's stored command: the study's fixed `threads` makes them the same computation
    path = write_study(tmp_path, "same", n_trials=1, overrides=LONGER_TRIALS)
    sweep(str(path))
    (trial,) = stored_study(path).trials
    assert trial.user_attrs["command"].startswith("OMP_NUM_THREADS=1 sqdr fit --config ")
    env = {**os.environ, "PATH": f"{Path(SQDR).parent}:{os.environ['PATH']}"}
    subprocess.run(["bash", "-c", trial.user_attrs["command"] + " --runs_dir rerun"], check=True, env=env)
    original = pd.read_csv(Path(trial.user_attrs["run_dir"], "metrics.csv"))
    rerun = pd.read_csv(tmp_path / "rerun/trial_0/version_0/metrics.csv")
    results = [column for column in original.columns if not column.endswith("_per_s")]  # speed is not a result
    assert {"train/loss", "val/acc", "val/loss"} <= set(results)
    pd.testing.assert_frame_equal(original[results], rerun[results], check_exact=True)


def test_wandb_trials_each_write_one_offline_run_in_their_run_directory(tmp_path):
    path = write_study(tmp_path, "wb", n_trials=2)
    sweep(str(path), "--wandb")
    study = stored_study(path)
    for trial in study.trials:
        assert trial.user_attrs["cli_args"][-4:] == ["--logger", "wandb", "--wandb_group", "wb"]
        runs = list(Path(trial.user_attrs["run_dir"], "wandb").glob("offline-run-*"))
        assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


# -- shipped study files --------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "sweeps").glob("*.yaml")))
def test_shipped_study_files_build_a_trial(name, monkeypatch):
    monkeypatch.chdir(REPO)
    spec = load_study_file(Path("sweeps") / name)
    validate_trial_args(spec)
    assert spec.n_trials >= 6


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "sweeps/wandb").glob("*.yaml")))
def test_wandb_sweep_files_pass_arguments_the_fit_cli_accepts(name, monkeypatch):
    from sqdr.cli import make_cli

    monkeypatch.chdir(REPO)
    config = yaml.safe_load((REPO / "sweeps/wandb" / name).read_text())
    command = config["command"]
    assert command[:3] == ["${env}", "${program}", "fit"] and command[-1] == "${args}" and config["program"] == "sqdr"
    fixed = [arg for arg in command[3:-1] if arg not in ("--logger", "wandb")]
    # W&B's agent formats each parameter as f"--{key}={value}" (Python str: False, [4, 8, 16])
    swept = [f"--{key}={_first(spec)}" for key, spec in config["parameters"].items()]
    cli = make_cli(fixed + swept + ["--runs_dir", "unused"], run=False)
    assert cli.model.net.parameter_counts()["total"] > 0
    twin = load_study_file(Path("sweeps") / name)  # the Optuna study of the same name: same keys
    assert set(config["parameters"]) == set(twin.overrides) | set(twin.space)


def _first(spec: dict):
    return spec["values"][0] if "values" in spec else spec.get("value", spec.get("min"))
