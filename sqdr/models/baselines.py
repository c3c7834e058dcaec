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

from sqdr.models.encoder import REFERENCE_BN_MOMENTUM
from sqdr.models.sqdr_cnn import SQDRCNN, Head


class ConvEncoder(nn.Module):
    """Conv3x3-BN-ReLU-MaxPool stages, global average pooling, ``Linear(-> out_features)`` and a sigmoid.

    The parameters of :class:`~sqdr.models.encoder.SpikingEncoder` with the same options, one for one (its
    neurons have none); the sigmoid keeps the features in [0, 1] like the spiking encoder's firing rates.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_features: int = 27,
        channels: Sequence[int] | None = None,
        bn_momentum: float = REFERENCE_BN_MOMENTUM,
    ) -> None:
        super().__init__()
        channels = list(channels) if channels is not None else [2 * in_channels, 4 * in_channels, 8 * in_channels]
        stages: list[nn.Module] = []
        for c_in, c_out in zip([in_channels, *channels], channels):
            stages += [
                nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(c_out, momentum=bn_momentum),
                nn.ReLU(),
                nn.MaxPool2d(2, 2),
            ]
        self.layers = nn.Sequential(
            *stages, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels[-1], out_features), nn.Sigmoid()
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


class ConvNet(SQDRCNN):
    """A plain CNN of the paper model's size: :class:`ConvEncoder`, the classical layer, the same head.

    ``n_qubits`` keeps its meaning of "width after the encoder" (``3 * n_qubits`` features, ``n_qubits`` values
    into the head), so a config switches between this and SQDR-CNN by ``class_path`` alone; the shared options
    have SQDR-CNN's types, which lets the values parsed for one carry over to the other.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        n_qubits: PositiveInt = 9,
        encoder_channels: Sequence[int] | None = None,
        bn_momentum: float = REFERENCE_BN_MOMENTUM,
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
            encoder_channels=encoder_channels,
            bn_momentum=bn_momentum,
            head=head,
            head_hidden=head_hidden,
            head_relu=head_relu,
            quantum=False,
        )
        self.coder = nn.Identity()  # images go to the CNN as they are: no spike coding, no time steps
        self.encoder = ConvEncoder(in_channels, 3 * n_qubits, encoder_channels, bn_momentum)
