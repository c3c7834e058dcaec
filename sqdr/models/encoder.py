"""The convolutional spiking encoder (snnTorch neurons, surrogate gradients).

Stateless layers (convolution, batch norm, pooling, linear) run once on all time steps folded into the
batch, which is both faster and what the reference does (its BatchNorm sees T x B samples). Only the
neurons step through time, with their membrane potential kept as a local variable of ``forward``:
no hidden state survives a call, so two models never share state and no global reset is needed.
Each stage's batch norm, neurons and pooling run as one kernel (:mod:`sqdr.models.stage`) that computes the same.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import ClassVar, Literal

import snntorch as snn
import torch
from snntorch import surrogate as snn_surrogate
from torch import nn

from sqdr.models.neurons import spiking_neurons
from sqdr.models.stage import conv3x3, norm_fire_pool, onednn_convolution

Backend = Literal["auto", "kernels", "torch"]
Convolution = Literal["full", "separable"]
Neuron = Literal["if", "leaky"]
Projection = Literal["linear", "spatial"]
ProjectNorm = Literal["none", "bn", "bn_affine"]
Surrogate = Literal["atan", "fast_sigmoid", "sigmoid", "triangular", "straight_through"]

# Which convolutions run on sqdr.models.stage's kernel rather than oneDNN, as training steps measured on 2 cores
# chose: those with fewer than NARROW input channels; those with at most FEW_PAIRS (input, output) channel pairs
# (the paper encoder's 4 -> 8 stage and the 1k model's 4 -> 8 and 8 -> 3 trained faster on the kernel at batch 64
# and 128); and those with inputs under SMALL elements, where oneDNN's fixed costs per call dominate. Wider
# convolutions on large inputs (a CIFAR-shaped encoder's 6 -> 12 and 12 -> 24 at batch 128) ran faster on oneDNN.
NARROW = 4
FEW_PAIRS = 32
SMALL = 2**16

# Samples per chunk when a large batch is encoded in evaluation mode (measured in CPU time per image at batch 1,024:
# 256 beat 64, 128 and the whole batch at once).
EVAL_CHUNK = 256

# BatchNorm momentum of the reference implementation.
REFERENCE_BN_MOMENTUM = math.sqrt(0.1)


class SpikeFunction:
    """Heaviside spike with one of snnTorch's surrogate gradients.

    snnTorch's own factories (``surrogate.atan()``, ...) return closures, which cannot be pickled; this
    small callable applies the same ``torch.autograd.Function`` classes and pickles cleanly.
    """

    FUNCTIONS: ClassVar[dict[str, type[torch.autograd.Function]]] = {
        "atan": snn_surrogate.ATan,
        "fast_sigmoid": snn_surrogate.FastSigmoid,
        "sigmoid": snn_surrogate.Sigmoid,
        "triangular": snn_surrogate.Triangular,
        "straight_through": snn_surrogate.StraightThroughEstimator,
    }

    def __init__(self, name: Surrogate, slope: float) -> None:
        if name not in self.FUNCTIONS:
            raise ValueError(f"Unknown surrogate {name!r}; choose one of {sorted(self.FUNCTIONS)}.")
        self.name = name
        self.slope = slope

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        function = self.FUNCTIONS[self.name]
        if self.name == "straight_through":
            return function.apply(x)
        return function.apply(x, self.slope)

    def __repr__(self) -> str:
        return f"SpikeFunction({self.name!r}, slope={self.slope})"


def make_neuron(neuron: Neuron, beta: float, threshold: float, surrogate: Surrogate, slope: float) -> snn.Leaky:
    """An snnTorch neuron with hard reset to zero in the step it fires.

    Integrate-and-fire is ``snn.Leaky`` with ``beta = 1`` (no leak); ``reset_delay=False`` makes the reset
    happen in the firing step, as in the paper's IF neuron.
    """
    if neuron not in ("if", "leaky"):
        raise ValueError(f"Unknown neuron {neuron!r}; choose 'if' (integrate-and-fire) or 'leaky'.")
    return snn.Leaky(
        beta=1.0 if neuron == "if" else beta,
        threshold=threshold,
        spike_grad=SpikeFunction(surrogate, slope),
        reset_mechanism="zero",
        reset_delay=False,
        init_hidden=False,
    )


def run_neuron(neuron: snn.Leaky, currents: torch.Tensor) -> torch.Tensor:
    """Drive ``neuron`` with ``currents`` of shape ``(T, ...)`` and return the spikes, same shape."""
    membrane = torch.zeros_like(currents[0])
    spikes = []
    for current in currents:
        spike, membrane = neuron(current, membrane)
        spikes.append(spike.to(current.dtype))  # snnTorch surrogates emit float32 spikes
    # snnTorch mirrors the last membrane into a module buffer even with init_hidden=False; clearing it
    # keeps this call's graph from outliving it (and keeps the model deep-copyable).
    neuron.reset_mem()
    return torch.stack(spikes)


def fire(neuron: snn.Leaky, currents: torch.Tensor) -> torch.Tensor:
    """The spikes :func:`run_neuron` returns, from one fused kernel over all steps (:mod:`sqdr.models.neurons`).

    ``beta`` and ``threshold`` are read from the snnTorch module's buffers, so values loaded from a checkpoint
    apply to both formulations.
    """
    return spiking_neurons(
        currents,
        beta=neuron.beta.item(),
        threshold=neuron.threshold.item(),
        surrogate=neuron.spike_grad.name,
        slope=neuron.spike_grad.slope,
    )


class SpikingEncoder(nn.Module):
    """Conv-BN-neuron stages (max-pooled between them), then a projection to ``out_features`` firing rates.

    Input: coded frames ``(T, B, C, H, W)``. Output: firing rates ``(B, out_features)`` in [0, 1],
    averaged over the T steps, which the circuit reads as rotation angles (three per qubit).

    ``projection`` chooses how the last stage becomes those rates:

    * ``linear`` (the paper): global average pooling, ``Linear(channels[-1] -> out_features)``, optionally a
      batch norm (``project_norm``), and a layer of output neurons whose rates are the features.
    * ``spatial``: no linear layer and no output neurons. The last stage has 3 channels and is not pooled; its
      spike map is average-pooled to a ``g x g`` grid (``g * g = out_features / 3`` qubits), and qubit ``i``
      (cell ``i``, row-major) reads the 3 channels' rates in its cell. Each qubit then sees one region of the
      image, and the parameters a linear projection would take go into the convolutions instead.

    ``project_norm`` (``linear`` only): batch norm on the projection's currents, without (``bn``) or with
    (``bn_affine``) a learned scale and shift. Currents of zero mean and unit variance straddle the threshold:
    at initialisation the plain projection leaves most output neurons silent (on Fashion-MNIST two thirds of
    the rates are exactly 0), so the circuit would start from a nearly constant input.

    Each stage is two autograd nodes (:mod:`sqdr.models.stage`): the convolution, on all time steps folded into
    the batch (a numba kernel below ``NARROW`` input channels, up to ``FEW_PAIRS`` channel pairs or below ``SMALL``
    input elements, oneDNN otherwise, whichever was measured faster), and batch norm, the neurons over all T steps
    and the max pool as one kernel.

    ``convolution``: ``full`` 3x3 convolutions, or ``separable`` ones after the first stage
    (:class:`SeparableConv2d`), which cost about a ninth of the weights at the same width.

    ``backend``: ``kernels`` runs the stages on the numba kernels above (CPU tensors only); ``torch`` on plain
    PyTorch modules with snnTorch's neurons stepped through time, which any device runs (the formulation the
    kernels are tested against); ``auto`` picks ``kernels`` for tensors on the CPU and ``torch`` elsewhere.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_features: int = 27,
        channels: Sequence[int] | None = None,
        convolution: Convolution = "full",
        neuron: Neuron = "if",
        beta: float = 0.9,
        threshold: float = 1.0,
        surrogate: Surrogate = "atan",
        surrogate_slope: float = 2.0,
        bn_momentum: float = REFERENCE_BN_MOMENTUM,
        projection: Projection = "linear",
        project_norm: ProjectNorm = "none",
        backend: Backend = "auto",
    ) -> None:
        super().__init__()
        if backend not in ("auto", "kernels", "torch"):
            raise ValueError(f"Unknown backend {backend!r}; choose 'auto', 'kernels' or 'torch'.")
        self.backend = backend
        if channels is None:
            channels = [2 * in_channels, 4 * in_channels, 8 * in_channels]
        channels = list(channels)
        if not channels or any(c < 1 for c in channels):
            raise ValueError(f"encoder channels must be a non-empty list of positive widths, got {channels}.")
        self.convs = make_convolutions([in_channels, *channels], convolution)
        self.norms = nn.ModuleList(nn.BatchNorm2d(c, momentum=bn_momentum) for c in channels)
        neuron_args = (neuron, beta, threshold, surrogate, surrogate_slope)
        self.conv_neurons = nn.ModuleList(make_neuron(*neuron_args) for _ in channels)
        self.pool = nn.MaxPool2d(2, 2)
        self.projection = projection
        if projection == "spatial":
            self.grid_pool = nn.AdaptiveAvgPool2d(spatial_grid(out_features, channels[-1], project_norm))
        elif projection == "linear":
            self.global_pool = nn.AdaptiveAvgPool2d(1)
            self.project = nn.Linear(channels[-1], out_features)
            self.project_norm = make_project_norm(project_norm, out_features, bn_momentum)
            self.out_neuron = make_neuron(*neuron_args)
        else:
            raise ValueError(f"Unknown projection {projection!r}; choose 'linear' or 'spatial'.")

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """In evaluation mode large batches run in chunks of ``EVAL_CHUNK`` samples: every sample is then
        independent of the others (batch norm uses its running statistics), and the ``T x chunk`` intermediates
        stay in cache, where a whole batch of 1,024 made each image slower than a batch of 128 did."""
        if self.training or frames.shape[1] <= EVAL_CHUNK:
            return self._encode(frames)
        return torch.cat([self._encode(chunk) for chunk in frames.split(EVAL_CHUNK, dim=1)])

    def _encode(self, frames: torch.Tensor) -> torch.Tensor:
        steps, batch = frames.shape[:2]
        kernels = self.uses_kernels(frames)
        x = frames.reshape(steps * batch, *frames.shape[2:])
        last = len(self.convs) - 1
        for stage, (conv, norm, neuron) in enumerate(zip(self.convs, self.norms, self.conv_neurons)):
            pool = not (stage == last and self.projection == "spatial")
            stage_function = self._kernel_stage if kernels else self._torch_stage
            x = stage_function(x, steps, conv, norm, neuron, pool)
        if self.projection == "spatial":
            # (T*B, 3, g, g) -> rates (B, 3, g*g) -> qubit-major (B, g*g * 3): feature 3 * cell + channel
            rates = self.grid_pool(x).view(steps, batch, x.shape[1], -1).mean(0)
            return rates.transpose(1, 2).flatten(1)
        currents = self.project_norm(self.project(self.global_pool(x).flatten(1)))
        fire_function = fire if kernels else run_neuron
        return fire_function(self.out_neuron, currents.view(steps, batch, -1)).mean(0)

    def uses_kernels(self, frames: torch.Tensor) -> bool:
        """Whether this call runs on the numba kernels: ``backend`` ``kernels``, or ``auto`` with CPU tensors."""
        if self.backend == "kernels" and frames.device.type != "cpu":
            raise ValueError(
                f"backend='kernels' runs on the CPU only, but the images are on {frames.device}; "
                "use backend 'torch' or 'auto' on other devices."
            )
        return self.backend == "kernels" or (self.backend == "auto" and frames.device.type == "cpu")

    @staticmethod
    def _kernel_stage(x: torch.Tensor, steps: int, conv: nn.Module, norm: nn.BatchNorm2d, neuron: snn.Leaky,
                      pool: bool) -> torch.Tensor:
        """One stage on frames ``(T * B, C, H, W)``: two autograd nodes, the convolution and the rest."""
        kernel = isinstance(conv, nn.Conv2d) and (
            conv.in_channels < NARROW or conv.in_channels * conv.out_channels <= FEW_PAIRS or x.numel() < SMALL
        )
        currents = conv3x3(x, conv.weight) if kernel else onednn_convolution(conv, x)
        spikes = norm_fire_pool(currents.view(steps, -1, *currents.shape[1:]), norm, neuron, pool)
        return spikes.flatten(0, 1)

    def _torch_stage(self, x: torch.Tensor, steps: int, conv: nn.Module, norm: nn.BatchNorm2d, neuron: snn.Leaky,
                     pool: bool) -> torch.Tensor:
        """The same stage as PyTorch modules and snnTorch's neuron stepped through time (any device)."""
        currents = norm(conv(x))
        spikes = run_neuron(neuron, currents.view(steps, -1, *currents.shape[1:])).flatten(0, 1)
        return self.pool(spikes) if pool else spikes


class SeparableConv2d(nn.Sequential):
    """A depthwise-separable 3x3 convolution: one 3x3 filter per input channel, then a 1x1 mixing the channels.

    ``9 * c_in + c_in * c_out`` weights instead of ``9 * c_in * c_out``: under a parameter budget the stages
    can be wider, and width is what the small models lack most. Its function is a full convolution whose
    kernel has rank one across the input channels' spatial filters.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_in, kernel_size=3, padding=1, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, kernel_size=1, bias=False),
        )


def make_convolutions(widths: Sequence[int], convolution: Convolution) -> nn.ModuleList:
    """The stages' convolutions between successive ``widths``, without bias (batch norm follows each).

    ``separable`` keeps the first stage full: its input has few channels (one for grey images), and a
    separable convolution of one channel would give every output channel the same filter.
    """
    if convolution not in ("full", "separable"):
        raise ValueError(f"Unknown convolution {convolution!r}; choose 'full' or 'separable'.")
    return nn.ModuleList(
        SeparableConv2d(c_in, c_out)
        if convolution == "separable" and stage > 0
        else nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)
        for stage, (c_in, c_out) in enumerate(itertools.pairwise(widths))
    )


def spatial_grid(out_features: int, last_channels: int, project_norm: ProjectNorm) -> int:
    """The side ``g`` of the ``spatial`` projection's grid, after checking the encoder can have one."""
    cells = out_features // 3
    side = math.isqrt(cells)
    if last_channels != 3 or side * side != cells or 3 * cells != out_features:
        raise ValueError(
            "projection='spatial' reads one grid cell per qubit and one channel per angle: it needs a square "
            f"number of qubits and 3 channels in the last encoder stage, got {out_features // 3} qubits and "
            f"{last_channels} channels (e.g. n_qubits 9 and encoder_channels [4, 8, 3])."
        )
    if project_norm != "none":
        raise ValueError("project_norm applies to the linear projection; the spatial projection has none.")
    return side


def make_project_norm(project_norm: ProjectNorm, features: int, momentum: float) -> nn.Module:
    """Batch norm of the linear projection's currents (``bn``: no affine parameters), or nothing (``none``)."""
    if project_norm == "none":
        return nn.Identity()
    if project_norm in ("bn", "bn_affine"):
        return nn.BatchNorm1d(features, affine=project_norm == "bn_affine", momentum=momentum)
    raise ValueError(f"Unknown project_norm {project_norm!r}; choose 'none', 'bn' or 'bn_affine'.")


class ReferenceSpikingEncoder(SpikingEncoder):
    """:class:`SpikingEncoder` with ``backend='torch'`` on every call, large evaluation batches included: the plain
    formulation the kernels are checked against (outputs and gradients), and the baseline ``sqdr bench`` times
    beside them. Same constructor and ``state_dict`` as :class:`SpikingEncoder`.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs, backend="torch")

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self._encode(frames)
