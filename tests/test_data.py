"""Loaders on tiny files in the real formats: IDX (raw and gzipped), CIFAR pickle batches and an
ImageFolder, plus the in-memory loader's batching and augmentation."""
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

import data
from data.registry import DataMissing
from data.sources import load_cifar10, load_idx_pair, read_idx


def write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def make_mnist_folder(folder, n_train=12, n_test=6, gz=False):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        arrays[split] = (rng.integers(0, 256, (n, 28, 28)), rng.integers(0, 10, n))
        ext = ".gz" if gz else ""
        write_idx(folder / f"{split}-images-idx3-ubyte{ext}", arrays[split][0])
        write_idx(folder / f"{split}-labels-idx1-ubyte{ext}", arrays[split][1])
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_round_trip(tmp_path, gz):
    arrays = make_mnist_folder(tmp_path, gz=gz)
    (xtr, ytr), (xte, yte) = load_idx_pair(tmp_path)
    assert xtr.shape == (12, 28, 28) and xtr.dtype == torch.uint8
    assert np.array_equal(xtr.numpy(), arrays["train"][0]) and np.array_equal(yte.numpy(), arrays["t10k"][1])


def test_a_large_gzipped_idx_file_is_decoded_once_and_again_when_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    first = rng.integers(0, 256, (1500, 28, 28))            # random bytes: the gzip stays over 1 MB
    write_idx(path, first)
    assert np.array_equal(read_idx(path).numpy(), first)
    cached, = (tmp_path / "cache" / "idx").iterdir()
    assert np.array_equal(np.load(cached), first)           # the second read is this file's
    assert np.array_equal(read_idx(path).numpy(), first)
    cached.write_bytes(b"cut short")                         # a broken cache file: decoded again
    assert np.array_equal(read_idx(path).numpy(), first)
    second = rng.integers(0, 256, (1600, 28, 28))
    write_idx(path, second)                                  # replaced: another size and time
    assert np.array_equal(read_idx(path).numpy(), second)


def test_idx_rejects_other_files(tmp_path):
    (tmp_path / "x").write_bytes(b"\x12\x34\x56\x78")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "x")


def test_mnist_loads_from_torchvision_layout_without_network(tmp_path):
    make_mnist_folder(tmp_path / "MNIST" / "raw")
    train, test, info = data.make_loaders("mnist", tmp_path, batch_size=5, device=torch.device("cpu"))
    x, y = next(iter(train))
    assert x.shape == (5, 1, 28, 28) and info.num_classes == 10
    assert len(train) == 3 and sum(len(b[1]) for b in test) == 6


def test_fashion_mnist_prefers_files_in_data_dir(tmp_path):
    make_mnist_folder(tmp_path / "FashionMNIST" / "raw", n_train=7)
    train, _, _ = data.make_loaders("fashion-mnist", tmp_path, batch_size=100, device=torch.device("cpu"))
    assert train.num_samples == 7


def test_cifar10_pickle_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    sizes = [("data_batch_1", 4), ("data_batch_2", 3), ("data_batch_3", 1), ("data_batch_4", 1), ("data_batch_5", 1),
             ("test_batch", 2)]
    for name, n in sizes:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(range(n))}
        (folder / name).write_bytes(pickle.dumps(batch))
    (xtr, ytr), (xte, yte) = load_cifar10(tmp_path)
    assert xtr.shape == (10, 3, 32, 32) and ytr.tolist() == [0, 1, 2, 3, 0, 1, 2, 0, 0, 0] and xte.shape == (2, 3, 32, 32)
    first = pickle.loads((folder / "data_batch_1").read_bytes())[b"data"]
    assert np.array_equal(xtr[0, 1].numpy(), first[0, 1024:2048].reshape(32, 32))   # the green plane: channel-major rows
    train, _, info = data.make_loaders("cifar10", tmp_path, batch_size=10, device=torch.device("cpu"))
    x, _ = next(iter(train))
    assert x.shape == (10, 3, 32, 32) and info.augment == "crop_flip"


def test_imagenet_folder(tmp_path):
    from PIL import Image
    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            (tmp_path / "imagenet" / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 30), (i * 90, 20, 200)).save(tmp_path / "imagenet" / split / cls / f"{i}.JPEG")
    train, test, info = data.make_loaders("imagenet", tmp_path, batch_size=3, device=torch.device("cpu"), workers=0)
    x, y = next(iter(train))
    assert x.shape == (3, 3, 224, 224) and len(test) == 2


def test_missing_imagenet_names_the_expected_layout(tmp_path):
    with pytest.raises(DataMissing, match=r"imagenet/train/<class>/\*\.JPEG"):
        data.make_loaders("imagenet", tmp_path, batch_size=3, device=torch.device("cpu"))


def test_unknown_dataset_suggests_a_name():
    with pytest.raises(KeyError, match="did you mean 'fashion-mnist'"):
        data.check_dataset("fashion_mnist")


def test_tensor_loader_shuffles_per_epoch_reproducibly():
    train, _, _ = data.make_loaders("synthetic", None, batch_size=64, device=torch.device("cpu"), seed=3,
                                    train_size=256, test_size=64)
    first = [y.clone() for _, y in train]
    again = [y.clone() for _, y in train]
    train.set_epoch(1)
    other = [y.clone() for _, y in train]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    assert sorted(torch.cat(first).tolist()) == sorted(torch.cat(other).tolist())


def test_batched_crop_flip_is_a_translation_or_mirror():
    from data.loaders import random_crop_flip
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float).view(2, 3, 8, 8)
    out = random_crop_flip(x, torch.zeros(3), torch.Generator().manual_seed(0), pad=2)
    assert out.shape == x.shape
    for i in range(2):
        found = False
        for img in (out[i], out[i].flip(2)):
            for dy in range(-2, 3):
                for dx in range(-2, 3):
                    shifted = torch.zeros_like(x[i])
                    src = x[i][:, max(dy, 0):8 + min(dy, 0), max(dx, 0):8 + min(dx, 0)]
                    shifted[:, max(-dy, 0):8 + min(-dy, 0), max(-dx, 0):8 + min(-dx, 0)] = src
                    found |= torch.equal(img, shifted)
        assert found


def test_debian_fashion_mnist_when_installed():
    from data.sources import debian_package_folder
    folder = debian_package_folder("dataset-fashion-mnist")
    if folder is None:
        pytest.skip("Debian package dataset-fashion-mnist is not installed (setup.sh installs it as root)")
    (xtr, ytr), (xte, yte) = load_idx_pair(folder)
    assert xtr.shape == (60000, 28, 28) and xte.shape == (10000, 28, 28) and int(ytr.max()) == 9


def test_fashion_mnist_as_cifar_pads_and_repeats_the_grey_value():
    """The LCS reference's laptop input (bench/reference_runs.py writes its CIFAR batches with it):
    28x28 -> 32x32 with a 2-pixel zero border, the same grey value in each of 3 channels."""
    from data.sources import as_cifar_format
    x = torch.arange(2 * 28 * 28, dtype=torch.int64).remainder(255).to(torch.uint8).view(2, 28, 28)
    out = as_cifar_format(x)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.uint8
    assert torch.equal(out[:, 1, 2:30, 2:30], x) and torch.equal(out[:, 0], out[:, 2])
    assert out[:, :, :2].sum() == out[:, :, 30:].sum() == out[:, :, :, :2].sum() == 0
    info = data.dataset_info("fashion-mnist-cifar")
    assert info.shape == (3, 32, 32) and info.augment == "crop_flip"


def test_fashion_mnist_cifar_constants_are_its_pixels_statistics():
    from data.sources import debian_package_folder, load_fashion_mnist_cifar
    if debian_package_folder("dataset-fashion-mnist") is None:
        pytest.skip("Debian package dataset-fashion-mnist is not installed (setup.sh installs it as root)")
    (x, _), _ = load_fashion_mnist_cifar("unused")
    x = x[:, 0].float().div(255)
    info = data.dataset_info("fashion-mnist-cifar")
    assert abs(x.mean() - info.mean[0]) < 1e-3 and abs(x.std() - info.std[0]) < 1e-3
