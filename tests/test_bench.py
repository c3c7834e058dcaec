"""``sqdr bench``: one tiny measurement through the command line, and clear errors for bad options."""

from __future__ import annotations

import json

import pytest

from sqdr.bench import Case, main, ratios
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
    assert ratios(rows) == ["train_step batch 16: fast encoder is 3.00x the snnTorch reference"]


@pytest.mark.parametrize(
    "argv, message",
    [(["--only", "[trainstep]"], r"unknown measurement\(s\) \['trainstep'\]"), (["--grid", "huge"], "grid")],
)
def test_bad_options_are_user_errors(argv, message):
    with pytest.raises(UserError, match=message):
        main(argv)


def test_epoch_row_reads_as_seconds_per_epoch():
    row = {**Case("epoch", batch=128, encoder="fast").__dict__, "samples_per_s": 2000.0, "median_s": 30.0}
    assert ratios([row]) == [
        "one training epoch of 60,000 Fashion-MNIST images at batch 128: 30.0 s, data loading included"
    ]
