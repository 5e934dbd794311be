"""DeepHoyer's sparsity-inducing regularizers (Yang, Wen & Li, ICLR 2020), added to the task loss
as `decay * R(model)` while training from the dense model; pruning and masked finetuning follow as
their own rows (methods/finetune.py).

Element-wise (the seed's element.py `--reg 1..4`), summed over every parameter tensor p with
sum|p| > 0, biases included as in the reference:
    l1            sum|p|
    hoyer         sum|p| / ||p||_2
    hoyer_square  (sum|p|)^2 / ||p||_2^2            (HS; scale invariant, like hoyer)
    tl1           sum 2|p| / (1 + |p|)               (transformed L1, a = 1)
Structural (structure.py `--reg 1..2`), over conv and linear weights only, with groups as the paper
defines them: conv filters W[f] and channels W[:, c]; linear rows W[i, :] and columns W[:, j]:
    group_lasso   sum of the group norms over both group sets
    group_hs      ((sum of channel/column norms)^2 + (sum of filter/row norms)^2) / ||W||_F^2
`conv_groups: fiber` reproduces the reference's MNIST-CNN Group Lasso and ImageNet code, which group
conv weights along dims 0 and 1 only (fibers W[:, c, i, j] and W[f, :, i, j]) instead of whole
channels and filters."""
from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from core.metrics import prunable_layers
from core.registry import check_choice

from .base import Method, register_method


class _AbsAndSquareSums(torch.autograd.Function):
    """(sum|p|, sum p^2) of each tensor, as two vectors, and back sign(p) g1 + 2 p g2 per tensor in
    one expression: autograd's abs / pow / sum chain made DeepHoyer's regularizer cost twice
    LeNet-300-100's own step, and one node per tensor, with the per-tensor arithmetic after it,
    a further 40 % of what is left (6 tensors: 0.82 -> 0.52 ms a forward and backward)."""

    @staticmethod
    def forward(ctx, *params):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*params)
        # abs().sum(), as the reference writes it: vector_norm(p, 1) takes 4x as long on a CPU
        return (torch.stack([p.abs().sum() for p in params]),
                torch.stack([torch.linalg.vector_norm(p, 2) for p in params]).square_())

    @staticmethod
    @once_differentiable
    def backward(ctx, g1, g2):
        params = ctx.saved_tensors
        g1 = g1.unbind() if g1 is not None else [None] * len(params)
        g2 = (2 * g2).unbind() if g2 is not None else [None] * len(params)
        grads = []
        for p, a, b in zip(params, g1, g2):
            grad = torch.sign(p).mul_(a) if a is not None else torch.zeros_like(p)
            grads.append(grad if b is None else grad.addcmul_(p, b))
        return tuple(grads)


def _sums(params):
    """(sum|p|, sum p^2) per tensor, the latter kept above 0 so that an all-zero tensor adds 0 and
    gets a zero gradient (the reference skips it) without asking the device whether it is zero."""
    if not params:                 # nothing to regularize adds 0
        return torch.zeros(0), torch.ones(0)
    s1, s2 = _AbsAndSquareSums.apply(*params)
    return s1, s2.clamp_min(torch.finfo(s2.dtype).tiny)


# each takes one tensor or several and returns the sum of its value over them
def l1(*params):
    return _sums(params)[0].sum()


def hoyer(*params):
    s1, s2 = _sums(params)
    return (s1 / s2.sqrt()).sum()


def hoyer_square(*params):
    s1, s2 = _sums(params)
    return (s1.square() / s2).sum()


class _TransformedL1(torch.autograd.Function):
    """sum 2|p| / (1 + |p|) over the tensors, and back 2 sign(p) / (1 + |p|)^2 g, in a few passes."""

    @staticmethod
    def forward(ctx, *params):
        ctx.save_for_backward(*params)
        total = 0
        for p in params:
            a = p.abs()
            total = total + a.div_(a + 1).sum()
        return total * 2

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        return tuple(torch.sign(p).div_(p.abs().add_(1).square_()).mul_(2 * g) for p in ctx.saved_tensors)


def tl1(*params):
    return _TransformedL1.apply(*params)


def group_norms(w, conv_groups="channel_filter"):
    """(column-or-channel norms, row-or-filter norms) of a linear or conv weight."""
    sq = w.pow(2)
    if w.dim() == 2 or conv_groups == "fiber":
        return sq.sum(0).sqrt(), sq.sum(1).sqrt()
    return sq.sum((0, 2, 3)).sqrt(), sq.sum((1, 2, 3)).sqrt()


def group_lasso(w, conv_groups="channel_filter"):
    cols, rows = group_norms(w, conv_groups)
    return cols.sum() + rows.sum()


def group_hs(w, conv_groups="channel_filter"):
    cols, rows = group_norms(w, conv_groups)
    return (cols.sum() ** 2 + rows.sum() ** 2) / w.pow(2).sum()


ELEMENT = {"l1": l1, "hoyer": hoyer, "hoyer_square": hoyer_square, "tl1": tl1}
STRUCTURAL = {"group_lasso": group_lasso, "group_hs": group_hs}


@dataclass
class RegularizerArgs:
    decay: float = 1e-3                 # the regularizer's strength (the seed's --decay)
    conv_groups: str = "channel_filter"  # structural only: channel_filter (paper) | fiber (reference quirk)

    def __post_init__(self):
        check_choice("method_args.conv_groups", self.conv_groups, CONV_GROUPS)
        if self.decay < 0:
            raise ValueError(f"method_args.decay={self.decay!r} should be >= 0 (the regularizer's strength)")


CONV_GROUPS = ("channel_filter", "fiber")


class Regularized(Method):
    """Training with `decay * R(model)` added to the loss; nothing else changes."""
    Args = RegularizerArgs
    structural = False

    @classmethod
    def check(cls, args, budget, train):
        if not cls.structural and args.conv_groups != RegularizerArgs.conv_groups:
            raise ValueError(f"method_args.conv_groups applies to {' and '.join(STRUCTURAL)} only, not {cls.name}; "
                             f"remove it")

    def regularizer(self, model):
        if self.structural:
            fn = STRUCTURAL[self.name]
            return sum(fn(m.weight, self.args.conv_groups) for _, m in prunable_layers(model)
                       if m.weight.abs().sum() > 0)
        fn = ELEMENT[self.name]   # an all-zero tensor adds 0 (the reference skips it)
        return fn(*[p for p in model.parameters() if p.requires_grad])

    def loss(self, model, outputs, base_loss):
        return base_loss + self.args.decay * self.regularizer(model)

    def report(self, model):
        with torch.no_grad():
            return {"regularizer": self.name, "regularizer_value": float(self.regularizer(model))}


for _name, _structural in [*((n, False) for n in ELEMENT), *((n, True) for n in STRUCTURAL)]:
    register_method(type(f"Regularized_{_name}", (Regularized,), {"name": _name, "structural": _structural}))
