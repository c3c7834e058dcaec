"""The data re-uploading circuit (Pérez-Salinas et al., Quantum 4:226, 2020) as a module with trainable angles.

Per block ``b`` and qubit ``i``: ``Rot(x[i, 0], x[i, 1], x[i, 2])`` with the data angles (the same in
every block: that is the re-uploading), then a trainable ``Rot(θ[b, i, :])``; between blocks an entangler
of CZ gates (``chain``: (i, i+1); ``ring``: the chain closed by (n-1, 0)); finally ``<Z_i>`` on every
qubit (readout ``z``), or ``<Z_i>``, ``<X_i>`` and ``<Y_i>`` (readout ``xyz``: three times the information
from the same circuit, read from the same single-qubit states). Data angles are
``scale * features + offset``, features being the encoder's firing rates in [0, 1]; scale and offset are
either fixed numbers (``feature_scale``, ``angle_offset``) or trainable, one per feature, starting there.

:class:`ReuploadCircuit` owns the trainable angles and delegates execution to an engine. All engines
read the same :class:`~sqdr.models.spec.CircuitSpec` and the same ``weights`` tensor, so a ``state_dict``
moves freely between engines, and :meth:`ReuploadCircuit.with_engine` runs the same angles elsewhere.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Literal

import torch
from torch import nn

from sqdr.models.engines import make_engine
from sqdr.models.noise import NoiseModel, NoiseSpec
from sqdr.models.spec import CircuitSpec, EngineName, Entangler, Readout

Init = Literal["normal", "uniform"]


def init_weights(weights: torch.Tensor, init: Init, init_range: Sequence[float]) -> None:
    """The reference initialisations: truncated N(0, 1) on ``init_range`` or uniform on it."""
    low, high = init_range
    if init == "normal":
        nn.init.trunc_normal_(weights, mean=0.0, std=1.0, a=low, b=high)
    elif init == "uniform":
        nn.init.uniform_(weights, low, high)
    else:
        raise ValueError(f"Unknown init {init!r}; choose 'normal' or 'uniform'.")


class ReuploadCircuit(nn.Module):
    """Trainable angles ``weights`` of shape ``(n_blocks, n_qubits, 3)`` and the engine that runs them.

    ``forward(features)`` maps ``(B, 3 * n_qubits)`` features to ``(B, n_outputs)`` expectations: ``<Z_i>``
    (readout ``z``), or ``<Z_i>`` then ``<X_i>`` then ``<Y_i>`` (readout ``xyz``).

    ``learn_angle_scale`` / ``learn_angle_offset`` make the data angles' scale / offset trainable parameters
    ``angle_scale`` / ``angle_offset`` of shape ``(3 * n_qubits,)``, one per feature: each feature then finds the
    angle range where it separates classes best, instead of all sharing one fixed ``feature_scale``. They are
    circuit parameters (trained at the circuit's learning rate); fixed values add nothing to the ``state_dict``.
    """

    def __init__(
        self,
        n_qubits: int = 9,
        n_blocks: int = 2,
        entangler: Entangler = "chain",
        engine: EngineName = "fused",
        noise: NoiseSpec = None,
        shots: int | None = None,
        feature_scale: float = 1.0,
        init: Init = "normal",
        init_range: Sequence[float] = (0.0, 2 * math.pi),
        readout: Readout = "z",
        angle_offset: float = 0.0,
        learn_angle_scale: bool = False,
        learn_angle_offset: bool = False,
    ) -> None:
        super().__init__()
        self.spec = CircuitSpec(n_qubits, n_blocks, entangler, NoiseModel.parse(noise), readout)
        self.feature_scale = feature_scale
        self.weights = nn.Parameter(torch.empty(n_blocks, n_qubits, 3))
        init_weights(self.weights.data, init, init_range)
        self.angle_scale = self._angle_parameter(learn_angle_scale, feature_scale)
        self.angle_offset = self._angle_parameter(learn_angle_offset, angle_offset)
        self.fixed_angle_offset = angle_offset
        self.engine = make_engine(engine, self.spec, shots)

    def _angle_parameter(self, learn: bool, start: float) -> nn.Parameter | None:
        """One trainable value per feature starting at ``start``, or None (the fixed number applies)."""
        return nn.Parameter(torch.full((self.spec.n_features,), float(start))) if learn else None

    @property
    def n_outputs(self) -> int:
        """Values per sample: ``n_qubits`` for readout ``z``, ``3 * n_qubits`` for ``xyz``."""
        return self.spec.n_outputs

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.shape[-1] != self.spec.n_features:
            raise ValueError(
                f"The circuit reads {self.spec.n_features} features (3 per qubit), got {features.shape[-1]}."
            )
        scale = self.feature_scale if self.angle_scale is None else self.angle_scale
        offset = self.fixed_angle_offset if self.angle_offset is None else self.angle_offset
        angles = (features * scale + offset).reshape(-1, self.spec.n_qubits, 3)
        return self.engine(angles, self.weights.to(angles.dtype))

    def with_engine(self, engine: EngineName, *, noise: NoiseSpec | NoiseModel, shots: int | None = None) -> ReuploadCircuit:
        """The same trained angles (shared, not copied) run by another engine and noise model; ``self`` is untouched.

        Pass ``noise=circuit.spec.noise`` to keep the current noise model. Used to certify a model on PennyLane's
        devices and to evaluate a trained model under hardware noise.
        """
        other = copy.copy(self)  # a shallow copy shares the parameter dict, so both train the same angles
        other.spec = replace(self.spec, noise=NoiseModel.parse(noise))
        other.engine = make_engine(engine, other.spec, shots)
        return other

    def extra_repr(self) -> str:
        spec = self.spec
        return (
            f"n_qubits={spec.n_qubits}, n_blocks={spec.n_blocks}, entangler={spec.entangler!r}, "
            f"engine={self.engine.name!r}, noise={spec.noise}, readout={spec.readout!r}, "
            f"feature_scale={self.feature_scale}{' (learned)' if self.angle_scale is not None else ''}, "
            f"angle_offset={self.fixed_angle_offset}{' (learned)' if self.angle_offset is not None else ''}"
        )
