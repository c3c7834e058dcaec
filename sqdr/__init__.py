"""sqdr: a PyTorch Lightning experiment platform for the hybrid spiking-quantum classifier SQDR-CNN."""

from sqdr.models import SQDRCNN

__version__ = "0.1.0"
__all__ = ["SQDRCNN", "__version__"]
