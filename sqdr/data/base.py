"""The options every data module shares: splits, class subsets, size limits, resizing, channel conversion, loaders.

Subclasses only say how to read their data set (``_load``) and what it looks like natively (``native_classes``,
``native_channels``, ``native_hw``); everything a model or an experiment varies lives here, in one typed
``__init__`` that LightningCLI reads as the ``data:`` schema.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset, default_collate
from torchvision.transforms import v2

from sqdr.errors import UserError


class DatasetNotFoundError(UserError):
    """A data set is neither on disk nor downloadable; the message says which files go where and how to get them."""


def as_float_images(images: Tensor) -> Tensor:
    """8-bit images as floats in [0, 1], exactly as torchvision's ``ToTensor`` makes them; float images as they are."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images


class SplitDataset(Dataset):
    """Some samples of a base data set, with the split's own transform and the class-subset label map.

    The splits share one base data set, so train, validation and test differ only in indices and transform
    without loading anything twice; the training flip is the data module's (:meth:`ImageDataModule.on_after_batch_transfer`).

    A base that is a ``TensorDataset`` of images ``(N, C, H, W)`` (``uint8`` or float) and labels is also read a
    whole batch at a time (``__getitems__``, which ``DataLoader`` calls with a batch's indices): one indexing,
    one conversion and one transform per batch instead of a dozen small operations per image.
    """

    def __init__(
        self, base: Dataset, indices: Tensor, transform: v2.Transform, label_map: dict[int, int]
    ) -> None:
        self.base = base
        self.indices = indices
        self.transform = transform
        self.label_map = label_map
        self.label_table = torch.full((max(label_map) + 1,), -1, dtype=torch.long)
        self.label_table[list(label_map)] = torch.tensor(list(label_map.values()))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image, label = self.base[int(self.indices[index])]
        return self.transform(as_float_images(image)), self.label_map[int(label)]

    def __getitems__(self, indices: list[int]) -> Batch | list[tuple[Tensor, int]]:
        if not isinstance(self.base, TensorDataset):
            return [self[i] for i in indices]
        images, labels = self.base.tensors
        rows = self.indices[indices]
        return Batch(self.transform(as_float_images(images[rows])), self.label_table[labels[rows].long()])


class Batch(NamedTuple):
    """A whole batch read at once by :meth:`SplitDataset.__getitems__`; :func:`collate` passes it through."""

    images: Tensor
    labels: Tensor


def collate(samples: Batch | list) -> list[Tensor]:
    """``[images, labels]`` as ``default_collate`` returns them, from a ready :class:`Batch` or a list of samples."""
    if isinstance(samples, Batch):
        return [samples.images, samples.labels]
    return default_collate(samples)


class EpochSampler(DistributedSampler):
    """A shuffle that depends only on the seed and the epoch (Lightning calls ``set_epoch``; a single-replica
    ``DistributedSampler`` is exactly that). ``skip`` leaves out the first samples of the next epoch once, for a
    run resumed mid-epoch; the length stays the epoch's, as Lightning counts the skipped batches as done."""

    def __init__(self, dataset: Dataset, seed: int, skip: int = 0) -> None:
        super().__init__(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed)
        self.skip = skip

    def __iter__(self):
        skip, self.skip = self.skip, 0
        return iter(list(super().__iter__())[skip:])


class ImageDataModule(L.LightningDataModule):
    """Batches of float images ``(B, C, H, W)`` in [0, 1] and integer labels ``(B,)`` for one data set.

    ``num_classes``, ``in_channels`` and ``image_hw`` are known right after ``__init__``, so LightningCLI can link
    them into the model before any data is read. ``prepare_data`` only fetches files; ``setup`` builds the splits:
    the validation set is a seeded random ``val_fraction`` of the training set, ``train_size``/``test_size`` keep
    the first N of a seeded permutation (so a smaller limit is a subset of a larger one, and the validation set
    never depends on ``train_size``).
    """

    native_classes: int
    native_channels: int
    native_hw: int

    def __init__(
        self,
        root: str = "data",
        batch_size: int = 16,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 20200626,
        classes: list[int] | None = None,
        train_size: int | None = None,
        test_size: int | None = None,
        augment: bool = False,
        image_size: int | None = None,
        channels: Literal[1, 3] | None = None,
        pin_memory: bool = False,
    ) -> None:
        """``classes`` keeps only those labels, renumbered 0..k-1 in the given order; ``augment`` adds a random
        horizontal flip to the training set; ``image_size`` resizes to a square side (None: native);
        ``channels`` converts grayscale <-> RGB (None: native), so any data set fits any model."""
        super().__init__()
        self.save_hyperparameters(logger=False)
        self._check_options()
        self._resume_batches = 0
        self.data_train: SplitDataset | None = None
        self.data_val: SplitDataset | None = None
        self.data_test: SplitDataset | None = None

    @property
    def num_classes(self) -> int:
        """The number of labels after class subsetting: the model's output size."""
        return len(self._kept_classes)

    @property
    def in_channels(self) -> int:
        """The channels of a batch after conversion: the model's input channels."""
        return self.hparams.channels or self.native_channels

    @property
    def image_hw(self) -> int:
        """The side length of a batch's square images after resizing."""
        return self.hparams.image_size or self.native_hw

    @property
    def _kept_classes(self) -> list[int]:
        classes = self.hparams.classes
        return list(range(self.native_classes)) if classes is None else list(classes)

    def _check_options(self) -> None:
        """Fail at construction, with the option's name, rather than deep inside a data loader."""
        h = self.hparams
        if h.batch_size < 1 or h.num_workers < 0:
            raise ValueError(f"batch_size must be >= 1 and num_workers >= 0, got {h.batch_size} and {h.num_workers}.")
        if not 0.0 <= h.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {h.val_fraction}.")
        if h.classes is not None:
            unknown = [c for c in h.classes if not 0 <= c < self.native_classes]
            if not h.classes or unknown or len(set(h.classes)) != len(h.classes):
                raise ValueError(
                    f"classes must be distinct labels in 0..{self.native_classes - 1}, got {list(h.classes)}."
                )
        for name in ("train_size", "test_size", "image_size"):
            if h[name] is not None and h[name] < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {h[name]}.")
        if h.channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1, 3 or None, got {h.channels}.")

    def _load(self, train: bool) -> tuple[Dataset, Tensor]:
        """The whole training (or test) set, yielding ``(float image (C, H, W) in [0, 1], label)``, and its labels."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Build the splits a stage needs, once; the same seed always gives the same disjoint splits."""
        h = self.hparams
        if stage in (None, "fit", "validate") and self.data_train is None:
            base, targets = self._load(train=True)
            pool = self._kept_indices(targets)
            pool = pool[torch.randperm(len(pool), generator=self._generator())]
            n_val = max(1, round(h.val_fraction * len(pool))) if h.val_fraction > 0 else 0
            self.data_val = self._split(base, pool[:n_val], train=False)
            self.data_train = self._split(base, pool[n_val:][: h.train_size], train=True)
        if stage in (None, "test", "predict") and self.data_test is None:
            base, targets = self._load(train=False)
            pool = self._kept_indices(targets)
            if h.test_size is not None:
                pool = pool[torch.randperm(len(pool), generator=self._generator())][: h.test_size]
            self.data_test = self._split(base, pool, train=False)

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.hparams.seed)

    def _kept_indices(self, targets: Tensor) -> Tensor:
        return torch.isin(targets, torch.tensor(self._kept_classes)).nonzero().flatten()

    def _split(self, base: Dataset, indices: Tensor, train: bool) -> SplitDataset:
        label_map = {label: new for new, label in enumerate(self._kept_classes)}
        return SplitDataset(base, indices, self._transform(), label_map)

    def _transform(self) -> v2.Transform:
        """Channel conversion around the resize (RGB -> gray before, gray -> RGB after: less work). Works on one
        image ``(C, H, W)`` or a batch ``(B, C, H, W)`` alike; the training flip is :meth:`on_after_batch_transfer`'s."""
        steps: list[v2.Transform] = []
        if self.native_channels == 3 and self.in_channels == 1:
            steps.append(v2.Grayscale(num_output_channels=1))
        if self.image_hw != self.native_hw:
            steps.append(v2.Resize([self.image_hw, self.image_hw], antialias=True))
        if self.native_channels == 1 and self.in_channels == 3:
            steps.append(v2.RGB())
        return v2.Compose(steps) if steps else v2.Identity()

    def train_dataloader(self) -> DataLoader:
        """Shuffled by a permutation that depends only on the run's seed and the epoch, not on the global random
        state: a resumed run sees the same batches as an uninterrupted one (see :class:`EpochSampler`)."""
        sampler = EpochSampler(self.data_train, seed=torch.initial_seed(), skip=self._resume_batches * self.hparams.batch_size)
        self._resume_batches = 0
        return self._loader(self.data_train, sampler=sampler)

    def resume_within_epoch(self, batches_done: int) -> None:
        """A run resumed from a checkpoint taken mid-epoch: leave out the batches that epoch already trained on."""
        self._resume_batches = batches_done

    def on_after_batch_transfer(self, batch: list[Tensor], dataloader_idx: int) -> list[Tensor]:
        """The training augmentation (a horizontal flip of each image with probability 1/2, like torchvision's
        ``RandomHorizontalFlip``), drawn from the global random state right before the training step rather than
        when the loader prefetches: the draws then follow the steps, so a run resumed from any checkpoint (whose
        random states are those after its last step) flips exactly as an uninterrupted run does."""
        if self.hparams.augment and self.trainer is not None and self.trainer.training:
            images, labels = batch
            flipped = torch.rand(len(images), device=images.device) < 0.5
            batch = [torch.where(flipped.view(-1, 1, 1, 1), images.flip(-1), images), labels]
        return batch

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.data_val)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.data_test)

    def predict_dataloader(self) -> DataLoader:
        """``sqdr predict`` scores the test split (labels are kept beside the predictions for comparison)."""
        return self._loader(self.data_test)

    def _loader(self, dataset: SplitDataset | None, sampler: EpochSampler | None = None) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not built this split yet.")
        h = self.hparams
        return DataLoader(
            dataset,
            batch_size=h.batch_size,
            sampler=sampler,
            num_workers=h.num_workers,
            pin_memory=h.pin_memory,
            persistent_workers=h.num_workers > 0,
            collate_fn=collate,
            # Its own generator: starting an epoch then draws no number from the global random state, which
            # the model's random steps (rate coding, flips, shots) use and checkpoints restore.
            generator=torch.Generator().manual_seed(h.seed),
        )
