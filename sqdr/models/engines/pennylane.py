"""PennyLane engines: the same circuit spec as PennyLane operations on PennyLane's own devices.

* ``lightning``: ``lightning.qubit`` with adjoint differentiation (the reference device).
* ``default.qubit``: PennyLane's state-vector device with backpropagation.
* ``default.mixed``: PennyLane's density-matrix device with backpropagation (the noisy reference).

QNodes are built lazily on first use and dropped when pickled or deep-copied (a ``lightning.qubit`` device
cannot be), so models holding these engines still checkpoint and copy cleanly.
"""

from __future__ import annotations

import pennylane as qml
import torch

from sqdr.models.circuit import CircuitSpec
from sqdr.models.noise import NoiseModel

PENNYLANE_CHANNELS = {
    "bit_flip": qml.BitFlip,
    "phase_flip": qml.PhaseFlip,
    "depolarizing": qml.DepolarizingChannel,
    "amplitude_damping": qml.AmplitudeDamping,
    "phase_damping": qml.PhaseDamping,
}

DEVICES = {
    "lightning": ("lightning.qubit", "adjoint"),
    "default.qubit": ("default.qubit", "backprop"),
    "default.mixed": ("default.mixed", "backprop"),
}


def _apply_channels(channels, noise: NoiseModel, wire: int, data) -> None:
    for name, value in channels:
        strength = torch.sigmoid(data[..., noise.amplitude_damping_feature]) if value == "feature" else value
        PENNYLANE_CHANNELS[name](strength, wires=wire)


def reupload_circuit(spec: CircuitSpec, data, weights):
    """Queue the circuit's operations; ``data`` is ``(n, 3)`` (or broadcast ``(B, n, 3)``), ``weights`` ``(L, n, 3)``.

    Returns the ``<Z_i>`` measurements, so this function is the body of every PennyLane QNode here.
    """
    noise = spec.noise
    for block in range(spec.n_blocks):
        for wire in range(spec.n_qubits):
            qml.Rot(data[..., wire, 0], data[..., wire, 1], data[..., wire, 2], wires=wire)
            qml.Rot(weights[block, wire, 0], weights[block, wire, 1], weights[block, wire, 2], wires=wire)
            if noise is not None:
                _apply_channels(noise.channels(), noise, wire, data[..., wire, :])
        if block < spec.n_blocks - 1:
            for pair in spec.cz_pairs:
                qml.CZ(wires=pair)
            if noise is not None:
                for wire in range(spec.n_qubits):
                    _apply_channels(noise.entangler_channels(), noise, wire, data[..., wire, :])
    return [qml.expval(qml.PauliZ(wire)) for wire in range(spec.n_qubits)]


class PennyLaneEngine:
    """Runs the circuit as a QNode on one of PennyLane's devices, one sample at a time.

    Samples run one by one because PennyLane splits broadcast tapes for adjoint differentiation anyway,
    and per-sample execution works on every device and every channel. It is a reference, not the fast path.
    """

    def __init__(self, name: str, spec: CircuitSpec, shots: int | None = None) -> None:
        if name not in DEVICES:
            raise ValueError(f"Unknown PennyLane engine {name!r}; choose one of {sorted(DEVICES)}.")
        if spec.noise is not None and name != "default.mixed":
            raise ValueError(
                f"The {name!r} engine simulates pure states and cannot apply noise; "
                "use engine 'default.mixed' or 'fused' with a noise model."
            )
        self.name = name
        self.spec = spec
        self.shots = shots
        self._qnode = None

    @property
    def qnode(self) -> qml.QNode:
        if self._qnode is None:
            device_name, diff_method = DEVICES[self.name]
            if self.shots:
                diff_method = "parameter-shift"
            device = qml.device(device_name, wires=self.spec.n_qubits)
            qnode = qml.QNode(
                lambda data, weights: reupload_circuit(self.spec, data, weights),
                device,
                interface="torch",
                diff_method=diff_method,
            )
            self._qnode = qml.set_shots(qnode, shots=self.shots) if self.shots else qnode
        return self._qnode

    def __call__(self, data: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``<Z_i>`` for data angles ``(B, n, 3)`` and trainable angles ``(L, n, 3)``; returns ``(B, n)``."""
        rows = [torch.stack(list(self.qnode(sample, weights))) for sample in data]
        return torch.stack(rows).to(data.dtype)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_qnode": None}

    def to_openqasm(self, data: torch.Tensor, weights: torch.Tensor) -> str:
        """The circuit for one sample's data angles ``(n, 3)`` as OpenQASM 2.0 (noise is not exported)."""
        return qml.to_openqasm(self.qnode, measure_all=True)(data.detach(), weights.detach())
