"""Prune once, then train with the zeros fixed: DeepHoyer's prun_tune_T / prun_tune_V /
cifar_prun_tune, and the finetuning stage of any method that hands over a sparse model (rows with
`init: <row>`).

Pruning rules, per tensor:  threshold: |w| < value  (prun_tune_T, cifar_prun_tune)   std: |w| <
value * std(w), population std (prun_tune_V)   none: keep the zeros the model already has. Every
zero then stays zero: the mask multiplies the weight, so pruned entries get no gradient and (being
zero) no weight decay. Which tensors are pruned and masked (`tensors`):
  weights_biases  conv/linear weights and biases: the MNIST scripts prune every named parameter,
                  which in their LeNets are exactly these (default);
  weights         conv/linear weights only (ADMM's finetune.py masks only those);
  weights_norm    every parameter named `weight`: conv/linear weights and norm weights (BN gamma),
                  no biases, as cifar_prun_tune.py thresholds and masks them.
Table sparsity counts conv/linear weights only, whatever is masked (core.metrics); the pruned
norm weights are in the method report (`norm_weights`, `norm_nonzero`).

`quantize: true` is the ADMM paper's finetune.py (without --quant): the sparsity pattern and each
layer's bit width stay fixed, the forward pass uses every weight's nearest codebook value with the
gradient passed straight through to the float weight. The codebook is 0 plus 2^bits values, fitted
by k-means on the layer's nonzeros (100 iterations, util.get_optim_val_dict with its reserved zero),
so small weights snap to 0 in the forward pass while staying trainable (`zero_centroid: false`:
2^bits nonzero values, zeros only where pruned). The codebooks follow the weights: 5 warm-started
k-means iterations every round(steps per epoch / 20) steps and at the epoch's last step, 100 after
each epoch but the last. A layer's bits are `weightbits` (--weightbits), else the `weight_bits` the
starting stage handed over (an ADMM row's final bits: finetune.py reads the model's weight_bits
buffer), else what its starting weights already use: ceil(log2(distinct nonzero values)), for a
model already on a codebook."""
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from core.metrics import prunable_layers
from core.registry import check_choice

from .base import Method, register_method
from .masking import Mask, bake_masks
from .quantize import MAX_BITS, NZ_EPS, kmeans_codebook, refine_codebook

REFRESHES_PER_EPOCH = 20   # finetune.py: every round(len(loader) / 20) batches
REFRESH_ITERS, EPOCH_END_ITERS = 5, 100
TENSORS = ("weights_biases", "weights", "weights_norm")
PRUNE_RULES = ("none", "threshold", "std")
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)   # BatchNorm*, InstanceNorm*


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


def masked_tensors(model, tensors):
    """(module name, module, attribute) of every tensor `tensors` prunes and masks."""
    if tensors not in TENSORS:
        raise ValueError(f"finetune: method_args.tensors {tensors!r} unknown; use one of {', '.join(TENSORS)}")
    out = []
    for name, m in prunable_layers(model):
        out.append((name, m, "weight"))
        if tensors == "weights_biases" and m.bias is not None:
            out.append((name, m, "bias"))
    if tensors == "weights_norm":
        out += [(n, m, "weight") for n, m in model.named_modules()
                if isinstance(m, NORM_TYPES) and getattr(m, "weight", None) is not None]
    return out


class Codebook(nn.Module):
    """Weight -> its nearest codebook value, straight-through gradient. zero_anchored (the
    codebook holds 0, finetune.py's km_quantize_tensor): |w| < 1e-5 -> 0 and others go to the
    nearest value, 0 included; otherwise exact zeros stay zero and others go to the nearest."""

    def __init__(self, codebook, zero_anchored=True):
        super().__init__()
        self.zero_anchored = zero_anchored
        self.register_buffer("codebook", codebook)

    def forward(self, w):
        book = self.codebook.to(w.dtype)
        nearest = book[torch.bucketize(w.detach().contiguous(), (book[1:] + book[:-1]) / 2)]
        zero = w.abs() < NZ_EPS if self.zero_anchored else w == 0
        q = torch.where(zero, torch.zeros_like(w), nearest)
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
    tensors: str = "weights_biases"   # pruned and masked: weights_biases | weights | weights_norm
    quantize: bool = False   # keep each layer on a codebook of 2^bits values (ADMM's finetune.py)
    weightbits: list = field(default_factory=list)   # per prunable layer; empty = handed over or in use
    zero_centroid: bool = True   # quantize: 0 is a codebook value small weights snap to (finetune.py)

    def __post_init__(self):
        check_choice("method_args.prune", self.prune, PRUNE_RULES)
        check_choice("method_args.tensors", self.tensors, TENSORS)
        if self.value < 0:
            raise ValueError(f"method_args.value={self.value!r} should be >= 0 (a threshold or a ratio to the std)")
        if self.prune == "none" and self.value:
            raise ValueError(f"method_args.value={self.value!r} is unused with prune: none; set method_args.prune "
                             f"to threshold or std, or remove value")
        if not all(isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= MAX_BITS for b in self.weightbits):
            raise ValueError(f"method_args.weightbits={self.weightbits!r} should be one whole number of bits "
                             f"(1..{MAX_BITS}) per conv/linear layer")
        if self.weightbits and not self.quantize:
            raise ValueError("method_args.weightbits is used only with quantize: true; set it or remove weightbits")


@register_method
class Finetune(Method):
    name = "finetune"
    Args = FinetuneArgs

    def build(self, model):
        layers = prunable_layers(model)
        self.masked = masked_tensors(model, self.args.tensors)
        with torch.no_grad():
            for _, m, attr in self.masked:
                w = getattr(m, attr)
                prune_tensor(w, self.args.prune, self.args.value)
                mask = Mask(w.shape, w.device)
                mask.mask.copy_(w != 0)
                parametrize.register_parametrization(m, attr, mask)
            self.bits = self._layer_bits(layers) if self.args.quantize else []
            for (_, m), bits in zip(layers, self.bits):
                parametrize.register_parametrization(m, "weight", Codebook(self._codebook(m.weight, bits),
                                                                           self.args.zero_centroid))
        self.layers = layers
        return model

    def _codebook(self, w, bits):
        """finetune.py's first codebook: k-means (up to 100 iterations) on the layer's nonzeros."""
        if self.args.zero_centroid:
            return kmeans_codebook(w, bits, zero_anchored=True)
        return kmeans_codebook(w[w != 0], bits, zero_anchored=False)

    def _layer_bits(self, layers):
        """finetune.py's bits: --weightbits, else the model's weight_bits buffer (here: what the
        starting stage handed over), else the bits the starting weights already use."""
        given = self.args.weightbits or self.inherited.get("weight_bits") or []
        source = "method_args.weightbits" if self.args.weightbits else "the handed-over weight_bits"
        if given and len(given) != len(layers):
            raise ValueError(f"finetune: {source} has {len(given)} entries but the model has {len(layers)} "
                             f"conv/linear layers; give one bit width per layer")
        if given:
            return [int(b) for b in given]
        bits = [bits_in_use(m.weight) for _, m in layers]
        if max(bits, default=1) > MAX_BITS:
            raise ValueError(f"finetune: quantize needs bit widths and the starting weights are not on a "
                             f"codebook of at most 2^{MAX_BITS} values; give method_args.weightbits (one per "
                             f"conv/linear layer) or start from an ADMM row, which hands its bits over")
        self.inherited = {**self.inherited, "weight_bits": bits}   # so a rebuild (evaluation) needs no guess
        return bits

    def on_epoch_start(self, model, progress):
        """finetune.py refits each codebook (100 warm-started iterations) after every epoch's
        evaluation but the last: here at the start of the next epoch, which a resume repeats."""
        if self.args.quantize and progress.epoch > 0:
            self.refresh_codebooks(EPOCH_END_ITERS)

    @torch.no_grad()
    def on_step(self, model, progress):
        if not self.args.quantize:
            return
        in_epoch = progress.step - progress.epoch * progress.steps_per_epoch   # finetune.py's batch_idx + 1
        every = max(1, round(progress.steps_per_epoch / REFRESHES_PER_EPOCH))
        if in_epoch % every == 0 or in_epoch == progress.steps_per_epoch:
            self.refresh_codebooks(REFRESH_ITERS)

    @torch.no_grad()
    def refresh_codebooks(self, iters):
        for _, m in self.layers:
            masked = m.parametrizations.weight.original * m.parametrizations.weight[0].mask
            quantizer = m.parametrizations.weight[1]
            quantizer.codebook.copy_(refine_codebook(masked, quantizer.codebook, iters, quantizer.zero_anchored))

    def storage(self, model, layers):
        if not self.args.quantize:
            return super().storage(model, layers)
        return list(zip(self.bits, (r["nonzero"] for r in layers)))

    def report(self, model):
        out = {"bits": self.bits} if self.args.quantize else {}
        norms = [getattr(m, attr) for _, m, attr in self.masked if isinstance(m, NORM_TYPES)]
        if norms:
            out.update(norm_weights=sum(w.numel() for w in norms),
                       norm_nonzero=sum(int((w != 0).sum()) for w in norms))
        return out

    def state_dict(self):
        return {"bits": list(self.bits)}

    def load_state_dict(self, state):
        self.bits = list(state.get("bits", self.bits))

    def finalize(self, model):
        bake_masks(model, dict.fromkeys((n, m) for n, m, _ in self.masked))
