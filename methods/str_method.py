"""STR, soft threshold weight reparameterization (Kusupati et al., ICML 2020).

Each conv and linear weight is used as S(W, s) = sign(W) * relu(|W| - sigmoid(s)) with one learnable
threshold parameter s per layer (RAIVNLab/STR utils/conv_type.py STRConv). Gradients reach W
(masked by |W| > sigmoid(s)) and s. s starts at `s_init`; with the reference's large negative values
(-3200 for ResNet50) sigmoid(s) is exactly 0 in float32, so the net starts dense and s receives no
loss gradient: only weight decay on s (`st_decay`, by default the same as the weights') pulls it up
until pruning begins. Sparsity is therefore set indirectly, by s_init and the weight decay.

`finalize` replaces every weight by S(W, s): the STR model becomes an ordinary dense-layer model
with identical outputs (the reference's --dense-conv-model)."""
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from core.metrics import prunable_layers

from .base import Method, register_method
from .masking import bake_masks


def soft_threshold(w, s):
    return torch.sign(w) * torch.relu(w.abs() - torch.sigmoid(s))


class SoftThreshold(nn.Module):
    def __init__(self, s_init):
        super().__init__()
        self.s = nn.Parameter(torch.tensor(float(s_init)))

    def forward(self, w):
        return soft_threshold(w, self.s)


@dataclass
class STRArgs:
    s_init: float = -3200.0      # the reference's sInit_value (ResNet50 config)
    st_decay: float = -1.0       # weight decay on the thresholds; -1: the weights' weight_decay (reference default)

    def __post_init__(self):
        if self.st_decay < 0 and self.st_decay != -1:
            raise ValueError(f"method_args.st_decay={self.st_decay!r} should be >= 0, or -1 (the weights' weight_decay)")


@register_method
class STR(Method):
    name = "str"
    Args = STRArgs

    def build(self, model):
        for _, m in prunable_layers(model):
            parametrize.register_parametrization(m, "weight", SoftThreshold(self.args.s_init).to(m.weight.device))
        return model

    def param_groups(self, model, weight_decay, norm_decay=True):
        thresholds = [p for n, p in model.named_parameters() if n.endswith(".s")]
        ids = {id(p) for p in thresholds}
        groups = super().param_groups(model, weight_decay, norm_decay)
        for g in groups:
            g["params"] = [p for p in g["params"] if id(p) not in ids]
        st_decay = weight_decay if self.args.st_decay < 0 else self.args.st_decay
        return groups + [{"params": thresholds, "weight_decay": st_decay}]

    def thresholds(self, model):
        """{layer: sigmoid(s)}: the per-layer thresholds the reference dumps."""
        return {n: float(torch.sigmoid(m.parametrizations.weight[0].s.detach())) for n, m in prunable_layers(model)
                if parametrize.is_parametrized(m, "weight")}

    def report(self, model):
        return {"thresholds": self.thresholds(model) or getattr(self, "final_thresholds", {})}

    def finalize(self, model):
        self.final_thresholds = self.thresholds(model)   # s goes with the parametrization
        bake_masks(model)
