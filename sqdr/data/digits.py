"""scikit-learn's bundled 8 x 8 handwritten digits: the data set that needs neither network nor files."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from sqdr.data.base import ImageDataModule

#: The held-out test split is fixed (not tied to ``seed``), so test accuracies of all runs are comparable.
TEST_FRACTION = 0.2
TEST_SPLIT_SEED = 0


class DigitsDataModule(ImageDataModule):
    """1797 images, 10 classes, 1 x 8 x 8; a stratified 20 % (360 images) is the fixed test set.

    The data ships inside scikit-learn, so ``root`` is unused and ``prepare_data`` has nothing to fetch.
    """

    native_classes = 10
    native_channels = 1
    native_hw = 8

    def _load(self, train: bool) -> tuple[Dataset, Tensor]:
        digits = load_digits()
        images = torch.from_numpy(digits.images).float().div(16.0).unsqueeze(1)  # pixel values are 0..16
        labels = torch.from_numpy(digits.target).long()
        train_idx, test_idx = train_test_split(
            range(len(labels)), test_size=TEST_FRACTION, stratify=labels.numpy(), random_state=TEST_SPLIT_SEED
        )
        idx = torch.tensor(train_idx if train else test_idx)
        return TensorDataset(images[idx], labels[idx]), labels[idx]
