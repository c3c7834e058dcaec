"""Noise models for the re-upload circuit, as plain configuration.

A :class:`NoiseModel` lists single-qubit channels applied, in a fixed order, after each qubit's pair of
rotations (data ``Rot`` then trainable ``Rot``) in every block, and again after the entangler between
blocks. Every engine that supports noise reads the same :meth:`NoiseModel.channels` list, so they apply
exactly the same channels in exactly the same order.

Amplitude damping may take a constant ``gamma`` or the string ``"feature"``: then
``gamma = sigmoid(angle)`` of one of the qubit's three data angles (``amplitude_damping_feature``), as in
the paper. A data-dependent channel has no meaning after the entangler, so only constant channels are
repeated there (for the ``paper`` preset: bit flip and depolarizing, as published).

``readout`` is not a gate channel: it is the probability that a measured bit is reported flipped, which scales
every Pauli expectation by ``1 - 2 * readout`` (the same, in distribution, for every shot).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

# Order in which channels are applied; engines must follow it.
CHANNEL_ORDER = ("bit_flip", "phase_flip", "depolarizing", "amplitude_damping", "phase_damping")

# ``hardware``: figures of the order superconducting processors publish in their calibrations (a single-qubit
# pulse error of about 3e-4, T1 = T2 = 100 us, readout assignment error of 1-2 %), not those of one device.
# Each qubit's pair of Rot gates compiles to 4 physical pulses of 40 ns, t = 160 ns: gate error 4 x 3e-4 is an
# average infidelity r = 1.2e-3, a depolarizing strength 3r/2 = 1.8e-3 (rounded to 2e-3); amplitude damping
# 1 - exp(-t/T1) = 1.6e-3; pure dephasing 1/T_phi = 1/T2 - 1/(2 T1) = 1/(200 us), phase damping
# 1 - exp(-2t/T_phi) = 1.6e-3. The noise model repeats the same constant strengths after the CZ layer, which is
# kind to the circuit: real CZ gates err several times more than single-qubit pulses.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"bit_flip": 0.02, "depolarizing": 0.03, "amplitude_damping": "feature"},
    "hardware": {"depolarizing": 0.002, "amplitude_damping": 0.0016, "phase_damping": 0.0016, "readout": 0.015},
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
    readout: float = 0.0

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
        if isinstance(self.readout, str) or not 0.0 <= float(self.readout) <= 0.5:
            raise ValueError(f"readout is the probability of a flipped measured bit, in [0, 0.5], got {self.readout!r}.")
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

    def read(self, expectations):
        """Expectations as a measurement with this model's readout error reports them."""
        return expectations * (1 - 2 * self.readout) if self.readout else expectations

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
