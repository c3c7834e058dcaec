"""Numba kernels of one encoder stage: 3x3 convolution, batch norm, spiking neurons over T steps, 2x2 max pool.

Why hand-written: the encoder's first stages have 1 to 4 channels on 28x28 maps repeated over T time steps,
and oneDNN (which runs PyTorch's CPU convolutions) and ATen's pooling and batch-norm kernels are tuned for wide
layers. Each one reads and writes the whole ``T x B x C x H x W`` tensor, several times in backward, at far
below memory speed. These kernels keep one ``H x W`` plane of one sample and channel in cache and do every step
of the stage on it: the convolution is recomputed (nine multiply-adds per input channel) instead of stored,
and the neurons' potentials are the only tensor saved for backward.

Every function works on one sample ``b`` at a time (``prange`` over samples), so threads never write to the
same memory. Per-sample partial sums are returned in float64 and summed by the caller, which keeps results
independent of the number of threads. The arithmetic is that of :mod:`sqdr.models.neurons` and of ATen's
batch norm (``y * scale + shift``) and max pool (the first maximum of a window, in raster order, gets the
gradient); only the order of the convolution's sums differs, so values agree to float rounding.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

# numba's own thread pool: no second OpenMP runtime beside PyTorch's, and its idle threads sleep.
numba.config.THREADING_LAYER = "workqueue"

# Surrogate derivatives, by code (the order of sqdr.models.neurons.SURROGATES).
ATAN, FAST_SIGMOID, SIGMOID, TRIANGULAR, STRAIGHT_THROUGH = range(5)

# Floating-point freedoms of the kernels that sum (statistics and gradients): reordering the sums lets LLVM
# vectorise them. The forward kernel, whose values are compared with the threshold, keeps strict IEEE order.
SUMS = {"reassoc", "contract", "nsz"}


def surrogate_constants(code: int, slope: float, dtype: np.dtype) -> np.ndarray:
    """``[a, b, 1]`` in ``dtype`` for :func:`_surrogate`. Constants are passed typed because numba, like NumPy 1,
    widens float32 arithmetic with a Python number to float64, which halves the vector width."""
    a, b = (math.pi / 2 * slope, slope / 2) if code == ATAN else (slope, 0.0)
    return np.array([a, b, 1.0], dtype)


@njit(cache=True, fastmath=SUMS)
def _surrogate(code, constants, potentials, threshold, out):
    """``out = dS/dU`` at ``potentials - threshold`` (sqdr.models.neurons.surrogate_derivative, one plane)."""
    a, b, one = constants[0], constants[1], constants[2]
    height, width = out.shape
    if code == ATAN:
        for h in range(height):
            for j in range(width):
                x = a * (potentials[h, j] - threshold)
                out[h, j] = b / (one + x * x)
    elif code == FAST_SIGMOID:
        for h in range(height):
            for j in range(width):
                d = a * abs(potentials[h, j] - threshold) + one
                out[h, j] = one / (d * d)
    elif code == SIGMOID:
        for h in range(height):
            for j in range(width):
                e = one / (one + np.exp(-a * (potentials[h, j] - threshold)))
                out[h, j] = (e - e * e) * a
    elif code == TRIANGULAR:
        for h in range(height):
            for j in range(width):
                out[h, j] = a if potentials[h, j] < threshold else -a
    else:
        out[:, :] = one


@njit(cache=True)
def _padded(x, b):
    """Sample ``b`` of ``x`` ``(T, B, C, H, W)`` with a border of zeros: ``(T, C, H + 2, W + 2)``."""
    steps, channels, height, width = x.shape[0], x.shape[2], x.shape[3], x.shape[4]
    padded = np.zeros((steps, channels, height + 2, width + 2), x.dtype)
    padded[:, :, 1 : height + 1, 1 : width + 1] = x[:, b]
    return padded


@njit(cache=True)
def _convolve(padded, t, weight, o, out):
    """``out = conv2d(frame, weight[o], padding=1)`` for the frame ``padded[t]``: one output plane."""
    height, width = out.shape
    out[:, :] = 0
    for c in range(padded.shape[1]):
        w00, w01, w02 = weight[o, c, 0, 0], weight[o, c, 0, 1], weight[o, c, 0, 2]
        w10, w11, w12 = weight[o, c, 1, 0], weight[o, c, 1, 1], weight[o, c, 1, 2]
        w20, w21, w22 = weight[o, c, 2, 0], weight[o, c, 2, 1], weight[o, c, 2, 2]
        frame = padded[t, c]
        for h in range(height):
            r0, r1, r2 = frame[h], frame[h + 1], frame[h + 2]
            for j in range(width):
                out[h, j] += (
                    w00 * r0[j] + w01 * r0[j + 1] + w02 * r0[j + 2]
                    + w10 * r1[j] + w11 * r1[j + 1] + w12 * r1[j + 2]
                    + w20 * r2[j] + w21 * r2[j + 1] + w22 * r2[j + 2]
                )


@njit(cache=True, fastmath=SUMS)
def _sums(values, plane, mean, invstd):
    """``sum(values)`` and ``sum(values * (plane - mean) * invstd)`` in float64: with ``values = plane``, mean 0
    and invstd 1 the moments of a plane; with gradients, what batch norm's backward needs."""
    total = 0.0
    weighted = 0.0
    for h in range(plane.shape[0]):
        for j in range(plane.shape[1]):
            v = np.float64(values[h, j])
            total += v
            weighted += v * ((np.float64(plane[h, j]) - mean) * invstd)
    return total, weighted


@njit(cache=True)
def _fire(plane, scale, shift, beta, threshold, membrane, potentials):
    """One time step of the neurons: currents ``plane * scale + shift``; ``plane`` becomes the spikes, the
    potentials before reset go to ``potentials``, ``membrane`` is carried to the next step."""
    for h in range(plane.shape[0]):
        for j in range(plane.shape[1]):
            u = plane[h, j] * scale + shift + beta * membrane[h, j]
            potentials[h, j] = u
            fired = u > threshold
            plane[h, j] = 1 if fired else 0
            membrane[h, j] = 0 if fired else u


@njit(cache=True)
def _pool(plane, out):
    """2x2 max pool with stride 2 (a trailing odd row or column is dropped, as in ``MaxPool2d(2, 2)``)."""
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            top = max(plane[2 * i, 2 * j], plane[2 * i, 2 * j + 1])
            out[i, j] = max(top, max(plane[2 * i + 1, 2 * j], plane[2 * i + 1, 2 * j + 1]))


@njit(cache=True)
def _unpool(grad, potentials, threshold, out):
    """Max pool's backward on spikes ``potentials > threshold``: a window's gradient goes to its first spiking
    pixel in raster order, or to its first pixel if none fired (ATen's choice of the maximum's index)."""
    zero = threshold - threshold  # typed like the data (see surrogate_constants)
    out[:, :] = zero
    for i in range(grad.shape[0]):
        top, bottom = potentials[2 * i], potentials[2 * i + 1]
        top_out, bottom_out = out[2 * i], out[2 * i + 1]
        for j in range(grad.shape[1]):
            g = grad[i, j]
            a, b = top[2 * j] > threshold, top[2 * j + 1] > threshold
            c, d = bottom[2 * j] > threshold, bottom[2 * j + 1] > threshold
            top_out[2 * j] = g if a or not (b or c or d) else zero
            top_out[2 * j + 1] = g if b and not a else zero
            bottom_out[2 * j] = g if c and not (a or b) else zero
            bottom_out[2 * j + 1] = g if d and not (a or b or c) else zero


@njit(cache=True, fastmath=SUMS)
def _neuron_grad(spike_grad, derivative, potentials, beta, threshold, later, out):
    """``dL/dU_t = σ'_t g_t + β ((1 - S_t) - U_t σ'_t) dL/dU_{t+1}`` into ``out``; ``later`` is dL/dU_{t+1}."""
    zero = threshold - threshold
    one = threshold / threshold  # 1, typed like the data (the threshold is positive)
    for h in range(out.shape[0]):
        for j in range(out.shape[1]):
            v = potentials[h, j]
            d = derivative[h, j]
            carry = beta * ((one if v <= threshold else zero) - v * d)
            out[h, j] = d * spike_grad[h, j] + carry * later[h, j]


@njit(cache=True, fastmath=SUMS)
def _norm_grad(grad, plane, mean, invstd, gain, grad_mean, grad_xhat_mean):
    """Batch norm's input gradient, in place of ``plane`` (the convolution's outputs)."""
    for h in range(plane.shape[0]):
        for j in range(plane.shape[1]):
            xhat = (np.float64(plane[h, j]) - mean) * invstd
            plane[h, j] = gain * (grad[h, j] - grad_mean - xhat * grad_xhat_mean)


@njit(cache=True, fastmath=SUMS)
def _weight_grad(grad, frame, out):
    """``out[di, dj] += sum(grad * frame[di:di + H, dj:dj + W])``: a 3x3 weight gradient from a padded frame."""
    height, width = grad.shape
    a00 = a01 = a02 = a10 = a11 = a12 = a20 = a21 = a22 = 0.0
    for h in range(height):
        r0, r1, r2 = frame[h], frame[h + 1], frame[h + 2]
        for j in range(width):
            g = np.float64(grad[h, j])
            a00 += g * r0[j]
            a01 += g * r0[j + 1]
            a02 += g * r0[j + 2]
            a10 += g * r1[j]
            a11 += g * r1[j + 1]
            a12 += g * r1[j + 2]
            a20 += g * r2[j]
            a21 += g * r2[j + 1]
            a22 += g * r2[j + 2]
    out[0, 0] += a00
    out[0, 1] += a01
    out[0, 2] += a02
    out[1, 0] += a10
    out[1, 1] += a11
    out[1, 2] += a12
    out[2, 0] += a20
    out[2, 1] += a21
    out[2, 2] += a22


@njit(cache=True, fastmath=SUMS)
def _input_grad(grad, weight, out):
    """``out[di:di + H, dj:dj + W] += weight[di, dj] * grad``: a padded input gradient of one 3x3 kernel."""
    height, width = grad.shape
    for di in range(3):
        for dj in range(3):
            w = weight[di, dj]
            for h in range(height):
                row = out[h + di]
                for j in range(width):
                    row[j + dj] += w * grad[h, j]


@njit(cache=True, parallel=True)
def conv_moments(x, weight):
    """Per-sample sums of the convolution's outputs and of their squares, ``(B, O, 2)`` in float64."""
    steps, batch, height, width = x.shape[0], x.shape[1], x.shape[3], x.shape[4]
    out_channels = weight.shape[0]
    moments = np.zeros((batch, out_channels, 2))
    for b in prange(batch):
        padded = _padded(x, b)
        plane = np.empty((height, width), x.dtype)
        for o in range(out_channels):
            for t in range(steps):
                _convolve(padded, t, weight, o, plane)
                total, squares = _sums(plane, plane, 0.0, 1.0)
                moments[b, o, 0] += total
                moments[b, o, 1] += squares
    return moments


@njit(cache=True, parallel=True)
def stage_forward(x, weight, scale, shift, beta, threshold, pool, potentials):
    """Spikes of the stage, max-pooled if ``pool``: ``(T, B, O, H', W')``.

    The neurons' currents are ``conv * scale[o] + shift[o]`` (batch norm folded into one multiply-add, as ATen
    computes it). Their membrane potentials before reset go to ``potentials`` ``(T, B, O, H, W)`` when it is not
    empty (training).
    """
    steps, batch, height, width = x.shape[0], x.shape[1], x.shape[3], x.shape[4]
    out_channels = weight.shape[0]
    out_h, out_w = (height // 2, width // 2) if pool else (height, width)
    spikes = np.empty((steps, batch, out_channels, out_h, out_w), x.dtype)
    keep = potentials.size > 0
    for b in prange(batch):
        padded = _padded(x, b)
        plane = np.empty((height, width), x.dtype)
        membrane = np.empty((height, width), x.dtype)
        scratch = np.empty((height, width), x.dtype)
        for o in range(out_channels):
            membrane[:, :] = 0
            for t in range(steps):
                _convolve(padded, t, weight, o, plane)
                _fire(plane, scale[o], shift[o], beta, threshold, membrane, potentials[t, b, o] if keep else scratch)
                if pool:
                    _pool(plane, spikes[t, b, o])
                else:
                    spikes[t, b, o] = plane
    return spikes


@njit(cache=True, parallel=True)
def current_gradients(grad_spikes, potentials, x, weight, mean, invstd, beta, threshold, code, constants, pool):
    """Gradients of the neurons' input currents ``(T, B, O, H, W)``, and per-sample sums ``(B, O, 2)`` of them
    and of them times the normalised convolution ``(conv - mean[o]) * invstd[o]`` (batch norm's backward).

    The neurons' recurrence runs backward through time as in :class:`sqdr.models.neurons.SpikingNeuronFunction`.
    """
    steps, batch, out_channels, height, width = potentials.shape
    grads = np.empty_like(potentials)
    sums = np.zeros((batch, out_channels, 2))
    for b in prange(batch):
        padded = _padded(x, b)
        plane = np.empty((height, width), x.dtype)
        zeros = np.zeros((height, width), x.dtype)  # dL/dU after the last step
        spike_grad = np.empty((height, width), x.dtype)
        derivative = np.empty((height, width), x.dtype)
        for o in range(out_channels):
            for t in range(steps - 1, -1, -1):
                u = potentials[t, b, o]
                if pool:
                    _unpool(grad_spikes[t, b, o], u, threshold, spike_grad)
                else:
                    spike_grad[:, :] = grad_spikes[t, b, o]
                _surrogate(code, constants, u, threshold, derivative)
                later = grads[t + 1, b, o] if t + 1 < steps else zeros
                _neuron_grad(spike_grad, derivative, u, beta, threshold, later, grads[t, b, o])
                _convolve(padded, t, weight, o, plane)
                total, weighted = _sums(grads[t, b, o], plane, mean[o], invstd[o])
                sums[b, o, 0] += total
                sums[b, o, 1] += weighted
    return grads, sums


@njit(cache=True, parallel=True)
def conv_gradients(current_grads, x, weight, mean, invstd, gain, grad_mean, grad_xhat_mean, need_input_grad):
    """Batch norm's and the convolution's backward: the weight gradients per sample ``(B, O, C, 3, 3)`` in
    float64 and, if ``need_input_grad``, the input gradient ``(T, B, C, H, W)`` (else an empty array).

    The gradient of the convolution's output is ATen's batch-norm backward,
    ``gain[o] * (g - grad_mean[o] - xhat * grad_xhat_mean[o])`` with ``xhat = (conv - mean[o]) * invstd[o]``
    recomputed here; in evaluation mode ``grad_mean`` and ``grad_xhat_mean`` are zero.
    """
    steps, batch, channels, height, width = x.shape
    out_channels = weight.shape[0]
    weight_grads = np.zeros((batch, out_channels, channels, 3, 3))
    input_grads = np.zeros(x.shape if need_input_grad else (0, 0, 0, 0, 0), x.dtype)
    for b in prange(batch):
        padded = _padded(x, b)
        padded_grad = np.zeros((channels, height + 2, width + 2), x.dtype)
        plane = np.empty((height, width), x.dtype)
        for t in range(steps):
            for o in range(out_channels):
                _convolve(padded, t, weight, o, plane)
                _norm_grad(current_grads[t, b, o], plane, mean[o], invstd[o], gain[o], grad_mean[o], grad_xhat_mean[o])
                for c in range(channels):
                    _weight_grad(plane, padded[t, c], weight_grads[b, o, c])
                    if need_input_grad:
                        _input_grad(plane, weight[o, c], padded_grad[c])
            if need_input_grad:
                input_grads[t, b] = padded_grad[:, 1 : height + 1, 1 : width + 1]
                padded_grad[:, :, :] = 0
    return weight_grads, input_grads
