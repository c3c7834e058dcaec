"""Every engine computes the same function: outputs and gradients agree with PennyLane's own devices."""

from __future__ import annotations

import pytest
import torch

from sqdr.models.circuit import ReuploadCircuit

TOLERANCE = 1e-5


def run_engine(circuit: ReuploadCircuit, engine: str, features: torch.Tensor):
    """Outputs, input gradient and weight gradient of a weighted sum of ``<Z_i>`` under ``engine``."""
    circuit = circuit.with_engine(engine, noise=circuit.spec.noise)
    circuit.zero_grad()
    features = features.clone().requires_grad_(True)
    expectations = circuit(features)
    weights = torch.linspace(-1.0, 1.0, expectations.shape[1], dtype=expectations.dtype)
    (expectations * weights).sum().backward()
    return expectations.detach(), features.grad, circuit.weights.grad.clone()


def assert_engines_agree(circuit: ReuploadCircuit, reference: str, features: torch.Tensor) -> None:
    fused = run_engine(circuit, "fused", features)
    other = run_engine(circuit, reference, features)
    for name, a, b in zip(("outputs", "input gradient", "weight gradient"), fused, other):
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=TOLERANCE, rtol=0), f"{name} differ by {(a - b).abs().max():.2e}"
    assert fused[0].abs().max() <= 1.0 + 1e-12
    assert fused[1].abs().sum() > 0 and fused[2].abs().sum() > 0


@pytest.mark.parametrize(
    "n_qubits, n_blocks, entangler",
    [(2, 1, "chain"), (3, 2, "ring"), (4, 3, "chain"), (5, 4, "ring"), (6, 2, "ring"), (7, 2, "chain")],
)
@pytest.mark.parametrize("reference", ["lightning", "default.qubit"])
def test_fused_engine_matches_pennylane_outputs_and_gradients(n_qubits, n_blocks, entangler, reference):
    torch.manual_seed(n_qubits * 10 + n_blocks)
    circuit = ReuploadCircuit(n_qubits, n_blocks, entangler, init="uniform").double()
    features = torch.rand(3, 3 * n_qubits, dtype=torch.float64)
    assert_engines_agree(circuit, reference, features)


@pytest.mark.slow
@pytest.mark.parametrize("n_blocks, entangler", [(1, "chain"), (2, "chain"), (3, "ring"), (4, "ring")])
def test_fused_engine_matches_lightning_at_paper_size(n_blocks, entangler):
    torch.manual_seed(n_blocks)
    circuit = ReuploadCircuit(9, n_blocks, entangler).double()
    features = torch.rand(4, 27, dtype=torch.float64)
    assert_engines_agree(circuit, "lightning", features)
    assert_engines_agree(circuit, "default.qubit", features)


def test_paper_circuit_on_lightning_matches_fused_at_nine_qubits():
    torch.manual_seed(9)
    circuit = ReuploadCircuit(9, 2, "chain").double()
    assert_engines_agree(circuit, "lightning", torch.rand(2, 27, dtype=torch.float64))


def test_fused_engine_matches_pennylane_with_feature_scale():
    torch.manual_seed(3)
    circuit = ReuploadCircuit(3, 2, "chain", feature_scale=3.14159).double()
    assert_engines_agree(circuit, "default.qubit", torch.rand(4, 9, dtype=torch.float64))


def test_single_qubit_circuit_matches_closed_form():
    # One qubit, one block, data Rot(0, a, 0) then trainable Rot(0, b, 0): <Z> = cos(a + b).
    circuit = ReuploadCircuit(1, 1, "chain").double()
    circuit.weights.data = torch.tensor([[[0.0, 0.4, 0.0]]], dtype=torch.float64)
    features = torch.tensor([[0.0, 0.3, 0.0], [0.0, 1.1, 0.0]], dtype=torch.float64)
    expected = torch.cos(features[:, 1] + 0.4).unsqueeze(1)
    assert torch.allclose(circuit(features), expected, atol=1e-12)


def test_state_dict_moves_between_engines():
    torch.manual_seed(0)
    source = ReuploadCircuit(4, 3, "ring", engine="fused").double()
    target = ReuploadCircuit(4, 3, "ring", engine="lightning").double()
    target.load_state_dict(source.state_dict())
    features = torch.rand(5, 12, dtype=torch.float64)
    assert torch.allclose(source(features), target(features), atol=TOLERANCE)


def test_float32_fused_engine_stays_close_to_float64():
    torch.manual_seed(1)
    circuit = ReuploadCircuit(9, 2, "chain")
    features = torch.rand(8, 27)
    single = circuit(features)
    double = circuit.double()(features.double())
    assert single.dtype == torch.float32
    assert torch.allclose(single.double(), double, atol=1e-5)


def test_lightning_circuit_exports_to_openqasm():
    circuit = ReuploadCircuit(3, 2, "chain", engine="lightning")
    qasm = circuit.engine.to_openqasm(torch.rand(3, 3), circuit.weights)
    assert qasm.startswith("OPENQASM 2.0")
    assert qasm.count("cz q[") == 2
    assert qasm.count("measure q[") == 3


def test_unknown_engine_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown engine 'qiskit'; choose one of"):
        ReuploadCircuit(2, 1, engine="qiskit")


def test_wrong_feature_count_is_a_clear_error():
    circuit = ReuploadCircuit(3, 1)
    with pytest.raises(ValueError, match="reads 9 features"):
        circuit(torch.rand(2, 8))


def test_deep_fused_circuit_matches_lightning_across_both_gate_layouts():
    # 8 qubits: gates on qubits 0-3 see >= 16 amplitudes to their right, qubits 4-7 fewer; both layouts run.
    torch.manual_seed(8)
    circuit = ReuploadCircuit(8, 3, "ring", init="uniform").double()
    assert_engines_agree(circuit, "lightning", torch.rand(3, 24, dtype=torch.float64))


def test_deep_fused_circuit_saves_a_few_state_vectors_for_backward_not_one_per_gate():
    n_qubits, n_blocks, batch = 12, 4, 4
    circuit = ReuploadCircuit(n_qubits, n_blocks)
    features = torch.rand(batch, 3 * n_qubits, requires_grad=True)
    saved: list[int] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        circuit(features).sum().backward()
    state_bytes = batch * 2**n_qubits * 8  # complex64
    # Per middle block one saved output, plus the state the reduced density matrices read and the product-state
    # construction: far below the n_qubits * n_blocks states a per-gate einsum chain keeps.
    assert sum(saved) <= 8 * state_bytes
    assert features.grad.abs().sum() > 0
