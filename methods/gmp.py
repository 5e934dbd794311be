"""Gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune").

Sparsity follows the cubic schedule s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3 for
t = t0, t0 + dt, ..., t0 + n dt, reaching s_f exactly at the end step; masks keep each layer's
largest-magnitude weights (uniform sparsity per layer, or a per-layer budget).

`schedule: str_reference` reproduces STR's GMP baseline instead (RAIVNLab/STR main.py): the rate
is set once per epoch with total = final - init + 1, so it never quite reaches the target
(0.9 -> 0.8999958), pruned counts are floored, and masks are recomputed from the current
magnitudes at every step, so pruned weights can come back."""
from dataclasses import dataclass

import torch

from core.registry import check_choice

from .base import Method, register_method
from .masking import add_masks, bake_masks, layer_targets, magnitude_mask, raw_weight, sparsity_budget_keys


def zhu_gupta_sparsity(step, final, initial=0.0, begin=0, end=1, frequency=1):
    """Target sparsity after `step` optimizer steps; updates happen every `frequency` steps."""
    if step < begin:
        return initial
    if step >= end:
        return final
    t = begin + ((step - begin) // frequency) * frequency
    return final + (initial - final) * (1 - (t - begin) / (end - begin)) ** 3


def str_reference_rate(epoch, prune_rate, init_epoch, final_epoch):
    """STR's per-epoch GMP rate, quirks included (0-indexed epochs)."""
    if epoch < init_epoch:
        return 0.0
    epoch = min(epoch, final_epoch)
    total = final_epoch - init_epoch + 1
    return prune_rate - prune_rate * (1 - (epoch - init_epoch) / total) ** 3


@dataclass
class GMPArgs:
    schedule: str = "zhu_gupta"      # zhu_gupta | str_reference
    start_epoch: float = 0.0         # t0, in epochs (fractions allowed)
    end_epoch: float = -1.0          # t0 + n dt; -1: 3/4 of training, leaving time to recover
    prune_every: int = 0             # dt in optimizer steps; 0: once per epoch
    initial_sparsity: float = 0.0    # s_i

    def __post_init__(self):
        check_choice("method_args.schedule", self.schedule, SCHEDULES)
        if self.start_epoch < 0:
            raise ValueError(f"method_args.start_epoch={self.start_epoch!r} should be >= 0")
        if self.end_epoch != -1 and self.end_epoch < self.start_epoch:
            raise ValueError(f"method_args.end_epoch={self.end_epoch!r} is before start_epoch={self.start_epoch!r}; "
                             f"use an end_epoch >= start_epoch, or -1 (3/4 of training)")
        if self.prune_every < 0:
            raise ValueError(f"method_args.prune_every={self.prune_every!r} should be >= 0 (0: once per epoch)")
        if not 0 <= self.initial_sparsity < 1:
            raise ValueError(f"method_args.initial_sparsity={self.initial_sparsity!r} should be in [0, 1)")


SCHEDULES = ("zhu_gupta", "str_reference")


@register_method
class GMP(Method):
    name = "gmp"
    Args = GMPArgs
    budget_keys = sparsity_budget_keys()

    @classmethod
    def check(cls, args, budget, train):
        """The pruning window must start, and end, within the run: a window past the last epoch
        would leave the model dense, or short of its target."""
        epochs = train.epochs
        end = args.end_epoch if args.end_epoch >= 0 else 0.75 * epochs
        if args.start_epoch >= epochs:
            raise ValueError(f"method_args.start_epoch={args.start_epoch:g} is not within the run's "
                             f"train.epochs={epochs}, so nothing would be pruned; start before epoch {epochs}")
        # str_reference sets the rate at the start of each (0-based) epoch: the last is epochs - 1
        reached = end < epochs if args.schedule == "str_reference" else end <= epochs
        if not reached:
            raise ValueError(f"method_args.end_epoch={end:g} is not within the run's train.epochs={epochs}, so the "
                             f"target sparsity would not be reached; end by epoch "
                             f"{epochs - 1 if args.schedule == 'str_reference' else epochs}")

    def build(self, model):
        self.masks = add_masks(model)
        self.layers = dict((n, m) for n, m in model.named_modules() if n in self.masks)
        self.current, self.targets = 0.0, None
        return model

    def target(self, model, name):
        if self.targets is None:   # resolved when first needed: evaluation never needs it
            self.targets = layer_targets(self.budget, model, self.budget_file)
        return self.targets[name]

    def _window(self, progress):
        spe = progress.steps_per_epoch
        end = self.args.end_epoch if self.args.end_epoch >= 0 else 0.75 * progress.epochs
        every = self.args.prune_every or spe
        return round(self.args.start_epoch * spe), max(round(end * spe), 1), every

    def fraction(self, progress):
        """Fraction of the final sparsity reached now (the same for every layer)."""
        if self.args.schedule == "str_reference":
            end = self.args.end_epoch if self.args.end_epoch >= 0 else 0.75 * progress.epochs
            return str_reference_rate(progress.epoch, 1.0, int(self.args.start_epoch), int(end))
        begin, end, every = self._window(progress)
        # the first update lands at step `begin`; steps are counted after the optimizer step
        return zhu_gupta_sparsity(progress.step, 1.0, self.args.initial_sparsity, begin, end, every)

    def on_epoch_start(self, model, progress):
        self.on_step(model, progress)

    @torch.no_grad()
    def on_step(self, model, progress):
        frac = self.fraction(progress)
        reference = self.args.schedule == "str_reference"
        if frac == self.current and not reference:
            return
        self.current = frac
        for name, mask in self.masks.items():
            w = raw_weight(self.layers[name])
            rate = frac * self.target(model, name)
            n_pruned = int(rate * w.numel()) if reference else round(rate * w.numel())
            scores = w if reference else w * mask.mask   # Zhu & Gupta: pruned weights stay pruned
            mask.mask.copy_(magnitude_mask(scores, n_pruned))

    def finalize(self, model):
        bake_masks(model)

    def report(self, model):
        return {"gmp_fraction_of_target": self.current}

    def state_dict(self):
        return {"current": self.current}

    def load_state_dict(self, state):
        self.current = state["current"]
