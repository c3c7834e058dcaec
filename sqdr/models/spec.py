"""What defines the re-upload circuit's function, and which simulators can run it.

This module sits below both :mod:`sqdr.models.circuit` (which owns the trainable angles) and
:mod:`sqdr.models.engines` (which execute a spec), so neither imports the other's internals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from sqdr.models.noise import NoiseModel

Entangler = Literal["chain", "ring"]
Readout = Literal["z", "xyz"]
EngineName = Literal["auto", "fused", "lightning", "default.qubit", "default.mixed"]


@dataclass(frozen=True)
class EngineInfo:
    """How an engine simulates: its PennyLane device and differentiation method (None for ``fused``)."""

    name: str
    device: str | None
    diff_method: str | None
    noise: bool  # can it apply a noise model (density matrices)?


#: Every engine, in the order they are listed to users. The single source of engine names.
ENGINES: dict[str, EngineInfo] = {
    "fused": EngineInfo("fused", None, None, noise=True),
    "lightning": EngineInfo("lightning", "lightning.qubit", "adjoint", noise=False),
    "default.qubit": EngineInfo("default.qubit", "default.qubit", "backprop", noise=False),
    "default.mixed": EngineInfo("default.mixed", "default.mixed", "backprop", noise=True),
}
assert ("auto", *ENGINES) == get_args(EngineName)

#: ``auto`` runs ``fused`` while one sample's state has at most this many amplitudes (16 MB in complex128, so
#: a batch of 64 stays near 1 GB). ``fused`` is faster than ``lightning`` at every size ``sqdr bench`` measures
#: (two orders of magnitude at 9 qubits); beyond this, holding the whole batch's states is what stops it.
AUTO_FUSED_MAX_AMPLITUDES = 2**20

#: The single-qubit Paulis each readout measures on every qubit, in output order: ``xyz`` returns all ``<Z_i>``
#: first, so whatever reads the leading values (the ``none`` head) sees the same ``<Z_i>`` under either readout.
READOUT_PAULIS: dict[str, tuple[str, ...]] = {"z": ("Z",), "xyz": ("Z", "X", "Y")}
assert tuple(READOUT_PAULIS) == get_args(Readout)


def engine_info(name: str) -> EngineInfo:
    """The :class:`EngineInfo` of ``name``, or a ``ValueError`` listing the known engines."""
    if name not in ENGINES:
        raise ValueError(f"Unknown engine {name!r}; choose one of {list(get_args(EngineName))}.")
    return ENGINES[name]


@dataclass(frozen=True)
class CircuitSpec:
    """Everything that defines the circuit's function, independent of how it is simulated."""

    n_qubits: int = 9
    n_blocks: int = 2
    entangler: Entangler = "chain"
    noise: NoiseModel | None = None
    readout: Readout = "z"

    def __post_init__(self) -> None:
        if self.n_qubits < 1:
            raise ValueError(f"n_qubits must be at least 1, got {self.n_qubits}.")
        if self.n_blocks < 1:
            raise ValueError(f"n_blocks must be at least 1, got {self.n_blocks}.")
        if self.entangler not in get_args(Entangler):
            raise ValueError(f"Unknown entangler {self.entangler!r}; choose 'chain' or 'ring'.")
        if self.readout not in READOUT_PAULIS:
            raise ValueError(f"Unknown readout {self.readout!r}; choose one of {list(READOUT_PAULIS)}.")

    @property
    def cz_pairs(self) -> list[tuple[int, int]]:
        """The CZ gates of one entangler layer, in order."""
        pairs = [(i, i + 1) for i in range(self.n_qubits - 1)]
        if self.entangler == "ring" and self.n_qubits > 2:
            pairs.append((self.n_qubits - 1, 0))
        return pairs

    @property
    def n_features(self) -> int:
        return 3 * self.n_qubits

    @property
    def paulis(self) -> tuple[str, ...]:
        """The Paulis measured on every qubit: the output is ``<P_i>`` for each of them in turn, ``i`` fastest."""
        return READOUT_PAULIS[self.readout]

    @property
    def n_outputs(self) -> int:
        return len(self.paulis) * self.n_qubits


def resolve_engine(name: str, spec: CircuitSpec) -> str:
    """``name``, or for ``auto`` the faster exact engine for ``spec``'s size.

    ``auto`` is ``fused`` unless one sample's state, a vector of ``2**n`` amplitudes (a density matrix of
    ``4**n`` under noise), exceeds :data:`AUTO_FUSED_MAX_AMPLITUDES`; then ``lightning`` (``default.mixed`` under
    noise), which simulates one sample at a time. Circuits of one or two blocks never build the full state in
    ``fused`` (see :mod:`sqdr.models.engines.fused`), so they always run there.
    """
    if name != "auto":
        return name
    amplitudes = 4**spec.n_qubits if spec.noise else 2**spec.n_qubits
    if spec.n_blocks <= 2 or amplitudes <= AUTO_FUSED_MAX_AMPLITUDES:
        return "fused"
    return "default.mixed" if spec.noise else "lightning"
