"""Engines execute a :class:`~sqdr.models.spec.CircuitSpec`:
``engine(data (B, n, 3), weights (L, n, 3)) -> (B, spec.n_outputs)`` (``(B, n)`` ``<Z_i>`` for readout ``z``)."""

from __future__ import annotations

from sqdr.models.engines.fused import FusedEngine
from sqdr.models.engines.pennylane import PennyLaneEngine
from sqdr.models.spec import CircuitSpec, engine_info, resolve_engine


def make_engine(name: str, spec: CircuitSpec, shots: int | None = None) -> FusedEngine | PennyLaneEngine:
    """The engine called ``name`` (``auto`` or one of :data:`sqdr.models.spec.ENGINES`) for ``spec``; its
    ``name`` is the engine that runs, which every run records (``auto`` resolved by :func:`resolve_engine`)."""
    name = resolve_engine(name, spec)
    info = engine_info(name)
    if shots is not None and shots < 1:
        raise ValueError(f"shots must be a positive number of measurement samples (or null for exact), got {shots}.")
    if name == "fused":
        return FusedEngine(spec, shots)
    return PennyLaneEngine(info, spec, shots)


__all__ = ["FusedEngine", "PennyLaneEngine", "make_engine"]
