"""Plain dense training: the baseline every table starts from."""
from .base import Method, register_method


@register_method
class Dense(Method):
    name = "dense"
