"""Weight masks as torch parametrizations: `module.weight` becomes `original * mask`, so every
metric and the forward pass see the pruned weight, while the optimizer trains `original`.
Pruned weights receive zero task gradient through the product."""
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from harness.metrics import prunable_layers


class Mask(nn.Module):
    def __init__(self, shape, device=None):
        super().__init__()
        self.register_buffer("mask", torch.ones(shape, device=device))

    def forward(self, w):
        return w * self.mask


def add_masks(model):
    """Put a Mask on every prunable layer's weight; returns {layer name: Mask}."""
    masks = {}
    for name, m in prunable_layers(model):
        if not parametrize.is_parametrized(m, "weight"):
            parametrize.register_parametrization(m, "weight", Mask(m.weight.shape, m.weight.device))
        masks[name] = m.parametrizations.weight[0]
    return masks


def raw_weight(module):
    """The trained tensor under any parametrization."""
    return module.parametrizations.weight.original if parametrize.is_parametrized(module, "weight") \
        else module.weight


def magnitude_mask(scores, n_pruned):
    """Mask keeping all but the `n_pruned` smallest-|score| entries (ties broken by position)."""
    flat = scores.abs().flatten()          # logical order, whatever the memory format
    mask = torch.ones_like(flat)
    if n_pruned > 0:
        mask[flat.argsort(stable=True)[:n_pruned]] = 0
    return mask.view(scores.shape)


def bake_masks(model):
    """Make zeros permanent: multiply each masked weight in and drop the parametrization."""
    for _, m in prunable_layers(model):
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
