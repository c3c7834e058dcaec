"""One encoder stage (conv 3x3 -> batch norm -> spiking neurons over T steps -> 2x2 max pool) as one autograd node.

The stage computes what ``pool(fire(neuron, norm(conv(x))))`` computes with PyTorch's modules, batch-norm
statistics and their running averages included, with the kernels of :mod:`sqdr.models.stage_kernels`; the
modules stay the owners of the parameters and buffers, so checkpoints and the step-by-step reference encoder
are unchanged.
"""

from __future__ import annotations

import numba
import numpy as np
import snntorch as snn
import torch
from torch import nn

from sqdr.models import stage_kernels as kernels
from sqdr.models.neurons import SURROGATES, checked_dynamics


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().contiguous().numpy()


def _use_torch_threads() -> None:
    """Run numba's parallel loops on as many threads as PyTorch uses (one per worker in a parallel sweep)."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def batch_statistics(norm: nn.BatchNorm2d, frames: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and biased variance of the convolution's outputs per channel, over time steps, samples and pixels,
    with ``norm``'s running averages updated as ``BatchNorm2d`` does in training."""
    moments = kernels.conv_moments(frames, weight).sum(0)
    count = frames.shape[0] * frames.shape[1] * frames.shape[3] * frames.shape[4]
    mean = moments[:, 0] / count
    var = np.maximum(moments[:, 1] / count - mean * mean, 0.0)
    if norm.track_running_stats:
        with torch.no_grad():
            norm.num_batches_tracked.add_(1)
            factor = 1.0 / norm.num_batches_tracked.item() if norm.momentum is None else norm.momentum
            unbiased = var * count / max(count - 1, 1)
            norm.running_mean.mul_(1 - factor).add_(torch.from_numpy(mean).to(norm.running_mean), alpha=factor)
            norm.running_var.mul_(1 - factor).add_(torch.from_numpy(unbiased).to(norm.running_var), alpha=factor)
    return mean, var


class SpikingStageFunction(torch.autograd.Function):
    """Spikes of a stage ``(T, B, O, H', W')`` from its input frames ``(T, B, C, H, W)``.

    Saved for backward: the input frames and the neurons' membrane potentials before reset; the convolution's
    outputs are recomputed, not stored.
    """

    @staticmethod
    def forward(ctx, frames, weight, gamma, bias, norm, beta, threshold, surrogate, slope, pool, save):
        _use_torch_threads()
        x, w = _numpy(frames), _numpy(weight)
        batch_stats = norm.training or not norm.track_running_stats
        if batch_stats:
            mean, var = batch_statistics(norm, x, w)
        else:
            mean, var = norm.running_mean.double().numpy(), norm.running_var.double().numpy()
        invstd = 1.0 / np.sqrt(var + norm.eps)
        gain = gamma.detach().double().numpy() * invstd
        shift = bias.detach().double().numpy() - mean * gain
        dtype = x.dtype.type
        potentials = np.empty(
            (x.shape[0], x.shape[1], w.shape[0], x.shape[3], x.shape[4]) if save else (0,) * 5,
            x.dtype,
        )
        spikes = kernels.stage_forward(
            x, w, gain.astype(dtype), shift.astype(dtype), dtype(beta), dtype(threshold), pool, potentials
        )
        ctx.save_for_backward(frames, weight, torch.from_numpy(potentials))
        ctx.numbers = (mean, invstd, gain, batch_stats, beta, threshold, SURROGATES.index(surrogate), slope, pool)
        return torch.from_numpy(spikes)

    @staticmethod
    def backward(ctx, grad_spikes):
        _use_torch_threads()
        frames, weight, potentials = ctx.saved_tensors
        mean, invstd, gain, batch_stats, beta, threshold, code, slope, pool = ctx.numbers
        x, w = _numpy(frames), _numpy(weight)
        dtype = x.dtype.type
        current_grads, sums = kernels.current_gradients(
            _numpy(grad_spikes.to(frames.dtype)), potentials.numpy(), x, w, mean, invstd,
            dtype(beta), dtype(threshold), code, kernels.surrogate_constants(code, slope, x.dtype), pool,
        )
        grad_bias, grad_gamma = sums.sum(0).T
        count = potentials.shape[0] * potentials.shape[1] * potentials.shape[3] * potentials.shape[4]
        zeros = np.zeros_like(grad_bias)
        grad_mean, grad_xhat_mean = (grad_bias / count, grad_gamma / count) if batch_stats else (zeros, zeros)
        weight_grads, input_grads = kernels.conv_gradients(
            current_grads, x, w, mean, invstd, gain, grad_mean, grad_xhat_mean, ctx.needs_input_grad[0]
        )

        def tensor(array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(array).to(like.dtype)

        return (
            tensor(input_grads, frames) if ctx.needs_input_grad[0] else None,
            tensor(weight_grads.sum(0), weight),
            tensor(grad_gamma, weight),
            tensor(grad_bias, weight),
            *(None,) * 7,
        )


def spiking_stage(frames: torch.Tensor, conv: nn.Conv2d, norm: nn.BatchNorm2d, neuron: snn.Leaky, pool: bool):
    """``pool(spikes(norm(conv(frames))))`` for frames ``(T, B, C, H, W)``: spikes ``(T, B, O, H', W')``.

    ``neuron`` is the snnTorch module whose ``beta``, ``threshold`` and surrogate the stage uses, as
    :func:`sqdr.models.encoder.fire` reads them, checked by :func:`sqdr.models.neurons.checked_dynamics`.
    """
    beta, threshold = checked_dynamics(neuron.beta.item(), neuron.threshold.item())
    spike_grad = neuron.spike_grad
    inputs = (frames, conv.weight, norm.weight, norm.bias)
    save = torch.is_grad_enabled() and any(tensor.requires_grad for tensor in inputs)
    return SpikingStageFunction.apply(*inputs, norm, beta, threshold, spike_grad.name, spike_grad.slope, pool, save)
