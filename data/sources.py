"""Where each registered data set comes from, and readers for the files' own formats."""
import gzip
import pickle
import subprocess
from pathlib import Path

import numpy as np
import torch

from .registry import DataInfo, DataMissing, register_dataset

MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path):
    """Read an IDX file (as MNIST and Fashion-MNIST ship them), gzipped or not, into a tensor."""
    path = Path(path)
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    if raw[:2] != b"\0\0" or raw[2] not in IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    dims = np.frombuffer(raw, ">i4", count=ndim, offset=4)
    data = np.frombuffer(raw, IDX_DTYPES[raw[2]], offset=4 + 4 * ndim)
    return torch.from_numpy(data.reshape(dims).astype(data.dtype.newbyteorder("="), copy=True))


def _find(folder, stem):
    for name in (stem, stem + ".gz"):
        if (Path(folder) / name).exists():
            return Path(folder) / name
    return None


def load_idx_pair(folder):
    """Train and test (images, labels) from a folder with the four MNIST-format IDX files."""
    out = []
    for split in ("train", "test"):
        paths = [_find(folder, stem) for stem in MNIST_FILES[split]]
        if None in paths:
            return None
        out.append(tuple(read_idx(p) for p in paths))
    return tuple(out)


def debian_package_folder(package):
    """The folder holding a Debian data package's files, from `dpkg -L`; None if not installed."""
    try:
        files = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return None
    hits = [Path(f).parent for f in files if Path(f).name.startswith("train-images-idx3")]
    return hits[0] if hits else None


def _torchvision_raw(cls_name, data_dir):
    """Download through torchvision into data_dir and return its raw IDX folder."""
    import torchvision
    try:
        ds = getattr(torchvision.datasets, cls_name)(root=str(data_dir), download=True)
    except Exception as err:  # network errors come in many types
        raise DataMissing(f"{cls_name} is not in {data_dir} and could not be downloaded ({err})") from None
    return Path(ds.raw_folder)


def load_fashion_mnist(data_dir):
    for folder in (Path(data_dir) / "FashionMNIST" / "raw", debian_package_folder("dataset-fashion-mnist"),
                   Path("/usr/share/datasets/fashion-mnist")):
        if folder is not None and (pair := load_idx_pair(folder)):
            return pair
    try:
        return load_idx_pair(_torchvision_raw("FashionMNIST", data_dir))
    except DataMissing as err:
        raise DataMissing(f"Fashion-MNIST not found: run `apt-get install dataset-fashion-mnist` "
                          f"(or put the IDX files in {data_dir}/FashionMNIST/raw); {err}") from None


def load_mnist(data_dir):
    folder = Path(data_dir) / "MNIST" / "raw"
    return load_idx_pair(folder) or load_idx_pair(_torchvision_raw("MNIST", data_dir))


def load_cifar10(data_dir):
    """CIFAR-10 python pickle batches (data_batch_1..5, test_batch), downloaded if absent."""
    folder = Path(data_dir) / "cifar-10-batches-py"
    if not (folder / "test_batch").exists():
        import torchvision
        try:
            torchvision.datasets.CIFAR10(root=str(data_dir), download=True)
        except Exception as err:
            raise DataMissing(f"CIFAR-10 is not in {folder} and could not be downloaded ({err})") from None

    def read(names):
        xs, ys = [], []
        for name in names:
            with open(folder / name, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            xs.append(np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32))
            ys.append(np.asarray(batch[b"labels"]))
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    train = sorted(p.name for p in folder.glob("data_batch_*"))
    return read(train), read(["test_batch"])


def load_imagenet(data_dir):
    root = Path(data_dir) / "imagenet"
    for split in ("train", "val"):
        if not (root / split).is_dir() or not any((root / split).iterdir()):
            raise DataMissing(f"ImageNet not found: expected {root}/train/<class>/*.JPEG and "
                              f"{root}/val/<class>/*.JPEG (set data_dir, or link your copy there)")
    return root / "train", root / "val"


def make_synthetic(shape=(1, 28, 28), classes=10, train_size=2000, test_size=500, seed=0, noise=0.6):
    """Learnable generated data: each class is a smooth random prototype plus per-sample noise."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    low = torch.rand(classes, c, max(2, h // 7), max(2, w // 7), generator=g)
    protos = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)

    def sample(n):
        y = torch.randint(0, classes, (n,), generator=g)
        x = protos[y] + noise * torch.randn(n, c, h, w, generator=g) * protos.std()
        return (x.clamp(0, 1) * 255).to(torch.uint8), y

    return sample(train_size), sample(test_size)


def _info(name, classes, shape, mean, std, augment="none", in_memory=True):
    return lambda **_: DataInfo(name, classes, tuple(shape), mean, std, augment, in_memory)


SUBSET = ("train_size", "test_size")   # in-memory sets: a fixed random part (data/registry.py: _subset)
register_dataset("fashion-mnist", _info("fashion-mnist", 10, (1, 28, 28), (0.2860,), (0.3530,)),
                 lambda data_dir, **_: load_fashion_mnist(data_dir), SUBSET)
register_dataset("mnist", _info("mnist", 10, (1, 28, 28), (0.1307,), (0.3081,)),
                 lambda data_dir, **_: load_mnist(data_dir), SUBSET)
register_dataset("cifar10", _info("cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465),
                                  (0.2470, 0.2435, 0.2616), "crop_flip"),
                 lambda data_dir, **_: load_cifar10(data_dir), SUBSET)
register_dataset("imagenet", _info("imagenet", 1000, (3, 224, 224), (0.485, 0.456, 0.406),
                                   (0.229, 0.224, 0.225), "imagenet", in_memory=False),
                 lambda data_dir, **_: load_imagenet(data_dir))
register_dataset(
    "synthetic",
    lambda shape=(1, 28, 28), classes=10, **_: DataInfo(
        "synthetic", classes, tuple(shape), (0.5,) * shape[0], (0.25,) * shape[0],
        "crop_flip" if shape[0] == 3 else "none", True),
    lambda data_dir, **args: make_synthetic(**args), (*SUBSET, "shape", "classes", "seed", "noise"))

__all__ = ["read_idx", "load_idx_pair", "make_synthetic"]
