"""Layer factories: every model builds its conv, linear and norm layers through one of these,
so a compression method can swap the layer type (masked, soft-threshold, quantized) or the norm
(BN, IN, GN) without touching the model code."""
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn


def make_norm(kind: str, channels: int, groups: int = 32) -> nn.Module:
    """The norms the papers use: batch, instance (affine, as in LCS) and group norm."""
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "in":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "gn":
        return nn.GroupNorm(min(groups, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose one of bn, in, gn, none")


@dataclass
class Layers:
    """What a model asks for when it needs a layer. Defaults are the plain torch layers."""
    conv: Callable[..., nn.Module] = nn.Conv2d
    linear: Callable[..., nn.Module] = nn.Linear
    norm: str = "bn"

    def norm2d(self, channels: int) -> nn.Module:
        return make_norm(self.norm, channels)
