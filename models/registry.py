"""Model registry: `@register_model("name")` on a constructor, `create_model(name, ...)` to build."""
import difflib

from .layers import Layers

_MODELS = {}


def register_model(name):
    def wrap(fn):
        _MODELS[name] = fn
        return fn
    return wrap


def model_names():
    return sorted(_MODELS)


def check_model(name):
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known models: {', '.join(model_names())}"
        raise KeyError(f"unknown model {name!r}; {hint}")


def create_model(name, num_classes, in_channels=None, layers=None, **kwargs):
    """Build a registered model. `kwargs` are the constructor's own options (e.g. width);
    in_channels defaults to the model's own (1 for the LeNets, 3 otherwise)."""
    check_model(name)
    if in_channels is not None:
        kwargs["in_channels"] = in_channels
    return _MODELS[name](num_classes=num_classes, layers=layers or Layers(), **kwargs)
