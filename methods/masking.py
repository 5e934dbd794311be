"""Weight masks as torch parametrizations: `module.weight` becomes `original * mask`, so every
metric and the forward pass see the pruned weight, while the optimizer trains `original`.
Pruned weights receive zero task gradient through the product."""
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from core.metrics import prunable_layers
from core.paths import ROOT


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
    """Mask keeping all but the `n_pruned` smallest-|score| entries (ties broken by position, as a
    stable sort would: the first ones are pruned). A selection (kthvalue), not a sort: DNW and LCS's
    TopK recompute it for every layer at every step, and at 100,000 weights a sort costs 6-11x more."""
    flat = scores.abs().flatten()          # logical order, whatever the memory format
    if n_pruned <= 0:
        return torch.ones_like(flat).view(scores.shape)
    if n_pruned >= flat.numel():
        return torch.zeros_like(flat).view(scores.shape)
    cut = flat.kthvalue(n_pruned).values   # the largest pruned magnitude
    keep = flat > cut
    ties_kept = flat.numel() - n_pruned - int(keep.sum())
    if ties_kept:                          # entries equal to `cut` straddle it: keep the last ones
        keep[(flat == cut).nonzero().squeeze(1)[-ties_kept:]] = True
    return keep.to(flat.dtype).view(scores.shape)


def bake_masks(model, modules=None):
    """Make zeros permanent: multiply each mask in and drop the parametrizations, on `modules`
    ((name, module) pairs; default: every prunable layer)."""
    for _, m in prunable_layers(model) if modules is None else modules:
        for attr in ("weight", "bias"):
            if parametrize.is_parametrized(m, attr):
                parametrize.remove_parametrizations(m, attr, leave_parametrized=True)


def sparsity_budget_keys():
    """The budget keys of methods that prune each layer to a set sparsity (GMP, DNW)."""
    from .base import Budget
    return {
        "sparsity": Budget(0.0, 1.0, "fraction of each prunable layer's weights pruned, e.g. 0.9"),
        "layerwise": Budget(0.0, 1.0, "per-layer sparsity {layer name: fraction}", required=False),
        "transfer": Budget(0, 0, "a row of this table whose achieved layer-wise budget to use", False, "text"),
        "csv": Budget(0, 0, "a budget CSV in STR's format, relative to the repository", False, "text"),
        "column": Budget(0, 0, "which sparsity column of `csv`, e.g. \"90.23\"", False, "text"),
    }


def layer_targets(budget, model, budget_file=None):
    """{layer name: target sparsity} for every prunable layer: a transferred or CSV budget, else
    `layerwise` entries, else the uniform `sparsity`."""
    from core.budgets import match_layers, read_budget_csv
    layers = [(n, m.weight.numel()) for n, m in prunable_layers(model)]
    targets = {n: budget["sparsity"] for n, _ in layers}
    if budget.get("transfer") and budget_file is not None:   # (the trainer insists on the file; evaluation
        targets = match_layers(read_budget_csv(budget_file), layers, str(budget_file))  # restores saved state)
    elif budget.get("csv"):
        targets = match_layers(read_budget_csv(ROOT / budget["csv"], budget.get("column")), layers, budget["csv"])
    targets.update(budget.get("layerwise") or {})
    return targets
