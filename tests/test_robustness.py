"""``sqdr noise``: a real (tiny) trained model evaluated across noise channels and levels, its outputs and errors."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import shlex
import sys
from dataclasses import fields
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml
from torchmetrics.classification import MulticlassAccuracy

from sqdr import SQDRCNN
from sqdr.__main__ import main as sqdr
from sqdr.cli import make_cli
from sqdr.data import SyntheticDataModule
from sqdr.models.noise import CHANNEL_ORDER
from sqdr.module import SQDRModule
from sqdr.robustness import NoiseOptions, main
from sqdr.robustness.command import parse_options
from sqdr.robustness.study import encode, evaluate, grid_points


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
        main(["--ckpt", str(experiment), "--levels", str(LEVELS), "--preset", "paper", "--batch_size", "32"])
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
        main(["--ckpt", str(experiment), "--config", str(grid), "--levels", "[0.3]", "--test_size", "16",
              "--out", str(out)])
    with (out / "noise.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [(r["channel"], r["level"], r["shots"], r["n_samples"]) for r in rows] == [
        ("none", "0.0", "200", "16"), ("phase_damping", "0.3", "200", "16"), ("bit_flip", "0.3", "200", "16")]


@pytest.mark.parametrize("name", ["grid.yaml", "wide.yaml"])
def test_shipped_grid_files_parse(name):
    options = parse_options(["--ckpt", "unused", "--config", str(ROOT / "conf/noise" / name)])
    assert options.channels == list(CHANNEL_ORDER) and options.levels[0] == 0.0 and options.levels[-1] <= 1.0


def test_wandb_logs_one_offline_run_with_the_metrics(experiment, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    with contextlib.redirect_stdout(io.StringIO()):
        main(["--ckpt", str(experiment), "--channels", "[depolarizing]", "--levels", "[0, 0.1]", "--test_size", "16",
              "--out", str(tmp_path / "out"), "--logger", "wandb"])
    (run_dir,) = tmp_path.glob("wandb/offline-run-*")
    (log,) = run_dir.glob("run-*.wandb")
    records = log.read_bytes()  # protobuf records: the logged keys and the group appear verbatim
    assert b"test/acc@depolarizing=0.1" in records and b"quickstart/noise" in records
    assert list(run_dir.glob("files/media/table/**/*.table.json")) and list(run_dir.glob("files/media/images/**/*.png"))


def test_the_model_studied_is_left_exactly_as_it_was():
    torch.manual_seed(0)
    net = SQDRCNN(num_classes=N_CLASSES, image_size=8, time_steps=2, n_qubits=3, noise={"depolarizing": 0.05}).eval()
    engine, spec = net.circuit.engine, net.circuit.spec
    before = {name: value.clone() for name, value in net.state_dict().items()}
    images, labels = torch.rand(8, 1, 8, 8), torch.arange(8) % N_CLASSES
    logits = net(images)

    batches = encode(net, [(images, labels)])
    results = evaluate(net, batches, grid_points(["bit_flip", "amplitude_damping"], [0.0, 0.5], "paper"), 100, 0)

    assert len(results) == 1 + 2 * 2 + 1
    assert net.circuit.engine is engine and net.circuit.spec == spec and spec.noise.depolarizing == 0.05
    assert set(net.state_dict()) == set(before)
    assert all(torch.equal(value, before[name]) for name, value in net.state_dict().items())
    assert not net.training and torch.equal(net(images), logits)


@pytest.mark.parametrize("bad_args, message", [
    (["--ckpt", "{tmp}/nowhere.ckpt"], "does not exist; pass a .ckpt file"),
    (["--ckpt", "{tmp}/empty_run"], "has no checkpoints/*.ckpt; train it with `sqdr fit`"),
    (["--ckpt", "{tmp}/foreign.ckpt"], "foreign.ckpt cannot be read"),
    (["--ckpt", "{tmp}/other_run/model.ckpt"], "model.ckpt is a Lightning checkpoint but not of an SQDR-CNN"),
    (["--ckpt", "{ckpt}", "--channels", "[depolarizing, bitflip]"], 'Parser key "channels"'),
    (["--ckpt", "{ckpt}", "--levels", "[0, 1.5]"], "1.5 does not conform to restriction v>=0 and v<=1"),
    (["--ckpt", "{ckpt}", "--levels", "[0, high]"], "Not of type ClosedUnitInterval"),
    (["--ckpt", "{ckpt}", "--levels", "[]"], "--levels is empty"),
    (["--ckpt", "{ckpt}", "--shots", "0"], "Not of type PositiveInt"),
    (["--ckpt", "{ckpt}", "--config", "{tmp}/missing.yaml"], "File does not exist"),
])
def test_bad_input_is_one_clear_message_with_exit_code_2(bad_args, message, experiment, tmp_path, capsys):
    (tmp_path / "empty_run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "foreign.ckpt").write_text("not a checkpoint\n")
    (tmp_path / "other_run").mkdir()
    (tmp_path / "other_run" / "config.yaml").write_bytes((experiment / "version_0" / "config.yaml").read_bytes())
    torch.save({"pytorch-lightning_version": "2.6.0", "state_dict": {"w": torch.zeros(1)}, "hyper_parameters": {}},
               tmp_path / "other_run" / "model.ckpt")
    args = [a.format(tmp=tmp_path, ckpt=experiment / "version_0") for a in bad_args]
    with pytest.raises(SystemExit) as exit_info:
        sqdr(["noise", *args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert message in err and "Traceback" not in err and "weights_only" not in err
    assert not (tmp_path / "out").exists()


def test_an_unwritable_output_folder_fails_before_any_evaluation(experiment, tmp_path, capsys):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the output folder should go\n")
    with mock.patch("sqdr.robustness.command.encode", side_effect=AssertionError("evaluated")) as encoded, \
            pytest.raises(SystemExit) as exit_info:
        sqdr(["noise", "--ckpt", str(experiment), "--out", str(blocker / "noise")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and not encoded.called
    assert f"cannot write to {blocker / 'noise'}" in err and "Traceback" not in err
    assert blocker.read_text() == "a file where the output folder should go\n" and list(tmp_path.iterdir()) == [blocker]


def test_a_failing_study_leaves_earlier_outputs_as_they_were(experiment, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    earlier = {name: f"earlier {name}\n" for name in ("noise.csv", "noise.png", "metrics.json")}
    for name, text in earlier.items():
        (out / name).write_text(text)
    with mock.patch("sqdr.robustness.outputs.plot", side_effect=RuntimeError("renderer crashed")), \
            pytest.raises(RuntimeError, match="renderer crashed"), contextlib.redirect_stdout(io.StringIO()):
        main(["--ckpt", str(experiment), "--channels", "[depolarizing]", "--levels", "[0.1]", "--test_size", "8",
              "--out", str(out)])
    assert {path.name: path.read_text() for path in out.iterdir()} == earlier  # and no temporary files left


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        sqdr(["noise", "--help"])
    printed = " ".join(capsys.readouterr().out.split())
    assert exit_info.value.code == 0
    documented = re.findall(r"^        (\w+): ", NoiseOptions.__doc__, re.MULTILINE)
    assert documented == [field.name for field in fields(NoiseOptions)]
    for option in [*documented, "config"]:
        assert f"--{option} " in printed
    assert "A YAML file of options" in printed and "Measurement shots per expectation value" in printed


def test_every_noise_command_in_the_readme_parses_as_written():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Noise"):readme.index("## Sweeps")]
    commands = [shlex.split(line.split("#")[0])[2:] for line in section.splitlines() if line.startswith("sqdr noise ")]
    assert len(commands) >= 3
    for argv in commands:
        assert isinstance(parse_options(argv), NoiseOptions)
