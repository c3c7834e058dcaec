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

__all__ = [
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
