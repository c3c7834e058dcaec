"""The ``sqdr`` command as a user runs it: fit, test, resume, print_config, W&B offline."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from sqdr.__main__ import main

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "conf/experiments/quickstart.yaml")


def tiny_run_args(runs_dir: Path, *extra: str) -> list[str]:
    """A quickstart run shrunk to seconds: synthetic data, 3 qubits, few batches."""
    return [
        "--config", QUICKSTART,
        "--runs_dir", str(runs_dir),
        "--experiment", "tiny",
        "--data", "sqdr.data.SyntheticDataModule",
        "--data.n_train", "96",
        "--data.n_test", "32",
        "--model.net.init_args.n_qubits", "3",
        "--model.net.init_args.time_steps", "2",
        "--model.net.init_args.encoder_channels", "[2, 4, 4]",
        "--model.certify_samples", "8",
        *extra,
    ]  # fmt: skip


def test_fit_and_test_through_the_cli_with_fast_dev_run(tmp_path, capsys):
    main(["fit", *tiny_run_args(tmp_path, "--trainer.fast_dev_run", "true", "--test_after_fit", "false")])
    main(["test", *tiny_run_args(tmp_path, "--trainer.fast_dev_run", "true")])
    assert "fast_dev_run: nothing was saved" in capsys.readouterr().out  # and no "run written to None"


def test_fit_writes_config_metrics_and_checkpoints_and_certifies_on_lightning(tmp_path, capsys):
    main(["fit", *tiny_run_args(tmp_path, "--trainer.max_epochs", "2", "--test_after_fit", "true")])
    run = tmp_path / "tiny" / "version_0"
    assert (run / "config.yaml").exists()
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert list((run / "checkpoints").glob("best-epoch=*.ckpt"))
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    columns = set(rows[0])
    for metric in ("train/loss", "train/acc", "val/acc", "val/acc_best", "test/acc", "params/total", "test/acc_lightning"):
        assert metric in columns, metric
    params = next(r for r in rows if r["params/total"])
    # convs 1->2->4->4 with BN (18+4, 72+8, 144+8), linear 4->9 (45); circuit 2x3x3; head 3->4 classes
    assert [float(params[f"params/{k}"]) for k in ("encoder", "circuit", "head", "total")] == [299, 18, 16, 333]
    gaps = [float(r["test/max_logit_diff_lightning"]) for r in rows if r.get("test/max_logit_diff_lightning")]
    assert gaps and gaps[0] < 1e-4  # the fast engine's model is the PennyLane model
    hparams = yaml.safe_load(open(run / "hparams.yaml"))
    assert hparams["net"]["init_args"]["n_qubits"] == 3
    out = capsys.readouterr().out
    assert "test accuracy:" in out and f"run written to {run}" in out


def test_resume_from_last_continues_at_the_next_epoch(tmp_path):
    main(["fit", *tiny_run_args(tmp_path, "--trainer.max_epochs", "2")])
    main(["fit", *tiny_run_args(tmp_path, "--trainer.max_epochs", "4", "--ckpt_path", "last")])
    run = tmp_path / "tiny" / "version_0"
    assert not (tmp_path / "tiny" / "version_1").exists()
    epochs = sorted({int(r["epoch"]) for r in csv.DictReader(open(run / "metrics.csv")) if r.get("train/loss")})
    assert epochs == [0, 1, 2, 3]


def test_resume_without_a_previous_run_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *tiny_run_args(tmp_path, "--ckpt_path", "last")])
    assert exit_info.value.code == 2
    assert "found no checkpoint to resume" in capsys.readouterr().err


def test_print_config_reproduces_the_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *tiny_run_args(tmp_path, "--print_config")])
    assert exit_info.value.code in (0, None)
    printed = capsys.readouterr().out
    config = yaml.safe_load(printed)
    assert config["model"]["net"]["init_args"]["n_qubits"] == 3
    assert config["data"]["class_path"] == "sqdr.data.SyntheticDataModule"
    saved = tmp_path / "printed.yaml"
    saved.write_text(printed)
    main(["fit", "--config", str(saved), "--trainer.fast_dev_run", "true"])


def test_wandb_logger_writes_an_offline_run(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc credentials
    main(["fit", *tiny_run_args(tmp_path, "--trainer.max_epochs", "1", "--logger", "wandb", "--wandb_tags", "[ci]")])
    runs = list((tmp_path / "tiny" / "version_0" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    records = next(runs[0].glob("*.wandb")).read_bytes()  # W&B's binary log, uploaded by `wandb sync`
    for expected in (b"n_qubits", b"params", b"val/acc", b"train/loss"):
        assert expected in records, expected


def test_top_level_help_lists_every_command(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for command in ("fit", "sweep", "noise", "report", "bench"):
        assert command in out


def test_noise_aware_training_certifies_on_default_mixed(tmp_path):
    main(["fit", *tiny_run_args(tmp_path, "--trainer.max_epochs", "1", "--test_after_fit", "true",
                                "--model.net.init_args.noise", "paper", "--model.certify_samples", "auto")])  # fmt: skip
    rows = list(csv.DictReader(open(tmp_path / "tiny" / "version_0" / "metrics.csv")))
    gaps = [float(r["test/max_logit_diff_default.mixed"]) for r in rows if r.get("test/max_logit_diff_default.mixed")]
    assert gaps and gaps[0] < 1e-4
    hparams = yaml.safe_load(open(tmp_path / "tiny" / "version_0" / "hparams.yaml"))
    assert hparams["noise"]["bit_flip"] == 0.02 and hparams["noise"]["amplitude_damping"] == "feature"


def test_missing_data_is_one_clear_sentence_not_a_traceback(tmp_path, capsys):
    args = ["--data", "sqdr.data.MNISTDataModule", "--data.root", str(tmp_path / "data"), "--data.download", "false"]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *tiny_run_args(tmp_path), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    error = next(line for line in err.splitlines() if line.startswith("error:"))
    assert error.startswith("error: MNIST is missing from") and str(tmp_path / "data" / "MNIST" / "raw") in error
    assert "Traceback" not in err


def test_impossible_model_configuration_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *tiny_run_args(tmp_path, "--model.net.init_args.head", "none", "--model.net.init_args.n_qubits", "2")])
    assert exit_info.value.code == 2
    assert "head='none' reads one qubit per class" in capsys.readouterr().err


def test_running_loss_and_accuracy_are_logged_every_n_steps_and_end_at_the_epoch_values(tmp_path):
    main(["fit", *tiny_run_args(tmp_path, "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "2",
                                "--model.certify_engine", "none")])
    rows = list(csv.DictReader((tmp_path / "tiny" / "version_0" / "metrics.csv").read_text().splitlines()))
    running = [r for r in rows if r.get("train/acc_running")]
    steps = [int(r["step"]) for r in running]
    epochs = {int(r["epoch"]): r for r in rows if r.get("train/acc")}
    assert sorted(epochs) == [0, 1]
    assert steps and all((step + 1) % 2 == 0 for step in steps)
    assert len(steps) == (max(int(r["step"]) for r in rows) + 1) // 2
    compared = 0
    for epoch, row in epochs.items():
        last = [r for r in running if int(r["epoch"]) == epoch][-1]
        if last["step"] == row["step"]:  # the epoch's last step was a logging step
            assert float(last["train/acc_running"]) == pytest.approx(float(row["train/acc"]))
            assert float(last["train/loss_running"]) == pytest.approx(float(row["train/loss"]))
            compared += 1
    assert compared == 1  # 3 steps an epoch: epoch 1 ends on step 5, a logging step; epoch 0 on step 2
