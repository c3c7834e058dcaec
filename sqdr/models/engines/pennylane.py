"""PennyLane engines: the same circuit spec as PennyLane operations on PennyLane's own devices.

* ``lightning``: ``lightning.qubit`` with adjoint differentiation (the reference device). Without shots it runs
  through :class:`LightningAdjoint`: one batch of tapes straight on the device and one adjoint
  vector-Jacobian product per sample in backward, instead of a QNode call per sample that computes the full
  Jacobian (every output's adjoint pass) during the forward pass.
* ``default.qubit``: PennyLane's state-vector device with backpropagation.
* ``default.mixed``: PennyLane's density-matrix device with backpropagation (the noisy reference).

QNodes are built lazily on first use and dropped when pickled or deep-copied (a ``lightning.qubit`` device
cannot be), so models holding these engines still checkpoint and copy cleanly.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pennylane as qml
import torch
from pennylane.devices import ExecutionConfig

from sqdr.models.noise import NoiseModel
from sqdr.models.spec import CircuitSpec, EngineInfo

PENNYLANE_PAULIS = {"Z": qml.PauliZ, "X": qml.PauliX, "Y": qml.PauliY}

PENNYLANE_CHANNELS = {
    "bit_flip": qml.BitFlip,
    "phase_flip": qml.PhaseFlip,
    "depolarizing": qml.DepolarizingChannel,
    "amplitude_damping": qml.AmplitudeDamping,
    "phase_damping": qml.PhaseDamping,
}


def _apply_channels(channels, noise: NoiseModel, wire: int, data) -> None:
    for name, value in channels:
        strength = torch.sigmoid(data[..., noise.amplitude_damping_feature]) if value == "feature" else value
        PENNYLANE_CHANNELS[name](strength, wires=wire)


def measurements(spec: CircuitSpec) -> list:
    """The readout's expectations, in the engines' output order: every qubit's first Pauli, then the next."""
    return [qml.expval(PENNYLANE_PAULIS[name](wire)) for name in spec.paulis for wire in range(spec.n_qubits)]


def reupload_circuit(spec: CircuitSpec, data, weights):
    """Queue the circuit's operations; ``data`` is ``(n, 3)`` (or broadcast ``(B, n, 3)``), ``weights`` ``(L, n, 3)``.

    Returns the readout's measurements, so this function is the body of every PennyLane QNode here.
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
    if noise is not None and noise.readout:
        # A flipped measured bit of probability p scales <X>, <Y> and <Z> alike by 1 - 2p: the depolarizing
        # channel of strength 3p/2 (each Pauli error with probability p/2) just before measuring does exactly that.
        for wire in range(spec.n_qubits):
            qml.DepolarizingChannel(1.5 * noise.readout, wires=wire)
    return measurements(spec)


def reupload_tape(spec: CircuitSpec, data: np.ndarray, weights: np.ndarray) -> qml.tape.QuantumScript:
    """The noiseless circuit for one sample as a tape, built directly (no QNode, no queuing, no transforms).

    Its parameters are, in order, per block and qubit: the three data angles, then the three trainable ones;
    :class:`LightningAdjoint` relies on that order to split gradients between ``data`` and ``weights``.
    """
    operations = []
    for block in range(spec.n_blocks):
        for wire in range(spec.n_qubits):
            operations.append(qml.Rot(*data[wire], wires=wire))
            operations.append(qml.Rot(*weights[block, wire], wires=wire))
        if block < spec.n_blocks - 1:
            operations.extend(qml.CZ(wires=pair) for pair in spec.cz_pairs)
    return qml.tape.QuantumScript(operations, measurements(spec))


class LightningAdjoint(torch.autograd.Function):
    """The readout's expectations of a batch on ``lightning.qubit``, differentiated by the device's adjoint method.

    PennyLane's torch interface would ask for the full Jacobian (one adjoint sweep per output); backward
    only needs its product with the incoming gradient, which ``compute_vjp`` gets in one sweep per sample.
    The tapes of the forward pass are kept for that backward pass.
    """

    @staticmethod
    def forward(ctx, data: torch.Tensor, weights: torch.Tensor, device, spec: CircuitSpec) -> torch.Tensor:
        config = ExecutionConfig(gradient_method="adjoint")
        angles = weights.detach().double().cpu().numpy()
        tapes = [reupload_tape(spec, sample, angles) for sample in data.detach().double().cpu().numpy()]
        ctx.tapes, ctx.device, ctx.config, ctx.spec = tapes, device, config, spec
        return torch.tensor(np.array(device.execute(tapes, config)), dtype=data.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        spec = ctx.spec
        cotangents = grad_output.detach().double().cpu().numpy()
        products = np.array(ctx.device.compute_vjp(ctx.tapes, list(cotangents), ctx.config))
        # One row per sample: (block, qubit, data-or-trainable, angle), the order of reupload_tape's parameters.
        products = torch.tensor(products, dtype=grad_output.dtype).view(-1, spec.n_blocks, spec.n_qubits, 2, 3)
        return products[:, :, :, 0].sum(1), products[:, :, :, 1].sum(0), None, None


class PennyLaneEngine:
    """Runs the circuit on one of PennyLane's devices: ``lightning`` as one batch of tapes, the others as a QNode.

    QNodes run one sample at a time: per-sample execution works on every device, channel and shot setting.
    These engines are the references, not the fast path.
    """

    def __init__(self, info: EngineInfo, spec: CircuitSpec, shots: int | None = None) -> None:
        if spec.noise is not None and not info.noise:
            raise ValueError(
                f"The {info.name!r} engine simulates pure states and cannot apply noise; "
                "use engine 'default.mixed' or 'fused' with a noise model."
            )
        self.info = info
        self.name = info.name
        self.spec = spec
        self.shots = shots
        self._qnode = None
        self._device = None  # the lightning.qubit device LightningAdjoint runs on, built on first use

    @property
    def qnode(self) -> qml.QNode:
        if self._qnode is None:
            diff_method = "parameter-shift" if self.shots else self.info.diff_method
            device = qml.device(self.info.device, wires=self.spec.n_qubits)
            qnode = qml.QNode(
                lambda data, weights: reupload_circuit(self.spec, data, weights),
                device,
                interface="torch",
                diff_method=diff_method,
            )
            self._qnode = qml.set_shots(qnode, shots=self.shots) if self.shots else qnode
        return self._qnode

    def __call__(self, data: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The readout's expectations for data angles ``(B, n, 3)`` and trainable angles ``(L, n, 3)``:
        ``(B, spec.n_outputs)``, in the order of :func:`measurements`."""
        if self.name == "lightning" and not self.shots:
            if self._device is None:
                self._device = qml.device(self.info.device, wires=self.spec.n_qubits)
            return LightningAdjoint.apply(data, weights, self._device, self.spec)
        rows = [torch.stack(list(self.qnode(sample, weights))) for sample in data]
        return torch.stack(rows).to(data.dtype)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_qnode": None, "_device": None}

    def to_openqasm(self, data: torch.Tensor, weights: torch.Tensor) -> str:
        """The circuit for one sample's data angles ``(n, 3)`` as OpenQASM 2.0, every qubit measured in the
        computational basis (noise is not exported).

        The gates are those of the ``z`` readout whatever the readout: ``xyz`` measures non-commuting Paulis on
        each qubit, which hardware obtains from three runs of these gates, measured after a change of basis.
        """
        spec = replace(self.spec, readout="z")
        device = qml.device(self.info.device, wires=spec.n_qubits)
        qnode = qml.QNode(lambda angles, trained: reupload_circuit(spec, angles, trained), device)
        return qml.to_openqasm(qnode, measure_all=True)(data.detach(), weights.detach())
