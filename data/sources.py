"""Where each registered data set comes from, and readers for the files' own formats."""
import contextlib
import gzip
import io
import math
import pickle
import subprocess
from pathlib import Path

import numpy as np
import torch

from core import io as atomic_io
from core.paths import cache_dir

from .registry import DataError, DataInfo, DataMissing, register_dataset

MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path):
    """Read an IDX file (as MNIST and Fashion-MNIST ship them), gzipped or not, into a tensor. A
    large gzipped file is decoded once: later jobs read the array kept in the user's cache folder."""
    path = Path(path)
    cached = decoded_cache(path)
    if cached is not None and cached.exists():
        try:
            return torch.from_numpy(np.load(cached))
        except (OSError, ValueError):   # cut short or foreign: decode again below
            pass
    array = _decode_idx(path)
    if cached is not None:
        with contextlib.suppress(OSError):   # a read-only cache folder costs the decode, nothing else
            atomic_io.save_npy(array, cached)
    return torch.from_numpy(array)


def decoded_cache(path, min_bytes=1 << 20):
    """Where the decoded array of a gzipped IDX file of at least `min_bytes` is kept (in
    core.paths.cache_dir()/idx), named by the file's name, size and modification time, so a replaced
    file is decoded again; None for a smaller or plain file."""
    if path.suffix != ".gz":
        return None
    try:
        st = path.stat()
    except OSError:
        return None
    if st.st_size < min_bytes:
        return None
    return cache_dir() / "idx" / f"{path.name[:-3]}-{st.st_size}-{st.st_mtime_ns}.npy"


def _decode_idx(path):
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as err:   # not gzip (BadGzipFile is an OSError), or cut short (EOFError)
        raise DataError(f"{path}: not a complete gzip file ({err}); delete it and download it again") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    ndim = raw[3]
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4)) if len(raw) >= header else None
    expected = None if dims is None else header + math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        shape = "its dimensions" if dims is None else f"shape {dims} ({expected} bytes)"
        what = "truncated" if expected is None or len(raw) < expected else "longer than its header says"
        raise DataError(f"{path}: {what}: the IDX header gives {shape} but the file holds {len(raw)} bytes; "
                        f"delete it and download it again")
    data = np.frombuffer(raw, dtype, offset=header)
    return data.reshape(dims).astype(dtype.newbyteorder("="), copy=True)


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
        (images, labels), (image_file, label_file) = (read_idx(p) for p in paths), paths
        if images.dim() != 3 or labels.dim() != 1:
            raise DataError(f"{image_file} and {label_file}: expected images (N, H, W) and labels (N,), found "
                            f"{tuple(images.shape)} and {tuple(labels.shape)}")
        if len(images) != len(labels):
            raise DataError(f"{image_file} holds {len(images)} images but {label_file} {len(labels)} labels; "
                            f"they must match one to one: download both again")
        out.append((images, labels))
    return tuple(out)


def idx_help(folder):
    """Where the four IDX files go, for a message."""
    names = [stem for split in MNIST_FILES.values() for stem in split]
    return f"put {', '.join(names)} (or their .gz) in {folder}"


def debian_package_folder(package):
    """The folder holding a Debian data package's files, from `dpkg -L`; None if not installed."""
    try:
        files = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return None
    hits = [Path(f).parent for f in files if Path(f).name.startswith("train-images-idx3")]
    return hits[0] if hits else None


def _first_line(err):
    return (str(err).strip().splitlines() or [type(err).__name__])[0].rstrip(":")


def torchvision_download(cls_name, data_dir):
    """Download a data set through torchvision into data_dir, quietly (its messages span lines);
    DataMissing with torchvision's first line if that fails."""
    import torchvision
    print(f"{cls_name} is not in {data_dir}: downloading it (torchvision)", flush=True)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return getattr(torchvision.datasets, cls_name)(root=str(data_dir), download=True)
    except Exception as err:  # network errors come in many types
        raise DataMissing(f"the download failed ({_first_line(err)})") from None


def load_fashion_mnist(data_dir):
    for folder in (Path(data_dir) / "FashionMNIST" / "raw", debian_package_folder("dataset-fashion-mnist"),
                   Path("/usr/share/datasets/fashion-mnist")):
        if folder is not None and (pair := load_idx_pair(folder)):
            return pair
    folder = Path(data_dir) / "FashionMNIST" / "raw"
    try:
        return load_idx_pair(torchvision_download("FashionMNIST", data_dir).raw_folder)
    except DataMissing as err:
        raise DataMissing(f"Fashion-MNIST not found: run `apt-get install dataset-fashion-mnist`, or "
                          f"{idx_help(folder)}; {err}") from None


def load_mnist(data_dir):
    folder = Path(data_dir) / "MNIST" / "raw"
    try:
        return load_idx_pair(folder) or load_idx_pair(torchvision_download("MNIST", data_dir).raw_folder)
    except DataMissing as err:
        raise DataMissing(f"MNIST not found: {idx_help(folder)}; {err}") from None


CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_ROW = 3 * 32 * 32


def load_cifar10(data_dir):
    """CIFAR-10 python pickle batches (data_batch_1..5, test_batch), downloaded if absent."""
    folder = Path(data_dir) / "cifar-10-batches-py"
    files = (*CIFAR_TRAIN, "test_batch")
    if not any((folder / name).exists() for name in files):
        try:
            torchvision_download("CIFAR10", data_dir)
        except DataMissing as err:
            raise DataMissing(f"CIFAR-10 not found: put the python version's {', '.join(files)} in {folder} "
                              f"(cifar-10-python.tar.gz, extracted); {err}") from None
    missing = [name for name in files if not (folder / name).exists()]
    if missing:   # a part missing would silently train on less data
        raise DataMissing(f"{folder}: {', '.join(missing)} missing; CIFAR-10 needs {', '.join(files)} "
                          f"(delete the folder to download it again)")

    def read(names):
        xs, ys = zip(*(read_cifar_batch(folder / name) for name in names))
        return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))

    return read(CIFAR_TRAIN), read(["test_batch"])


def read_cifar_batch(path):
    """One CIFAR-10 python batch: `data` (N, 3072) uint8, each row the red, green and blue 32x32
    planes in turn, and N `labels`; as (N, 3, 32, 32) images and labels. Any other layout (e.g.
    (N, 32, 32, 3), channels last) would load as scrambled pixels, so it is refused."""
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        x, y = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    except Exception as err:   # unpickling fails in many ways on a cut or foreign file
        raise DataError(f"{path}: not a CIFAR-10 python batch ({type(err).__name__}: {_first_line(err)}); "
                        f"delete it and download it again") from None
    if x.ndim != 2 or x.shape[1] != CIFAR_ROW:
        hint = (" (channels last: convert with x.transpose(0, 3, 1, 2).reshape(len(x), 3072))"
                if x.shape[1:] == (32, 32, 3) else "")
        raise DataError(f"{path}: data has shape {x.shape}, but CIFAR-10's python batches hold one row of 3072 "
                        f"bytes per image (N, 3072), channel planes in turn{hint}")
    if x.dtype != np.uint8:
        raise DataError(f"{path}: data is {x.dtype}; CIFAR-10's python batches hold uint8 pixels (0..255)")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{path}: {len(x)} images but {y.size} labels; they must match one to one")
    return x.reshape(-1, 3, 32, 32), y


def load_imagenet(data_dir):
    root = Path(data_dir) / "imagenet"
    for split in ("train", "val"):
        if not (root / split).is_dir() or not any((root / split).iterdir()):
            raise DataMissing(f"ImageNet not found: expected {root}/train/<class>/*.JPEG and "
                              f"{root}/val/<class>/*.JPEG (set data_dir, or link your copy there)")
    check_same_classes(root / "train", root / "val")
    return root / "train", root / "val"


def check_same_classes(train, val):
    """ImageFolder numbers classes by their sorted folder names: train and val must have the same
    folders, or the same number would mean different classes."""
    train_classes, val_classes = ({d.name for d in folder.iterdir() if d.is_dir()} for folder in (train, val))
    if train_classes != val_classes:
        def listed(names):
            names = sorted(names)
            return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "") or "none"
        raise DataError(f"{val} and {train} have different class folders (only in train: "
                        f"{listed(train_classes - val_classes)}; only in val: {listed(val_classes - train_classes)}), "
                        f"so their labels would not match; give both the same class folders")


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


def as_cifar_format(x):
    """28x28 grey images as CIFAR-10 ones: zero-padded to 32x32, the grey value in all three channels.
    This is how the LCS reference reads Fashion-MNIST at laptop scale (bench/reference_runs.py writes
    its CIFAR-10 batches with it), so the harness's rows can read the very same pixels."""
    x = torch.nn.functional.pad(torch.as_tensor(x), (2, 2, 2, 2))
    return x.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def load_fashion_mnist_cifar(data_dir):
    return tuple((as_cifar_format(x), y) for x, y in load_fashion_mnist(data_dir))


def _info(name, classes, shape, mean, std, augment="none", in_memory=True):
    return lambda **_: DataInfo(name, classes, tuple(shape), mean, std, augment, in_memory)


SUBSET = ("train_size", "test_size")   # in-memory sets: a fixed random part (data/registry.py: _subset)
register_dataset("fashion-mnist", _info("fashion-mnist", 10, (1, 28, 28), (0.2860,), (0.3530,)),
                 lambda data_dir, **_: load_fashion_mnist(data_dir), SUBSET)
# Fashion-MNIST in CIFAR-10's format and augmentation (crop of a 4-pixel zero pad, flip): the LCS
# reference's laptop input; mean/std of these 32x32 images (the padding lowers both)
register_dataset("fashion-mnist-cifar", _info("fashion-mnist-cifar", 10, (3, 32, 32), (0.2190,) * 3, (0.3318,) * 3,
                                              "crop_flip"),
                 lambda data_dir, **_: load_fashion_mnist_cifar(data_dir), SUBSET)
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
