"""DNW, discovering neural wirings (Wortsman et al. 2019), as STR's baseline: the forward pass uses
each layer's top-(1 - rate) weights by magnitude, recomputed at every step; the backward pass is
straight-through, so every weight, pruned or not, gets the dense gradient. Pruned counts are
int(rate * numel), as in RAIVNLab/STR utils/conv_type.py ChooseEdges."""
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from core.metrics import prunable_layers

from .base import Method, register_method
from .masking import bake_masks, layer_targets, magnitude_mask, sparsity_budget_keys


class _TopKStraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, rate):
        return w * magnitude_mask(w, int(float(rate) * w.numel()))

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class TopK(nn.Module):
    def __init__(self, rate, device=None):
        super().__init__()
        # saved, so evaluation needs no budget; float64 as the reference's Python float: in float32, 0.9 x 10
        # is 8.99999976 and int() prunes 8 weights, not the reference's int(0.9 * 10) = 9
        self.register_buffer("rate", torch.tensor(float(rate), dtype=torch.float64, device=device))

    def forward(self, w):
        return _TopKStraightThrough.apply(w, self.rate)


@register_method
class DNW(Method):
    name = "dnw"
    budget_keys = sparsity_budget_keys()

    def build(self, model):
        targets = layer_targets(self.budget, model, self.budget_file)
        for name, m in prunable_layers(model):
            parametrize.register_parametrization(m, "weight", TopK(targets[name], m.weight.device))
        return model

    def finalize(self, model):
        bake_masks(model)
