"""LightningDataModules: float images ``(B, C, H, W)`` in [0, 1] and integer labels, one class per data set."""

from sqdr.data.base import DatasetNotFoundError, ImageDataModule
from sqdr.data.digits import DigitsDataModule
from sqdr.data.synthetic import SyntheticDataModule
from sqdr.data.vision import (
    CIFAR10DataModule,
    FashionMNISTDataModule,
    KMNISTDataModule,
    MNISTDataModule,
    TorchvisionDataModule,
)

DATAMODULES: dict[str, type[ImageDataModule]] = {
    "mnist": MNISTDataModule,
    "fashion_mnist": FashionMNISTDataModule,
    "kmnist": KMNISTDataModule,
    "cifar10": CIFAR10DataModule,
    "digits": DigitsDataModule,
    "synthetic": SyntheticDataModule,
}

__all__ = [
    "DATAMODULES",
    "CIFAR10DataModule",
    "DatasetNotFoundError",
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "KMNISTDataModule",
    "MNISTDataModule",
    "SyntheticDataModule",
    "TorchvisionDataModule",
]
