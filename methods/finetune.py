"""Prune once, then train with the zeros fixed: DeepHoyer's prun_tune_T / prun_tune_V, and the
finetuning stage of any method that hands over a sparse model (rows with `init: <row>`).

Pruning rules, per tensor (weights, and biases unless `biases: false`, as the reference prunes every
parameter):  threshold: |w| < value  (prun_tune_T)   std: |w| < value * std(w), population std
(prun_tune_V)   none: keep the zeros the model already has. Every zero then stays zero: the mask
multiplies the weight, so pruned entries get no gradient and (being zero) no weight decay.

`quantize: true` is the ADMM paper's finetune.py: the sparsity pattern and each layer's bit width
stay fixed, the forward pass uses every weight's nearest codebook value (a per-layer codebook of
2^bits nonzero values; zeros stay zero) with the gradient passed straight through to the float
weight, and the codebooks follow the weights (5 warm-started k-means iterations every 1/20 epoch,
up to 100 at each epoch's end). A layer's bits are `weightbits` (finetune.py --weightbits) or, by
default, what its starting weights already use: ceil(log2(distinct nonzero values)), so a quantized
model (ADMM's finalized output) starts exactly where it was and keeps its compression rate."""
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from harness.metrics import prunable_layers

from .base import Method, register_method
from .masking import Mask, bake_masks
from .quantize import kmeans_codebook, refine_codebook

REFRESHES_PER_EPOCH = 20   # finetune.py: every round(len(loader) / 20) batches
REFRESH_ITERS, EPOCH_END_ITERS = 5, 100


def prune_tensor(w, rule, value):
    """Zero the entries of `w` below the rule's threshold, in place."""
    if rule == "threshold":
        w[w.abs() < value] = 0
    elif rule == "std":
        w[w.abs() < value * w.std(unbiased=False)] = 0
    elif rule != "none":
        raise ValueError(f"unknown prune rule {rule!r}; use threshold, std or none")


def bits_in_use(w):
    """Bits that index the distinct nonzero values of `w` (at least 1)."""
    distinct = torch.unique(w[w != 0]).numel()
    return max(1, math.ceil(math.log2(distinct))) if distinct > 1 else 1


class Codebook(nn.Module):
    """Weight -> its nearest codebook value (zeros stay zero), straight-through gradient."""

    def __init__(self, codebook):
        super().__init__()
        self.register_buffer("codebook", codebook)

    def forward(self, w):
        book = self.codebook.to(w.dtype)
        nearest = book[torch.bucketize(w.detach().contiguous(), (book[1:] + book[:-1]) / 2)]
        q = torch.where(w == 0, torch.zeros_like(w), nearest)
        return w + (q - w).detach()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a saved model's codebook sizes its buffer (built before loading, from other weights)
        if prefix + "codebook" in state_dict:
            self.codebook = torch.empty_like(state_dict[prefix + "codebook"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@dataclass
class FinetuneArgs:
    prune: str = "none"      # none | threshold | std
    value: float = 0.0       # the threshold, or the ratio to each tensor's std
    biases: bool = True      # prune and freeze the biases of conv/linear layers too
    quantize: bool = False   # keep each layer on a 2^bits-value codebook (ADMM's finetune.py)
    weightbits: list = field(default_factory=list)   # per prunable layer; empty = the bits in use


@register_method
class Finetune(Method):
    name = "finetune"
    Args = FinetuneArgs

    def build(self, model):
        layers = prunable_layers(model)
        if self.args.weightbits and len(self.args.weightbits) != len(layers):
            raise ValueError(f"finetune: method_args.weightbits has {len(self.args.weightbits)} entries but the "
                             f"model has {len(layers)} conv/linear layers; give one bit width per layer")
        self.bits = []
        with torch.no_grad():
            for i, (_, m) in enumerate(layers):
                for attr in ("weight", "bias") if self.args.biases else ("weight",):
                    w = getattr(m, attr)
                    if w is None:
                        continue
                    prune_tensor(w, self.args.prune, self.args.value)
                    mask = Mask(w.shape, w.device)
                    mask.mask.copy_(w != 0)
                    parametrize.register_parametrization(m, attr, mask)
                if self.args.quantize:
                    w = m.weight
                    bits = int(self.args.weightbits[i]) if self.args.weightbits else bits_in_use(w)
                    book = kmeans_codebook(w[w != 0], bits, zero_anchored=False)
                    parametrize.register_parametrization(m, "weight", Codebook(book))
                    self.bits.append(bits)
        self.layers = layers
        return model

    @torch.no_grad()
    def on_step(self, model, progress):
        if not self.args.quantize:
            return
        in_epoch = progress.step - progress.epoch * progress.steps_per_epoch
        every = max(1, round(progress.steps_per_epoch / REFRESHES_PER_EPOCH))
        if in_epoch == progress.steps_per_epoch:
            self.refresh_codebooks(EPOCH_END_ITERS)
        elif in_epoch % every == 0:
            self.refresh_codebooks(REFRESH_ITERS)

    def refresh_codebooks(self, iters):
        for _, m in self.layers:
            masked = m.parametrizations.weight.original * m.parametrizations.weight[0].mask
            quantizer = m.parametrizations.weight[1]
            quantizer.codebook.copy_(refine_codebook(masked, quantizer.codebook, iters))

    def storage(self, model, layers):
        if not self.args.quantize:
            return super().storage(model, layers)
        return list(zip(self.bits, (r["nonzero"] for r in layers)))

    def report(self, model):
        return {"bits": self.bits} if self.args.quantize else {}

    def state_dict(self):
        return {"bits": list(self.bits)}

    def load_state_dict(self, state):
        self.bits = list(state.get("bits", self.bits))

    def finalize(self, model):
        bake_masks(model)
