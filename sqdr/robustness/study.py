"""The noise study proper: a grid of noise settings and a trained model's test accuracy at each of them.

Every grid point runs the model through :meth:`SQDRCNN.with_engine`, a view that shares all trained parameters
and differs only in the circuit's simulator and noise model, so the model handed in is never modified (it can be
in use elsewhere, e.g. still training) and every number answers one question: how much accuracy does this very
model lose on noisy hardware? The encoder does not see the noise, so its outputs are computed once and every grid
point reuses them: the grid costs little more than one pass of the circuit per point, and with ``rate`` coding
every point sees the very same spike trains.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from sqdr.models import SQDRCNN
from sqdr.models.noise import NoiseSpec

#: The name of the noiseless reference point (``test/acc``) in results and tables.
NOISELESS = "none"
#: The simulator of every grid point: the only engine that is both exact under noise and fast enough for a grid.
ENGINE = "fused"

Batches = list[tuple[Tensor, Tensor]]  # (circuit inputs, labels) per test batch


@dataclass(frozen=True)
class GridPoint:
    """One noise setting: a single channel at ``level``, a named preset (``level`` None) or the noiseless model."""

    name: str
    level: float | None
    noise: NoiseSpec


@dataclass(frozen=True)
class Result:
    """One evaluated noise setting; ``level`` is None for a named preset, ``shots`` None for exact expectations."""

    channel: str
    level: float | None
    accuracy: float
    n_samples: int
    shots: int | None

    @property
    def on_grid(self) -> bool:
        """A (channel, level) point, as opposed to the noiseless reference or a preset."""
        return self.level is not None and self.channel != NOISELESS

    @property
    def metric(self) -> str:
        """The logged name: ``test/acc``, ``test/acc@<preset>`` or ``test/acc@<channel>=<level>``."""
        if self.channel == NOISELESS:
            return "test/acc"
        if self.level is None:
            return f"test/acc@{self.channel}"
        return f"test/acc@{self.channel}={self.level:g}"


def grid_points(channels: Sequence[str], levels: Iterable[float], preset: str | None) -> list[GridPoint]:
    """The noiseless reference, every (channel, level), then the preset.

    Channels keep the order given and levels are sorted, each without repeats; level 0 is evaluated as a
    zero-probability noise model, which checks that the noisy simulation reproduces the noiseless accuracy.
    """
    points = [GridPoint(NOISELESS, 0.0, None)]
    points += [
        GridPoint(channel, level, {channel: level})
        for channel in dict.fromkeys(channels)
        for level in sorted({float(level) for level in levels})
    ]
    return points + ([GridPoint(preset, None, preset)] if preset else [])


@torch.no_grad()
def encode(net: SQDRCNN, loader: Iterable[tuple[Tensor, Tensor]]) -> Batches:
    """The circuit's inputs for the whole test set (``SQDRCNN.forward`` up to the circuit), computed once."""
    return [(net.encode(images), labels) for images, labels in loader]


@torch.no_grad()
def accuracy(net: SQDRCNN, batches: Batches, noise: NoiseSpec, shots: int | None) -> float:
    """Test accuracy of ``net``'s trained parameters with the circuit simulated under ``noise``."""
    noisy = net.with_engine(ENGINE, noise=noise, shots=shots)
    metric = MulticlassAccuracy(net.num_classes, average="micro")
    for features, labels in batches:
        metric.update(noisy.classify(features).argmax(1), labels)
    return round(float(metric.compute()), 6)  # k/n in float32 carries noise in the 8th digit


def evaluate(net: SQDRCNN, batches: Batches, points: Sequence[GridPoint], shots: int | None, seed: int) -> list[Result]:
    """The accuracy at every grid point, each drawing the same shot samples (the generator is reseeded per point)."""
    from rich.progress import track

    n_samples = sum(len(labels) for _, labels in batches)
    results = []
    for point in track(points, description="noise grid", disable=not sys.stdout.isatty()):
        torch.manual_seed(seed)
        results.append(Result(point.name, point.level, accuracy(net, batches, point.noise, shots), n_samples, shots))
    return results
