"""Model registry. Importing this package registers every model family."""
from . import lenet, others, resnet  # noqa: F401  (registration side effects)
from .layers import Layers, make_norm
from .model_args import check_model_args
from .pretrained import TORCHVISION_INIT, has_torchvision_weights, load_mapped, torchvision_state
from .registry import check_model, create_model, model_names, register_model
from .weight_init import WEIGHT_INITS, apply_weight_init

__all__ = ["Layers", "make_norm", "check_model", "check_model_args", "create_model", "model_names",
           "register_model", "WEIGHT_INITS", "apply_weight_init",
           "TORCHVISION_INIT", "has_torchvision_weights", "load_mapped", "torchvision_state"]
