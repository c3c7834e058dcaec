"""Noise models for the re-upload circuit, as plain configuration.

A :class:`NoiseModel` lists single-qubit channels applied, in a fixed order, after each qubit's pair of
rotations (data ``Rot`` then trainable ``Rot``) in every block, and again after the entangler between
blocks. Every engine that supports noise reads the same :meth:`NoiseModel.channels` list, so they apply
exactly the same channels in exactly the same order.

Amplitude damping may take a constant ``gamma`` or the string ``"feature"``: then
``gamma = sigmoid(angle)`` of one of the qubit's three data angles (``amplitude_damping_feature``), as in
the paper. A data-dependent channel has no meaning after the entangler, so only constant channels are
repeated there (for the ``paper`` preset: bit flip and depolarizing, as published).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

# Order in which channels are applied; engines must follow it.
CHANNEL_ORDER = ("bit_flip", "phase_flip", "depolarizing", "amplitude_damping", "phase_damping")

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"bit_flip": 0.02, "depolarizing": 0.03, "amplitude_damping": "feature"},
}

NoiseSpec = None | str | Mapping[str, Any]


@dataclass(frozen=True)
class NoiseModel:
    """Channel strengths; zero means the channel is absent."""

    bit_flip: float = 0.0
    phase_flip: float = 0.0
    depolarizing: float = 0.0
    amplitude_damping: float | str = 0.0
    phase_damping: float = 0.0
    amplitude_damping_feature: int = 0

    def __post_init__(self) -> None:
        for name in CHANNEL_ORDER:
            value = getattr(self, name)
            if name == "amplitude_damping" and value == "feature":
                continue
            if isinstance(value, str) or not 0.0 <= float(value) <= 1.0:
                raise ValueError(
                    f"Noise channel {name!r} needs a probability in [0, 1]"
                    + (" or 'feature'" if name == "amplitude_damping" else "")
                    + f", got {value!r}."
                )
        if self.amplitude_damping_feature not in (0, 1, 2):
            raise ValueError(
                f"amplitude_damping_feature picks one of a qubit's 3 data angles (0, 1 or 2), "
                f"got {self.amplitude_damping_feature!r}."
            )

    @classmethod
    def parse(cls, spec: NoiseSpec) -> NoiseModel | None:
        """Build a model from ``None``, a preset name, or a dict of channel -> probability."""
        if spec is None or isinstance(spec, NoiseModel):
            return spec
        if isinstance(spec, str):
            if spec in ("none", ""):
                return None
            if spec not in PRESETS:
                raise ValueError(f"Unknown noise preset {spec!r}; presets are {sorted(PRESETS)}, or give a dict.")
            return cls(**PRESETS[spec])
        if isinstance(spec, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = set(spec) - known
            if unknown:
                raise ValueError(f"Unknown noise channel(s) {sorted(unknown)}; known: {sorted(known)}.")
            return cls(**dict(spec))
        raise TypeError(f"noise must be None, a preset name or a dict of channel -> probability, got {spec!r}.")

    def channels(self) -> list[tuple[str, float | str]]:
        """The active channels after the rotations, in application order."""
        return [(name, getattr(self, name)) for name in CHANNEL_ORDER if getattr(self, name) not in (0, 0.0)]

    def entangler_channels(self) -> list[tuple[str, float]]:
        """The active channels repeated on every wire after the entangler (constant ones only)."""
        return [(name, p) for name, p in self.channels() if not isinstance(p, str)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
