"""ADMM sparsity-quantization joint learning (Yang, Gui, Zhu & Liu, CVPR 2020, "Automatic Neural
Network Compression by Sparsity-Quantization Joint Learning"), after the reference train.py of
hyang1990/sparsity_quantization_joint. The projections live in methods/quantize.py.

    min_W f(W)  s.t.  sum_l b_l * nnz_l <= B,  layer l has at most 2^b_l distinct nonzero values

with B = bit_budget * sum_l ceil(nnz_budget * n_l) over every Conv2d/Linear weight. ADMM splits it
into W (the model's own weights: SGD, kept sparse by the pruning projection), V (a quantized
duplicate of W + U) and U (the scaled dual, starting at 0), with the augmented term
(rho/2) sum_l ||W_l - V_l + U_l||^2 and a constant rho. After every optimizer step, in train.py's
order:
  1. prox (`prox: true`): W <- (W + lr rho (V - U)) / (1 + lr rho)  (otherwise the augmented term
     is in the loss, see `loss`);
  2. every `projint` steps and at the epoch's last step: prune W onto sum_l b_l nnz_l <= B with the
     current bits (greedy 0-1 knapsack on w^2 / b_l), which sets the nnz_l the bits will pay for;
  3. every `dualint` steps and at the epoch's last step: V <- quantize(W + U) with bits re-chosen
     in {bwlb..8} by the greedy multiple-choice knapsack (frozen with `fixedbits` or after
     `bits_epoch`), then U <- U + W - V.
Steps 2 and 3 also run after the very first step (`project_first_step`, as train.py does whenever
it starts from a pretrained model, which every README command does).

`finalize` leaves W pruned under the budget and quantized with its final bits (fresh codebooks on
W, as the reference's evaluation copy): the model evaluated, whose accuracy is `top1`. Each epoch's
test accuracy is measured on such a quantized copy too (`eval_model`, train.py's per-epoch
evaluation), so `best_top1` is the best quantized epoch (the reference's model_best, a test-set
selection). A following stage (`init: <this row>`) starts, as train.py's chain does from
model_latest.pt, from W pruned but NOT quantized (`handoff: unquantized`; `quantized` hands over
the finalized model instead), with the final bit widths handed over as `weight_bits` (the model's
`weight_bits` buffer the reference's finetune.py reads).

Modes: joint (default), prune (`--prune`: 32-bit weights, only the pruning projection, no V/U) and
quantize (`--quant`: every weight stored, codebooks without a reserved zero, no pruning).

Reference behaviours kept: weight decay on every parameter named `*weight` (norm weights too) and
none on biases (train.py's `apply_weight_decay`); the first pruning uses floor(bit_budget) bits per
weight (`model_size_lb`); knowledge distillation adds T * mean CE(softmax(t/T), log_softmax(s/T))
(weight T, not T^2). The teacher is the model as this stage starts (its `init`), where the
reference always uses torchvision's pretrained AlexNet."""
import contextlib
import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core.metrics import prunable_layers
from core.registry import check_choice

from .base import Budget, Method, register_method
from .quantize import (allocate_bits, bits_used, compression_rate, eval_bits, layer_budget, prune_projection,
                       quantize_with_bits, MAX_BITS)

MODES = ("joint", "prune", "quantize")
HANDOFFS = ("unquantized", "quantized")


@dataclass
class ADMMArgs:
    mode: str = "joint"              # joint | prune (train.py --prune) | quantize (--quant)
    rho: float = 0.05                # --rho, the ADMM penalty (constant)
    prox: bool = False               # --prox: closed-form proximal W-update instead of the loss term
    projint: int = 0                 # --projint: steps between pruning projections; 0 = once per epoch
    dualint: int = 0                 # --dualint: steps between V/U updates; 0 = once per epoch
    bwlb: int = 1                    # --bwlb: smallest bit width a layer may get
    bits_epoch: int = -1             # --bits_epoch: bits frozen after this (0-based) epoch; <= 0 never
    fixedbits: bool = False          # --fixedbits: bits stay floor(bit_budget)
    kdtemp: float = 0.0              # --kdtemp T: distillation from the starting model; 0 = off
    project_first_step: bool = True  # project after the first step too (train.py with --pretrain)
    off_by_one: bool = False         # keep one weight fewer than fits, as quantized_sparsify does
    handoff: str = "unquantized"     # what a following stage starts from: unquantized (train.py's
                                     # model_latest.pt: W pruned, not quantized) | quantized (finalized)

    def __post_init__(self):
        check_choice("method_args.mode", self.mode, MODES)
        check_choice("method_args.handoff", self.handoff, HANDOFFS)
        if not 1 <= self.bwlb <= MAX_BITS:
            raise ValueError(f"method_args.bwlb={self.bwlb!r} is outside 1..{MAX_BITS}")
        for key in ("rho", "kdtemp", "projint", "dualint"):
            if getattr(self, key) < 0:
                raise ValueError(f"method_args.{key}={getattr(self, key)!r} should be >= 0")
        if self.mode == "joint" and self.projint and self.dualint and self.dualint % self.projint:
            raise ValueError(f"method_args.dualint {self.dualint} must be a multiple of projint {self.projint} "
                             f"(or 0, once per epoch)")


@register_method
class ADMM(Method):
    name = "admm"
    Args = ADMMArgs
    budget_keys = {
        "nnz_budget": Budget(0.0, 1.000001, "fraction of conv/linear weights left nonzero, in (0, 1], e.g. "
                             "0.0054; with bit_budget it makes the one bit budget (not used by mode quantize)",
                             required=False),
        "bit_budget": Budget(1.0, 9.0, "average bits per nonzero weight, e.g. 3 or 6; bit widths are chosen "
                             "in {bwlb..8} (not used by mode prune)", required=False),
    }

    # -- set-up ---------------------------------------------------------------------------------
    # the budget keys each mode uses, and their ranges (low, high]
    MODE_BUDGETS = {"joint": ("nnz_budget", "bit_budget"), "prune": ("nnz_budget",), "quantize": ("bit_budget",)}
    BUDGET_RANGES = {"nnz_budget": (0.0, 1.0), "bit_budget": (0.0, MAX_BITS)}

    @classmethod
    def check(cls, args, budget, train=None):
        """The budget keys the mode uses, each in range, and a bit budget some bit width fits."""
        needed = cls.MODE_BUDGETS[args.mode]
        for key in needed:
            if key not in budget:
                raise ValueError(f"admm mode {args.mode} needs budget.{key} ({cls.budget_keys[key].meaning})")
            low, high = cls.BUDGET_RANGES[key]
            if not low < budget[key] <= high:
                raise ValueError(f"admm: budget.{key}={budget[key]!r} is outside ({low:g}, {high:g}]")
        for key in budget:
            if key not in needed:
                raise ValueError(f"admm mode {args.mode} does not use budget.{key}; remove it")
        if "bit_budget" in needed and math.floor(budget["bit_budget"]) < args.bwlb:
            raise ValueError(f"admm: budget.bit_budget {budget['bit_budget']:g} is below method_args.bwlb {args.bwlb}, "
                             f"so no bit width fits; raise budget.bit_budget to at least {args.bwlb} "
                             f"or lower method_args.bwlb")

    def build(self, model):
        self.check(self.args, self.budget)
        mode = self.args.mode
        self.layers = prunable_layers(model)
        self.numels = [m.weight.numel() for _, m in self.layers]
        nnz_budget = 1.0 if mode == "quantize" else self.budget["nnz_budget"]
        bit_budget = 32 if mode == "prune" else self.budget["bit_budget"]
        self.nnz, self.total_bits = layer_budget(self.numels, nnz_budget, bit_budget)
        self.bits = [math.floor(bit_budget)] * len(self.numels)
        self.first_bits = bits_used(self.bits, self.nnz)   # train.py's model_size_lb (< B for fractional bits)
        self.projected = False
        self.residual = [0.0] * len(self.numels)
        weights = self._weights()
        self.V = [w.detach().clone() for w in weights] if self.uses_admm else None
        self.U = [torch.zeros_like(w.detach()) for w in weights] if self.uses_admm else None
        self.teacher = self._make_teacher(model) if self.args.kdtemp > 0 else None
        self._checked = False
        return model

    @property
    def uses_admm(self):
        """Whether V and U exist: every mode but pruning only."""
        return self.args.mode != "prune"

    def _weights(self):
        return [m.weight for _, m in self.layers]

    def param_groups(self, model, weight_decay, norm_decay=True):
        """train.py's weight decay: on every parameter whose name ends in `weight` (conv, linear and
        norm weights), never on biases, whatever `norm_decay` says."""
        decay = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith("weight")]
        rest = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith("weight")]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    # -- the loss: augmented Lagrangian and distillation -------------------------------------------
    def loss(self, model, outputs, base_loss):
        loss = base_loss
        if self.teacher is not None:
            loss = loss + self._distillation(outputs)
        if self.uses_admm and not self.args.prox:
            loss = loss + 0.5 * self.args.rho * sum(((w - v + u) ** 2).sum()
                                                    for w, v, u in zip(self._weights(), self.V, self.U))
        return loss

    def _make_teacher(self, model):
        """A frozen copy of the starting model, and a hook that remembers each batch's input so the
        loss hook (which sees only the outputs) can run the teacher on it."""
        teacher = copy.deepcopy(model).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        model.register_forward_pre_hook(self._remember_input)
        return teacher

    def _remember_input(self, module, inputs):
        self._input = inputs[0]

    def _distillation(self, outputs):
        T = self.args.kdtemp
        x = self._input
        if next(self.teacher.parameters()).device != x.device:
            self.teacher.to(x.device)
        with torch.no_grad():
            target = F.softmax(self.teacher(x).float() / T, dim=1)
        return T * (-target * F.log_softmax(outputs.float() / T, dim=1)).sum(1).mean()

    # -- after every optimizer step ---------------------------------------------------------------
    @torch.no_grad()
    def on_step(self, model, progress):
        spe = progress.steps_per_epoch
        self._check_intervals(spe)
        weights = self._weights()
        if self.uses_admm and self.args.prox:
            self.prox_step(weights, self._lr(progress))
        in_epoch = progress.step - progress.epoch * spe          # train.py's batch_idx + 1
        first = self.args.project_first_step and progress.step == 1
        if self.args.mode != "quantize" and (first or self._due(self.args.projint, in_epoch, spe)):
            self.prune(weights)
        if self.uses_admm and (first or self._due(self.args.dualint, in_epoch, spe)):
            self.update_duplicate_and_dual(weights, progress.epoch)

    def _check_intervals(self, spe):
        if self._checked:
            return
        proj, dual = self.args.projint or spe, self.args.dualint or spe
        if self.args.mode == "joint" and dual != spe and dual % proj:
            raise ValueError(f"admm: method_args.dualint {dual} must be a multiple of projint {proj} "
                             f"(or 0, once per epoch)")
        self._checked = True

    @staticmethod
    def _due(interval, in_epoch, spe):
        """Every `interval` steps of the epoch and at its last step; interval <= 0: once per epoch."""
        interval = interval if interval > 0 else spe
        return in_epoch % interval == 0 or in_epoch == spe

    @staticmethod
    def _lr(progress):
        """The lr of the step just taken, which the trainer passes (Progress.lr)."""
        if progress.lr is None:
            raise RuntimeError("admm prox needs the optimizer's lr; the trainer must pass it as Progress.lr")
        return progress.lr

    def prox_step(self, weights, lr):
        """W <- argmin_W' ||W' - W||^2 / (2 lr) + (rho/2) ||W' - V + U||^2."""
        beta = lr * self.args.rho
        for w, v, u in zip(weights, self.V, self.U):
            w.add_(v - u, alpha=beta).div_(1.0 + beta)

    def prune(self, weights):
        """Pruning projection of W in place; sets the nonzero counts the next bit allocation pays for.
        The first one uses floor(bit_budget) bits per weight as budget, as train.py does."""
        budget = self.total_bits if self.projected else self.first_bits
        pruned, self.nnz = prune_projection(weights, self.bits, budget, self.args.off_by_one)
        for w, p in zip(weights, pruned):
            w.copy_(p)
        self.projected = True

    def update_duplicate_and_dual(self, weights, epoch):
        """V <- projection of W + U (bits re-allocated unless frozen); U <- U + W - V."""
        x = [w.detach() + u for w, u in zip(weights, self.U)]
        anchored = self.args.mode == "joint"
        frozen = self.args.fixedbits or (self.args.bits_epoch > 0 and epoch > self.args.bits_epoch)
        if frozen:
            quantized = quantize_with_bits(x, self.bits, anchored)
        else:
            quantized, self.bits = allocate_bits(x, self.nnz, self.total_bits, self.args.bwlb, anchored)
        for w, v, u, q, i in zip(weights, self.V, self.U, quantized, range(len(weights))):
            v.copy_(q)
            diff = w - v
            u.add_(diff)
            self.residual[i] = float(diff.pow(2).sum())

    # -- the compressed model ---------------------------------------------------------------------
    @torch.no_grad()
    def finalize(self, model):
        """W pruned under the budget with the final bits (a no-op when the last step's projection
        already fits it, as it does after training) and quantized with fresh codebooks for those
        bits; quantizing only ever turns nonzeros into zeros, so the budget still holds."""
        self._prune_to_final_bits()
        self._quantize_in_place()
        if self.args.mode != "quantize":
            self.nnz = [int((w != 0).sum()) for w in self._weights()]

    def _prune_to_final_bits(self):
        if self.args.mode != "quantize":
            weights = self._weights()
            pruned, self.nnz = prune_projection(weights, self.bits, self.total_bits)
            for w, p in zip(weights, pruned):
                w.copy_(p)

    def _quantize_in_place(self):
        """Each layer onto a fresh codebook for its bits (util.quantize_with_bits); none in prune mode."""
        if self.uses_admm:
            weights = self._weights()
            for w, q in zip(weights, quantize_with_bits(weights, self.bits, self.args.mode == "joint")):
                w.copy_(q)

    @torch.no_grad()
    def handoff(self, model):
        """What a following stage starts from: train.py's model_latest.pt, W pruned under the final
        bits but not quantized (`handoff: quantized`: the finalized model), and the bit widths, which
        finetune.py reads from the model's `weight_bits` buffer (a next ADMM stage ignores them:
        train.py starts every layer at floor(bit_budget))."""
        if self.args.handoff == "quantized":
            self.finalize(model)
        else:
            self._prune_to_final_bits()
        return {"weight_bits": list(self.bits)} if self.uses_admm else {}

    @contextlib.contextmanager
    def eval_model(self, model):
        """The model with W quantized for the epoch's test, then W restored: train.py evaluates a
        copy quantized with the current bits on fresh codebooks (quantize_with_bits on W, not V)."""
        if not self.uses_admm:
            yield model
            return
        with torch.no_grad():
            saved = [w.detach().clone() for w in self._weights()]
            self._quantize_in_place()
        try:
            yield model
        finally:
            with torch.no_grad():
                for w, s in zip(self._weights(), saved):
                    w.copy_(s)

    def stored(self):
        """Weights that cost bits per layer: the nonzeros, or every weight in quantization only."""
        if self.args.mode == "quantize":
            return list(self.numels)
        return [int((w != 0).sum()) for w in self._weights()]

    def storage(self, model, layers):
        """The bits each layer was given, over its nonzeros (every weight in quantize-only mode);
        32-bit floats in prune-only mode."""
        return list(zip(self.bits if self.uses_admm else [32] * len(self.numels), self.stored()))

    def report(self, model):
        """Per layer: weights, nonzeros, bits (chosen) and eval_bits (log2 of the distinct nonzero
        values, as the reference logs); the paper's compression rate 32 sum n / sum b nnz with the
        chosen bits, the reference's eval-time rate with eval_bits, and the target 32 sum n / B."""
        quant_only = self.args.mode == "quantize"
        stored = self.stored()
        weights = self._weights()
        nonzero = [int((w != 0).sum()) for w in weights]
        ebits = [eval_bits(w, include_zero=quant_only) if self.uses_admm else 32.0 for w in weights]
        layers = [{"layer": name, "params": n, "nonzero": k, "bits": b, "eval_bits": e, "residual": r}
                  for (name, _), n, k, b, e, r in zip(self.layers, self.numels, nonzero, self.bits, ebits,
                                                      self.residual)]
        return {"admm_mode": self.args.mode, "bit_budget_total": self.total_bits,
                "bits_used": bits_used(self.bits, stored),
                "compression_rate": compression_rate(self.numels, self.bits, stored),
                "compression_rate_eval": compression_rate(self.numels, ebits, nonzero),
                "target_compression_rate": 32.0 * sum(self.numels) / self.total_bits,
                "layers": layers}

    # -- resume -----------------------------------------------------------------------------------
    def state_dict(self):
        state = {"bits": list(self.bits), "nnz": list(self.nnz), "projected": self.projected,
                 "residual": list(self.residual)}
        if self.uses_admm:
            state.update(V=[v.clone() for v in self.V], U=[u.clone() for u in self.U])
        return state

    def load_state_dict(self, state):
        self.bits, self.nnz = list(state["bits"]), list(state["nnz"])
        self.projected, self.residual = state["projected"], list(state["residual"])
        if self.uses_admm:   # on the weights' device (checkpoints load onto the CPU)
            device = self.layers[0][1].weight.device
            self.V = [v.to(device, copy=True) for v in state["V"]]
            self.U = [u.to(device, copy=True) for u in state["U"]]
