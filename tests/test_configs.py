"""Every shipped config and study file loads as written (configs resolve through the fit CLI, studies validate);
the shipped best model trains through the CLI."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import yaml

from sqdr.__main__ import main
from sqdr.sweep.study import load_study_file
from sqdr.sweep.trial import validate_trial_args

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted((REPO / "conf" / "experiments").glob("*.yaml"))
STUDIES = sorted((REPO / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_config_resolves_through_the_fit_cli(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["model"]["net"]["class_path"] and resolved["data"]["class_path"]


@pytest.mark.parametrize("study", STUDIES, ids=lambda p: p.stem)
def test_study_file_validates_and_builds_a_trial(study, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    spec = load_study_file(study, storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert spec.n_trials >= 1 and spec.space
    validate_trial_args(spec)


def test_best_1k_config_trains_through_the_cli_with_977_parameters(tmp_path, capsys):
    """The shipped winner end to end in seconds: synthetic 28 x 28 images in place of Fashion-MNIST, one short epoch,
    per-step one-cycle schedule, the xyz readout certified on lightning; the logged parameter split is the model's."""
    main([
        "fit", "--config", str(REPO / "conf/experiments/fashion_mnist_best_1k.yaml"),
        "--runs_dir", str(tmp_path), "--experiment", "best_1k_smoke",
        "--data", "sqdr.data.SyntheticDataModule",
        "--data.n_train", "96", "--data.n_test", "16", "--data.n_classes", "10", "--data.image_size", "28",
        "--trainer.max_epochs", "1", "--trainer.log_every_n_steps", "1", "--model.certify_samples", "4",
    ])  # fmt: skip
    with open(tmp_path / "best_1k_smoke" / "version_0" / "metrics.csv") as metrics:
        rows = list(csv.DictReader(metrics))
    params = next(row for row in rows if row["params/total"])
    assert [float(params[f"params/{k}"]) for k in ("encoder", "circuit", "head", "total")] == [562, 135, 280, 977]
    assert any(row.get("test/acc_lightning") for row in rows)
    gaps = [float(row["test/max_logit_diff_lightning"]) for row in rows if row.get("test/max_logit_diff_lightning")]
    assert gaps and gaps[0] < 1e-4  # the 27 values of the xyz readout are PennyLane's
    assert "test accuracy:" in capsys.readouterr().out


# A small synthetic data set in place of Fashion-MNIST (28x28, one channel) keeps each fit to seconds; the
# overrides change each thing the schedule's length depends on.
SCHEDULE_RUNS = {
    "as shipped": [],
    "another data set": ["--data", "sqdr.data.DigitsDataModule", "--data.init_args.batch_size", "64"],
    "fewer images": ["--data.init_args.n_train", "300"],
    "another batch": ["--data.init_args.batch_size", "48"],
    "more epochs": ["--trainer.max_epochs", "3"],
    "gradient accumulation": ["--trainer.accumulate_grad_batches", "2"],
}


@pytest.mark.parametrize(
    ("name", "change"),
    [("fashion_mnist_best_1k", change) for change in SCHEDULE_RUNS] + [("fashion_mnist_best_5k", "as shipped")],
)
def test_one_cycle_schedule_ends_with_the_run(name, change, tmp_path):
    """OneCycleLR fails past its total_steps and leaves the learning rate high if it stops short: whatever the data
    set, its size, the batch, the epochs or the accumulation, its last step is the run's last optimiser step and
    the last step applies the schedule's floor, max_lr / (div_factor * final_div_factor)."""
    from lightning.pytorch.callbacks import Callback

    from sqdr.cli import make_cli

    class LastSchedule(Callback):
        def on_before_optimizer_step(self, trainer, module, optimizer):
            self.rates = [group["lr"] for group in optimizer.param_groups]  # the rates this step applies

        def on_train_end(self, trainer, module):
            scheduler = trainer.lr_scheduler_configs[0].scheduler
            self.steps = (scheduler.last_epoch, scheduler.total_steps, trainer.global_step)

    seen = LastSchedule()
    args = [
        "fit", "--config", str(REPO / f"conf/experiments/{name}.yaml"),
        "--data", "sqdr.data.SyntheticDataModule", "--data.init_args.batch_size", "64",
        "--data.init_args.n_train", "500", "--data.init_args.val_fraction", "0.1",
        "--trainer.max_epochs", "2", "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false", "--test_after_fit", "false",
        "--model.certify_engine", "none", "--runs_dir", str(tmp_path), *SCHEDULE_RUNS[change],
    ]
    cli = make_cli(args, callbacks=[seen])
    last_step, total_steps, optimiser_steps = seen.steps
    assert last_step == total_steps == optimiser_steps == cli.trainer.estimated_stepping_batches > 0
    peaks = [cli.model.hparams.lr, cli.model.hparams.circuit_lr]
    assert seen.rates == pytest.approx([peak / 25 / 1e4 for peak in peaks])


def test_schedule_shorter_than_the_run_is_refused_before_training(tmp_path, capsys):
    args = [
        "fit", "--config", str(REPO / "conf/experiments/fashion_mnist_best_1k.yaml"),
        "--data", "sqdr.data.SyntheticDataModule", "--model.scheduler.init_args.total_steps", "5",
        "--trainer.max_epochs", "1", "--runs_dir", str(tmp_path),
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "total_steps is 5, but the run takes" in error and "leave total_steps out" in error


def reproduction_runs() -> list:
    """Seed 0 of every data set and variant of every budget of the shipped experiment set."""
    from sqdr.reproduce.plan import load_plan

    document = yaml.safe_load((REPO / "conf/reproduce/experiments.yaml").read_text())
    runs = []
    for budget in document["budgets"]:
        plan = load_plan(REPO / "conf/reproduce/experiments.yaml", budget, "runs/reproduce", seeds=[0])
        runs += [pytest.param(plan, run, id=f"{budget}/{run.dataset.name}/{run.variant.name}") for run in plan.runs]
    return runs


@pytest.mark.parametrize(("plan", "run"), reproduction_runs())
def test_reproduction_run_resolves_through_the_fit_cli(plan, run, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    dependency = plan.dependency(run)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *run.fit_args(dependency.directory if dependency else None), "--print_config"])
    assert exit_info.value.code in (0, None)
    resolved = yaml.safe_load(capsys.readouterr().out)
    if run.variant.name == "best_1k":  # its own config comes after the data set's overrides and wins
        assert resolved["trainer"]["max_epochs"] == 40 and resolved["data"]["init_args"]["batch_size"] == 64
        assert resolved["model"]["scheduler"]["init_args"]["total_steps"] is None  # the run's length, at fit time
    assert resolved["seed_everything"] == 0
