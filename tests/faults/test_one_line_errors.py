"""Every failure a user can cause ends in one ``error:`` line naming the file or option and the fix, exit code 2
(3 when the machine cannot carry out a correct command), no traceback; and the checks come before the work.

The commands run as a user runs them, in a fresh process; where a fault cannot be made for real on a test
machine (a full disk, a denied permission for root, memory running out), the same process first replaces the
one function that meets it.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from sqdr.__main__ import main
from sqdr.checkpoint_io import AtomicCheckpointIO
from sqdr.errors import RESOURCE_EXIT_CODE, USAGE_EXIT_CODE, ResourceError, UserError, explain
from sqdr.sweep.study import LOGGED_METRICS

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "conf/experiments/quickstart.yaml")
HINT = "(set SQDR_DEBUG=1 to see the traceback)"

#: The quickstart on scikit-learn's digits (1 channel, 10 classes, 8 x 8), shrunk to a few seconds.
TINY = [
    "--config", QUICKSTART, "--experiment", "tiny",
    "--model.net.init_args.n_qubits", "3", "--model.net.init_args.time_steps", "2",
    "--model.net.init_args.encoder_channels", "[2, 4, 4]", "--model.certify_engine", "none",
    "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
    "--trainer.log_every_n_steps", "1", "--trainer.enable_model_summary", "false", "--test_after_fit", "false",
]  # fmt: skip

#: Runs the dispatcher in a new process after ``FAULT`` (Python source) has replaced what meets the fault.
WITH_FAULT = textwrap.dedent(
    """
    import errno, os, sys
    import torch
    exec(os.environ["FAULT"])
    from sqdr.__main__ import main
    main(sys.argv[1:])
    """
)


def sqdr(*args: str, cwd: Path, fault: str | None = None, **env: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", WITH_FAULT] if fault else [sys.executable, "-m", "sqdr"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "FAULT": fault or "", **env}
    if "SQDR_DEBUG" not in env:
        environment.pop("SQDR_DEBUG", None)
    return subprocess.run(
        [*command, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=300
    )  # fmt: skip


def one_error_line(result: subprocess.CompletedProcess, code: int = USAGE_EXIT_CODE, *, trained: bool = False) -> str:
    """The one ``error:`` line a failed command ends with; before it only Lightning's "Seed set to" note, or with
    ``trained`` the lines training printed before the failure."""
    output = result.stdout + result.stderr
    assert result.returncode == code, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("Seed set to")]
    assert lines[-1] == HINT and (trained or len(lines) == 2), result.stderr[-3000:]
    assert [line for line in lines if line.startswith("error")] == [lines[-2]], result.stderr[-3000:]
    assert lines[-2].startswith("error: ") and lines[-2].endswith("."), lines[-2]
    return lines[-2]


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of a model trained on digits: 1 channel, 10 classes, 8 x 8 pixels."""
    runs = tmp_path_factory.mktemp("runs")
    main(["fit", *TINY, "--runs_dir", str(runs)])
    return runs / "tiny" / "version_0" / "checkpoints" / "last.ckpt"


# -- options and their values --------------------------------------------------------------------
def test_a_bad_union_value_is_one_line_naming_the_option_and_the_accepted_types(tmp_path):
    result = sqdr("fit", *TINY, "--runs_dir", str(tmp_path / "runs"), "--model.net.init_args.noise", "[1]", cwd=tmp_path)
    line = one_error_line(result)
    assert line == "error: --model.net.init_args.noise: expected str, Mapping or null, got [1]; see `sqdr fit --help`."
    assert "usage:" not in result.stderr and "Subtypes" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_union_is_reduced_to_the_alternative_that_failed_for_a_reason_of_its_own(tmp_path):
    line = one_error_line(sqdr("fit", *TINY, "--model.net.init_args.shots", "-3", cwd=tmp_path))
    assert line.startswith("error: --model.net.init_args.shots: ") and "v>0" in line and "-3" in line


def test_a_negative_weight_decay_is_refused_by_its_type_before_anything_is_built(tmp_path):
    line = one_error_line(sqdr("fit", *TINY, "--runs_dir", str(tmp_path / "runs"), "--model.weight_decay", "-1",
                               cwd=tmp_path))  # fmt: skip
    assert line.startswith("error: --model.weight_decay: ") and "NonNegativeFloat" in line and "v>=0" in line
    assert not (tmp_path / "runs").exists()


def test_sqdr_debug_shows_the_traceback_behind_the_line(tmp_path):
    result = sqdr("fit", *TINY, "--model.net.init_args.noise", "[1]", cwd=tmp_path, SQDR_DEBUG="1")
    assert result.returncode != 0 and "Traceback" in result.stderr and "Does not validate" in result.stderr


# -- files -----------------------------------------------------------------------------------------
def test_a_malformed_config_file_is_named_with_its_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_epochs: [1\n")
    line = one_error_line(sqdr("fit", "--config", str(bad), cwd=tmp_path))
    assert line.startswith(f"error: {bad} is not valid YAML: ") and "(line 3, column 1)" in line and "fix the file" in line


def test_a_malformed_experiments_file_of_the_reproduction_is_named(tmp_path):
    bad = tmp_path / "experiments.yaml"
    bad.write_text("budgets: {quick: [1}\n")
    line = one_error_line(sqdr("reproduce", "--experiments", str(bad), cwd=tmp_path))
    assert line.startswith(f"error: {bad} is not valid YAML: ") and "line 1" in line


def test_a_run_with_a_malformed_config_yaml_is_named_by_the_report(tmp_path):
    run = tmp_path / "runs" / "quick" / "version_0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("trainer: [max_epochs: 3\n")
    (run / "metrics.csv").write_text("epoch,step,val/acc\n0,10,0.5\n")
    result = sqdr("report", str(tmp_path / "runs"), cwd=tmp_path)
    assert f"every run under {tmp_path / 'runs'} is damaged" in one_error_line(result)
    assert "quick/version_0, which is damaged: config.yaml cannot be read" in result.stdout


def test_a_storage_path_through_a_file_is_named_with_the_fix(tmp_path):
    (tmp_path / "results").write_text("a file, where the storage wants a folder")
    study = write_study(tmp_path, storage=f"journal:{tmp_path}/results/s.journal")
    line = one_error_line(sqdr("sweep", str(study), cwd=tmp_path))
    assert line == f"error: {tmp_path / 'results'} is a file where a folder is needed; pass another path or move the file."


# -- the machine -----------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_on_a_machine_without_one_names_the_option_and_leaves_no_run_directory(tmp_path):
    result = sqdr("fit", "--config", QUICKSTART, "--runs_dir", str(tmp_path / "runs"), "--trainer.accelerator", "gpu",
                  cwd=tmp_path)  # fmt: skip
    line = one_error_line(result)
    assert "No supported gpu backend found" in line and "--trainer.accelerator cpu" in line
    assert not list((tmp_path / "runs").rglob("version_*"))


FULL_DISK = """
def save(obj, file, *args, **kwargs):
    file.write(b"PK half a checkpoint")  # the disk fills up part of the way through
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
torch.save = save
"""
NO_PERMISSION = FULL_DISK.replace("ENOSPC", "EACCES")


@pytest.mark.parametrize(("fault", "expected"), [(FULL_DISK, "no space left"), (NO_PERMISSION, "permission denied")])
def test_a_checkpoint_that_cannot_be_written_is_exit_3_and_leaves_no_partial_file(tmp_path, fault, expected):
    result = sqdr("fit", *TINY, "--runs_dir", str(tmp_path / "runs"), cwd=tmp_path, fault=fault)
    line = one_error_line(result, RESOURCE_EXIT_CODE, trained=True)
    checkpoints = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints"
    assert line.startswith(f"error: {expected} ") and str(checkpoints / "best-epoch=0.ckpt") in line
    assert not [p for p in (tmp_path / "runs").rglob("*") if p.is_file() and ".ckpt" in p.name]


OUT_OF_MEMORY = """
from sqdr.module import SQDRModule
def training_step(self, batch, batch_idx):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
SQDRModule.training_step = training_step
"""


def test_running_out_of_memory_says_what_to_reduce(tmp_path):
    result = sqdr("fit", *TINY, "--runs_dir", str(tmp_path / "runs"), cwd=tmp_path, fault=OUT_OF_MEMORY)
    line = one_error_line(result, RESOURCE_EXIT_CODE, trained=True)
    assert line.startswith("error: out of memory: the circuit or the batch is too large for the engine")
    assert "--data.init_args.batch_size" in line and "n_qubits" in line


def test_other_os_and_memory_errors_are_explained_and_a_bug_is_not():
    memory = explain(MemoryError())
    assert isinstance(memory, ResourceError) and memory.exit_code == RESOURCE_EXIT_CODE
    folder = explain(IsADirectoryError(errno.EISDIR, "Is a directory", "out/report.csv"))
    assert isinstance(folder, UserError) and folder.exit_code == USAGE_EXIT_CODE and "out/report.csv" in str(folder)
    assert "read-only" in str(explain(OSError(errno.EROFS, "Read-only file system", "/mnt/x")))
    assert explain(FileExistsError(errno.EEXIST, "File exists", "/")) is None  # a folder in the way: not a user's file
    assert explain(KeyError("a bug")) is None and explain(OSError(errno.EIO, "I/O error")) is None


def test_a_bug_keeps_its_traceback(monkeypatch):
    def broken(argv):
        raise KeyError("a bug")

    monkeypatch.setitem(sys.modules["sqdr.__main__"].COMMANDS, "bench", broken)
    with pytest.raises(KeyError):
        main(["bench"])


# -- checks before the work ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (["--data", "sqdr.data.SyntheticDataModule", "--data.init_args.n_classes", "4"], ("10 classes", "4 classes")),
        (["--data.init_args.channels", "3"], ("1 channel(s)", "3 channel(s)")),
    ],
    ids=["classes", "channels"],
)
def test_data_that_contradicts_the_checkpoint_is_refused_before_its_weights_load(
    digits_checkpoint, tmp_path, data, expected
):
    runs = tmp_path / "runs"
    result = sqdr("test", *TINY, "--runs_dir", str(runs), "--ckpt_path", str(digits_checkpoint), *data, cwd=tmp_path)
    line = one_error_line(result)
    assert line.startswith(f"error: the checkpoint {digits_checkpoint} holds a model for ")
    assert all(text in line for text in expected) and "use the data it was trained on" in line
    assert "size mismatch" not in result.stderr and not runs.exists()  # refused before load_state_dict and the run


def write_study(folder: Path, **changes) -> Path:
    study = {
        "study_name": "one_line",
        "base_config": QUICKSTART,
        "overrides": {"trainer.max_epochs": 1, "model.net.init_args.n_qubits": 2},
        "space": {"model.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}},
        "objectives": [{"metric": "val/acc_best", "direction": "maximize"}],
        "n_trials": 1,
        "storage": f"journal:{folder}/one_line.journal",
        "runs_dir": str(folder / "runs"),
        **changes,
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_a_study_objective_that_no_trial_logs_is_refused_before_the_first_trial(tmp_path):
    study = write_study(tmp_path, objectives=[{"metric": "val/accuracy", "direction": "maximize"}])
    line = one_error_line(sqdr("sweep", str(study), cwd=tmp_path))
    assert line.startswith(f"error: {study}: objective metric(s) val/accuracy are never logged by a trial")
    assert "val/acc_best" in line and "params/total" in line and "test/acc" in line
    assert not (tmp_path / "one_line.journal").exists() and not (tmp_path / "runs").exists()


def test_the_known_objective_metrics_are_the_names_sqdr_logs():
    package = REPO / "sqdr"
    source = "".join((package / name).read_text() for name in ("module.py", "callbacks.py", "certify.py"))
    logged = set(re.findall(r'\.log(?:_dict)?\(\{?\s*f?"([^"]+)"', source))
    literal = {name for name in logged if "{" not in name}
    families = {name.split("{")[0] for name in logged if "{" in name}
    assert literal and families >= {"params/", "grad_norm/", "test/acc_", "test/max_logit_diff_"}
    assert literal <= set(LOGGED_METRICS)
    assert all(m in literal or any(m.startswith(f) for f in families) for m in LOGGED_METRICS)


# -- checkpoints are whole or absent ---------------------------------------------------------------
def test_a_checkpoint_save_that_fails_midway_leaves_no_file_under_the_final_name(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    last = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 0}, last)
    assert torch.load(last, weights_only=True)["epoch"] == 0 and not list(last.parent.glob("*.tmp"))

    def fills_the_disk(obj, file, *args, **kwargs):
        file.write(b"PK\x03\x04 the first bytes of a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", fills_the_disk)
    best = last.with_name("best-epoch=1.ckpt")
    with pytest.raises(OSError) as raised:
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 1}, best)
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(best)
    assert not best.exists() and not list(last.parent.glob("*.tmp"))
    with pytest.raises(OSError):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "epoch": 1}, last)
    monkeypatch.undo()
    assert torch.load(last, weights_only=True)["epoch"] == 0  # the earlier checkpoint is whole and unchanged


def test_the_fit_cli_saves_its_checkpoints_atomically(tmp_path):
    from sqdr.cli import make_cli

    cli = make_cli([*TINY, "--runs_dir", str(tmp_path)], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
