"""Every shipped config and study file loads as written (configs resolve through the fit CLI, studies validate)."""

from __future__ import annotations

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
