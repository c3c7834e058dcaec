"""The data modules read the real on-disk formats, split deterministically, and explain missing data offline.

Every data set here is a tiny hand-written file in the format torchvision reads (IDX, gzipped IDX, CIFAR
pickles). Network access is refused for the whole module: a test that needs it fails instead of downloading.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from urllib.error import URLError

import numpy as np
import pytest
import torch
from jsonargparse import ArgumentParser
from torchvision import datasets, transforms

import sqdr.data.vision
from sqdr.data import (
    CIFAR10DataModule,
    DatasetNotFoundError,
    DigitsDataModule,
    FashionMNISTDataModule,
    ImageDataModule,
    KMNISTDataModule,
    MNISTDataModule,
    SyntheticDataModule,
)

N_TRAIN, N_TEST = 40, 20  # labels cycle 0..9, so every class has 4 training and 2 test images
REAL_DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path) -> list[str]:
    """Refuse every URL torchvision opens (and record it); hide the real Debian files unless a test asks for them."""
    requested: list[str] = []

    def refuse(request, *args, **kwargs):
        requested.append(getattr(request, "full_url", str(request)))
        raise URLError("network is off in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(sqdr.data.vision, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-package")
    return requested


def fake_mnist(n: int) -> tuple[np.ndarray, np.ndarray]:
    """28 x 28 images that carry their own identity: pixel (14, 14) = index, (27, 27) = 10 * label + 5, and a
    bright top-left corner that shows whether the image was flipped."""
    labels = np.arange(n, dtype=np.uint8) % 10
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    images[:, 14, 14] = np.arange(n)
    images[:, 27, 27] = 10 * labels + 5
    images[:, 0, 0] = 255
    return images, labels


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX format: zero, zero, type 0x08 (ubyte), number of dimensions, big-endian int32 sizes, the data."""
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_mnist_layout(folder: Path, compress: bool = False) -> None:
    """torchvision's file names in ``folder``: plain (as in ``<root>/MNIST/raw/``) or ``.gz`` (as Debian ships)."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        images, labels = fake_mnist(n)
        for name, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
            if compress:
                with gzip.open(folder / f"{name}.gz", "wb") as f:
                    f.write(idx_bytes(array))
            else:
                (folder / name).write_bytes(idx_bytes(array))


def write_cifar_layout(root: Path, monkeypatch) -> None:
    """Five 10-image training batches and a 10-image test batch, each image one pure colour per channel.

    torchvision verifies CIFAR files against the md5 sums of the real archive, which hand-made files cannot
    match; so this registers the tiny files' own sums on the class. The real ``_check_integrity`` still runs,
    which also proves the files sit where torchvision looks.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rgb = np.array([255, 0, 0], dtype=np.uint8)  # pure red: luminance 0.2989

    def write(name: str, content: dict) -> list[str]:
        (folder / name).write_bytes(pickle.dumps(content))
        return [name, hashlib.md5((folder / name).read_bytes()).hexdigest()]

    def batch(name: str) -> list[str]:
        data = np.broadcast_to(rgb[None, :, None], (10, 3, 1024)).reshape(10, 3072).copy()
        return write(name, {"data": data, "labels": list(range(10))})

    train_list = [batch(f"data_batch_{i}") for i in range(1, 6)]
    test_list = [batch("test_batch")]
    meta_name, meta_md5 = write("batches.meta", {"label_names": [f"class {i}" for i in range(10)]})
    monkeypatch.setattr(datasets.CIFAR10, "train_list", train_list)
    monkeypatch.setattr(datasets.CIFAR10, "test_list", test_list)
    monkeypatch.setattr(datasets.CIFAR10, "meta", {"filename": meta_name, "key": "label_names", "md5": meta_md5})


def ready(dm: ImageDataModule) -> ImageDataModule:
    dm.prepare_data()
    dm.setup()
    return dm


def everything(loader) -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(loader)
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def image_ids(images: torch.Tensor) -> list[int]:
    return (images[:, 0, 14, 14] * 255).round().int().tolist()


def original_labels(images: torch.Tensor) -> torch.Tensor:
    return (((images[:, 0, 27, 27] * 255).round() - 5) / 10).long()


@pytest.mark.parametrize("module", [MNISTDataModule, KMNISTDataModule])
def test_mnist_family_reads_torchvision_raw_folder_into_float_batches(tmp_path, module, offline):
    write_mnist_layout(tmp_path / module.dataset_class.__name__ / "raw")
    dm = ready(module(root=str(tmp_path), batch_size=8))

    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 1, 28, 28) and images.dtype == torch.float32
    assert labels.dtype == torch.int64
    assert images.min() >= 0.0 and images.max() == 1.0
    assert (dm.num_classes, dm.in_channels, dm.image_hw) == (10, 1, 28)
    assert (len(dm.data_train), len(dm.data_val), len(dm.data_test)) == (36, 4, 20)
    train_images, train_labels = everything(dm.train_dataloader())
    assert torch.equal(original_labels(train_images), train_labels)  # images keep their own labels
    assert offline == []


def test_properties_are_known_before_setup_without_reading_any_data(tmp_path):
    dm = CIFAR10DataModule(root=str(tmp_path / "nothing-here"), classes=[3, 5, 1], channels=1, image_size=20)
    assert (dm.num_classes, dm.in_channels, dm.image_hw) == (3, 1, 20)
    assert (MNISTDataModule().num_classes, MNISTDataModule().in_channels, MNISTDataModule().image_hw) == (10, 1, 28)
    assert (DigitsDataModule().image_hw, SyntheticDataModule(n_classes=5).num_classes) == (8, 5)


def test_class_subset_keeps_those_classes_and_renumbers_them_in_the_given_order(tmp_path):
    write_mnist_layout(tmp_path / "MNIST" / "raw")
    dm = ready(MNISTDataModule(root=str(tmp_path), classes=[7, 2], val_fraction=0.25))

    assert dm.num_classes == 2
    for split, expected in ((dm.train_dataloader(), 6), (dm.val_dataloader(), 2), (dm.test_dataloader(), 4)):
        images, labels = everything(split)
        assert len(labels) == expected
        assert sorted(labels.unique().tolist()) == [0, 1]
        assert torch.equal(original_labels(images), torch.tensor([7, 2])[labels])


def test_train_size_keeps_the_first_of_the_seeded_order_and_leaves_validation_alone(tmp_path):
    write_mnist_layout(tmp_path / "MNIST" / "raw")
    full = ready(MNISTDataModule(root=str(tmp_path)))
    small = ready(MNISTDataModule(root=str(tmp_path), train_size=10, test_size=5))

    assert (len(full.data_train), len(small.data_train), len(small.data_test)) == (36, 10, 5)
    assert torch.equal(small.data_train.indices, full.data_train.indices[:10])
    assert torch.equal(small.data_val.indices, full.data_val.indices)
    assert set(small.data_test.indices.tolist()) <= set(range(N_TEST))


def test_split_is_the_same_for_a_seed_disjoint_and_changes_with_the_seed(tmp_path):
    write_mnist_layout(tmp_path / "MNIST" / "raw")

    def split(seed: int) -> tuple[list[int], list[int]]:
        dm = ready(MNISTDataModule(root=str(tmp_path), seed=seed, val_fraction=0.25))
        return sorted(image_ids(everything(dm.train_dataloader())[0])), image_ids(everything(dm.val_dataloader())[0])

    train, val = split(1)
    assert (len(train), len(val)) == (30, 10)
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(range(N_TRAIN))
    assert split(1) == (train, val)
    assert sorted(split(2)[1]) != sorted(val)


def test_channels_3_repeats_the_gray_plane_and_image_size_resizes_mnist(tmp_path):
    write_mnist_layout(tmp_path / "MNIST" / "raw")
    dm = ready(MNISTDataModule(root=str(tmp_path), channels=3, image_size=14, batch_size=4))

    images, _ = next(iter(dm.test_dataloader()))
    assert images.shape == (4, 3, 14, 14) and (dm.in_channels, dm.image_hw) == (3, 14)
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
    assert 0.0 <= images.min() and images.max() <= 1.0


def test_cifar10_reads_python_batches_and_channels_1_gives_luminance(tmp_path, monkeypatch):
    write_cifar_layout(tmp_path, monkeypatch)
    rgb = ready(CIFAR10DataModule(root=str(tmp_path), batch_size=10, download=False))
    gray = ready(CIFAR10DataModule(root=str(tmp_path), batch_size=10, channels=1, image_size=8))

    images, labels = next(iter(rgb.test_dataloader()))
    assert images.shape == (10, 3, 32, 32) and labels.tolist() == list(range(10))
    assert torch.equal(images[:, 0], torch.ones(10, 32, 32)) and images[:, 1:].abs().max() == 0
    assert (len(rgb.data_train), len(rgb.data_val)) == (45, 5) and rgb.in_channels == 3
    images, _ = next(iter(gray.train_dataloader()))
    assert images.shape == (10, 1, 8, 8) and gray.in_channels == 1
    assert torch.allclose(images, torch.full_like(images, 0.2989), atol=1e-3)


def test_augment_flips_some_training_images_and_never_evaluation_images(tmp_path):
    write_mnist_layout(tmp_path / "MNIST" / "raw")
    dm = ready(MNISTDataModule(root=str(tmp_path), augment=True))
    torch.manual_seed(0)
    image = dm.data_train[0][0]
    batch = [image.expand(40, *image.shape), torch.zeros(40, dtype=torch.long)]

    dm.trainer = SimpleNamespace(training=True)  # the flip is drawn right before a training step
    corners = dm.on_after_batch_transfer(batch, 0)[0][:, 0, 0, 27].tolist()
    assert 5 <= corners.count(1.0) <= 35  # the bright top-left corner landed top-right: flipped
    dm.trainer = SimpleNamespace(training=False)  # validation, test, predict
    assert torch.equal(dm.on_after_batch_transfer(batch, 0)[0], batch[0])
    assert dm.data_val[0][0][0, 0, 0] == 1.0 and dm.data_test[0][0][0, 0, 0] == 1.0


def test_fashion_mnist_uses_the_debian_package_folder_without_network(tmp_path, monkeypatch, offline):
    debian = tmp_path / "usr-share-datasets-fashion-mnist"
    write_mnist_layout(debian, compress=True)
    monkeypatch.setattr(sqdr.data.vision, "DEBIAN_FASHION_MNIST", debian)
    dm = ready(FashionMNISTDataModule(root=str(tmp_path / "data")))

    assert (len(dm.data_train) + len(dm.data_val), len(dm.data_test)) == (N_TRAIN, N_TEST)
    images, labels = everything(dm.test_dataloader())
    assert torch.equal(original_labels(images), labels)
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(p.name.removesuffix(".gz") for p in debian.iterdir())
    assert offline == []


def test_gzipped_files_copied_into_the_raw_folder_are_used_with_download_off(tmp_path):
    write_mnist_layout(tmp_path / "KMNIST" / "raw", compress=True)
    dm = ready(KMNISTDataModule(root=str(tmp_path), download=False, test_size=7))
    assert len(dm.data_test) == 7


def test_missing_mnist_names_the_files_the_folder_and_where_to_get_them(tmp_path, offline):
    dm = MNISTDataModule(root=str(tmp_path))
    with pytest.raises(DatasetNotFoundError) as caught:
        dm.prepare_data()

    message = str(caught.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "could not be downloaded" in message and "network" in message
    assert datasets.MNIST.mirrors[0] in message
    assert message.count(". ") == 0 and "\n" not in message  # one sentence
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert offline and offline[0].startswith(datasets.MNIST.mirrors[0])  # torchvision's real download was tried


def test_missing_fashion_mnist_points_to_the_debian_package(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist") as caught:
        FashionMNISTDataModule(root=str(tmp_path)).prepare_data()
    assert str(tmp_path / "FashionMNIST" / "raw") in str(caught.value)


def test_missing_cifar10_with_download_off_or_before_prepare_data(tmp_path, offline):
    dm = CIFAR10DataModule(root=str(tmp_path), download=False)
    with pytest.raises(DatasetNotFoundError, match=r"download=False\)") as caught:
        dm.prepare_data()
    assert str(tmp_path / "cifar-10-batches-py") in str(caught.value)
    assert datasets.CIFAR10.url in str(caught.value) and "data_batch_5" in str(caught.value)
    with pytest.raises(DatasetNotFoundError, match="prepare_data"):
        CIFAR10DataModule(root=str(tmp_path)).setup("fit")
    assert offline == []


def test_digits_are_8x8_with_10_classes_and_a_fixed_stratified_test_split():
    dm = ready(DigitsDataModule(batch_size=32))
    other_seed = ready(DigitsDataModule(seed=1))

    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (32, 1, 8, 8) and images.dtype == torch.float32
    assert (dm.num_classes, dm.in_channels, dm.image_hw) == (10, 1, 8)
    assert (len(dm.data_train), len(dm.data_val), len(dm.data_test)) == (1293, 144, 360)
    test_images, test_labels = everything(dm.test_dataloader())
    assert test_images.min() == 0.0 and test_images.max() == 1.0
    assert set(torch.bincount(test_labels).tolist()) <= {35, 36, 37}  # stratified: a fifth of each class
    assert torch.equal(everything(other_seed.test_dataloader())[0], test_images)
    assert not torch.equal(other_seed.data_val.indices, dm.data_val.indices)


def test_synthetic_data_is_deterministic_for_a_seed_and_learnable():
    def data(seed: int) -> tuple[torch.Tensor, ...]:
        dm = ready(SyntheticDataModule(seed=seed, n_classes=3, image_size=12, channels=3, batch_size=64))
        return (*everything(dm.train_dataloader()), *everything(dm.test_dataloader()))

    torch.manual_seed(0)
    train_x, train_y, test_x, test_y = data(5)
    torch.manual_seed(1)
    again = data(5)
    assert train_x.shape == (461, 3, 12, 12) and test_x.shape == (128, 3, 12, 12)
    assert 0.0 <= train_x.min() and train_x.max() <= 1.0
    assert torch.equal(torch.sort(train_y).values, torch.sort(again[1]).values)  # loader shuffles, data equal
    assert torch.equal(test_x, again[2]) and torch.equal(test_y, again[3])
    assert not torch.equal(data(6)[2], test_x)
    means = torch.stack([train_x[train_y == k].mean(0) for k in range(3)])
    nearest = torch.cdist(test_x.flatten(1), means.flatten(1)).argmin(1)
    assert (nearest == test_y).float().mean() > 0.95


def test_options_parse_from_the_command_line_and_the_linked_properties_follow():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(FashionMNISTDataModule, "data")
    config = parser.parse_args(["--data.classes=[0,9]", "--data.channels=3", "--data.image_size=16"])
    dm = parser.instantiate_classes(config).data

    assert (dm.num_classes, dm.in_channels, dm.image_hw, dm.hparams.download) == (2, 3, 16, True)
    with pytest.raises(Exception, match="channels"):
        parser.parse_args(["--data.channels=2"])


@pytest.mark.parametrize(
    "options",
    [{"classes": [3, 10]}, {"classes": [1, 1]}, {"classes": []}, {"val_fraction": 1.0}, {"channels": 2}],
)
def test_impossible_options_fail_at_construction(options):
    with pytest.raises(ValueError):
        MNISTDataModule(**options)


@pytest.mark.skipif(not REAL_DEBIAN.is_dir(), reason=f"Debian's dataset-fashion-mnist is not installed ({REAL_DEBIAN})")
def test_real_debian_fashion_mnist_has_60000_training_and_10000_test_images(tmp_path, monkeypatch, offline):
    monkeypatch.setattr(sqdr.data.vision, "DEBIAN_FASHION_MNIST", REAL_DEBIAN)
    dm = ready(FashionMNISTDataModule(root=str(tmp_path), batch_size=256))

    assert (len(dm.data_train), len(dm.data_val), len(dm.data_test)) == (54000, 6000, 10000)
    images, labels = next(iter(dm.test_dataloader()))
    assert images.shape == (256, 1, 28, 28) and 0.0 <= images.min() and images.max() <= 1.0
    assert labels.max() == 9
    assert offline == []


def test_batches_read_from_memory_equal_torchvision_to_tensor_images_one_at_a_time(tmp_path):
    write_mnist_layout(tmp_path / "MNIST" / "raw")
    dm = ready(MNISTDataModule(root=str(tmp_path), batch_size=8, classes=[3, 1], image_size=14, channels=3))
    reference = datasets.MNIST(str(tmp_path), train=False, transform=transforms.ToTensor())
    images, labels = next(iter(dm.test_dataloader()))
    rows = dm.data_test.indices.tolist()
    expected = torch.stack([dm.data_test.transform(reference[i][0]) for i in rows])
    assert images.shape == (4, 3, 14, 14) and images.dtype == torch.float32
    assert torch.equal(images, expected)
    assert labels.tolist() == [{3: 0, 1: 1}[int(reference.targets[i])] for i in rows] == [1, 0, 1, 0]
    assert [dm.data_test[k][1] for k in range(4)] == labels.tolist()


def test_batched_training_flip_is_drawn_per_image_and_keeps_the_split(tmp_path):
    write_mnist_layout(tmp_path / "MNIST" / "raw")
    plain = ready(MNISTDataModule(root=str(tmp_path), batch_size=36))
    flipped = ready(MNISTDataModule(root=str(tmp_path), batch_size=36, augment=True))
    torch.manual_seed(1)
    flipped.trainer = SimpleNamespace(training=True)
    images, _ = flipped.on_after_batch_transfer(next(iter(flipped.train_dataloader())), 0)
    ids = sorted(image_ids(images.maximum(images.flip(-1))))  # a flip moves the id pixel; max restores it
    assert ids == sorted(image_ids(next(iter(plain.train_dataloader()))[0]))  # the same 36 images
    corners = images[:, 0, 0, 27] == 1.0
    assert 5 <= int(corners.sum()) <= 31  # some flipped, some not: one draw per image, not per batch
    assert torch.equal(images[corners, 0, 0, 0], torch.zeros(int(corners.sum())))
