"""3x3 "same" convolution with a backward pass suited to the encoder's narrow layers (1 to 8 channels).

oneDNN, which runs ``torch.nn.functional.conv2d`` on CPU, is tuned for wide layers; with one to four input
channels its backward kernels are several times slower than the forward. Both gradients of a convolution
are themselves convolutions, so :class:`NarrowConv2d` computes them with the forward kernel instead:

* input gradient: the output gradient convolved with the kernel flipped in space and transposed in channels
  (a "full" correlation, which for a 3x3 kernel with padding 1 is again padding 1);
* weight gradient: a convolution of the inputs with the output gradients, with the batch as the channel
  dimension that is summed over: ``dW[o, c] = conv(x[:, c] as (1, N, H, W), dY[:, o] as (1, N, H, W))``.

The results equal PyTorch's to float rounding (the same sums in another order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class NarrowConv2d(torch.autograd.Function):
    """``conv2d(x, weight, padding=1)`` for 3x3 kernels, stride 1, no bias."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, padding=1)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_output = grad_output.contiguous()
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad_output, weight.transpose(0, 1).flip(2, 3), padding=1)
        if ctx.needs_input_grad[1]:
            grad_weight = F.conv2d(x.transpose(0, 1), grad_output.transpose(0, 1), padding=1).transpose(0, 1)
        return grad_x, grad_weight


def narrow_conv3x3(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.conv2d(x, weight, padding=1)`` with :class:`NarrowConv2d`'s faster backward pass."""
    if weight.shape[-2:] != (3, 3):
        raise ValueError(f"narrow_conv3x3 takes 3x3 kernels, got {tuple(weight.shape[-2:])}.")
    return NarrowConv2d.apply(x, weight)
