"""Noisy circuits: the fused density-matrix mode against PennyLane's default.mixed, zero noise, and shots."""

from __future__ import annotations

import pytest
import torch

from sqdr.models.circuit import ReuploadCircuit
from sqdr.models.noise import NoiseModel
from test_engines import assert_engines_agree

CHANNELS = ["bit_flip", "phase_flip", "depolarizing", "amplitude_damping", "phase_damping"]


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("n_qubits, n_blocks, entangler", [(2, 2, "chain"), (3, 3, "ring"), (4, 1, "chain")])
def test_fused_density_matrix_matches_default_mixed_per_channel(channel, n_qubits, n_blocks, entangler):
    torch.manual_seed(len(channel) + n_qubits)
    circuit = ReuploadCircuit(n_qubits, n_blocks, entangler, noise={channel: 0.15}).double()
    assert_engines_agree(circuit, "default.mixed", torch.rand(3, 3 * n_qubits, dtype=torch.float64))


@pytest.mark.parametrize("n_qubits, n_blocks, entangler", [(2, 2, "chain"), (3, 2, "ring"), (5, 2, "chain"), (4, 3, "chain")])
def test_fused_density_matrix_matches_default_mixed_for_paper_preset(n_qubits, n_blocks, entangler):
    torch.manual_seed(n_qubits)
    circuit = ReuploadCircuit(n_qubits, n_blocks, entangler, noise="paper").double()
    assert_engines_agree(circuit, "default.mixed", torch.rand(2, 3 * n_qubits, dtype=torch.float64))


@pytest.mark.parametrize("readout", ["z", "xyz"])
@pytest.mark.parametrize("n_qubits, n_blocks", [(3, 2), (3, 3)])
def test_fused_matches_default_mixed_for_the_hardware_preset(n_qubits, n_blocks, readout):
    """Gate channels and readout error together; default.mixed applies the readout error as a channel before
    measuring, fused as a scale on the expectations: two formulations, one answer (values and gradients)."""
    torch.manual_seed(n_qubits + n_blocks)
    circuit = ReuploadCircuit(n_qubits, n_blocks, "chain", noise="hardware", readout=readout).double()
    assert_engines_agree(circuit, "default.mixed", torch.rand(2, 3 * n_qubits, dtype=torch.float64))


@pytest.mark.parametrize("readout", ["z", "xyz"])
def test_readout_error_scales_every_expectation_by_one_minus_twice_the_flip_probability(readout):
    torch.manual_seed(3)
    features = torch.rand(4, 9, dtype=torch.float64)
    exact = ReuploadCircuit(3, 2, "chain", readout=readout).double()
    misread = exact.with_engine("fused", noise={"readout": 0.1})
    torch.testing.assert_close(misread(features), 0.8 * exact(features))
    assert_engines_agree(misread, "default.mixed", features)


def test_feature_driven_amplitude_damping_reads_the_chosen_angle():
    torch.manual_seed(0)
    noise = {"amplitude_damping": "feature", "amplitude_damping_feature": 2, "bit_flip": 0.05}
    circuit = ReuploadCircuit(3, 2, "chain", noise=noise).double()
    assert_engines_agree(circuit, "default.mixed", torch.rand(2, 9, dtype=torch.float64))


@pytest.mark.slow
def test_fused_density_matrix_matches_default_mixed_at_paper_size():
    torch.manual_seed(9)
    circuit = ReuploadCircuit(9, 2, "chain", noise="paper").double()
    assert_engines_agree(circuit, "default.mixed", torch.rand(1, 27, dtype=torch.float64))


@pytest.mark.parametrize("n_blocks", [1, 2, 3])
def test_zero_noise_equals_the_noiseless_engines(n_blocks):
    torch.manual_seed(n_blocks)
    zero = {name: 0.0 for name in CHANNELS}
    noisy = ReuploadCircuit(4, n_blocks, "ring", noise=zero).double()
    pure = ReuploadCircuit(4, n_blocks, "ring").double()
    pure.load_state_dict(noisy.state_dict())
    features = torch.rand(5, 12, dtype=torch.float64)
    assert noisy.engine.mixed and not pure.engine.mixed
    assert torch.allclose(noisy(features), pure(features), atol=1e-12)
    assert torch.allclose(noisy(features), pure.with_engine("lightning", noise=None)(features), atol=1e-6)


def test_noise_pulls_expectations_towards_zero():
    torch.manual_seed(0)
    circuit = ReuploadCircuit(3, 2, "chain", init="uniform").double()
    features = torch.rand(64, 9, dtype=torch.float64)
    clean = circuit(features).abs().mean()
    noisy = circuit.with_engine("fused", noise={"depolarizing": 0.3})
    assert noisy(features).abs().mean() < 0.8 * clean


def test_shot_estimates_converge_to_the_exact_expectation():
    """Binomial estimates: the mean error over 9 qubits x 64 samples shrinks like 1/sqrt(shots)."""
    torch.manual_seed(20200626)
    exact_circuit = ReuploadCircuit(9, 2, "chain", noise="paper").double()
    features = torch.rand(64, 27, dtype=torch.float64)
    exact = exact_circuit(features).detach()
    errors = {}
    for shots in (100, 10_000):
        estimate = exact_circuit.with_engine("fused", noise="paper", shots=shots)(features).detach()
        assert torch.all((estimate * shots).round() % 2 == shots % 2)  # (zeros - ones) has the parity of shots
        errors[shots] = (estimate - exact).abs().mean().item()
    # The standard error of one estimate is sqrt((1 - <Z>^2) / shots) <= 1/sqrt(shots); with 576 estimates the
    # mean absolute error sits near 0.8/sqrt(shots), far inside these bounds for this seed.
    assert errors[100] < 0.1
    assert errors[10_000] < 0.01
    assert errors[10_000] < errors[100] / 5


def test_shots_keep_a_straight_through_gradient():
    circuit = ReuploadCircuit(3, 2, shots=50)
    features = torch.rand(4, 9, requires_grad=True)
    circuit(features).sum().backward()
    assert features.grad.abs().sum() > 0 and circuit.weights.grad.abs().sum() > 0


def test_paper_preset_is_bit_flip_depolarizing_and_feature_damping():
    model = NoiseModel.parse("paper")
    assert model.channels() == [("bit_flip", 0.02), ("depolarizing", 0.03), ("amplitude_damping", "feature")]
    assert model.entangler_channels() == [("bit_flip", 0.02), ("depolarizing", 0.03)]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("loud", "Unknown noise preset 'loud'"),
        ({"depolarizing": 1.5}, "needs a probability in"),
        ({"bit_flip": "feature"}, "needs a probability in"),
        ({"amplitude_damping": "feature", "amplitude_damping_feature": 3}, "one of a qubit's 3 data angles"),
        ({"readout": 0.6}, "probability of a flipped measured bit, in"),
    ],
)
def test_bad_noise_is_a_clear_error(spec, message):
    with pytest.raises(ValueError, match=message):
        NoiseModel.parse(spec)


def test_pure_state_engines_refuse_noise():
    with pytest.raises(ValueError, match="cannot apply noise; use engine 'default.mixed' or 'fused'"):
        ReuploadCircuit(2, 1, engine="lightning", noise="paper")
