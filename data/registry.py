"""Dataset registry: each entry knows its shape and how to load itself."""
from dataclasses import dataclass
from typing import Callable

from harness.errors import DataMissing  # noqa: F401  (re-exported for the loaders)
from harness.registry import Registry


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


DATASETS = Registry("dataset")
dataset_names = DATASETS.names
check_dataset = DATASETS.get


def register_dataset(name, info, load):
    DATASETS.register(name, Entry(info, load))


def dataset_info(name, **args) -> DataInfo:
    return DATASETS.get(name).info(**args)


def _subset(split, size):
    """The same `size` samples for every run and seed (a permutation seeded with 0)."""
    x, y = split
    if not size or size >= len(y):
        return x, y
    import torch
    keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:size].sort().values
    return x[keep], y[keep]


def make_loaders(name, data_dir, batch_size, device, seed=0, eval_batch_size=None, workers=4,
                 **args):
    """Train and test loaders for a registered dataset, yielding (x, y) batches on `device`."""
    from .loaders import FolderLoader, TensorLoader
    info = dataset_info(name, **args)
    train, test = DATASETS.get(name).load(data_dir, **args)
    if info.in_memory:  # laptop scales may train on a fixed random part of a data set
        train, test = _subset(train, args.get("train_size")), _subset(test, args.get("test_size"))
    eval_bs = eval_batch_size or max(batch_size, 1000 if info.in_memory else batch_size)
    if info.in_memory:
        return (TensorLoader(*train, info, batch_size, device, seed, train=True),
                TensorLoader(*test, info, eval_bs, device, seed, train=False), info)
    return (FolderLoader(train, info, batch_size, device, seed, True, workers),
            FolderLoader(test, info, eval_bs, device, seed, False, workers), info)
