"""A table's model_args, checked when the table loads, before anything runs."""
import difflib
import inspect

from .registry import check_model
from .resnet import NORM_POSITIONS, SHORTCUTS
from .weight_init import WEIGHT_INITS

SET_BY_THE_HARNESS = ("num_classes", "in_channels", "layers")   # from the data set and the method
CHOICES = {"weight_init": tuple(WEIGHT_INITS), "shortcut": SHORTCUTS, "norm_position": NORM_POSITIONS}


def check_model_args(name, model_args):
    """Each key must be an option of the model's constructor (or weight_init); named choices must be
    one of their values."""
    known = (set(inspect.signature(check_model(name)).parameters) - set(SET_BY_THE_HARNESS)) | {"weight_init"}
    for key, value in (model_args or {}).items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"model {name!r} takes {', '.join(sorted(known))}"
            raise ValueError(f"unknown model_args key {key!r} for model {name!r}; {hint}")
        if key in CHOICES and value not in CHOICES[key]:
            raise ValueError(f"model_args.{key} {value!r}: use one of {', '.join(CHOICES[key])}")
