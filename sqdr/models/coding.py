"""Spike coding: turn an image in [0, 1] into a sequence of ``time_steps`` input frames.

Three schemes are offered:

* ``phase``: the paper's weighted phase coding. A pixel is quantised to 8 bits; step ``t`` carries
  bit ``t mod 8`` (most significant first) with weight ``2**-(t mod 8 + 1)``, so 8 steps reconstruct the pixel.
* ``rate``: Bernoulli rate coding, a spike with probability equal to the pixel value at every step.
* ``direct``: the analogue image repeated at every step (the first layer's neurons do the coding).
"""

from __future__ import annotations

import functools
from typing import Literal

import torch
from snntorch import spikegen
from torch import nn

SpikeCoding = Literal["phase", "rate", "direct"]

PHASE_BITS = 8


def phase_code(images: torch.Tensor, time_steps: int) -> torch.Tensor:
    """Weighted phase coding of ``images`` (values in [0, 1]) into ``(time_steps, *images.shape)``.

    Every frame is looked up in :func:`phase_table` by the pixel's 8-bit level: one gather writes the frames,
    where cutting the bit planes out and weighting them took a dozen operations over all of them.
    """
    # 255/256 keeps a pixel of 1.0 representable in 8 bits (the reference does the same).
    levels = torch.round(images.clamp(0.0, 1.0) * 255.0).to(torch.int64)
    table = phase_table(time_steps, images.dtype, images.device)
    return table.index_select(1, levels.flatten()).view(time_steps, *images.shape)


@functools.lru_cache(maxsize=16)
def phase_table(time_steps: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``table[t, level]``: bit ``t mod 8`` of the 8-bit ``level`` (most significant first) times its weight
    ``2**-(t mod 8 + 1)``, ``(time_steps, 256)``. Cached: it depends only on its arguments, and callers only read it."""
    phases = torch.arange(time_steps, device=device) % PHASE_BITS
    levels = torch.arange(2**PHASE_BITS, device=device)
    bits = (levels.unsqueeze(0) >> (PHASE_BITS - 1 - phases).unsqueeze(1)) & 1
    return bits.to(dtype) * torch.pow(2.0, -(phases + 1).to(dtype)).unsqueeze(1)


def rate_code(images: torch.Tensor, time_steps: int) -> torch.Tensor:
    """Bernoulli rate coding (snnTorch's ``spikegen.rate``): at each step a pixel fires with probability equal
    to its value."""
    return spikegen.rate(images.clamp(0.0, 1.0), num_steps=time_steps)


def direct_code(images: torch.Tensor, time_steps: int) -> torch.Tensor:
    """The analogue image at every step."""
    return images.unsqueeze(0).expand(time_steps, *images.shape)


CODERS = {"phase": phase_code, "rate": rate_code, "direct": direct_code}


class SpikeCoder(nn.Module):
    """Module wrapper so the coding scheme shows up in ``print(model)`` and configs."""

    def __init__(self, coding: SpikeCoding = "phase", time_steps: int = 10) -> None:
        super().__init__()
        if coding not in CODERS:
            raise ValueError(f"Unknown spike coding {coding!r}; choose one of {sorted(CODERS)}.")
        if time_steps < 1:
            raise ValueError(f"time_steps must be at least 1, got {time_steps}.")
        self.coding = coding
        self.time_steps = time_steps

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return CODERS[self.coding](images, self.time_steps)

    def extra_repr(self) -> str:
        return f"coding={self.coding!r}, time_steps={self.time_steps}"
