"""Dataset registry. `make_loaders(name, ...)` returns train/test batch iterables on the device."""
from . import sources  # noqa: F401  (registration side effects)
from .loaders import FolderLoader, TensorLoader
from .registry import DataInfo, check_dataset, dataset_info, dataset_names, make_loaders

__all__ = ["DataInfo", "FolderLoader", "TensorLoader", "check_dataset", "dataset_info",
           "dataset_names", "make_loaders"]
