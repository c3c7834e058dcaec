"""sqdr: a PyTorch Lightning experiment platform for the hybrid spiking-quantum classifier SQDR-CNN."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# PyTorch's OpenMP threads spin after each parallel region by default, and the encoder's numba kernels run on
# their own threads between PyTorch's operations, so spinning threads hold the cores the kernels need: on 2 cores
# a training step then used well over twice the CPU time it needs, and 2 threads trained no faster than 1.
# OpenMP reads this when torch is first imported; a value set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
__all__ = ["SQDRCNN", "__version__"]

if TYPE_CHECKING:
    from sqdr.models import SQDRCNN


def __getattr__(name: str) -> Any:
    # Lazy: `import sqdr` (and so every `sqdr` command's start-up, `--help` included) must not pay for torch.
    if name == "SQDRCNN":
        from sqdr.models import SQDRCNN

        return SQDRCNN
    raise AttributeError(f"module 'sqdr' has no attribute {name!r}")
