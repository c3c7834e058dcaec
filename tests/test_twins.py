"""The circuit's classical twins: the same size as the hybrid they stand beside, and trained as it is."""

from __future__ import annotations

import pytest
import torch

from sqdr import SQDRCNN
from sqdr.models.baselines import ConvNet
from sqdr.models.twins import ParameterMatchedMLP
from sqdr.module import SQDRModule

# The 1k model's shape (conf/experiments/fashion_mnist_best_1k.yaml): 977 parameters, 135 of them the circuit's.
BEST_1K = dict(
    coding="direct", time_steps=4, threshold=0.63, surrogate_slope=3.14, encoder_channels=[8, 18, 3],
    convolution="separable", projection="spatial", n_blocks=5, readout="xyz", feature_scale=1.5708,
)


def test_every_twin_of_the_1k_model_has_its_977_parameters():
    hybrid = SQDRCNN(**BEST_1K)
    matched = SQDRCNN(**BEST_1K, quantum=False, classical_map="matched")
    no_circuit = SQDRCNN(**BEST_1K, quantum=False, classical_map="none")
    cnn = ConvNet(encoder_channels=[8, 18, 3], convolution="separable", projection="spatial", n_blocks=5,
                  readout="xyz", classical_map="matched")
    assert hybrid.parameter_counts() == {"encoder": 562, "circuit": 135, "head": 280, "total": 977}
    assert matched.parameter_counts() == hybrid.parameter_counts()
    assert cnn.parameter_counts() == hybrid.parameter_counts()
    assert no_circuit.parameter_counts() == {"encoder": 562, "circuit": 0, "head": 415, "total": 977}
    images = torch.rand(3, 1, 28, 28)
    for model in (matched, no_circuit, cnn):
        assert model(images).shape == (3, 10)


@pytest.mark.parametrize(("n_in", "n_out", "budget", "hidden"), [(27, 27, 135, 2), (27, 9, 54, 2), (27, 10, 415, 11)])
def test_matched_map_has_exactly_its_budget_and_the_cut_weights_stay_zero(n_in, n_out, budget, hidden):
    torch.manual_seed(0)
    mlp = ParameterMatchedMLP(n_in, n_out, budget, output_tanh=True)
    assert sum(p.numel() for p in mlp.parameters()) == budget
    assert mlp.hidden == hidden
    features = torch.rand(5, n_in)
    mlp(features).square().sum().backward()
    # The same map written out with full matrices, the cut weights zero: same values, same gradients.
    units = torch.cat([mlp.weights.detach(), torch.zeros(hidden * (n_in + n_out) - mlp.weights.numel())])
    units = units.view(hidden, n_in + n_out).requires_grad_()
    expected = torch.tanh(torch.tanh(features @ units[:, :n_in].T) @ units[:, n_in:] + mlp.bias.detach())
    torch.testing.assert_close(mlp(features), expected)
    expected.square().sum().backward()
    torch.testing.assert_close(mlp.weights.grad, units.grad.flatten()[: mlp.weights.numel()])
    assert 0 <= hidden * (n_in + n_out) + n_out - budget < n_in + n_out  # only the last unit is cut


def test_matched_map_refuses_a_budget_below_its_biases():
    with pytest.raises(ValueError, match="needs more than 10 parameters"):
        ParameterMatchedMLP(27, 10, 10, output_tanh=False)


def test_twins_start_from_the_hybrids_encoder_for_the_same_seed():
    """Built after the encoder and without drawing from the random state for the hybrid they measure, the twins
    of one seed start from the same encoder weights: paired runs differ in the circuit's place only."""
    models = []
    for options in ({}, {"quantum": False, "classical_map": "matched"}, {"quantum": False, "classical_map": "none"}):
        torch.manual_seed(7)
        models.append(SQDRCNN(**BEST_1K, **options))
    hybrid, *twins = models
    for twin in twins:
        for (name, weight), (_, twin_weight) in zip(hybrid.encoder.state_dict().items(), twin.encoder.state_dict().items()):
            torch.testing.assert_close(weight, twin_weight, rtol=0, atol=0, msg=name)


def test_paper_recipe_classical_layer_is_unchanged_by_the_twins():
    """``classical_map: tanh_layer`` (the default) is the paper-recipe baseline as it was: Linear(27 -> 9) + tanh."""
    model = SQDRCNN(quantum=False)
    assert model.parameter_counts() == {"encoder": 649, "circuit": 252, "head": 100, "total": 1001}


def test_frozen_circuit_keeps_its_initial_angles_while_the_rest_trains():
    torch.manual_seed(0)
    module = SQDRModule(SQDRCNN(in_channels=1, num_classes=4, n_qubits=4, time_steps=2), lr=0.05, freeze_circuit=True)
    angles = module.net.circuit.weights.detach().clone()
    encoder = [p.detach().clone() for p in module.net.encoder.parameters()]
    optimizer = module.configure_optimizers()
    for _ in range(3):
        loss = module.criterion(module(torch.rand(8, 1, 28, 28)), torch.randint(0, 4, (8,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.testing.assert_close(module.net.circuit.weights.detach(), angles, rtol=0, atol=0)
    assert any(not torch.equal(before, after) for before, after in zip(encoder, module.net.encoder.parameters()))
    assert module.net.parameter_counts()["circuit"] == 0 and module.net.parameter_counts(frozen=True)["circuit"] == 24


def test_freezing_a_circuit_that_is_not_there_is_refused():
    with pytest.raises(ValueError, match="freeze_circuit needs a quantum circuit"):
        SQDRModule(SQDRCNN(quantum=False, classical_map="matched"), freeze_circuit=True)
