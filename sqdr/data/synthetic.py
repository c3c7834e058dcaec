"""Small random but learnable images, generated from the seed, for tests and smoke runs that must be fast."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.utils.data import Dataset, TensorDataset

from sqdr.data.base import ImageDataModule

#: Each class is a random on/off pattern on a coarse grid of this side, scaled up to the image: coarse blocks
#: survive resizing and pooling, so even a tiny model can separate the classes.
PATTERN_GRID = 4
DEFAULT_SIZE = 8
DEFAULT_CHANNELS = 1


class SyntheticDataModule(ImageDataModule):
    """``n_train`` + ``n_test`` images of ``n_classes`` class patterns plus Gaussian ``noise``, clipped to [0, 1].

    Images are generated directly at ``image_size`` (default 8) with ``channels`` (default 1). The patterns and
    the samples depend only on ``seed``: the same seed gives the same data and splits. ``root`` is unused.
    """

    def __init__(
        self, *, n_train: int = 512, n_test: int = 128, n_classes: int = 4, noise: float = 0.3, **kwargs: Any
    ) -> None:
        """``n_train`` images before the validation split, ``n_test`` test images, balanced over ``n_classes``."""
        if min(n_train, n_test) < 1 or n_classes < 2 or noise < 0:
            raise ValueError(
                f"need n_train, n_test >= 1, n_classes >= 2 and noise >= 0, got {n_train}, {n_test}, {n_classes}, "
                f"{noise}."
            )
        super().__init__(**kwargs)

    @property
    def native_classes(self) -> int:
        return self.hparams.n_classes

    @property
    def native_channels(self) -> int:
        return self.hparams.channels or DEFAULT_CHANNELS

    @property
    def native_hw(self) -> int:
        return self.hparams.image_size or DEFAULT_SIZE

    def _load(self, train: bool) -> tuple[Dataset, Tensor]:
        h = self.hparams
        generator = torch.Generator().manual_seed(h.seed)
        coarse = torch.rand(h.n_classes, self.native_channels, PATTERN_GRID, PATTERN_GRID, generator=generator)
        patterns = F.interpolate((coarse > 0.5).float(), size=(self.native_hw, self.native_hw), mode="nearest")
        # train and test always consume the generator in the same order, so each is the same whichever is built
        train_labels = torch.arange(h.n_train) % h.n_classes
        test_labels = torch.arange(h.n_test) % h.n_classes
        train_noise = torch.randn(h.n_train, *patterns.shape[1:], generator=generator)
        test_noise = torch.randn(h.n_test, *patterns.shape[1:], generator=generator)
        labels, noise = (train_labels, train_noise) if train else (test_labels, test_noise)
        images = (0.2 + 0.6 * patterns[labels] + h.noise * noise).clamp(0.0, 1.0)
        return TensorDataset(images, labels), labels
