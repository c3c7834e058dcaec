"""An encoder stage's two autograd nodes: the convolution (a small 3x3 one by a kernel here, a wide one by oneDNN),
and batch norm -> spiking neurons over all T steps -> 2x2 max pool.

Both compute what PyTorch's modules and snnTorch stepped through time compute (batch-norm statistics and their
running averages included), with the kernels of :mod:`sqdr.models.stage_kernels`. The modules stay the owners
of the parameters and buffers, so checkpoints and the step-by-step reference encoder are unchanged.
"""

from __future__ import annotations

import numpy as np
import snntorch as snn
import torch
import torch.nn.functional as F
from torch import nn

from sqdr.models import stage_kernels as kernels
from sqdr.models import threads
from sqdr.models.neurons import SURROGATES, checked_dynamics


def _tensor(array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(array).to(like.dtype)


class Conv3x3Function(torch.autograd.Function):
    """``conv2d(x, weight, padding=1)`` for frames ``(N, C, H, W)`` and a 3x3 kernel without bias."""

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return torch.from_numpy(kernels.conv3x3(kernels.array(x), kernels.array(weight)))

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = kernels.array(grad.to(x.dtype))
        weight_grad = _tensor(kernels.conv3x3_weight_gradients(grad, kernels.array(x)).sum(0), weight)
        if not ctx.needs_input_grad[0]:
            return None, weight_grad
        # the input gradient of a 3x3 convolution with padding 1 is the same convolution of the output gradient
        # with the kernel flipped in both directions and its input and output channels swapped
        flipped = kernels.array(weight.flip(2, 3).transpose(0, 1).to(x.dtype))
        return torch.from_numpy(kernels.conv3x3(grad, flipped)), weight_grad


def conv3x3(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.conv2d(x, weight, padding=1)`` by :class:`Conv3x3Function` (faster than oneDNN below 4 input channels)."""
    if weight.shape[-2:] != (3, 3):
        raise ValueError(f"conv3x3 takes 3x3 kernels, got {tuple(weight.shape[-2:])}.")
    return Conv3x3Function.apply(x, weight)


def onednn_convolution(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` by oneDNN for a bias-free encoder convolution (an ``nn.Conv2d`` or a sequence of them, such as
    :class:`~sqdr.models.encoder.SeparableConv2d`), forward and backward on :func:`sqdr.models.threads.budget`'s
    threads: in a training step PyTorch's own operations run on one thread, and a wide stage's convolution is the
    one among them with work to share."""
    layers = list(conv) if isinstance(conv, nn.Sequential) else [conv]

    def convolve(frames: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        for layer, weight in zip(layers, weights):
            frames = F.conv2d(frames, weight, padding=layer.padding, groups=layer.groups)
        return frames

    return threads.run_parallel(convolve, x, *(layer.weight for layer in layers))


def batch_statistics(norm: nn.BatchNorm2d, conv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and biased variance per channel of ``conv`` ``(N, O, H, W)``, with ``norm``'s running averages
    updated as ``BatchNorm2d`` does in training."""
    moments = kernels.channel_moments(conv).sum(0)
    count = conv.shape[0] * conv.shape[2] * conv.shape[3]
    mean = moments[:, 0] / count
    var = np.maximum(moments[:, 1] / count - mean * mean, 0.0)
    if norm.track_running_stats:
        update_running_statistics(norm, mean, var * count / max(count - 1, 1))
    return mean, var


def update_running_statistics(norm: nn.BatchNorm2d, mean: np.ndarray, unbiased_var: np.ndarray) -> None:
    """``running = (1 - momentum) * running + momentum * batch`` for ``norm``'s mean and variance, and one more
    batch tracked, in place on NumPy views of its buffers: each stage's update was a dozen small tensor operations."""
    tracked = norm.num_batches_tracked.numpy()
    tracked += 1
    factor = 1.0 / tracked.item() if norm.momentum is None else norm.momentum
    for buffer, batch in ((norm.running_mean, mean), (norm.running_var, unbiased_var)):
        running = buffer.numpy()
        running *= 1 - factor
        running += (factor * batch).astype(running.dtype)


class NormFirePoolFunction(torch.autograd.Function):
    """Spikes ``(T, B, O, H', W')`` of neurons driven by batch norm of the convolution outputs ``(T, B, O, H, W)``.

    Saved for backward: the convolution outputs and the neurons' membrane potentials before reset.
    """

    @staticmethod
    def forward(ctx, conv, gamma, bias, norm, beta, threshold, surrogate, slope, pool, save):
        c = kernels.array(conv)
        batch_stats = norm.training or not norm.track_running_stats
        if batch_stats:
            mean, var = batch_statistics(norm, c.reshape(-1, *c.shape[2:]))
        else:
            mean, var = norm.running_mean.numpy().astype(np.float64), norm.running_var.numpy().astype(np.float64)
        invstd = 1.0 / np.sqrt(var + norm.eps)
        gain = kernels.array(gamma).astype(np.float64) * invstd
        shift = kernels.array(bias).astype(np.float64) - mean * gain
        dtype = c.dtype.type
        potentials = np.empty(c.shape if save else (0,) * 5, c.dtype)
        spikes = kernels.norm_fire_pool(
            c, gain.astype(dtype), shift.astype(dtype), dtype(beta), dtype(threshold), pool, potentials
        )
        ctx.save_for_backward(conv, torch.from_numpy(potentials))
        ctx.numbers = (mean, invstd, gain, batch_stats, beta, threshold, SURROGATES.index(surrogate), slope, pool)
        return torch.from_numpy(spikes)

    @staticmethod
    def backward(ctx, grad_spikes):
        conv, potentials = ctx.saved_tensors
        mean, invstd, gain, batch_stats, beta, threshold, code, slope, pool = ctx.numbers
        c, u = kernels.array(conv), potentials.numpy()
        dtype = c.dtype.type
        typed_mean, typed_invstd = mean.astype(dtype), invstd.astype(dtype)  # the kernels work in the data's type
        current_grads, sums = kernels.current_gradients(
            kernels.array(grad_spikes.to(conv.dtype)), u, c, typed_mean, typed_invstd,
            dtype(beta), dtype(threshold), code, kernels.surrogate_constants(code, slope, c.dtype), pool, True,
        )
        grad_bias, grad_gamma = sums.sum(0).T
        count = u.shape[0] * u.shape[1] * u.shape[3] * u.shape[4]
        zeros = np.zeros_like(grad_bias)
        grad_mean, grad_xhat_mean = (grad_bias / count, grad_gamma / count) if batch_stats else (zeros, zeros)
        flat = (-1, *c.shape[2:])
        conv_grads = kernels.norm_gradients(
            current_grads.reshape(flat), c.reshape(flat), typed_mean, (invstd * grad_xhat_mean).astype(dtype),
            gain.astype(dtype), grad_mean.astype(dtype),
        )
        return (
            torch.from_numpy(conv_grads.reshape(c.shape)),
            _tensor(grad_gamma, conv),
            _tensor(grad_bias, conv),
            *(None,) * 7,
        )


def norm_fire_pool(conv: torch.Tensor, norm: nn.BatchNorm2d, neuron: snn.Leaky, pool: bool) -> torch.Tensor:
    """``pool(spikes(norm(conv)))`` for convolution outputs ``(T, B, O, H, W)``: spikes ``(T, B, O, H', W')``.

    ``neuron`` is the snnTorch module whose ``beta``, ``threshold`` and surrogate the neurons use, as
    :func:`sqdr.models.encoder.fire` reads them, checked by :func:`sqdr.models.neurons.checked_dynamics`.
    """
    beta, threshold = checked_dynamics(neuron.beta.item(), neuron.threshold.item())
    spike_grad = neuron.spike_grad
    inputs = (conv, norm.weight, norm.bias)
    save = torch.is_grad_enabled() and any(tensor.requires_grad for tensor in inputs)
    return NormFirePoolFunction.apply(*inputs, norm, beta, threshold, spike_grad.name, spike_grad.slope, pool, save)
