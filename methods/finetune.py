"""Prune once, then train with the zeros fixed: DeepHoyer's prun_tune_T / prun_tune_V, and the
finetuning stage of any method that hands over a sparse model (rows with `init: <row>`).

Pruning rules, per tensor (weights, and biases unless `biases: false`, as the reference prunes every
parameter):  threshold: |w| < value  (prun_tune_T)   std: |w| < value * std(w), population std
(prun_tune_V)   none: keep the zeros the model already has. Every zero then stays zero: the mask
multiplies the weight, so pruned entries get no gradient and (being zero) no weight decay."""
from dataclasses import dataclass

import torch
from torch.nn.utils import parametrize

from harness.metrics import prunable_layers

from .base import Method, register_method
from .masking import Mask, bake_masks


def prune_tensor(w, rule, value):
    """Zero the entries of `w` below the rule's threshold, in place."""
    if rule == "threshold":
        w[w.abs() < value] = 0
    elif rule == "std":
        w[w.abs() < value * w.std(unbiased=False)] = 0
    elif rule != "none":
        raise ValueError(f"unknown prune rule {rule!r}; use threshold, std or none")


@dataclass
class FinetuneArgs:
    prune: str = "none"      # none | threshold | std
    value: float = 0.0       # the threshold, or the ratio to each tensor's std
    biases: bool = True      # prune and freeze the biases of conv/linear layers too


@register_method
class Finetune(Method):
    name = "finetune"
    Args = FinetuneArgs

    def build(self, model):
        with torch.no_grad():
            for _, m in prunable_layers(model):
                for attr in ("weight", "bias") if self.args.biases else ("weight",):
                    w = getattr(m, attr)
                    if w is None:
                        continue
                    prune_tensor(w, self.args.prune, self.args.value)
                    mask = Mask(w.shape, w.device)
                    mask.mask.copy_(w != 0)
                    parametrize.register_parametrization(m, attr, mask)
        return model

    def finalize(self, model):
        bake_masks(model)
