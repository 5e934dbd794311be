"""Dataset registry: each entry knows its shape and how to load itself."""
import difflib
from dataclasses import dataclass
from typing import Callable

from harness.errors import DataMissing  # noqa: F401  (re-exported for the loaders)


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


_DATASETS = {}


def register_dataset(name, info, load):
    _DATASETS[name] = Entry(info, load)


def dataset_names():
    return sorted(_DATASETS)


def check_dataset(name):
    if name not in _DATASETS:
        close = difflib.get_close_matches(name, _DATASETS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known datasets: {', '.join(dataset_names())}"
        raise KeyError(f"unknown dataset {name!r}; {hint}")


def dataset_info(name, **args) -> DataInfo:
    check_dataset(name)
    return _DATASETS[name].info(**args)


def make_loaders(name, data_dir, batch_size, device, seed=0, eval_batch_size=None, workers=4,
                 **args):
    """Train and test loaders for a registered dataset, yielding (x, y) batches on `device`."""
    from .loaders import FolderLoader, TensorLoader
    info = dataset_info(name, **args)
    train, test = _DATASETS[name].load(data_dir, **args)
    eval_bs = eval_batch_size or max(batch_size, 1000 if info.in_memory else batch_size)
    if info.in_memory:
        return (TensorLoader(*train, info, batch_size, device, seed, train=True),
                TensorLoader(*test, info, eval_bs, device, seed, train=False), info)
    return (FolderLoader(train, info, batch_size, device, seed, True, workers),
            FolderLoader(test, info, eval_bs, device, seed, False, workers), info)
