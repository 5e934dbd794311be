"""Model registry: `@register_model("name")` on a constructor, `create_model(name, ...)` to build."""
from core.registry import Registry

from .layers import Layers
from .weight_init import apply_weight_init

MODELS = Registry("model")
register_model = MODELS.register
model_names = MODELS.names
check_model = MODELS.get


def create_model(name, num_classes, in_channels=None, layers=None, weight_init="torch", **kwargs):
    """Build a registered model, then initialise it with the `weight_init` scheme (models/weight_init.py).
    `kwargs` are the constructor's own options (e.g. width); in_channels defaults to the model's own
    (1 for the LeNets, 3 otherwise)."""
    if in_channels is not None:
        kwargs["in_channels"] = in_channels
    model = MODELS.get(name)(num_classes=num_classes, layers=layers or Layers(), **kwargs)
    return apply_weight_init(model, weight_init)

