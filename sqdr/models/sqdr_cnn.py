"""SQDR-CNN: spike coding -> spiking encoder -> re-upload circuit -> classical head, trained end to end."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Literal

import torch
from jsonargparse.typing import PositiveInt  # sizes are checked where configs are parsed, before anything is built
from torch import nn

from sqdr.models.circuit import Init, ReuploadCircuit
from sqdr.models.coding import SpikeCoder, SpikeCoding
from sqdr.models.encoder import (
    REFERENCE_BN_MOMENTUM,
    Backend,
    Convolution,
    Neuron,
    Projection,
    ProjectNorm,
    SpikingEncoder,
    Surrogate,
)
from sqdr.models.noise import NoiseModel, NoiseSpec
from sqdr.models.spec import EngineName, Entangler, Readout
from sqdr.models.twins import ClassicalLayer, ClassicalMap, ParameterMatchedMLP, count

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

    Args:
        in_channels: image channels (set from the data module by ``sqdr fit``).
        num_classes: output classes (set from the data module by ``sqdr fit``).
        image_size: image side length, checked against the pooling stages (set from the data module).
        time_steps: spike-coding time steps T (the paper: 10).
        n_qubits: qubits of the re-upload circuit; the encoder emits 3 angles per qubit.
        n_blocks: re-upload blocks (data rotation, trainable rotation, entangler between blocks).
        engine: circuit simulator: ``fused`` (fast, exact), ``lightning`` (PennyLane adjoint),
            ``default.qubit``, ``default.mixed`` (PennyLane's noisy reference), or ``auto``: ``fused`` unless a
            sample's state is too large to hold a batch of them, then ``lightning`` (``default.mixed`` under
            noise). Runs record the engine that ran.
        noise: hardware noise: ``paper``, or a dict such as ``{depolarizing: 0.05}`` (channels: bit_flip,
            phase_flip, depolarizing, amplitude_damping (a probability or ``feature``), phase_damping).
        shots: measurement samples per expectation (null: exact expectations).
        coding: spike coding of the pixels: ``phase`` (the paper's weighted phase coding), ``rate``, ``direct``.
        encoder_channels: widths of the convolution stages (default: 2C, 4C, 8C).
        convolution: ``full`` 3x3 convolutions (the paper) or ``separable`` ones after the first stage (a 3x3
            per input channel, then a 1x1): about a ninth of the weights, so wider stages fit a budget.
        neuron: ``if`` (integrate-and-fire, the paper) or ``leaky`` (with ``beta``).
        beta: membrane decay of leaky neurons.
        threshold: firing threshold of every neuron.
        surrogate: surrogate gradient of the spike: atan, fast_sigmoid, sigmoid, triangular, straight_through.
        surrogate_slope: steepness of the surrogate gradient.
        bn_momentum: BatchNorm momentum of the encoder (the reference uses sqrt(0.1)).
        projection: how the last encoder stage becomes the 3 angles per qubit: ``linear`` (the paper: global
            average pool, ``Linear`` to ``3 * n_qubits``, a layer of output neurons) or ``spatial`` (no linear
            layer: the last stage has 3 channels and is pooled to a ``g x g`` grid with ``g * g = n_qubits``;
            qubit ``i`` reads the 3 channels' firing rates in cell ``i``, row-major).
        project_norm: batch norm on the linear projection's currents before its neurons: ``none`` (the paper),
            ``bn`` (no learned parameters) or ``bn_affine``.
        entangler: CZ pattern between blocks: ``chain`` (i, i+1) or ``ring`` (the chain closed).
        feature_scale: data angles are ``feature_scale * firing rate + angle_offset`` (e.g. 3.14159 for angles
            spanning half a turn); with ``learn_angle_scale`` the initial value of every feature's scale.
        angle_offset: added to every data angle; with ``learn_angle_offset`` every feature's initial offset.
        learn_angle_scale: one trainable scale per feature (``3 * n_qubits`` circuit parameters).
        learn_angle_offset: one trainable offset per feature (``3 * n_qubits`` circuit parameters).
        readout: what the circuit measures on every qubit: ``z`` (``<Z_i>``, the paper: ``n_qubits`` values) or
            ``xyz`` (``<Z_i>``, ``<X_i>``, ``<Y_i>``: ``3 * n_qubits`` values for the head, Z first).
        init: initialisation of the trainable angles: ``normal`` (truncated N(0, 1)) or ``uniform``.
        init_range: the interval of the angle initialisation.
        head: what follows the circuit: ``linear``, ``mlp`` or ``none`` (the first ``num_classes`` <Z_i>).
        head_hidden: hidden width of the ``mlp`` head.
        head_relu: a ReLU after the head, as in the reference implementation.
        quantum: ``False`` puts the classical map ``classical_map`` where the circuit was: the same spiking
            encoder and head around a classical twin of the circuit (:mod:`sqdr.models.twins`).
        classical_map: the twin when ``quantum`` is ``False``: ``tanh_layer`` (``tanh(Linear(3n -> n))``, the
            paper-recipe baseline), ``matched`` (a two-layer tanh network with the circuit's input and output
            widths and exactly its trainable parameters, which ``n_blocks``, ``readout`` and the angle options
            set) or ``none`` (the features straight into a head widened to the circuit's and head's parameters
            together). The circuit's other options then do not apply.
        backend: how the encoder computes: ``kernels`` (numba, CPU only), ``torch`` (plain PyTorch, any device)
            or ``auto`` (``kernels`` for CPU tensors, ``torch`` otherwise); the numbers agree to float rounding.
    """

    #: The parts whose parameters are counted (and whose gradient norms are logged) separately.
    PARTS = ("encoder", "circuit", "head")

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        time_steps: PositiveInt = 10,
        n_qubits: PositiveInt = 9,
        n_blocks: PositiveInt = 2,
        engine: EngineName = "fused",
        noise: NoiseSpec = None,
        shots: PositiveInt | None = None,
        coding: SpikeCoding = "phase",
        encoder_channels: Sequence[int] | None = None,
        convolution: Convolution = "full",
        neuron: Neuron = "if",
        beta: float = 0.9,
        threshold: float = 1.0,
        surrogate: Surrogate = "atan",
        surrogate_slope: float = 2.0,
        bn_momentum: float = REFERENCE_BN_MOMENTUM,
        projection: Projection = "linear",
        project_norm: ProjectNorm = "none",
        entangler: Entangler = "chain",
        feature_scale: float = 1.0,
        angle_offset: float = 0.0,
        learn_angle_scale: bool = False,
        learn_angle_offset: bool = False,
        readout: Readout = "z",
        init: Init = "normal",
        init_range: Sequence[float] = (0.0, 2 * math.pi),
        head: Head = "linear",
        head_hidden: PositiveInt = 32,
        head_relu: bool = False,
        quantum: bool = True,
        classical_map: ClassicalMap = "tanh_layer",
        backend: Backend = "auto",
    ) -> None:
        super().__init__()
        if not quantum and (noise is not None or shots is not None):
            raise ValueError("noise and shots are options of the quantum circuit; drop them or set quantum=True.")
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
            convolution=convolution,
            neuron=neuron,
            beta=beta,
            threshold=threshold,
            surrogate=surrogate,
            surrogate_slope=surrogate_slope,
            bn_momentum=bn_momentum,
            projection=projection,
            project_norm=project_norm,
            backend=backend,
        )
        circuit_options = dict(
            n_qubits=n_qubits,
            n_blocks=n_blocks,
            entangler=entangler,
            feature_scale=feature_scale,
            init=init,
            init_range=init_range,
            readout=readout,
            angle_offset=angle_offset,
            learn_angle_scale=learn_angle_scale,
            learn_angle_offset=learn_angle_offset,
        )
        if quantum:
            self.circuit: nn.Module = ReuploadCircuit(**circuit_options, engine=engine, noise=noise, shots=shots)
            self.head = make_head(head, self.circuit.n_outputs, num_classes, head_hidden, head_relu)
        elif classical_map == "tanh_layer":
            self.circuit = ClassicalLayer(n_qubits)
            self.head = make_head(head, n_qubits, num_classes, head_hidden, head_relu)
        else:
            # The hybrid this model is the twin of, built only to be measured: forking the random state keeps
            # what follows initialised as in the hybrid and the other twins of the same seed.
            with torch.random.fork_rng(devices=[]):
                circuit = ReuploadCircuit(**circuit_options)
                hybrid_head = make_head(head, circuit.n_outputs, num_classes, head_hidden, head_relu)
            if classical_map == "matched":
                self.circuit = ParameterMatchedMLP(3 * n_qubits, circuit.n_outputs, count(circuit), output_tanh=True)
                self.head = make_head(head, circuit.n_outputs, num_classes, head_hidden, head_relu)
            elif classical_map == "none":
                self.circuit = nn.Identity()
                budget = count(circuit) + count(hybrid_head)
                self.head = ParameterMatchedMLP(3 * n_qubits, num_classes, budget, output_tanh=False)
            else:
                raise ValueError(f"Unknown classical_map {classical_map!r}; choose 'tanh_layer', 'matched' or 'none'.")

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

    @property
    def quantum_circuit(self) -> ReuploadCircuit | None:
        """The re-upload circuit, or None when a classical twin stands in its place (``quantum=False``)."""
        return self.circuit if isinstance(self.circuit, ReuploadCircuit) else None

    def with_engine(self, engine: EngineName, *, noise: NoiseSpec | NoiseModel, shots: int | None = None) -> SQDRCNN:
        """This model with its circuit run by another engine (and noise model); every parameter is shared.

        ``self`` is never modified, so a model being trained can be certified or stress-tested alongside.
        Pass ``noise=model.circuit.spec.noise`` to keep the current noise model.
        """
        if self.quantum_circuit is None:
            raise ValueError("this model has a classical map instead of a circuit (quantum=False): no engine to change.")
        other = copy.copy(self)
        other._modules = dict(self._modules)  # its own child table, so replacing the circuit leaves self alone
        other.circuit = self.circuit.with_engine(engine, noise=noise, shots=shots)
        return other

    def parameter_counts(self, frozen: bool = False) -> dict[str, int]:
        """Trainable parameters per part: ``encoder``, ``circuit``, ``head`` and ``total``; with ``frozen``, the
        frozen ones too (a frozen pretrained encoder is still part of the model's size)."""
        counts = {
            part: sum(p.numel() for p in getattr(self, part).parameters() if frozen or p.requires_grad)
            for part in self.PARTS
        }
        counts["total"] = sum(counts.values())
        return counts
