"""SQDR-CNN: spike coding -> spiking encoder -> re-upload circuit -> classical head, trained end to end."""

from __future__ import annotations

import copy
import math
from typing import Literal, Sequence

import torch
from torch import nn

from sqdr.models.circuit import Init, ReuploadCircuit
from sqdr.models.coding import SpikeCoder, SpikeCoding
from sqdr.models.encoder import REFERENCE_BN_MOMENTUM, Neuron, SpikingEncoder, Surrogate
from sqdr.models.noise import NoiseModel, NoiseSpec
from sqdr.models.spec import EngineName, Entangler

Head = Literal["linear", "mlp", "none"]


def make_head(head: Head, n_qubits: int, num_classes: int, hidden: int, relu: bool) -> nn.Module:
    """The classical layer(s) after the circuit; ``none`` reads the first ``num_classes`` expectations as logits."""
    if head == "linear":
        layers: list[nn.Module] = [nn.Linear(n_qubits, num_classes)]
    elif head == "mlp":
        layers = [nn.Linear(n_qubits, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)]
    elif head == "none":
        if num_classes > n_qubits:
            raise ValueError(
                f"head='none' reads one qubit per class, but there are {num_classes} classes and only "
                f"{n_qubits} qubits; use at least {num_classes} qubits or a 'linear' head."
            )
        return ExpectationLogits(num_classes)
    else:
        raise ValueError(f"Unknown head {head!r}; choose 'linear', 'mlp' or 'none'.")
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ExpectationLogits(nn.Module):
    """No classical head: the first ``num_classes`` values ``<Z_i>`` are the logits (the paper's ablation)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, expectations: torch.Tensor) -> torch.Tensor:
        return expectations[:, : self.num_classes]


class SQDRCNN(nn.Module):
    """The hybrid spiking-quantum classifier; ``model(images)`` maps ``(B, C, H, W)`` in [0, 1] to logits.

    Built from plain values only, so configs, ``save_hyperparameters`` and checkpoints stay simple. The
    defaults are the paper's model on MNIST: 803 trainable parameters.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        time_steps: int = 10,
        n_qubits: int = 9,
        n_blocks: int = 2,
        engine: EngineName = "fused",
        noise: NoiseSpec = None,
        shots: int | None = None,
        coding: SpikeCoding = "phase",
        encoder_channels: Sequence[int] | None = None,
        neuron: Neuron = "if",
        beta: float = 0.9,
        threshold: float = 1.0,
        surrogate: Surrogate = "atan",
        surrogate_slope: float = 2.0,
        bn_momentum: float = REFERENCE_BN_MOMENTUM,
        entangler: Entangler = "chain",
        feature_scale: float = 1.0,
        init: Init = "normal",
        init_range: Sequence[float] = (0.0, 2 * math.pi),
        head: Head = "linear",
        head_hidden: int = 32,
        head_relu: bool = False,
    ) -> None:
        super().__init__()
        stages = len(encoder_channels) if encoder_channels is not None else 3
        if image_size < 2**stages:
            raise ValueError(
                f"image_size={image_size} is too small for {stages} pooling stages (needs at least {2 ** stages}); "
                "use fewer encoder_channels or a larger image."
            )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.coder = SpikeCoder(coding, time_steps)
        self.encoder = SpikingEncoder(
            in_channels=in_channels,
            out_features=3 * n_qubits,
            channels=encoder_channels,
            neuron=neuron,
            beta=beta,
            threshold=threshold,
            surrogate=surrogate,
            surrogate_slope=surrogate_slope,
            bn_momentum=bn_momentum,
        )
        self.circuit = ReuploadCircuit(
            n_qubits=n_qubits,
            n_blocks=n_blocks,
            entangler=entangler,
            engine=engine,
            noise=noise,
            shots=shots,
            feature_scale=feature_scale,
            init=init,
            init_range=init_range,
        )
        self.head = make_head(head, n_qubits, num_classes, head_hidden, head_relu)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classify(self.encode(images))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Spike coding and the spiking encoder: the circuit's input features ``(B, 3 * n_qubits)``.

        Split from :meth:`classify` so that evaluations which only change the circuit (other engines, noise)
        encode once and reuse the features.
        """
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(
                f"Expected images of shape (batch, {self.in_channels}, H, W), got {tuple(images.shape)}."
            )
        return self.encoder(self.coder(images))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """The circuit and the head: logits from encoder features."""
        return self.head(self.circuit(features))

    def with_engine(self, engine: EngineName, *, noise: NoiseSpec | NoiseModel, shots: int | None = None) -> SQDRCNN:
        """This model with its circuit run by another engine (and noise model); every parameter is shared.

        ``self`` is never modified, so a model being trained can be certified or stress-tested alongside.
        Pass ``noise=model.circuit.spec.noise`` to keep the current noise model.
        """
        other = copy.copy(self)
        other._modules = dict(self._modules)  # its own child table, so replacing the circuit leaves self alone
        other.circuit = self.circuit.with_engine(engine, noise=noise, shots=shots)
        return other

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters per part: ``encoder``, ``circuit``, ``head`` and ``total``."""
        counts = {
            part: sum(p.numel() for p in getattr(self, part).parameters() if p.requires_grad)
            for part in ("encoder", "circuit", "head")
        }
        counts["total"] = sum(counts.values())
        return counts
