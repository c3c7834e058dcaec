"""Spiking neurons run over all time steps at once, with a hand-written backward pass.

The encoder's neurons are snnTorch's ``Leaky`` with ``reset_mechanism="zero"`` and ``reset_delay=False``
(integrate-and-fire is ``beta = 1``). Stepping that module costs about a dozen small tensor operations per
time step, forward and backward, plus autograd bookkeeping for each; on a CPU that overhead, not arithmetic,
is most of a training step. :class:`SpikingNeuronFunction` computes the same function and the same
gradients as one autograd node, with the recurrence kernels the encoder's stages use
(:mod:`sqdr.models.stage_kernels`).

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

from typing import Literal

import numpy as np
import torch

from sqdr.models import stage_kernels as kernels

Surrogate = Literal["atan", "fast_sigmoid", "sigmoid", "triangular", "straight_through"]
SURROGATES: tuple[str, ...] = ("atan", "fast_sigmoid", "sigmoid", "triangular", "straight_through")


class SpikingNeuronFunction(torch.autograd.Function):
    """Spikes ``(T, ...)`` of a layer of neurons driven by ``currents`` ``(T, ...)``, starting at rest.

    The stage kernels with every neuron as one pixel of a single map, no batch norm (scale 1, shift 0) and no
    pooling. Only the membrane potentials before reset are saved for backward.
    """

    @staticmethod
    def forward(ctx, currents: torch.Tensor, beta: float, threshold: float, surrogate: str, slope: float):
        flat = kernels.array(currents).reshape(len(currents), 1, 1, 1, -1)
        dtype = flat.dtype.type
        potentials = np.empty_like(flat)
        spikes = kernels.norm_fire_pool(
            flat, np.ones(1, flat.dtype), np.zeros(1, flat.dtype), dtype(beta), dtype(threshold), False, potentials
        )
        ctx.save_for_backward(torch.from_numpy(potentials))
        ctx.params = (beta, threshold, SURROGATES.index(surrogate), slope)
        return torch.from_numpy(spikes).view(currents.shape)

    @staticmethod
    def backward(ctx, spike_grad: torch.Tensor):
        (potentials,) = ctx.saved_tensors
        beta, threshold, code, slope = ctx.params
        u = potentials.numpy()
        dtype = u.dtype.type
        no_norm = np.zeros(1, u.dtype), np.ones(1, u.dtype)  # mean 0 and 1 / std 1, unread without norm sums
        grads, _ = kernels.current_gradients(
            kernels.array(spike_grad.to(potentials.dtype)).reshape(u.shape), u, u, *no_norm,
            dtype(beta), dtype(threshold), code, kernels.surrogate_constants(code, slope, u.dtype), False, False,
        )
        return torch.from_numpy(grads).view(spike_grad.shape), None, None, None, None


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
