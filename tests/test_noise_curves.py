"""Noise-trained against noiseless-trained: a real reproduction of tiny models, every run under every setting."""

from __future__ import annotations

import pandas as pd
import yaml

from sqdr.models.noise import PRESETS
from sqdr.reproduce.command import main
from sqdr.reproduce.noise_curves import LEVELS
from test_reproduce import TINY_FIT


def test_every_trained_variant_is_scored_under_every_setting_and_its_noiseless_score_is_its_test_accuracy(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_FIT))
    variants = {
        "paper": {"group": "paper"},
        "noisy_hardware": {"group": "noise", "overrides": {"model.net.init_args.noise": "hardware"}},
    }
    budget = {
        "seeds": [0, 1],
        "datasets": {"synthetic": {"config": str(config), "variants": list(variants)}},
        "noise": {"dataset": "synthetic", "compare": list(variants)},
    }
    path = tmp_path / "set.yaml"
    path.write_text(yaml.safe_dump({"variants": variants, "budgets": {"noise": budget}}))
    main(["--experiments", str(path), "--budget", "noise", "--runs_dir", str(tmp_path / "runs"),
          "--out", str(tmp_path / "out")])

    frame = pd.read_csv(tmp_path / "out" / "tables" / "noise_noise.csv")
    settings = ["none", *(f"depolarizing={level:g}" for level in LEVELS), *PRESETS]
    assert sorted(map(tuple, frame[["trained", "seed"]].drop_duplicates().values)) == [
        ("noisy_hardware", 0), ("noisy_hardware", 1), ("paper", 0), ("paper", 1)
    ]
    for _, rows in frame.groupby(["trained", "seed"]):
        assert list(rows["setting"]) == settings
        by_setting = rows.set_index("setting")["accuracy"]
        assert by_setting["depolarizing=0"] == by_setting["none"]  # the density-matrix path at zero noise
    runs = pd.read_csv(tmp_path / "out" / "tables" / "reproduce_noise_runs.csv").set_index(["variant", "seed"])
    noiseless = frame[frame["setting"] == "none"].set_index(["trained", "seed"])["accuracy"]
    for (variant, seed), accuracy in noiseless.items():
        if variant == "paper":  # trained and tested noiselessly: the study's noiseless point is its test accuracy
            assert accuracy == round(100 * runs.loc[(variant, seed), "test_acc"], 4)
    markdown = (tmp_path / "out" / "tables" / "noise_noise.md").read_text()
    assert "| trained under   |   seeds | none" in markdown and "| noisy_hardware  |       2 |" in markdown
    assert (tmp_path / "out" / "figures" / "noise_noise.png").stat().st_size > 10_000
