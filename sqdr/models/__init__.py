"""The SQDR-CNN model and its parts."""

from sqdr.models.circuit import CircuitSpec, ReuploadCircuit
from sqdr.models.coding import SpikeCoder
from sqdr.models.encoder import SpikingEncoder
from sqdr.models.noise import NoiseModel
from sqdr.models.sqdr_cnn import SQDRCNN

__all__ = ["SQDRCNN", "CircuitSpec", "NoiseModel", "ReuploadCircuit", "SpikeCoder", "SpikingEncoder"]
