"""``sqdr reproduce``: tables from run records, skipped data sets, resuming, and the baselines it trains."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from sqdr.errors import UserError
from sqdr.models import SQDRCNN
from sqdr.models.baselines import ConvNet
from sqdr.module import SQDRModule
from sqdr.reproduce import runner
from sqdr.reproduce.command import main
from sqdr.reproduce.plan import load_plan
from sqdr.reproduce.report import pareto_front, summary_table, write_report
from sqdr.runs import find_checkpoint, read_checkpoint

TINY_FIT = {
    "seed_everything": 1,
    "trainer": {"accelerator": "cpu", "devices": 1, "max_epochs": 2, "log_every_n_steps": 2},
    "model": {
        "net": {
            "class_path": "sqdr.SQDRCNN",
            "init_args": {"time_steps": 2, "n_qubits": 4, "n_blocks": 1, "encoder_channels": [4]},
        },
        "lr": 0.01,
        "certify_engine": "none",
    },
    "data": {
        "class_path": "sqdr.data.SyntheticDataModule",
        "init_args": {"n_train": 64, "n_test": 32, "batch_size": 16},
    },
}
VARIANTS = {
    "paper": {"group": "paper"},
    "classical_layer": {"group": "baseline", "overrides": {"model.net.init_args.quantum": False}},
    "cnn": {"group": "baseline", "overrides": {"model.net": "sqdr.models.baselines.ConvNet"}},
    "sqnn": {"group": "baseline", "encoder_from": "classical_layer", "overrides": {"model.freeze_encoder": True}},
}


def experiment_set(tmp_path: Path, datasets: dict, seeds: list[int]) -> Path:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_FIT))
    for spec in datasets.values():
        spec["config"] = str(config)
    path = tmp_path / "set.yaml"
    budgets = {"quick": {"seeds": seeds, "datasets": datasets}}
    path.write_text(yaml.safe_dump({"variants": VARIANTS, "budgets": budgets}))
    return path


class CountingFit:
    """The real ``runner.train``, counting which runs it trains."""

    def __init__(self) -> None:
        self.trained: list[str] = []

    def __call__(self, run, args, threads):
        self.trained.append(run.name)
        return runner.train(run, args, threads)


def fake_record(seed: int, accuracy: float, speed: float, run_dir: Path, variant: str = "paper") -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"epoch": [0, 1], "step": [3, 7], "val/acc": [accuracy - 0.1, accuracy]}).to_csv(
        run_dir / "metrics.csv", index=False
    )
    return {
        "dataset": "fashion_mnist", "variant": variant, "group": "paper" if variant == "paper" else "baseline",
        "seed": seed, "status": "done", "test_acc": accuracy, "images_per_s": speed, "run_dir": str(run_dir),
        "params": {"encoder": 649, "circuit": 54, "head": 100, "total": 803},
    }


PUBLISHED = pd.DataFrame({
    "dataset": ["fashion_mnist", "fashion_mnist", "mnist"],
    "model": ["A", "B", "C"],
    "accuracy": [90.0, 94.0, 99.0],
    "params": [1_000_000.0, 2_000_000.0, None],
    "source": ["x", "y", "z"],
})


def test_summary_is_mean_and_std_over_seeds_with_ratios_to_published_snns(tmp_path):
    runs = [(0, 0.80, 100), (1, 0.84, 200), (2, 0.88, 300)]  # seed, test accuracy, images/s
    records = [fake_record(seed, accuracy, speed, tmp_path / f"run{seed}") for seed, accuracy, speed in runs]
    records.append({"dataset": "mnist", "variant": "paper", "group": "paper", "seed": 0, "status": "skipped",
                    "reason": "MNIST is missing from data/MNIST/raw: copy the files"})
    table = summary_table(records, PUBLISHED).set_index("dataset")

    fashion = table.loc["fashion_mnist"]
    assert fashion["seeds"] == 3
    assert fashion["test_acc_mean"] == pytest.approx(84.0)
    assert fashion["test_acc_std"] == pytest.approx(4.0)  # sample standard deviation over seeds
    assert fashion["images_per_s"] == pytest.approx(200.0)
    assert (fashion["params_encoder"], fashion["params_circuit"], fashion["params_head"]) == (649, 54, 100)
    assert fashion["acc_vs_snn"] == pytest.approx(100 * 84.0 / 92.0)  # mean of the published accuracies
    assert fashion["params_vs_snn"] == pytest.approx(100 * 803 / 1_000_000)  # the smallest published network
    assert fashion["status"] == "ok"
    mnist = table.loc["mnist"]
    assert mnist["seeds"] == 0 and pd.isna(mnist["test_acc_mean"])
    assert mnist["status"].startswith("skipped: MNIST is missing")

    written = write_report(records, PUBLISHED, tmp_path / "out", "quick")
    markdown = (tmp_path / "out" / "tables" / "reproduce_quick.md").read_text()
    assert "84.00 ± 4.00" in markdown and "91.3" in markdown
    assert "91.3 % of the mean accuracy of 2 published spiking networks (92.00 %) with 0.0803 %" in markdown
    assert "skipped: MNIST is missing from data/MNIST/raw |" in markdown  # the how-to-fix is in the runs CSV
    assert markdown.count("| mnist ") == 2  # a data set that could not start is one row, its published row another
    assert "| fashion_mnist | B       |         94 | 2000000  | y        |" in markdown
    figures = {"reproduce_quick_fashion_mnist_curves.png", "reproduce_quick_fashion_mnist_params.png"}
    assert {path.name for path in written} >= figures
    assert pd.read_csv(tmp_path / "out" / "tables" / "reproduce_quick.csv")["test_acc_std"][0] == pytest.approx(4.0)


def test_summary_gives_each_row_its_difference_to_the_data_sets_first_row(tmp_path):
    records = [
        fake_record(0, 0.80, 100, tmp_path / "paper0"), fake_record(1, 0.82, 100, tmp_path / "paper1"),
        fake_record(0, 0.77, 100, tmp_path / "cnn0", variant="cnn"),
        fake_record(1, 0.78, 100, tmp_path / "cnn1", variant="cnn"),
    ]
    table = summary_table(records, PUBLISHED).set_index("variant")
    assert table.loc["paper", "vs_first"] == pytest.approx(0.0)
    assert table.loc["cnn", "vs_first"] == pytest.approx(77.5 - 81.0)

    write_report(records, PUBLISHED, tmp_path / "out", "quick")
    markdown = (tmp_path / "out" / "tables" / "reproduce_quick.md").read_text()
    assert "| reference " in markdown and "| -3.50 " in markdown

    failed_reference = [{**record, "status": "failed", "reason": "RuntimeError: x"} for record in records[:2]]
    table = summary_table(failed_reference + records[2:], PUBLISHED).set_index("variant")
    assert pd.isna(table.loc["cnn", "vs_first"])  # no reference, no difference


def test_pareto_front_keeps_rows_no_smaller_model_beats():
    rows = pd.DataFrame({"params_total": [800, 1000, 1200, 5000], "test_acc_mean": [70.0, 65.0, 80.0, 79.0]})
    assert pareto_front(rows)["params_total"].tolist() == [800, 1200]


def test_absent_data_is_skipped_with_the_reason_and_checked_once(tmp_path):
    missing = {"data": "sqdr.data.MNISTDataModule", "data.init_args.root": str(tmp_path / "none"),
               "data.init_args.download": False}
    path = experiment_set(tmp_path, {"mnist": {"overrides": missing, "variants": ["paper"]}}, seeds=[0, 1])
    plan = load_plan(path, "quick", tmp_path / "runs")
    fit, lines = CountingFit(), []

    records = runner.execute(plan, threads=1, say=lines.append, fit=fit)

    assert [r["status"] for r in records] == ["skipped", "skipped"]
    assert "MNIST is missing" in records[1]["reason"] and "download=False" in records[1]["reason"]
    assert fit.trained == ["mnist/paper/seed_0"]  # the second seed does not look for the files again
    assert lines[0].startswith("[1/2] mnist/paper/seed_0: skipped: MNIST is missing")
    assert not (tmp_path / "runs" / "quick" / "mnist" / "paper" / "seed_0").exists()


def test_interrupted_reproduction_trains_only_unfinished_runs(tmp_path):
    path = experiment_set(tmp_path, {"synthetic": {"variants": ["classical_layer", "cnn", "sqnn"]}}, seeds=[0])
    plan = load_plan(path, "quick", tmp_path / "runs")
    first = CountingFit()
    records = runner.execute(plan, threads=1, say=lambda line: None, fit=first)
    assert first.trained == ["synthetic/classical_layer/seed_0", "synthetic/cnn/seed_0", "synthetic/sqnn/seed_0"]
    assert all(r["status"] == "done" for r in records)

    # SQNN: the encoder of the classical_layer run, frozen (not trained, still counted in the model's size)
    stage_1, stage_2 = (read_checkpoint(find_checkpoint(r["run_dir"]))["state_dict"] for r in (records[0], records[2]))
    encoder = [k for k in stage_1 if k.startswith("net.encoder.")]
    assert encoder and all(torch.equal(stage_1[k], stage_2[k]) for k in encoder)
    assert records[2]["params"]["encoder"] == records[0]["params"]["encoder"] > 0

    # the sqnn run is killed: its directory is there, its result.json is not
    sqnn_dir = plan.runs[2].directory
    (sqnn_dir / runner.RESULT).unlink()
    (sqnn_dir / "stale").write_text("left by the killed run")
    again = CountingFit()
    lines: list[str] = []
    records = runner.execute(plan, threads=1, say=lines.append, fit=again)

    assert again.trained == ["synthetic/sqnn/seed_0"]  # finished runs are collected, never trained twice
    assert "collected" in lines[0] and "collected" in lines[1] and "trained in" in lines[2]
    assert not (sqnn_dir / "stale").exists() and (sqnn_dir / runner.RESULT).is_file()
    assert json.loads((sqnn_dir / runner.RESULT).read_text())["status"] == "done"

    # a config file's comment edited: nothing is out of date
    config = Path(yaml.safe_load(path.read_text())["budgets"]["quick"]["datasets"]["synthetic"]["config"])
    config.write_text(config.read_text() + "# a comment\n")
    commented = CountingFit()
    runner.execute(plan, threads=1, say=lambda line: None, fit=commented)
    assert commented.trained == []

    # a config file's setting edited in place: every run reading it is out of date, and kept beside the new one
    config.write_text(config.read_text().replace("seed_everything: 1", "seed_everything: 7"))
    edited = CountingFit()
    runner.execute(plan, threads=1, say=lambda line: None, fit=edited)
    assert edited.trained == ["synthetic/classical_layer/seed_0", "synthetic/cnn/seed_0", "synthetic/sqnn/seed_0"]
    kept = sqnn_dir.with_name(f"{sqnn_dir.name}.out_of_date")
    assert json.loads((kept / runner.RESULT).read_text())["status"] == "done"

    # the experiment set changes a variant: that run is out of date, and so is the run using its encoder
    document = yaml.safe_load(path.read_text())
    document["variants"]["classical_layer"]["overrides"]["model.lr"] = 0.02
    path.write_text(yaml.safe_dump(document))
    changed = CountingFit()
    runner.execute(load_plan(path, "quick", tmp_path / "runs"), threads=1, say=lambda line: None, fit=changed)
    assert changed.trained == ["synthetic/classical_layer/seed_0", "synthetic/sqnn/seed_0"]


def test_workers_train_runs_at_once_with_the_results_of_one_worker(tmp_path):
    path = experiment_set(tmp_path, {"synthetic": {"variants": ["classical_layer", "sqnn"]}}, seeds=[0, 1])
    plan = load_plan(path, "quick", tmp_path / "runs")
    lines: list[str] = []

    parallel = runner.execute(plan, threads=1, say=lines.append, workers=2)

    assert [(r["variant"], r["seed"], r["status"]) for r in parallel] == [
        ("classical_layer", 0, "done"), ("sqnn", 0, "done"), ("classical_layer", 1, "done"), ("sqnn", 1, "done")
    ]
    # each sqnn run started after its classical_layer run had ended
    ended = [line.split(": ")[0].split("] ")[1] for line in lines]
    assert ended.index("synthetic/sqnn/seed_0") > ended.index("synthetic/classical_layer/seed_0")
    assert ended.index("synthetic/sqnn/seed_1") > ended.index("synthetic/classical_layer/seed_1")
    first = CountingFit()
    collected = runner.execute(plan, threads=1, say=lambda line: None, fit=first)
    assert first.trained == []  # every run the workers finished is collected
    assert [r["test_acc"] for r in collected] == [r["test_acc"] for r in parallel]
    # a worker's run equals the same run trained alone in this process
    (plan.runs[2].directory / runner.RESULT).unlink()
    again = runner.execute(plan, threads=1, say=lambda line: None, fit=CountingFit())
    assert again[2]["test_acc"] == parallel[2]["test_acc"]


def test_command_writes_tables_and_says_where(tmp_path, capsys):
    path = experiment_set(tmp_path, {"synthetic": {"variants": ["paper"]}}, seeds=[0])
    main(["--experiments", str(path), "--runs_dir", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
          "--published", str(Path("conf/reproduce/published_snn.csv").resolve())])
    output = capsys.readouterr().out
    assert "[1/1] synthetic/paper/seed_0: test accuracy" in output
    assert f"wrote {tmp_path / 'out' / 'tables' / 'reproduce_quick.md'}" in output


def test_plan_mistakes_name_the_fix(tmp_path):
    path = experiment_set(tmp_path, {"synthetic": {"variants": ["sqnn", "classical_layer"]}}, seeds=[0])
    with pytest.raises(UserError, match="takes its encoder from 'classical_layer', which must be listed before it"):
        load_plan(path, "quick", tmp_path / "runs")
    with pytest.raises(UserError, match="no budget 'paper'"):
        load_plan(path, "paper", tmp_path / "runs")


def test_paired_difference_has_a_student_t_interval_and_says_which_rows_differ(tmp_path):
    """Differences per seed: twin - hybrid = -3, -2, -2.5 points (mean -2.5, sd 0.5, t(0.975, 2) = 4.3027: CI -2.5 +-
    1.242, significant), and +1, -1, +1 for the other twin (mean +0.33, sd 1.155: the interval includes 0)."""
    accuracies = {"winner": [0.80, 0.82, 0.84], "matched_map": [0.77, 0.80, 0.815], "no_circuit": [0.81, 0.81, 0.85]}
    records = [
        fake_record(seed, accuracy, 100, tmp_path / f"{variant}{seed}", variant=variant)
        for variant, values in accuracies.items() for seed, accuracy in enumerate(values)
    ]
    records.append(fake_record(3, 0.9, 100, tmp_path / "extra", variant="matched_map"))  # seed 3: no winner to pair
    table = summary_table(records, PUBLISHED).set_index("variant")
    matched = table.loc["matched_map"]
    half = 4.302653 * 0.5 / 3**0.5
    assert matched["paired_seeds"] == 3 and matched["paired_diff"] == pytest.approx(-2.5)
    assert (matched["paired_low"], matched["paired_high"]) == pytest.approx((-2.5 - half, -2.5 + half), abs=1e-5)
    assert matched["paired_significant"] and matched["seeds"] == 4
    no_circuit = table.loc["no_circuit"]
    assert no_circuit["paired_diff"] == pytest.approx(1 / 3) and not no_circuit["paired_significant"]
    assert table.loc["winner", "paired_diff"] == 0.0 and not table.loc["winner", "paired_significant"]

    write_report(records, PUBLISHED, tmp_path / "out", "twins")
    markdown = (tmp_path / "out" / "tables" / "reproduce_twins.md").read_text()
    assert "| -2.50 [-3.74, -1.26] *  " in markdown and "| +0.33 [-2.54, +3.20]  " in markdown
    assert (
        "fashion_mnist: matched_map is 2.50 points below winner (paired over 3 seeds, 95% CI -3.74 to -1.26): "
        "significant." in markdown
    )
    assert "no_circuit is 0.33 points above winner" in markdown and "not significant (the interval includes 0)" in markdown
    assert (tmp_path / "out" / "figures" / "reproduce_twins_fashion_mnist_paired.png").stat().st_size > 10_000


def test_baselines_keep_the_parameter_split_and_skip_certification():
    classical, cnn = SQDRCNN(quantum=False), ConvNet()
    split = {"encoder": 649, "circuit": 252, "head": 100, "total": 1001}  # Linear(27 -> 9) where the circuit was
    assert classical.parameter_counts() == cnn.parameter_counts() == split
    assert cnn(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    module = SQDRModule(cnn)
    assert module.certification.engine is None and module.run_summary()["engine"] is None
    assert [len(group["params"]) for group in module.configure_optimizers().param_groups][1] == 0  # no circuit angles
    with pytest.raises(ValueError, match="classical map instead of a circuit"):
        cnn.with_engine("lightning", noise=None)


def test_workers_end_when_the_reproduction_is_killed():
    script = (
        "import os, time\n"
        "from sqdr.reproduce.runner import worker_pool\n"
        "pool = worker_pool(1)\n"
        "print(pool.submit(os.getpid).result(), flush=True)\n"
        "pool.submit(time.sleep, 120)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    assert running(worker)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 20
    while running(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    if running(worker):
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the worker kept running after its reproduction was killed")


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited (an exited one may wait as a zombie to be reaped)."""
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False
