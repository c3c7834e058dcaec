"""MNIST, Fashion-MNIST, KMNIST and CIFAR-10 through torchvision's own data sets and download code.

Files live where torchvision puts them (``<root>/MNIST/raw/``, ``<root>/cifar-10-batches-py/`` ...), so a folder
filled by plain torchvision works here and the other way round. Offline, missing files become one
``DatasetNotFoundError`` sentence instead of a traceback from urllib.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, ClassVar
from urllib.error import URLError

import torch
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset
from torchvision import datasets
from torchvision.datasets.utils import check_integrity, extract_archive

from sqdr.data.base import DatasetNotFoundError, ImageDataModule
from sqdr.errors import UserError

#: What torchvision raises on a damaged IDX file (bad magic number, wrong size) or a damaged pickle batch.
DAMAGED_FILE_ERRORS = (AssertionError, RuntimeError, ValueError, EOFError, OSError)

#: Where Debian's ``dataset-fashion-mnist`` package puts the gzipped IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

#: What a failed download raises: torchvision's RuntimeError after all mirrors failed, or urllib's errors.
DOWNLOAD_ERRORS = (RuntimeError, URLError, ConnectionError, TimeoutError)


class TorchvisionDataModule(ImageDataModule):
    """A data module over a torchvision data set class with ``root``/``train``/``transform``/``download``."""

    dataset_class: ClassVar[type[datasets.VisionDataset]]

    def __init__(self, *, download: bool = True, **kwargs: Any) -> None:
        """``download``: let ``prepare_data`` fetch missing files (needs network once); the rest: ImageDataModule."""
        super().__init__(**kwargs)

    @property
    def folder(self) -> Path:
        """The exact folder the data set's files must be in."""
        raise NotImplementedError

    def _missing(self) -> list[str]:
        """Names of the files torchvision needs in ``folder`` that are absent (or corrupted, where it checks)."""
        raise NotImplementedError

    def _how_to_get(self) -> str:
        """The offline alternative to downloading, as the end of a sentence."""
        raise NotImplementedError

    def _use_local_copies(self) -> None:
        """Fill ``folder`` from files already on this machine, without network; nothing to do by default."""

    def prepare_data(self) -> None:
        """Fetch missing files: first from local copies, then with torchvision's download code."""
        self._use_local_copies()
        if not self._missing():
            return
        if not self.hparams.download:
            raise self._not_found("downloading is off (download=False)")
        try:
            self.dataset_class(self.hparams.root, train=True, download=True)
        except DOWNLOAD_ERRORS:
            raise self._not_found("could not be downloaded (no network?)") from None

    def setup(self, stage: str | None = None) -> None:
        """Build the splits; never downloads (``prepare_data`` runs once per node, ``setup`` on every process)."""
        self._use_local_copies()
        if self._missing():
            raise self._not_found("has not been fetched (prepare_data() does that)")
        super().setup(stage)

    def _load(self, train: bool) -> tuple[Dataset, Tensor]:
        """The images as one ``uint8`` tensor ``(N, C, H, W)`` in memory (converted to floats a batch at a time, as
        ``ToTensor`` would one image at a time), read by torchvision's own parser."""
        try:
            dataset = self.dataset_class(self.hparams.root, train=train)
        except DAMAGED_FILE_ERRORS as error:
            raise UserError(
                f"{self.dataset_class.__name__} files in {self.folder} are damaged ({error or type(error).__name__}); "
                f"delete them and fetch them again: run once with network access and download=True, or "
                f"{self._how_to_get()}."
            ) from None
        targets = torch.as_tensor(dataset.targets)
        return TensorDataset(image_tensor(dataset.data), targets), targets

    def _not_found(self, reason: str) -> DatasetNotFoundError:
        name = self.dataset_class.__name__
        missing = ", ".join(self._missing())
        return DatasetNotFoundError(
            f"{name} is missing from {self.folder} ({missing}) and {reason}: run once with network access and "
            f"download=True, or {self._how_to_get()}."
        )


class MNISTDataModule(TorchvisionDataModule):
    """MNIST handwritten digits: 10 classes, 1 x 28 x 28, 60000 training and 10000 test images."""

    dataset_class: ClassVar[type[datasets.MNIST]] = datasets.MNIST
    native_classes = 10
    native_channels = 1
    native_hw = 28

    @property
    def folder(self) -> Path:
        return Path(self.hparams.root).resolve() / self.dataset_class.__name__ / "raw"

    @property
    def _file_names(self) -> list[str]:
        """The extracted IDX files torchvision reads, named after its download list (``*.gz`` without ``.gz``)."""
        return [Path(archive).stem for archive, _ in self.dataset_class.resources]

    def _missing(self) -> list[str]:
        return [name for name in self._file_names if not (self.folder / name).is_file()]

    def _local_sources(self) -> list[Path]:
        """Folders that may hold the gzipped IDX files: the raw folder itself (copied in by hand)."""
        return [self.folder]

    def _use_local_copies(self) -> None:
        """Unpack ``<name>.gz`` from a local source: torchvision only reads extracted IDX files."""
        for name in self._missing():
            archive = next((s / f"{name}.gz" for s in self._local_sources() if (s / f"{name}.gz").is_file()), None)
            if archive is not None:
                self.folder.mkdir(parents=True, exist_ok=True)
                _gunzip(archive, self.folder / name)

    def _how_to_get(self) -> str:
        return f"copy these files (or their .gz versions) from {self.dataset_class.mirrors[0]} into {self.folder}"


class FashionMNISTDataModule(MNISTDataModule):
    """Zalando's Fashion-MNIST clothes: 10 classes, 1 x 28 x 28, 60000 training and 10000 test images.

    Without network it uses Debian's ``dataset-fashion-mnist`` package: the gzipped files in
    ``DEBIAN_FASHION_MNIST`` are unpacked once into ``<root>/FashionMNIST/raw/``. Unpacking (rather than
    symlinking the ``.gz`` files or pointing torchvision elsewhere) is needed because torchvision reads only the
    extracted files, and it leaves the folder exactly as a torchvision download would, so later runs, and
    plain torchvision, just find the data.
    """

    dataset_class = datasets.FashionMNIST

    def _local_sources(self) -> list[Path]:
        return [self.folder, DEBIAN_FASHION_MNIST]

    def _how_to_get(self) -> str:
        return (
            f"`apt-get install dataset-fashion-mnist` (Debian's package, found in {DEBIAN_FASHION_MNIST} "
            f"automatically), or {super()._how_to_get()}"
        )


class KMNISTDataModule(MNISTDataModule):
    """Kuzushiji-MNIST cursive Japanese characters: 10 classes, 1 x 28 x 28, 60000 training and 10000 test images."""

    dataset_class = datasets.KMNIST


class CIFAR10DataModule(TorchvisionDataModule):
    """CIFAR-10 photos: 10 classes, 3 x 32 x 32, 50000 training and 10000 test images."""

    dataset_class: ClassVar[type[datasets.CIFAR10]] = datasets.CIFAR10
    native_classes = 10
    native_channels = 3
    native_hw = 32

    @property
    def folder(self) -> Path:
        return Path(self.hparams.root).resolve() / self.dataset_class.base_folder

    def _missing(self) -> list[str]:
        """Checked by md5 like torchvision does, so a truncated batch is reported here rather than in ``setup``."""
        cls = self.dataset_class
        files = [*cls.train_list, *cls.test_list, [cls.meta["filename"], cls.meta["md5"]]]
        return [name for name, md5 in files if not check_integrity(self.folder / name, md5)]

    def _how_to_get(self) -> str:
        return f"download {self.dataset_class.url} and unpack it into {self.folder.parent}"


def image_tensor(data) -> Tensor:
    """torchvision's in-memory images (MNIST: ``(N, H, W)`` tensor; CIFAR: ``(N, H, W, C)`` array) as ``(N, C, H, W)``."""
    images = torch.as_tensor(data)
    return images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2).contiguous()


def _gunzip(archive: Path, target: Path) -> None:
    """Decompress with torchvision's own code under a temporary, per-process name first, so an interrupted (or
    concurrent) run never leaves a truncated file behind; a damaged archive is one clear error."""
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as partial:
        try:
            unpacked = Path(extract_archive(str(archive), partial))
        except (EOFError, OSError) as error:
            raise UserError(
                f"{archive} is damaged ({error}); delete it and copy or download it again "
                "(for Debian's Fashion-MNIST: `apt-get install --reinstall dataset-fashion-mnist`)."
            ) from None
        (unpacked / archive.stem if unpacked.is_dir() else unpacked).replace(target)
