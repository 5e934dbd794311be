"""LEC, network slimming (Liu et al. 2017), the structured baseline of LCS's README: L1 on the BN
scales while training, then at each channel keep fraction one global threshold on |γ|. Which layers
feed and read each norm's channels: methods/channel_graph.py.
Its options and evaluation grid are LCS's (methods/lcs.py)."""
import contextlib

import torch
import torch.nn as nn

from .base import Method, register_method
from .channel_graph import norm_neighbours
from .lcs import DEFAULT_GRID, _args, init_like_the_reference
from .lcs_layers import magnitude_mask


@register_method
class NetworkSlimming(Method):
    """LEC (Liu et al. 2017, "Learning Efficient Convolutional Networks through Network Slimming"),
    as LCS uses it: L1 on the BN scales while training (gradient += s·sign(γ)); at each channel
    keep fraction f, one global threshold on |γ| prunes the int((1-f)·N) smallest of all N norm
    channels, with no finetuning. Pruned channels are zeroed (norm scale and shift, the producing
    conv's filter, the consuming layers' input columns), which is the physically slimmed network."""
    name = "lec"
    Args = _args("lec")
    level_kind = "width"

    def build(self, model):
        init_like_the_reference(model)
        self.neighbours = norm_neighbours(model)
        return model

    def loss(self, model, outputs, base_loss):
        scales = [m.weight for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        return base_loss + self.args.lec_sparsity * sum(g.abs().sum() for g in scales)

    def evaluation_points(self):
        return list(self.args.eval_width_factors or DEFAULT_GRID["lec"])

    def pruned_channels(self, model, keep):
        modules = dict(model.named_modules())
        gammas = torch.cat([modules[n].weight.detach().abs().flatten() for n in self.neighbours])
        keep_mask = magnitude_mask(gammas, int((1.0 - keep) * gammas.numel()))
        out, i = {}, 0
        for n in self.neighbours:
            c = modules[n].num_features
            out[n] = (keep_mask[i:i + c] == 0).nonzero().flatten()
            i += c
        return out

    @contextlib.contextmanager
    def at_level(self, model, level):
        saved = {k: v.clone() for k, v in model.state_dict().items()}
        modules = dict(model.named_modules())
        with torch.no_grad():
            for n, idx in self.pruned_channels(model, level).items():
                modules[n].weight[idx] = 0
                modules[n].bias[idx] = 0
                producer, consumers = self.neighbours[n]
                if producer:
                    modules[producer].weight[idx] = 0
                for c in consumers:
                    modules[c].weight[:, idx] = 0
        try:
            yield
        finally:
            model.load_state_dict(saved)
