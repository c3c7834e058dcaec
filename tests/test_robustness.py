"""``sqdr noise``: a real (tiny) trained model evaluated across noise channels and levels, its outputs and errors."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml
from torchmetrics.classification import MulticlassAccuracy

from sqdr.cli import make_cli
from sqdr.data import SyntheticDataModule
from sqdr.models.noise import CHANNEL_ORDER
from sqdr.module import SQDRModule
from sqdr.robustness import build_parser, find_checkpoint, main, parse_args


ROOT = Path(__file__).resolve().parents[1]
LEVELS = [0.0, 0.02, 0.1, 0.5, 0.75]
N_TEST, N_CLASSES = 96, 4  # synthetic test labels are arange(96) % 4: every class is exactly a quarter


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    """``runs/quickstart`` after a short fit on 4 learnable synthetic classes (digits need longer to beat chance)."""
    runs = tmp_path_factory.mktemp("runs")
    with mock.patch.object(sys, "argv", ["sqdr"]):  # LightningCLI warns about pytest's own arguments otherwise
        make_cli([
            "fit", "--config", str(ROOT / "conf/experiments/quickstart.yaml"),
            "--data.class_path", "sqdr.data.SyntheticDataModule", "--data.init_args.n_train", "384",
            "--data.init_args.n_test", str(N_TEST), "--data.init_args.noise", "0.15",
            "--trainer.max_epochs", "3", "--runs_dir", str(runs), "--test_after_fit", "false",
            "--model.net.init_args.n_qubits", "3", "--model.net.init_args.time_steps", "4",
            "--model.lr", "0.03", "--model.certify_engine", "none",
        ])
    return runs / "quickstart"


@pytest.fixture(scope="module")
def study(experiment: Path) -> dict:
    """One ``sqdr noise`` run over every channel at LEVELS plus the paper preset; its outputs and printout."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        main(["--ckpt", str(experiment), "--levels", ",".join(map(str, LEVELS)), "--preset", "paper",
              "--batch-size", "32"])
    out = experiment / "version_0" / "noise"
    with (out / "noise.csv").open() as file:
        rows = list(csv.DictReader(file))
    return {"out": out, "rows": rows, "stdout": stdout.getvalue(),
            "metrics": json.loads((out / "metrics.json").read_text())}


def accuracy_of(rows: list[dict], channel: str, level: float | None = 0.0) -> float:
    (row,) = [r for r in rows if r["channel"] == channel and (r["level"] == "" if level is None else
                                                                 r["level"] != "" and float(r["level"]) == level)]
    return float(row["accuracy"])


def test_csv_has_one_row_per_channel_and_level_plus_noiseless_and_preset(study):
    rows = study["rows"]
    assert list(rows[0]) == ["channel", "level", "accuracy", "n_samples", "shots"]
    grid = {(r["channel"], float(r["level"])) for r in rows if r["channel"] not in ("none", "paper")}
    assert grid == {(c, p) for c in CHANNEL_ORDER for p in LEVELS}
    assert len(rows) == len(CHANNEL_ORDER) * len(LEVELS) + 2
    assert [r["channel"] for r in rows if r["channel"] in ("none", "paper")] == ["none", "paper"]
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 and r["n_samples"] == str(N_TEST) and r["shots"] == "" for r in rows)


def test_zero_probability_noise_gives_the_accuracy_of_the_model_run_directly(study, experiment):
    checkpoint = next((experiment / "version_0" / "checkpoints").glob("best*.ckpt"))
    model = SQDRModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    data = SyntheticDataModule(n_train=384, n_test=N_TEST, noise=0.15, batch_size=32)
    data.setup("test")
    metric = MulticlassAccuracy(N_CLASSES, average="micro")
    with torch.no_grad():
        for images, labels in data.test_dataloader():
            metric.update(model(images).argmax(1), labels)
    direct = float(metric.compute())
    assert direct > 1 / N_CLASSES + 0.15  # the model learned something, so the noise has something to destroy
    assert accuracy_of(study["rows"], "none") == pytest.approx(direct, abs=1e-6)
    for channel in CHANNEL_ORDER:
        assert accuracy_of(study["rows"], channel, 0.0) == pytest.approx(direct, abs=1e-6)


def test_noise_that_erases_every_expectation_leaves_one_class_for_all_images(study):
    # Depolarizing at 3/4 and bit flip at 1/2 map every qubit to I/2 before measurement: <Z_i> = 0, constant
    # logits, one predicted class, so the accuracy is that class's share of the balanced test set.
    rows = study["rows"]
    for channel, level in [("depolarizing", 0.75), ("bit_flip", 0.5)]:
        assert accuracy_of(rows, channel, level) == pytest.approx(1 / N_CLASSES, abs=1e-6)
        assert accuracy_of(rows, channel, level) < accuracy_of(rows, "none")


def test_metrics_are_named_test_acc_at_channel_equals_compact_level(study):
    metrics = study["metrics"]
    assert all(re.fullmatch(r"test/acc(@[a-z_]+(=[0-9.]+)?)?", name) for name in metrics)
    assert {"test/acc", "test/acc@paper", "test/acc@depolarizing=0.02", "test/acc@bit_flip=0",
            "test/acc@phase_damping=0.75"} <= set(metrics)
    assert metrics["test/acc@depolarizing=0.75"] == accuracy_of(study["rows"], "depolarizing", 0.75)


def test_plot_is_a_real_png(study):
    data = (study["out"] / "noise.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 400 and height > 300


def test_prints_the_table_the_checkpoint_and_both_paths(study, experiment):
    printed = study["stdout"]
    assert f"checkpoint: {experiment / 'version_0' / 'checkpoints'}" in printed
    assert re.search(r"^depolarizing\s+\d+\.\d%", printed, re.MULTILINE)
    assert "paper preset:" in printed and "noiseless:" in printed
    assert str(study["out"] / "noise.csv") in printed and str(study["out"] / "noise.png") in printed


def test_grid_file_sets_defaults_and_the_command_line_overrides_it(experiment, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"channels": ["phase_damping", "bit_flip"], "levels": [0, 1], "shots": 200}))
    out = tmp_path / "out"
    with contextlib.redirect_stdout(io.StringIO()):
        main(["--ckpt", str(experiment), "--config", str(grid), "--levels", "0.3", "--test-size", "16",
              "--out", str(out)])
    with (out / "noise.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [(r["channel"], r["level"], r["shots"], r["n_samples"]) for r in rows] == [
        ("none", "0.0", "200", "16"), ("phase_damping", "0.3", "200", "16"), ("bit_flip", "0.3", "200", "16")]


@pytest.mark.parametrize("name", ["grid.yaml", "wide.yaml"])
def test_shipped_grid_files_parse(name):
    args = parse_args(build_parser(), ["--ckpt", "unused", "--config", str(ROOT / "conf/noise" / name)])
    assert args.channels == list(CHANNEL_ORDER) and args.levels[0] == 0.0 and args.levels[-1] <= 1.0


def test_checkpoint_resolution_prefers_newest_version_then_best_then_last(tmp_path):
    experiment = tmp_path / "quickstart"
    for version, names in {0: ["best-epoch=3.ckpt", "last.ckpt"], 2: ["last.ckpt"], 10: []}.items():
        (experiment / f"version_{version}" / "checkpoints").mkdir(parents=True)
        for name in names:
            (experiment / f"version_{version}" / "checkpoints" / name).touch()
    # version_10 has no checkpoint yet (a run in progress): the newest finished one is version_2
    assert find_checkpoint(experiment) == experiment / "version_2" / "checkpoints" / "last.ckpt"
    assert find_checkpoint(experiment / "version_0") == experiment / "version_0" / "checkpoints" / "best-epoch=3.ckpt"


@pytest.mark.parametrize("bad_args, message", [
    (["--ckpt", "{tmp}/nowhere.ckpt"], "does not exist; pass a .ckpt file"),
    (["--ckpt", "{tmp}/empty_run"], "has no checkpoints/*.ckpt; train it with `sqdr fit`"),
    (["--ckpt", "{ckpt}", "--channels", "depolarizing,bitflip"], "unknown noise channel(s) bitflip; use --channels"),
    (["--ckpt", "{ckpt}", "--levels", "0,1.5"], "noise level(s) 1.5 outside [0, 1]"),
    (["--ckpt", "{ckpt}", "--levels", "0,high"], "--levels must be comma-separated numbers"),
    (["--ckpt", "{ckpt}", "--config", "{tmp}/missing.yaml"], "does not exist; pass a YAML file"),
])
def test_bad_input_is_one_clear_sentence_with_exit_code_2(bad_args, message, experiment, tmp_path, capsys):
    (tmp_path / "empty_run" / "checkpoints").mkdir(parents=True)
    args = [a.format(tmp=tmp_path, ckpt=experiment / "version_0") for a in bad_args]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_wandb_logs_one_offline_run_with_the_metrics(experiment, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    with contextlib.redirect_stdout(io.StringIO()):
        main(["--ckpt", str(experiment), "--channels", "depolarizing", "--levels", "0,0.1", "--test-size", "16",
              "--out", str(tmp_path / "out"), "--logger", "wandb"])
    (run_dir,) = tmp_path.glob("wandb/offline-run-*")
    (log,) = run_dir.glob("run-*.wandb")
    records = log.read_bytes()  # protobuf records: the logged keys and the group appear verbatim
    assert b"test/acc@depolarizing=0.1" in records and b"quickstart/noise" in records
    assert list(run_dir.glob("files/media/table/**/*.table.json")) and list(run_dir.glob("files/media/images/**/*.png"))
