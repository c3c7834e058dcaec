"""sqdr: a PyTorch Lightning experiment platform for the hybrid spiking-quantum classifier SQDR-CNN.

Importing sqdr changes nothing in the process; :func:`sqdr.runtime.configure` applies the settings that make
training fast (the ``sqdr`` command calls it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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
