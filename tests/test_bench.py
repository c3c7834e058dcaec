"""``sqdr bench``: one tiny measurement through the command line, and clear errors for bad options."""

from __future__ import annotations

import json

import pytest

from sqdr.bench import Case, combine, main, ratios
from sqdr.errors import UserError


def test_one_measurement_prints_a_json_row_with_positive_throughput(capsys):
    case = Case("circuit", "fused", n_qubits=2, n_blocks=1, batch=4)
    main(["--one", json.dumps(case.__dict__), "--min_time", "0.05"])
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for field in ("name", "engine", "n_qubits", "n_blocks", "batch", "encoder", "samples_per_s", "peak_mem_mb",
                  "cores", "threads", "torch", "pennylane"):
        assert field in row, field
    assert (row["name"], row["engine"], row["n_qubits"], row["n_blocks"], row["batch"]) == ("circuit", "fused", 2, 1, 4)
    assert row["samples_per_s"] > 0 and row["peak_mem_mb"] > 0


def test_ratios_compare_fast_and_reference_encoders_of_the_same_run():
    rows = [
        {**Case("train_step", batch=16, encoder="fast").__dict__, "samples_per_s": 300.0},
        {**Case("train_step", batch=16, encoder="reference").__dict__, "samples_per_s": 100.0},
    ]
    assert ratios([rows], rows) == ["train_step batch 16: fast encoder vs the snnTorch reference: 3.00x"]


def test_ratios_over_rounds_are_the_median_of_each_rounds_ratio():
    def round_of(ours: float, qnode: float) -> list[dict]:
        lightning = Case("circuit", "lightning", batch=16)
        torchlayer = Case("circuit", "lightning", batch=16, layer="torchlayer")
        return [
            {**lightning.__dict__, "samples_per_s": ours, "median_s": 16 / ours, "runs": 5, "peak_mem_mb": 700.0},
            {**torchlayer.__dict__, "samples_per_s": qnode, "median_s": 16 / qnode, "runs": 2, "peak_mem_mb": 720.0},
        ]

    # The machine slows down in the second round: each round's ratio stays near 3, the ratio of medians would not.
    rounds = [round_of(150.0, 50.0), round_of(60.0, 30.0), round_of(140.0, 40.0)]
    assert ratios(rounds, rounds[-1]) == ["circuit q=9 L=2: sqdr lightning vs a TorchLayer QNode: 3.00x (rounds: 3, 2, 3.5)"]
    combined = combine([measured[0] for measured in rounds])
    assert combined["samples_per_s"] == 140.0 and combined["runs"] == 15 and combined["rounds"] == 3


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--only", "[trainstep]"], r"unknown measurement\(s\) \['trainstep'\]"),
        (["--grid", "huge"], "grid"),
        (["--rounds", "0"], "--rounds must be 1 or more"),
    ],
)
def test_bad_options_are_user_errors(argv, message):
    with pytest.raises(UserError, match=message):
        main(argv)


def test_epoch_row_reads_as_seconds_per_epoch():
    row = {**Case("epoch", batch=128, encoder="fast").__dict__, "samples_per_s": 2000.0, "median_s": 30.0, "runs": 1,
           "peak_mem_mb": 900.0}
    assert ratios([[row]], [row]) == [
        "one training epoch of 60,000 Fashion-MNIST images at batch 128: 30.0 s, data loading included"
    ]
