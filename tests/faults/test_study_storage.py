"""Study storages under faults: a journal cut short mid-write is repaired, a damaged record inside one is refused
with the line to fix, and SQLite keeps every trial of two worker processes writing at once."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from sqdr.__main__ import main as sqdr_main
from sqdr.errors import UserError
from sqdr.sweep.storage import open_storage

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

REPO = Path(__file__).resolve().parents[2]
SQDR = str(Path(sys.executable).with_name("sqdr"))


def completed(storage: optuna.storages.BaseStorage, name: str = "faults") -> list[int]:
    study = optuna.load_study(study_name=name, storage=storage)
    return [t.number for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]


def journal_study(tmp_path: Path, trials: int = 3) -> tuple[str, Path]:
    """A study with ``trials`` completed trials in a journal file, written through sqdr's storage code."""
    url = f"journal:{tmp_path}/faults.journal"
    study = optuna.create_study(study_name="faults", storage=open_storage(url))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=trials)
    return url, tmp_path / "faults.journal"


def test_a_journal_cut_short_mid_write_is_repaired_and_keeps_its_completed_trials(tmp_path, capsys):
    url, path = journal_study(tmp_path)
    whole = path.read_bytes()
    last_line = whole.rstrip(b"\n").rsplit(b"\n", 1)[1]
    assert json.loads(last_line)["trial_id"] == 2  # the last record is trial 2's completion
    torn = whole[:-12]  # the writer was killed 12 bytes before the end of its record
    path.write_bytes(torn)

    storage = open_storage(url)

    out = capsys.readouterr().out.strip().splitlines()
    backups = list(tmp_path.glob("faults.journal.torn-*"))
    assert len(out) == 1 and str(path) in out[0] and str(backups[0]) in out[0]
    assert len(backups) == 1 and backups[0].read_bytes() == torn  # the original, kept beside it
    assert path.read_bytes() == whole[: len(whole) - len(last_line) - 1]  # cut at the last complete record
    assert completed(storage) == [0, 1]  # trial 2's completion was the record being written
    # the repaired file takes appends again, and another reader reads them all
    optuna.load_study(study_name="faults", storage=storage).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert completed(open_storage(url)) == [0, 1, 3, 4]
    assert capsys.readouterr().out == "" and len(list(tmp_path.glob("faults.journal.torn-*"))) == 1


def test_a_damaged_record_inside_a_journal_is_refused_with_its_line_and_never_appended_to(tmp_path):
    url, path = journal_study(tmp_path, trials=2)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3][: len(lines[3]) // 2] + b"\n"  # line 4 cut in half, valid records after it
    path.write_bytes(b"".join(lines))
    before = path.read_bytes()

    with pytest.raises(UserError) as error:
        open_storage(url)

    message = str(error.value)
    assert f"journal {path}: line 4 is damaged" in message
    assert "restore the file from a backup, or delete line 4" in message
    assert path.read_bytes() == before and not list(tmp_path.glob("*.torn-*"))


def test_sweep_and_report_of_a_study_with_a_damaged_journal_end_with_the_error_not_a_traceback(tmp_path, capsys):
    url, path = journal_study(tmp_path, trials=2)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = b'{"op_code": 4, "worker_id": "x", "tri\n'
    path.write_bytes(b"".join(lines))
    before = path.read_bytes()
    study_file = tmp_path / "faults.yaml"
    study_file.write_text(yaml.safe_dump({
        "study_name": "faults",
        "base_config": str(REPO / "conf/experiments/quickstart.yaml"),
        "space": {"model.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}},
        "objectives": [{"metric": "val/acc_best", "direction": "maximize"}],
        "n_trials": 3,
        "storage": url,
    }))  # fmt: skip

    expected = f"error: journal {path}: line 2 is damaged"
    result = subprocess.run([SQDR, "report", str(study_file)], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith(expected), result.stderr
    assert "Traceback" not in result.stderr
    with pytest.raises(SystemExit) as exit_info:
        sqdr_main(["sweep", str(study_file)])  # in this process: the trial check imports torch, slow to start anew
    assert exit_info.value.code == 2 and expected in capsys.readouterr().err
    assert path.read_bytes() == before  # nothing was appended after the damage


WORKER = textwrap.dedent("""
    import sys, time
    import optuna
    from sqdr.sweep.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="faults", storage=open_storage(sys.argv[1]))

    def objective(trial):
        time.sleep(0.02)  # the two workers' writes interleave
        return trial.suggest_float("x", 0, 1)

    study.optimize(objective, n_trials=int(sys.argv[2]))
""")


def test_two_worker_processes_on_one_sqlite_study_complete_every_trial(tmp_path):
    url = f"sqlite:///{tmp_path}/faults.db"
    optuna.create_study(study_name="faults", storage=open_storage(url))
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, url, "12"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
        for _ in range(2)
    ]  # fmt: skip
    outputs = [worker.communicate(timeout=120)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    study = optuna.load_study(study_name="faults", storage=open_storage(url))
    assert len(study.trials) == 24
    assert {t.state for t in study.trials} == {TrialState.COMPLETE}
    assert len({t.number for t in study.trials}) == 24
