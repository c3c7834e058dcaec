"""Spiking neurons run over all time steps at once, with a hand-written backward pass.

The encoder's neurons are snnTorch's ``Leaky`` with ``reset_mechanism="zero"`` and ``reset_delay=False``
(integrate-and-fire is ``beta = 1``). Stepping that module costs about a dozen small tensor operations per
time step, forward and backward, plus autograd bookkeeping for each; on a CPU that overhead, not arithmetic,
is most of a training step. :class:`SpikingNeuronFunction` computes the same function and the same
gradients with three operations per step forward and one per step backward: everything that does not
depend on the recurrence (spikes, surrogate derivatives) is computed for all steps in one vectorised call.

The dynamics, as snnTorch evaluates them (``U`` the membrane before reset, ``M`` after, ``S`` the spike,
``h`` the Heaviside step, ``σ'`` the surrogate derivative, ``θ`` the threshold, ``M_{-1} = 0``)::

    r_t = h(M_{t-1} - θ)            detached reset signal; always 0 for θ > 0 (M is 0 after a spike, ≤ θ otherwise)
    U_t = β (1 - r_t) M_{t-1} + I_t
    S_t = h(U_t - θ)                 backward: dS_t/dU_t = σ'(U_t - θ)
    M_t = U_t - (S_t - r_t) U_t      the reset term is *not* detached: it carries -U_t σ'(U_t - θ)

so with ``θ > 0`` the backward recurrence is linear::

    dL/dU_t = σ'_t g_t + β ((1 - S_t) - U_t σ'_t) dL/dU_{t+1},     dL/dI_t = dL/dU_t

with ``g_t`` the gradient arriving at the spikes ``S_t``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Surrogate = Literal["atan", "fast_sigmoid", "sigmoid", "triangular", "straight_through"]
SURROGATES: tuple[str, ...] = ("atan", "fast_sigmoid", "sigmoid", "triangular", "straight_through")


def surrogate_derivative(name: str, slope: float, x: torch.Tensor) -> torch.Tensor:
    """``dS/dU`` of snnTorch's surrogate ``name`` at ``x = U - θ`` (the formulas of ``snntorch.surrogate``).

    Computed in place where it can be: ``x`` may be overwritten. ``sigmoid`` uses ``k s (1 - s)`` with
    ``s = sigmoid(k x)``, which equals snnTorch's ``k exp(-k x) / (exp(-k x) + 1)^2`` but does not overflow to
    NaN for very negative ``x``. ``triangular`` is snnTorch's definition: ``+slope`` below the threshold and
    ``-slope`` at or above it.
    """
    if name == "atan":
        return x.square_().mul_((math.pi / 2 * slope) ** 2).add_(1).reciprocal_().mul_(slope / 2)
    if name == "fast_sigmoid":
        return x.abs_().mul_(slope).add_(1).square_().reciprocal_()
    if name == "sigmoid":
        s = x.mul_(slope).sigmoid_()
        return s.sub(s.square()).mul_(slope)
    if name == "triangular":
        return torch.where(x < 0, slope, -slope).to(x.dtype)
    if name == "straight_through":
        return torch.ones_like(x)
    raise ValueError(f"Unknown surrogate {name!r}; choose one of {list(SURROGATES)}.")


class SpikingNeuronFunction(torch.autograd.Function):
    """Spikes ``(T, ...)`` of a layer of neurons driven by ``currents`` ``(T, ...)``, starting at rest.

    Only the membrane potentials before reset are saved for backward (one tensor the size of the input);
    spikes and surrogate derivatives are recomputed from them. The loops touch one time step per operation;
    everything else runs on all steps at once. ``torch.threshold`` and comparisons written straight into a
    float tensor are used because ``masked_fill`` and bool-to-float conversions cost several times more.
    """

    @staticmethod
    def forward(ctx, currents: torch.Tensor, beta: float, threshold: float, surrogate: str, slope: float):
        potentials = torch.empty_like(currents)
        membrane = torch.zeros_like(currents[0])
        for step, current in enumerate(currents):
            potential = torch.add(current, membrane, alpha=beta, out=potentials[step])
            # Hard reset to zero where it fires: threshold() keeps U where U > θ (the spiking part, S·U).
            membrane = potential - torch.threshold(potential, threshold, 0.0)
        ctx.save_for_backward(potentials)
        ctx.params = (beta, threshold, surrogate, slope)
        return torch.gt(potentials, threshold, out=torch.empty_like(potentials))

    @staticmethod
    def backward(ctx, spike_grad: torch.Tensor):
        (potentials,) = ctx.saved_tensors
        beta, threshold, surrogate, slope = ctx.params
        derivative = surrogate_derivative(surrogate, slope, potentials - threshold)
        # β ((1 - S_t) - U_t σ'_t): how dL/dU_{t+1} reaches U_t through the membrane (and its reset).
        carry = torch.le(potentials, threshold, out=torch.empty_like(potentials))
        if beta != 1.0:
            carry.mul_(beta)
        carry.addcmul_(potentials, derivative, value=-beta)
        grad = derivative.mul_(spike_grad)  # σ'_t g_t for all steps, then the recurrence in place, last step first
        for step in range(len(grad) - 2, -1, -1):
            grad[step].addcmul_(carry[step], grad[step + 1])
        return grad, None, None, None, None


def spiking_neurons(
    currents: torch.Tensor, *, beta: float, threshold: float, surrogate: str, slope: float
) -> torch.Tensor:
    """Spikes of neurons with membrane decay ``beta`` (1 for integrate-and-fire) for ``currents`` ``(T, ...)``.

    ``beta`` and ``threshold`` as :func:`checked_dynamics` returns them.
    """
    beta, threshold = checked_dynamics(beta, threshold)
    return SpikingNeuronFunction.apply(currents.contiguous(), beta, threshold, surrogate, float(slope))


def checked_dynamics(beta: float, threshold: float) -> tuple[float, float]:
    """``beta`` clamped to [0, 1] as snnTorch does, and ``threshold``, which must be positive (a neuron with a
    threshold at or below its resting potential fires without input)."""
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}.")
    return min(max(float(beta), 0.0), 1.0), float(threshold)
