"""The layers of LCS (Nunez et al., "Learning Compressible Subspaces"): one conv/linear weight
parametrization and one norm module that cover the three compression settings.

A `SubspaceWeight` parametrization turns a layer's stored weight into the weight the forward pass
uses: w(α) = (1-α)·w0 + α·w1 on a line (w1 is its own parameter; α=1 is the accurate end), then
TopK (keep the `topk` fraction of largest |w| of this tensor), affine quantization to `bits`, and
width slimming (keep the first max(1, round(C_out·width)) output channels and the producer's
input channels; the first layer keeps its input, the last its outputs). While training (or
`sliced`: the method's `narrow` context) slimmed weights are sliced and the network runs narrow;
otherwise the dropped channels are zeroed instead, the same network in numbers, so that every
metric sees the slimmed one
(`layer_sparsity` counts the zeros, `flops` scales the dense count by them, nothing counted
twice). `SubspaceNorm` always slices (its statistics and running buffers cover only the live
channels, as the reference's AdaptiveBN/IN do) and zero-pads a full-width input.

The method sets the level attributes (`alpha`, `topk`, `bits`, `width`) on every layer before a
forward pass, as the reference sets `alpha` on each module. Layers start as the reference's
builder and network constructors leave them (`init_weight_`, `init_weight1_`, `INITS`)."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .masking import magnitude_mask

NORM_KINDS = ("BN", "IN", "GN")
# the reference's network constructors -> the scale its norms' second end (weight1) starts at
# (cpreresnet.py / vgg.py fill 0.5; resnet.py leaves the TwoParam* norms' 1)
INITS = {"cpreresnet20": 0.5, "vgg19": 0.5, "resnet18": 1.0}


# -- the reference's initialisation ---------------------------------------------------------------
def init_weight_(w):
    """Every conv's `weight` as the reference's Builder.conv leaves it (models/init.py:
    nn.init.kaiming_normal_ with PyTorch's defaults: fan_in, gain sqrt(2)): N(0, sqrt(2/(in·k·k))).
    A Linear classifier has the fan_in of the reference's 1x1-conv classifier (in·1·1)."""
    nn.init.kaiming_normal_(w)


def init_weight1_(w1, init, last):
    """A line's second end `weight1` as the reference's constructors leave it:
    cpreresnet.py re-draws it N(0, sqrt(2/(k·k·out))) in every conv but the classifier (`m != self.fc`),
    vgg.py the same and N(0, 0.01) in the classifier (`m.last_layer`); resnet.py keeps the builder's
    `initialize` (kaiming, as `weight`). k·k·out is the fan_out, of a Linear too (out·1·1)."""
    if init not in INITS:
        raise ValueError(f"init {init!r}: use one of {', '.join(INITS)}")
    if init == "resnet18" or (init == "cpreresnet20" and last):
        init_weight_(w1)
    elif init == "vgg19" and last:
        nn.init.normal_(w1, 0.0, 0.01)
    else:
        nn.init.kaiming_normal_(w1, mode="fan_out", nonlinearity="relu")


# -- the compression operators, as functions (the tests check them against the reference's values) --
def topk_mask(w, topk):
    """Mask keeping the `topk` fraction of |w| of one tensor: the int((1-topk)·n) smallest are
    zeroed (reference utils.apply_topk; ties by position)."""
    return magnitude_mask(w.detach(), int((1.0 - topk) * w.numel()))


def quantize_affine(x, bits, rmin=None, rmax=None):
    """Asymmetric per-tensor quantization to signed `bits` (reference quantize_affine): the range
    [min(rmin,0), max(rmax,0)] on [-2^(b-1), 2^(b-1)-1], rounding half to even; returns the
    dequantized values. rmin/rmax default to x's own."""
    qmin, qmax = -2 ** (bits - 1), 2 ** (bits - 1) - 1
    rmin = min(float(x.min() if rmin is None else rmin), 0.0)
    rmax = max(float(x.max() if rmax is None else rmax), 0.0)
    scale = (rmax - rmin) / (qmax - qmin)
    if scale == 0.0 or not math.isfinite(scale):   # all zeros; or diverged, a NaN the trainer reports
        return x
    zero_point = min(max(round(qmin - rmin / scale), qmin), qmax)
    q = torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)
    return (q - zero_point) * scale


def quantize_ste(x, bits, rmin=None, rmax=None):
    """quantize_affine forward, identity backward (straight-through)."""
    return x + (quantize_affine(x.detach(), bits, rmin, rmax) - x.detach())


def kept_channels(channels, width):
    """Channels of a slimmed layer: max(1, round(channels·width)), Python's half-to-even round."""
    return channels if width is None or width >= 1.0 else max(1, round(channels * width))


def alpha_bit_map(alpha, min_bits, max_bits):
    """α in [0,1] -> bit width (reference curve_utils.alpha_bit_map): min+i for the first i with
    i/D <= α <= (i+1)/D, D = max-min+1 (boundaries go to the lower width)."""
    d = max_bits - min_bits + 1
    for i in range(d):
        if i / d <= alpha <= (i + 1) / d:
            return min_bits + i
    return max_bits


def anneal_topk(target, step, warmup_steps):
    """TopK during the warmup: target + (1-target)·max(1 - step/warmup, 0) (reference
    train_curve.sparse_module_updates); the target itself afterwards."""
    if warmup_steps <= 0:
        return target
    return target + (1.0 - target) * max(1.0 - step / warmup_steps, 0.0)


def lerp(a, b, alpha):
    return a if alpha == 0.0 else b if alpha == 1.0 else (1.0 - alpha) * a + alpha * b


# -- layers -------------------------------------------------------------------------------------
class SubspaceWeight(nn.Module):
    """Parametrization of one conv/linear weight. `role` flags say which compressions apply to
    this layer (the reference keeps the first conv and the classifier dense and float)."""

    def __init__(self, weight, line=False, sparse=False, quantized=False, slim=False, first=False,
                 last=False, topk_gradient="masked", init="cpreresnet20"):
        super().__init__()
        self.sparse, self.quantized, self.slim = sparse, quantized, slim
        self.first, self.last, self.topk_gradient = first, last, topk_gradient
        self.weight1 = None
        if line:
            self.weight1 = nn.Parameter(torch.zeros_like(weight))
            if weight.dim() > 1:       # a conv / linear weight (tests also line up plain vectors)
                with torch.no_grad():
                    init_weight1_(self.weight1, init, last)
        if quantized:   # activation range of this layer's input (EMA of batch min/max)
            self.register_buffer("act_min", torch.zeros((), device=weight.device))
            self.register_buffer("act_max", torch.zeros((), device=weight.device))
        self.alpha, self.topk, self.bits, self.width = 1.0, None, None, None
        self.quantize_inputs = self.restart_range = False
        self.sliced = False     # run narrow outside training too (LCS `narrow`: accuracy, the slim export)
        self.folded_norm = ()   # (the BN this layer's output feeds,) when its scale is folded in

    def fold(self, norm):
        """Quantize this weight with `norm`'s scale γ/sqrt(running_var + eps) folded into each output
        channel, then divide it back out (reference ConvBn2d: conv(x, q(w·s)) / s, then the BN), so
        the quantization grid is that of the deployed, BN-folded weight. A tuple, not a submodule:
        the norm stays where the model has it."""
        self.folded_norm = (norm,)

    def fold_scale(self, w):
        norm, = self.folded_norm
        gamma = norm.affine()[0]
        scale = gamma / torch.sqrt(norm.running_var + norm.eps)
        return scale.view(-1, *([1] * (w.dim() - 1)))

    def forward(self, w):
        if self.weight1 is not None:
            w = lerp(w, self.weight1, self.alpha)
        if self.sparse and self.topk is not None and self.topk < 1.0:
            mask = topk_mask(w, self.topk)
            w = w * mask if self.topk_gradient == "masked" else w + (w * mask - w).detach()
        if self.quantized and self.bits is not None:
            if self.folded_norm:
                s = self.fold_scale(w)
                w = quantize_ste(w * s, self.bits) / s
            else:
                w = quantize_ste(w, self.bits)
        if self.slim and self.width is not None and self.width < 1.0:
            out_c, in_c = self.live_channels(w)
            if self.training or self.sliced:   # the network runs narrow (cheaper); the same numbers as the mask
                return w[:out_c, :in_c]
            mask = torch.zeros(w.shape[:2], dtype=w.dtype, device=w.device)
            mask[:out_c, :in_c] = 1
            w = w * mask.view(*w.shape[:2], *([1] * (w.dim() - 2)))
        return w

    def live_channels(self, w):
        return (w.shape[0] if self.last else kept_channels(w.shape[0], self.width),
                w.shape[1] if self.first else kept_channels(w.shape[1], self.width))

    def quantize_input(self, module, inputs):
        """Forward pre-hook: quantize the layer's input to its bit width with the running range
        (reference QuantizeAffine). While training, nothing happens before `quantize_inputs` is set
        (the iteration delay: the range is not tracked either); the first active batch
        (`restart_range`) sets the range to its own [min(x,0), max(x,0)], later ones move it by
        the EMA 0.9·range + 0.1·batch. Eval always quantizes; an unset range (0, 0) leaves x as is."""
        if not self.quantized or self.bits is None:
            return None
        x = inputs[0]
        if module.training:
            if not self.quantize_inputs:
                return None
            with torch.no_grad():
                lo, hi = x.detach().min().clamp(max=0), x.detach().max().clamp(min=0)
                if self.restart_range:
                    self.act_min.copy_(lo), self.act_max.copy_(hi)
                else:
                    self.act_min.lerp_(lo, 0.1), self.act_max.lerp_(hi, 0.1)
        return (quantize_ste(x, self.bits, self.act_min, self.act_max), *inputs[1:])


class SubspaceNorm(nn.Module):
    """BN, IN (affine, no running statistics) or GN (32 groups, capped at the channels), with an
    optional line of affine parameters, sliced to the live channels at a width < 1."""

    def __init__(self, kind, channels, line=False, groups=32, eps=1e-5, momentum=0.1, weight1_init=0.5):
        super().__init__()
        if kind not in NORM_KINDS:
            raise ValueError(f"norm {kind!r}: use one of {', '.join(NORM_KINDS)}")
        self.kind, self.channels, self.groups, self.eps, self.momentum = kind, channels, min(groups, channels), eps, momentum
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.weight1 = self.bias1 = None
        if line:
            self.weight1 = nn.Parameter(torch.full((channels,), float(weight1_init)))
            self.bias1 = nn.Parameter(torch.zeros(channels))
        if kind == "BN":
            self.register_buffer("running_mean", torch.zeros(channels))
            self.register_buffer("running_var", torch.ones(channels))
        self.alpha, self.width = 1.0, None

    def affine(self):
        if self.weight1 is None:
            return self.weight, self.bias
        return lerp(self.weight, self.weight1, self.alpha), lerp(self.bias, self.bias1, self.alpha)

    def forward(self, x):
        gamma, beta = self.affine()
        c = min(kept_channels(self.channels, self.width), x.shape[1])   # a narrow input is already sliced
        xs = x[:, :c] if c < x.shape[1] else x
        if self.kind == "BN":
            y = F.batch_norm(xs, self.running_mean[:c], self.running_var[:c], gamma[:c], beta[:c],
                             self.training, self.momentum, self.eps)
        elif self.kind == "IN":   # instance norm is group norm with one channel per group: 2-6x faster on the CPU
            y = F.group_norm(xs, c, gamma[:c], beta[:c], self.eps)
        else:
            y = F.group_norm(xs, self.groups, gamma, beta, self.eps)
        return y if c == x.shape[1] else F.pad(y, (0, 0, 0, 0, 0, x.shape[1] - c))

    def extra_repr(self):
        return f"{self.kind}, {self.channels}, line={self.weight1 is not None}"
