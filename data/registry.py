"""Dataset registry: each entry knows its shape and how to load itself."""
from dataclasses import dataclass, replace
from typing import Callable

from core.errors import DataError, DataMissing  # noqa: F401  (re-exported for the loaders)
from core.registry import Registry, suggest


@dataclass(frozen=True)
class DataInfo:
    name: str
    num_classes: int
    shape: tuple          # (C, H, W) of one input as the model sees it
    mean: tuple
    std: tuple
    augment: str          # "none", "crop_flip" (CIFAR) or "imagenet"
    in_memory: bool       # small sets are held as tensors on the device


@dataclass(frozen=True)
class Entry:
    info: Callable[..., DataInfo]
    load: Callable        # (data_dir, **args) -> ((x_train, y_train), (x_test, y_test)) or folders
    options: tuple = ()   # the dataset_args it takes besides `normalize`


DATASETS = Registry("dataset")
dataset_names = DATASETS.names
check_dataset = DATASETS.get


def register_dataset(name, info, load, options=()):
    DATASETS.register(name, Entry(info, load, tuple(options)))


def _whole(low):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


# every dataset_args key but normalize: (is the value right, what it should be)
DATASET_ARGS = {
    "train_size": (_whole(0), "a whole number of training images to keep (0: all)"),
    "test_size": (_whole(0), "a whole number of test images to keep (0: all)"),
    "shape": (lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(map(_whole(1), v)),
              "[channels, height, width], whole numbers"),
    "classes": (_whole(2), "a whole number of classes >= 2"),
    "seed": (_whole(0), "a whole number >= 0"),
    "noise": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0, "a number >= 0"),
}


def check_dataset_args(name, args):
    """Each dataset_args key must be one the data set takes, with a value of the right kind."""
    options = DATASETS.get(name).options
    for key, value in args.items():
        if key not in options:
            raise ValueError(f"unknown dataset_args key {key!r} for dataset {name!r}; "
                             + (suggest(key, ["normalize", *options]) if options else "it takes only normalize"))
        ok, meaning = DATASET_ARGS[key]
        if not ok(value):
            raise ValueError(f"dataset_args.{key}={value!r} should be {meaning}")


NORMALIZE_HELP = ("dataset_args.normalize: `dataset` (the data set's own mean/std), `none` (pixels in [0, 1], "
                  "ToTensor only) or {mean: [...], std: [...]} with one value per channel")


def normalization(info, normalize="dataset"):
    """(mean, std) the inputs are normalised with. Each reference has its own: DeepHoyer's MNIST
    loaders use ToTensor only, bearpaw's and LCS's CIFAR std is (0.2023, 0.1994, 0.2010), so a
    paper table names its reference's constants instead of taking the data set's."""
    channels = info.shape[0]
    if normalize == "dataset":
        return info.mean, info.std
    if normalize == "none":
        return (0.0,) * channels, (1.0,) * channels
    if isinstance(normalize, dict) and set(normalize) == {"mean", "std"}:
        try:
            mean, std = (tuple(float(v) for v in normalize[k]) for k in ("mean", "std"))
        except (TypeError, ValueError):
            mean = std = ()
        if len(mean) == len(std) == channels and all(s > 0 for s in std):
            return mean, std
    raise ValueError(f"{NORMALIZE_HELP}; got {normalize!r} for {info.name} ({channels} channel(s))")


def dataset_info(name, normalize="dataset", **args) -> DataInfo:
    """A data set's facts, with the normalisation the run asks for (dataset_args.normalize)."""
    check_dataset_args(name, args)
    info = DATASETS.get(name).info(**args)
    mean, std = normalization(info, normalize)
    return replace(info, mean=mean, std=std)


def _subset(split, size):
    """The same `size` samples for every run and seed (a permutation seeded with 0)."""
    x, y = split
    if not size or size >= len(y):
        return x, y
    import torch
    keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:size].sort().values
    return x[keep], y[keep]


def _check_labels(name, data_dir, info, *splits):
    """Labels outside 0..classes-1 would train on the wrong classes or fail mid-epoch."""
    for split, (_, y) in zip(("training", "test"), splits):
        if len(y) and not 0 <= int(y.min()) <= int(y.max()) < info.num_classes:
            raise DataError(f"{name} in {data_dir}: the {split} labels run from {int(y.min())} to {int(y.max())}, but "
                            f"{name} has {info.num_classes} classes (0..{info.num_classes - 1}); its files are not "
                            f"{name}'s")


def default_eval_batch(device):
    """Test batch of an in-memory data set: large on a GPU; on the CPU one whose activations stay
    near the cache (LeNet-5 tests 13 % faster at 128 than at 32; a table whose network is faster at
    another sets `train.eval_batch_size`, as LCS's cPreResNet20 does at 32)."""
    return 1000 if str(device).startswith("cuda") else 128


def make_loaders(name, data_dir, batch_size, device, seed=0, eval_batch_size=None, workers=4,
                 **args):
    """Train and test loaders for a registered dataset, yielding (x, y) batches on `device`."""
    from .loaders import FolderLoader, TensorLoader
    info = dataset_info(name, **args)
    args.pop("normalize", None)
    train, test = DATASETS.get(name).load(data_dir, **args)
    if info.in_memory:  # laptop scales may train on a fixed random part of a data set
        _check_labels(name, data_dir, info, train, test)
        train, test = _subset(train, args.get("train_size")), _subset(test, args.get("test_size"))
    eval_bs = eval_batch_size or max(batch_size, default_eval_batch(device) if info.in_memory else batch_size)
    if info.in_memory:
        return (TensorLoader(*train, info, batch_size, device, seed, train=True),
                TensorLoader(*test, info, eval_bs, device, seed, train=False), info)
    return (FolderLoader(train, info, batch_size, device, seed, True, workers),
            FolderLoader(test, info, eval_bs, device, seed, False, workers), info)
