"""Classical baselines that train and report exactly like SQDR-CNN, so parameter efficiency is measured, not claimed.

:class:`ConvNet` is the non-spiking counterpart of the paper's model: the same convolution stages with ReLU in
place of the spiking neurons and no time steps. It is an :class:`~sqdr.SQDRCNN` (``model.net.class_path:
sqdr.models.baselines.ConvNet`` in a config) whose ``encoder`` is that CNN and whose ``circuit`` is the classical
layer, so ``SQDRModule``, the callbacks and ``parameter_counts()`` treat it like any other run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jsonargparse.typing import PositiveInt
from torch import nn

from sqdr.models.encoder import (
    REFERENCE_BN_MOMENTUM,
    Convolution,
    Projection,
    make_convolutions,
    spatial_grid,
)
from sqdr.models.spec import Readout
from sqdr.models.sqdr_cnn import SQDRCNN, Head
from sqdr.models.twins import ClassicalMap


class ConvEncoder(nn.Module):
    """Conv3x3-BN-ReLU-MaxPool stages, then the projection :class:`~sqdr.models.encoder.SpikingEncoder` would use.

    The parameters of the spiking encoder with the same options, one for one (its neurons have none). Its
    features stay in [0, 1] like the spiking encoder's firing rates: ``linear`` is global average pooling,
    ``Linear(-> out_features)`` and a sigmoid; ``spatial`` takes the last stage's 3 channels through a sigmoid,
    unpooled, and average-pools them to the qubits' grid, ordered qubit-major as the spiking encoder orders them.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_features: int = 27,
        channels: Sequence[int] | None = None,
        bn_momentum: float = REFERENCE_BN_MOMENTUM,
        convolution: Convolution = "full",
        projection: Projection = "linear",
    ) -> None:
        super().__init__()
        channels = list(channels) if channels is not None else [2 * in_channels, 4 * in_channels, 8 * in_channels]
        convolutions = make_convolutions([in_channels, *channels], convolution)
        stages: list[nn.Module] = []
        for stage, (conv, c_out) in enumerate(zip(convolutions, channels)):
            stages += [conv, nn.BatchNorm2d(c_out, momentum=bn_momentum)]
            if stage < len(channels) - 1 or projection == "linear":
                stages += [nn.ReLU(), nn.MaxPool2d(2, 2)]
        if projection == "spatial":
            side = spatial_grid(out_features, channels[-1], "none")
            head: list[nn.Module] = [nn.Sigmoid(), nn.AdaptiveAvgPool2d(side), nn.Flatten(2)]
        elif projection == "linear":
            head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels[-1], out_features), nn.Sigmoid()]
        else:
            raise ValueError(f"Unknown projection {projection!r}; choose 'linear' or 'spatial'.")
        self.projection = projection
        self.layers = nn.Sequential(*stages, *head)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.layers(images)
        # spatial: (B, 3, cells) -> qubit-major (B, cells * 3), feature 3 * cell + channel
        return features.transpose(1, 2).flatten(1) if self.projection == "spatial" else features


class ConvNet(SQDRCNN):
    """A plain CNN of a hybrid's size: :class:`ConvEncoder`, a classical map in the circuit's place, the same head.

    ``n_qubits`` keeps its meaning of "width after the encoder" (``3 * n_qubits`` features); ``classical_map``
    and the circuit options that size it (``n_blocks``, ``readout``, the angle options) are SQDR-CNN's, so with
    ``classical_map: matched`` and the hybrid's encoder options this network has the hybrid's parameters exactly.
    A config switches between this and SQDR-CNN by ``class_path`` alone; the shared options have SQDR-CNN's
    types, which lets the values parsed for one carry over to the other.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        n_qubits: PositiveInt = 9,
        encoder_channels: Sequence[int] | None = None,
        convolution: Convolution = "full",
        projection: Projection = "linear",
        bn_momentum: float = REFERENCE_BN_MOMENTUM,
        classical_map: ClassicalMap = "tanh_layer",
        n_blocks: PositiveInt = 2,
        readout: Readout = "z",
        learn_angle_scale: bool = False,
        learn_angle_offset: bool = False,
        head: Head = "linear",
        head_hidden: PositiveInt = 32,
        head_relu: bool = False,
    ) -> None:
        super().__init__(
            in_channels=in_channels,
            num_classes=num_classes,
            image_size=image_size,
            time_steps=1,
            n_qubits=n_qubits,
            n_blocks=n_blocks,
            encoder_channels=encoder_channels,
            convolution=convolution,
            projection=projection,
            bn_momentum=bn_momentum,
            readout=readout,
            learn_angle_scale=learn_angle_scale,
            learn_angle_offset=learn_angle_offset,
            head=head,
            head_hidden=head_hidden,
            head_relu=head_relu,
            quantum=False,
            classical_map=classical_map,
        )
        self.coder = nn.Identity()  # images go to the CNN as they are: no spike coding, no time steps
        self.encoder = ConvEncoder(in_channels, 3 * n_qubits, encoder_channels, bn_momentum, convolution, projection)
