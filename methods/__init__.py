"""Method registry. Importing this package registers every method."""
from . import admm, dense, dnw, finetune, gmp, lcs, lec, regularizers, str_method  # noqa: F401  (registration side effects)
from .base import Budget, Method, Progress, get_method, method_names, register_method

__all__ = ["Budget", "Method", "Progress", "get_method", "method_names", "register_method"]
