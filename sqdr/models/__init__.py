"""The SQDR-CNN model and its parts."""

from sqdr.models.circuit import ReuploadCircuit
from sqdr.models.coding import SpikeCoder
from sqdr.models.encoder import SpikingEncoder
from sqdr.models.noise import NoiseModel
from sqdr.models.spec import ENGINES, CircuitSpec
from sqdr.models.sqdr_cnn import SQDRCNN

__all__ = ["ENGINES", "SQDRCNN", "CircuitSpec", "NoiseModel", "ReuploadCircuit", "SpikeCoder", "SpikingEncoder"]
