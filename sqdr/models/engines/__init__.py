"""Engines execute a :class:`~sqdr.models.circuit.CircuitSpec`: ``engine(data (B, n, 3), weights (L, n, 3)) -> (B, n)``."""

from __future__ import annotations

from sqdr.models.circuit import CircuitSpec
from sqdr.models.engines.fused import FusedEngine
from sqdr.models.engines.pennylane import DEVICES, PennyLaneEngine

ENGINES = ("fused", *DEVICES)


def make_engine(name: str, spec: CircuitSpec, shots: int | None = None):
    """The engine called ``name`` (one of :data:`ENGINES`) for ``spec``."""
    if shots is not None and shots < 1:
        raise ValueError(f"shots must be a positive number of measurement samples (or null for exact), got {shots}.")
    if name == "fused":
        return FusedEngine(spec, shots)
    if name in DEVICES:
        return PennyLaneEngine(name, spec, shots)
    raise ValueError(f"Unknown engine {name!r}; choose one of {list(ENGINES)}.")


__all__ = ["ENGINES", "FusedEngine", "PennyLaneEngine", "make_engine"]
