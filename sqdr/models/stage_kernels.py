"""Numba kernels of an encoder stage: a narrow 3x3 convolution, and batch norm -> spiking neurons over T steps ->
2x2 max pool, each forward and backward.

Why hand-written: the encoder's stages have 1 to 8 channels on 28x28 to 7x7 maps repeated over T time steps,
and oneDNN (which runs PyTorch's CPU convolutions) and ATen's pooling and batch-norm kernels are tuned for wide
layers. Each ATen operation reads and writes the whole ``T x B x C x H x W`` tensor, and the neurons take a few
of them per time step, at far below memory speed. These kernels keep one sample's maps in cache and do every
step on them: the neurons' whole recurrence, forward and backward, and the pooling in the same pass.

Every kernel works on one frame or sample at a time (``prange``), so threads never write to the same memory, and
is compiled twice (:class:`Kernel`): threaded for large arrays, as plain loops for small ones.
Per-frame partial sums are returned in float64 and summed by the caller, which keeps results independent of
the number of threads. The arithmetic is that of :mod:`sqdr.models.neurons` and of ATen's batch norm
(``y * scale + shift``) and max pool (the first maximum of a window, in raster order, gets the gradient); only
the order of the convolution's sums differs, so values agree to float rounding.

``error_model="numpy"`` everywhere: numba's default checks every division for zero, which stops LLVM from
vectorising the loops.
"""

from __future__ import annotations

import functools
import math
import types
from typing import TYPE_CHECKING

import numba
import numpy as np
from numba import njit, prange

from sqdr.models import threads

if TYPE_CHECKING:
    import torch

# Whether the threaded kernels run on TBB's thread pool: sqdr.runtime.configure() chooses numba's tbb layer when
# the tbb package's library loads. Without configure(), numba's default layer.
TBB = numba.config.THREADING_LAYER == "tbb"

# Below this many elements in its largest array a kernel runs its loops on the calling thread, where a launch on
# the thread pool would cost more than the threads save. On TBB, timed on 2 cores, training steps of the paper
# model were as fast or faster with every stage threaded, from batch 16 up; on the workqueue every stage of a
# batch of 16 was faster serial.
TBB_MIN_ELEMENTS = 2**13
WORKQUEUE_MIN_ELEMENTS = 2**18
PARALLEL_MIN_ELEMENTS = TBB_MIN_ELEMENTS if TBB else WORKQUEUE_MIN_ELEMENTS


def array(tensor: torch.Tensor) -> np.ndarray:
    """The NumPy array of ``tensor``'s values the kernels take: a view when it is contiguous, else a copy."""
    return tensor.detach().contiguous().numpy()


# Surrogate derivatives, by code (the order of sqdr.models.neurons.SURROGATES).
ATAN, FAST_SIGMOID, SIGMOID, TRIANGULAR, STRAIGHT_THROUGH = range(5)

# Floating-point freedoms of the kernels that sum (statistics and gradients): reordering the sums lets LLVM
# vectorise them. The forward kernels, whose values are compared with the threshold, keep strict IEEE order.
SUMS = {"reassoc", "contract", "nsz"}


def surrogate_constants(code: int, slope: float, dtype: np.dtype) -> np.ndarray:
    """``[a, b, 1]`` in ``dtype`` for :func:`_surrogate`. Constants are passed typed because numba, like NumPy 1,
    widens float32 arithmetic with a Python number to float64, which halves the vector width."""
    a, b = (math.pi / 2 * slope, slope / 2) if code == ATAN else (slope, 0.0)
    return np.array([a, b, 1.0], dtype)


@njit(cache=True, error_model="numpy", fastmath=SUMS)
def _surrogate(code, constants, potentials, threshold, out):
    """``out = dS/dU`` at ``potentials - threshold``, flat arrays: the derivatives of ``snntorch.surrogate``'s
    functions (``sigmoid`` as ``k s (1 - s)``, which does not overflow to NaN far below the threshold)."""
    a, b, one = constants[0], constants[1], constants[2]
    if code == ATAN:
        for i in range(out.size):
            x = a * (potentials[i] - threshold)
            out[i] = b / (one + x * x)
    elif code == FAST_SIGMOID:
        for i in range(out.size):
            d = a * abs(potentials[i] - threshold) + one
            out[i] = one / (d * d)
    elif code == SIGMOID:
        for i in range(out.size):
            e = one / (one + np.exp(-a * (potentials[i] - threshold)))
            out[i] = (e - e * e) * a
    elif code == TRIANGULAR:
        for i in range(out.size):
            out[i] = a if potentials[i] < threshold else -a
    else:
        out[:] = one


class Kernel:
    """A kernel compiled twice: with its ``prange`` loop spread over numba's threads, and as plain loops. A call
    runs the threaded one when its largest array has at least ``PARALLEL_MIN_ELEMENTS`` elements, on
    :func:`sqdr.models.threads.budget`'s threads: as many as PyTorch uses, or had when a training step put its small
    operations on one thread."""

    def __init__(self, function) -> None:
        options = {"cache": True, "error_model": "numpy"}
        self.threaded = njit(parallel=True, **options)(function)
        # numba's on-disk cache tells functions apart by qualified name, not by compile options: the serial twin
        # gets a name of its own, or the two would load each other's machine code.
        serial = types.FunctionType(function.__code__, function.__globals__, function.__name__, function.__defaults__)
        serial.__qualname__ = f"{function.__qualname__}_serial"
        self.serial = njit(**options)(serial)
        functools.update_wrapper(self, function)

    def __call__(self, *args):
        if max(arg.size for arg in args if isinstance(arg, np.ndarray)) < PARALLEL_MIN_ELEMENTS:
            return self.serial(*args)
        wanted = max(1, min(threads.budget(), numba.config.NUMBA_NUM_THREADS))  # one per worker in a parallel sweep
        previous = numba.get_num_threads()
        if wanted == previous:
            return self.threaded(*args)
        # numba's thread count belongs to the calling thread (its parallel regions inherit it; other threads keep
        # their own), so setting it for this call and restoring it after leaves the caller's setting as it was.
        numba.set_num_threads(wanted)
        try:
            return self.threaded(*args)
        finally:
            numba.set_num_threads(previous)


# The convolution works on frames padded with a border of zeros and flattened: in a padded frame of row length
# R = W + 2, output pixel (h, j) sits at p = h * R + j and its 3x3 taps at p + di * R + dj. Every tap is then one
# shifted multiply-add over all H * R positions at once, a loop long enough to vectorise even on 7x7 maps (which
# rows of 7 pixels are not). Positions with j >= W are scratch: computed and never read. The last tap of the last
# scratch position reads 2 elements past the padded frame, so padded frames carry 2 more zeros (``PAD_TAIL``).
PAD_TAIL = 2


@njit(cache=True, error_model="numpy")
def _copy_rows(source, source_row, target, target_row, height, width):
    """Copy ``height`` rows of ``width`` values between flat arrays whose rows start ``source_row`` and
    ``target_row`` apart. A row is copied between two 1-d views, which vectorises; indexing the 4-d arrays
    element by element made the copies cost more than the convolution."""
    for h in range(height):
        start, end = h * source_row, h * target_row
        row_from, row_to = source[start : start + width], target[end : end + width]
        for j in range(width):
            row_to[j] = row_from[j]


@njit(cache=True, error_model="numpy")
def _padded(frame, height, width):
    """A frame of ``C`` flat maps ``(C, H * W)`` padded with zeros and flattened: ``(C, (H + 2) * (W + 2) + PAD_TAIL)``."""
    channels, row = frame.shape[0], width + 2
    padded = np.zeros((channels, (height + 2) * row + PAD_TAIL), frame.dtype)
    for c in range(channels):
        _copy_rows(frame[c], width, padded[c, row + 1 :], row, height, width)
    return padded


@njit(cache=True, error_model="numpy")
def _convolve(padded, weight, o, row, out):
    """``out = conv2d(frame, weight[o], padding=1)`` for a padded flattened frame of row length ``row``, in the
    padded layout: ``out`` has ``H * row`` positions. All nine taps of an input channel in one pass over ``out``."""
    size = out.size
    for c in range(padded.shape[0]):
        frame, w = padded[c], weight[o, c]
        # views at the taps' offsets: indices from range() need no negative-index check, which vectorises
        a0, a1, a2 = frame[0:size], frame[1 : size + 1], frame[2 : size + 2]
        b0, b1, b2 = frame[row : row + size], frame[row + 1 : row + size + 1], frame[row + 2 : row + size + 2]
        c0, c1, c2 = frame[2 * row : 2 * row + size], frame[2 * row + 1 : 2 * row + size + 1], frame[2 * row + 2 :]
        w00, w01, w02, w10, w11, w12, w20, w21, w22 = (
            w[0, 0], w[0, 1], w[0, 2], w[1, 0], w[1, 1], w[1, 2], w[2, 0], w[2, 1], w[2, 2]
        )
        for p in range(size):
            total = (w00 * a0[p] + w01 * a1[p] + w02 * a2[p]) + (w10 * b0[p] + w11 * b1[p] + w12 * b2[p]) + (
                w20 * c0[p] + w21 * c1[p] + w22 * c2[p]
            )
            out[p] = total if c == 0 else out[p] + total


@njit(cache=True, error_model="numpy", fastmath=SUMS)
def _weight_grad(grad, frame, row, out):
    """``out[di, dj] += sum(grad * frame shifted by (di, dj))``: a 3x3 weight gradient from the output gradient
    ``grad`` in the padded layout (zero at scratch positions) and a padded flattened frame, nine sums in one pass.
    Each plane's sums are in the data's type (as oneDNN sums), added up in float64."""
    size = grad.size
    a0, a1, a2 = frame[0:size], frame[1 : size + 1], frame[2 : size + 2]
    b0, b1, b2 = frame[row : row + size], frame[row + 1 : row + size + 1], frame[row + 2 : row + size + 2]
    c0, c1, c2 = frame[2 * row : 2 * row + size], frame[2 * row + 1 : 2 * row + size + 1], frame[2 * row + 2 :]
    s00 = s01 = s02 = s10 = s11 = s12 = s20 = s21 = s22 = grad[0] - grad[0]
    for p in range(size):
        g = grad[p]
        s00 += g * a0[p]
        s01 += g * a1[p]
        s02 += g * a2[p]
        s10 += g * b0[p]
        s11 += g * b1[p]
        s12 += g * b2[p]
        s20 += g * c0[p]
        s21 += g * c1[p]
        s22 += g * c2[p]
    out[0, 0] += s00
    out[0, 1] += s01
    out[0, 2] += s02
    out[1, 0] += s10
    out[1, 1] += s11
    out[1, 2] += s12
    out[2, 0] += s20
    out[2, 1] += s21
    out[2, 2] += s22


@njit(cache=True, error_model="numpy", fastmath=SUMS)
def _moments(plane):
    """``sum(plane)`` and ``sum(plane ** 2)`` in float64 (a flat array): batch norm's statistics, whose variance
    ``E[x^2] - E[x]^2`` cancels digits, so every term is summed in double precision."""
    total = 0.0
    squares = 0.0
    for i in range(plane.size):
        v = np.float64(plane[i])
        total += v
        squares += v * v
    return total, squares


@njit(cache=True, error_model="numpy", fastmath=SUMS)
def _gradient_sums(grad, plane, mean, invstd):
    """``sum(grad)`` and ``sum(grad * (plane - mean) * invstd)`` over one plane (flat arrays), what batch norm's
    backward needs. Summed in the data's type, as ATen's batch norm backward does, which vectorises twice as
    wide as float64; the planes' sums are then added up in float64 by the caller."""
    total = grad[0] - grad[0]
    weighted = total
    for i in range(plane.size):
        g = grad[i]
        total += g
        weighted += g * ((plane[i] - mean) * invstd)
    return np.float64(total), np.float64(weighted)


@njit(cache=True, error_model="numpy")
def _fire(plane, scale, shift, beta, threshold, membrane, potentials, spikes):
    """One time step of the neurons (flat arrays): currents ``plane * scale + shift`` (per element); the spikes go to
    ``spikes``, the potentials before reset to ``potentials``, and ``membrane`` is carried to the next step."""
    for i in range(plane.size):
        u = plane[i] * scale[i] + shift[i] + beta * membrane[i]
        potentials[i] = u
        fired = u > threshold
        spikes[i] = 1 if fired else 0
        membrane[i] = 0 if fired else u


@njit(cache=True, error_model="numpy")
def _pool(plane, height, width, out):
    """2x2 max pool with stride 2 of a flat ``H * W`` plane into a flat ``(H // 2) * (W // 2)`` one (a trailing odd
    row or column is dropped, as in ``MaxPool2d(2, 2)``)."""
    pooled_width = width // 2
    for i in range(height // 2):
        top = 2 * i * width
        bottom = top + width
        for j in range(pooled_width):
            left, right = 2 * j, 2 * j + 1
            upper = max(plane[top + left], plane[top + right])
            out[i * pooled_width + j] = max(upper, max(plane[bottom + left], plane[bottom + right]))


@njit(cache=True, error_model="numpy")
def _unpool(grad, potentials, threshold, height, width, out):
    """Max pool's backward on spikes ``potentials > threshold``: a window's gradient goes to its first spiking
    pixel in raster order, or to its first pixel if none fired (ATen's choice of the maximum's index).

    Flat arrays: ``grad`` ``(H // 2) * (W // 2)``, ``potentials`` and ``out`` ``H * W``. Written as arithmetic on
    0/1 spikes rather than conditions (random spikes make branches mispredict), and on flat indices (2-d views
    of each plane cost more than the arithmetic on 7x7 maps).
    """
    zero = threshold - threshold  # typed like the data (see surrogate_constants)
    one = threshold / threshold
    pooled_height, pooled_width = height // 2, width // 2
    if height % 2 or width % 2:  # a trailing row or column no window covers gets no gradient
        for i in range(out.size):
            out[i] = zero
    for i in range(pooled_height):
        top = 2 * i * width
        bottom = top + width
        for j in range(pooled_width):
            g = grad[i * pooled_width + j]
            left, right = 2 * j, 2 * j + 1
            a = one if potentials[top + left] > threshold else zero
            b = one if potentials[top + right] > threshold else zero
            c = one if potentials[bottom + left] > threshold else zero
            d = one if potentials[bottom + right] > threshold else zero
            not_a = one - a
            not_ab = not_a * (one - b)
            not_abc = not_ab * (one - c)
            out[top + left] = g * (a + not_abc * (one - d))
            out[top + right] = g * (b * not_a)
            out[bottom + left] = g * (c * not_ab)
            out[bottom + right] = g * (d * not_abc)


@njit(cache=True, error_model="numpy", fastmath=SUMS)
def _neuron_grad(spike_grad, derivative, potentials, beta, threshold, later, out):
    """``dL/dU_t = σ'_t g_t + β ((1 - S_t) - U_t σ'_t) dL/dU_{t+1}`` into ``out``; ``later`` is dL/dU_{t+1}.
    Flat arrays."""
    zero = threshold - threshold
    one = threshold / threshold  # 1, typed like the data (the threshold is positive)
    for i in range(out.size):
        v = potentials[i]
        d = derivative[i]
        carry = beta * ((one if v <= threshold else zero) - v * d)
        out[i] = d * spike_grad[i] + carry * later[i]


@njit(cache=True, error_model="numpy", fastmath=SUMS)
def _norm_grad(grad, plane, mean, slope, gain, grad_mean, out):
    """Batch norm's input gradient ``gain * (grad - grad_mean - (plane - mean) * slope)`` into ``out`` (which may
    be ``grad``), with ``slope = invstd * mean(grad * xhat)``, from the convolution's outputs ``plane``. Flat
    arrays and constants in the data's type, as ATen computes it."""
    for i in range(plane.size):
        out[i] = gain * (grad[i] - grad_mean - (plane[i] - mean) * slope)


@Kernel
def conv3x3(x, weight):
    """``conv2d(x, weight, padding=1)`` for frames ``x`` ``(N, C, H, W)``: ``(N, O, H, W)``."""
    frames, channels, height, width = x.shape
    out_channels, row = weight.shape[0], width + 2
    out = np.empty((frames, out_channels, height, width), x.dtype)
    maps, out_maps = x.reshape((frames, channels, height * width)), out.reshape((frames, out_channels, -1))
    for n in prange(frames):
        padded = _padded(maps[n], height, width)
        plane = np.empty(height * row, x.dtype)
        for o in range(out_channels):
            _convolve(padded, weight, o, row, plane)
            _copy_rows(plane, row, out_maps[n, o], width, height, width)
    return out


@Kernel
def conv3x3_weight_gradients(grad, x):
    """The weight gradient of :func:`conv3x3` for the output gradient ``grad`` ``(N, O, H, W)``, per frame:
    ``(N, O, C, 3, 3)`` in float64. (The input gradient is :func:`conv3x3` of ``grad`` with the flipped kernel.)"""
    frames, channels, height, width = x.shape
    out_channels, row = grad.shape[1], width + 2
    maps, grad_maps = x.reshape((frames, channels, height * width)), grad.reshape((frames, out_channels, -1))
    weight_grads = np.zeros((frames, out_channels, channels, 3, 3))
    for n in prange(frames):
        padded = _padded(maps[n], height, width)
        plane = np.zeros(height * row, x.dtype)  # the output gradient in the padded layout, zero at scratch
        for o in range(out_channels):
            _copy_rows(grad_maps[n, o], width, plane, row, height, width)
            for c in range(channels):
                _weight_grad(plane, padded[c], row, weight_grads[n, o, c])
    return weight_grads


@Kernel
def channel_moments(conv):
    """Per-frame sums of each channel's values and of their squares, ``(N, O, 2)`` in float64, for ``(N, O, H, W)``."""
    frames, out_channels, height, width = conv.shape
    flat = conv.reshape((frames, out_channels, height * width))
    moments = np.zeros((frames, out_channels, 2))
    for n in prange(frames):
        for o in range(out_channels):
            total, squares = _moments(flat[n, o])
            moments[n, o, 0] = total
            moments[n, o, 1] = squares
    return moments


@njit(cache=True, error_model="numpy")
def _per_element(values, size):
    """``values`` ``(O,)`` repeated ``size`` times each: per-channel constants laid out like one sample's maps."""
    out = np.empty(values.size * size, values.dtype)
    for o in range(values.size):
        out[o * size : (o + 1) * size] = values[o]
    return out


@Kernel
def norm_fire_pool(conv, scale, shift, beta, threshold, pool, potentials):
    """Spikes of neurons driven by ``conv * scale[o] + shift[o]`` over the T steps of ``conv`` ``(T, B, O, H, W)``
    (batch norm folded into one multiply-add, as ATen computes it), max-pooled if ``pool``: ``(T, B, O, H', W')``.

    The membrane potentials before reset go to ``potentials`` ``(T, B, O, H, W)`` unless it is empty.
    """
    steps, batch, out_channels, height, width = conv.shape
    size = height * width
    out_h, out_w = (height // 2, width // 2) if pool else (height, width)
    spikes = np.empty((steps, batch, out_channels, out_h, out_w), conv.dtype)
    flat = conv.reshape((steps, batch, out_channels * size))
    flat_spikes = spikes.reshape((steps, batch, out_channels * out_h * out_w))
    keep = potentials.size > 0
    kept = potentials.reshape((steps, batch, out_channels * size)) if keep else np.empty((1, 1, 1), conv.dtype)
    scales, shifts = _per_element(scale, size), _per_element(shift, size)
    for b in prange(batch):
        fired = np.empty(out_channels * size, conv.dtype)
        membrane = np.zeros(out_channels * size, conv.dtype)
        scratch = np.empty(out_channels * size, conv.dtype)
        for t in range(steps):
            potential = kept[t, b] if keep else scratch
            if pool:
                _fire(flat[t, b], scales, shifts, beta, threshold, membrane, potential, fired)
                pooled = out_h * out_w
                for o in range(out_channels):
                    _pool(fired[o * size : (o + 1) * size], height, width, flat_spikes[t, b, o * pooled : (o + 1) * pooled])
            else:
                _fire(flat[t, b], scales, shifts, beta, threshold, membrane, potential, flat_spikes[t, b])
    return spikes


@Kernel
def current_gradients(grad_spikes, potentials, conv, mean, invstd, beta, threshold, code, constants, pool, norm_sums):
    """Gradients of the neurons' input currents ``(T, B, O, H, W)``, and with ``norm_sums`` per-sample sums
    ``(B, O, 2)`` of them and of them times the normalised convolution ``(conv - mean[o]) * invstd[o]`` (batch norm's
    backward; zeros without).

    The neurons' recurrence runs backward through time as derived in :mod:`sqdr.models.neurons`.
    """
    steps, batch, out_channels, height, width = potentials.shape
    size = height * width
    grads = np.empty_like(potentials)
    flat_grads = grads.reshape((steps, batch, out_channels * size))
    flat_conv = conv.reshape((steps, batch, out_channels * size))
    flat_potentials = potentials.reshape((steps, batch, out_channels * size))
    flat_grad_spikes = grad_spikes.reshape((steps, batch, -1))
    sums = np.zeros((batch, out_channels, 2))
    for b in prange(batch):
        zeros = np.zeros(out_channels * size, conv.dtype)  # dL/dU after the last step
        spike_grad = np.empty(out_channels * size, conv.dtype)
        derivative = np.empty(out_channels * size, conv.dtype)
        for t in range(steps - 1, -1, -1):
            u = flat_potentials[t, b]
            if pool:
                pooled = flat_grad_spikes.shape[2] // out_channels
                for o in range(out_channels):
                    channel = slice(o * size, (o + 1) * size)
                    _unpool(flat_grad_spikes[t, b, o * pooled : (o + 1) * pooled], u[channel], threshold, height, width,
                            spike_grad[channel])
            else:
                spike_grad[:] = flat_grad_spikes[t, b]
            _surrogate(code, constants, u, threshold, derivative)
            later = flat_grads[t + 1, b] if t + 1 < steps else zeros
            _neuron_grad(spike_grad, derivative, u, beta, threshold, later, flat_grads[t, b])
            if not norm_sums:
                continue
            for o in range(out_channels):
                channel = slice(o * size, (o + 1) * size)
                total, weighted = _gradient_sums(flat_grads[t, b, channel], flat_conv[t, b, channel], mean[o], invstd[o])
                sums[b, o, 0] += total
                sums[b, o, 1] += weighted
    return grads, sums


@Kernel
def norm_gradients(current_grads, conv, mean, slope, gain, grad_mean):
    """Batch norm's backward in place of ``current_grads`` ``(N, O, H, W)``: the gradient of the convolution's
    outputs ``conv`` (see :func:`_norm_grad`; per-channel constants in the data's type). In evaluation mode
    ``grad_mean`` and ``slope`` are zero."""
    frames, out_channels, height, width = conv.shape
    flat_conv = conv.reshape((frames, out_channels, height * width))
    flat_grads = current_grads.reshape((frames, out_channels, height * width))
    for n in prange(frames):
        for o in range(out_channels):
            g = flat_grads[n, o]
            _norm_grad(g, flat_conv[n, o], mean[o], slope[o], gain[o], grad_mean[o], g)
    return current_grads
