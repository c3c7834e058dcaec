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


@pytest.mark.parametrize("name", ["fashion_mnist_best_1k", "fashion_mnist_best_5k"])
def test_best_configs_one_cycle_spans_exactly_their_training_steps(name):
    """OneCycleLR is stepped per batch and fails past total_steps: it must equal batches per epoch x epochs of the
    split the config asks for (Fashion-MNIST: 60,000 training images, val_fraction of them held out)."""
    from sqdr.cli import make_cli

    cli = make_cli(["--config", str(REPO / f"conf/experiments/{name}.yaml"), "--runs_dir", "unused"], run=False)
    data = cli.datamodule.hparams
    train_images = 60_000 - round(data.val_fraction * 60_000)
    assert train_images == 55_000
    optimizers = cli.model.configure_optimizers()
    schedule = optimizers["lr_scheduler"]
    assert schedule["interval"] == "step"
    assert schedule["scheduler"].total_steps == math.ceil(train_images / data.batch_size) * cli.trainer.max_epochs
    # Each group peaks at its own learning rate, lr or circuit_lr (OneCycleLR starts at max_lr / 25).
    peaks = [group["lr"] * 25 for group in optimizers["optimizer"].param_groups]
    assert peaks == pytest.approx([cli.model.hparams.lr, cli.model.hparams.circuit_lr])


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
        assert resolved["model"]["scheduler"]["init_args"]["total_steps"] == 860 * 40  # 860 batches an epoch
    assert resolved["seed_everything"] == 0
