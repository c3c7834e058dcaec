"""Every engine computes the same function: outputs and gradients agree with PennyLane's own devices."""

from __future__ import annotations

import pytest
import torch

from sqdr.models.circuit import ReuploadCircuit
from sqdr.models.engines.fused import bloch_rotations, rot_matrices
from sqdr.models.noise import NoiseModel
from sqdr.models.spec import CircuitSpec, resolve_engine

TOLERANCE = 1e-5


def run_engine(circuit: ReuploadCircuit, engine: str, features: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs, input gradient and every parameter's gradient of a weighted sum of the outputs under ``engine``."""
    circuit = circuit.with_engine(engine, noise=circuit.spec.noise)
    circuit.zero_grad()
    features = features.clone().requires_grad_(True)
    expectations = circuit(features)
    weights = torch.linspace(-1.0, 1.0, expectations.shape[1], dtype=expectations.dtype)
    (expectations * weights).sum().backward()
    grads = {f"{name} gradient": p.grad.clone() for name, p in circuit.named_parameters()}
    return {"outputs": expectations.detach(), "input gradient": features.grad, **grads}


def assert_engines_agree(circuit: ReuploadCircuit, reference: str, features: torch.Tensor) -> None:
    fused = run_engine(circuit, "fused", features)
    other = run_engine(circuit, reference, features)
    assert fused.keys() == other.keys()
    assert fused["outputs"].shape == (len(features), circuit.n_outputs)
    for name, a in fused.items():
        b = other[name]
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=TOLERANCE, rtol=0), f"{name} differ by {(a - b).abs().max():.2e}"
        assert name == "outputs" or a.abs().sum() > 0, f"{name} is zero"
    assert fused["outputs"].abs().max() <= 1.0 + 1e-12


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


@pytest.mark.parametrize(
    "n_qubits, n_blocks, entangler", [(2, 1, "chain"), (3, 2, "ring"), (9, 2, "chain"), (4, 3, "chain")]
)
@pytest.mark.parametrize("reference", ["lightning", "default.qubit"])
def test_xyz_readout_matches_pennylane_outputs_and_gradients(n_qubits, n_blocks, entangler, reference):
    """One block (no entangler), two (the O(n) marginals) and three (the full state): every path of ``fused``."""
    torch.manual_seed(100 + n_qubits * 10 + n_blocks)
    circuit = ReuploadCircuit(n_qubits, n_blocks, entangler, init="uniform", readout="xyz").double()
    assert_engines_agree(circuit, reference, torch.rand(3, 3 * n_qubits, dtype=torch.float64))


@pytest.mark.parametrize("noise, n_blocks", [("paper", 2), ({"depolarizing": 0.05, "amplitude_damping": 0.1}, 3)])
def test_xyz_readout_of_noisy_circuit_matches_default_mixed(noise, n_blocks):
    torch.manual_seed(n_blocks)
    circuit = ReuploadCircuit(3, n_blocks, "ring", noise=noise, init="uniform", readout="xyz").double()
    assert_engines_agree(circuit, "default.mixed", torch.rand(2, 9, dtype=torch.float64))


def test_learned_angle_scale_and_offset_match_pennylane():
    torch.manual_seed(4)
    circuit = ReuploadCircuit(
        4, 2, "chain", feature_scale=3.14159, angle_offset=0.3, learn_angle_scale=True, learn_angle_offset=True,
        readout="xyz",
    ).double()
    with torch.no_grad():  # distinct per-feature values, so a mix-up of features would show
        circuit.angle_scale.add_(torch.rand(12, dtype=torch.float64))
        circuit.angle_offset.add_(torch.rand(12, dtype=torch.float64))
    assert_engines_agree(circuit, "lightning", torch.rand(3, 12, dtype=torch.float64))


def test_xyz_readout_starts_with_the_z_readout():
    torch.manual_seed(5)
    z = ReuploadCircuit(5, 3, "ring").double()
    xyz = ReuploadCircuit(5, 3, "ring", readout="xyz").double()
    xyz.load_state_dict(z.state_dict())
    features = torch.rand(4, 15, dtype=torch.float64)
    both = xyz(features)
    assert both.shape == (4, 15)
    assert torch.equal(both[:, :5], z(features))
    # Every qubit's Bloch vector (<X>, <Y>, <Z>) has length at most 1 (1 for a pure single-qubit state).
    bloch = both.view(4, 3, 5).square().sum(1)
    assert (bloch <= 1 + 1e-12).all()


def test_learned_angles_start_at_the_fixed_values_and_train_with_the_circuit():
    torch.manual_seed(6)
    fixed = ReuploadCircuit(3, 2, feature_scale=2.0, angle_offset=0.5).double()
    learned = ReuploadCircuit(3, 2, feature_scale=2.0, angle_offset=0.5, learn_angle_scale=True,
                              learn_angle_offset=True).double()
    learned.weights.data.copy_(fixed.weights.data)
    features = torch.rand(4, 9, dtype=torch.float64)
    assert torch.equal(learned(features), fixed(features))
    assert [name for name, _ in learned.named_parameters()] == ["weights", "angle_scale", "angle_offset"]
    assert sum(p.numel() for p in learned.parameters()) == 18 + 9 + 9
    assert list(fixed.state_dict()) == ["weights"]  # fixed values are not state


def test_xyz_readout_with_shots_estimates_every_pauli():
    torch.manual_seed(7)
    circuit = ReuploadCircuit(3, 2, readout="xyz", shots=20000).double()
    exact = ReuploadCircuit(3, 2, readout="xyz").double()
    exact.load_state_dict(circuit.state_dict())
    features = torch.rand(2, 9, dtype=torch.float64)
    assert torch.allclose(circuit(features), exact(features), atol=0.05)


def test_unknown_readout_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown readout 'xy'"):
        ReuploadCircuit(2, 1, readout="xy")


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


@pytest.mark.parametrize("readout", ["z", "xyz"])
def test_lightning_circuit_exports_to_openqasm(readout):
    circuit = ReuploadCircuit(3, 2, "chain", engine="lightning", readout=readout)
    qasm = circuit.engine.to_openqasm(torch.rand(3, 3), circuit.weights)
    assert " q[" in qasm and "h q[" not in qasm  # the circuit's gates only, no basis change before measuring
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


@pytest.mark.parametrize(
    "n_qubits, n_blocks, noise, expected",
    [
        (9, 2, None, "fused"),
        (24, 2, None, "fused"),  # two blocks never build the full state
        (20, 3, None, "fused"),
        (21, 3, None, "lightning"),
        (10, 3, "paper", "fused"),
        (11, 3, "paper", "default.mixed"),
    ],
)
def test_auto_engine_picks_fused_until_a_batch_of_states_is_too_large(n_qubits, n_blocks, noise, expected):
    spec = CircuitSpec(n_qubits, n_blocks, noise=NoiseModel.parse(noise))
    assert resolve_engine("auto", spec) == expected
    assert resolve_engine("lightning", spec) == "lightning"  # a named engine is never replaced


def test_auto_engine_runs_and_records_the_engine_it_picked():
    torch.manual_seed(0)
    auto = ReuploadCircuit(4, 3, engine="auto").double()
    fused = ReuploadCircuit(4, 3, engine="fused").double()
    fused.load_state_dict(auto.state_dict())
    features = torch.rand(5, 12, dtype=torch.float64)
    assert auto.engine.name == "fused"
    assert torch.equal(auto(features), fused(features))


def test_bloch_rotation_is_the_rotation_of_rot_and_its_gradient_matches_finite_differences():
    torch.manual_seed(5)
    angles = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
    rotation = bloch_rotations(angles)
    unitary = rot_matrices(angles.detach())
    paulis = torch.tensor([[[0, 1], [1, 0]], [[0, -1j], [1j, 0]], [[1, 0], [0, -1]]], dtype=torch.complex128)
    # R[j, k] = Tr(σ_j U σ_k U†) / 2
    expected = torch.einsum("jab,...bc,kcd,...ad->...jk", paulis, unitary, paulis, unitary.conj()).real / 2
    assert torch.allclose(rotation, expected, atol=1e-12)
    assert torch.autograd.gradcheck(bloch_rotations, (angles,))
