"""LCS, learning compressible subspaces (Nunez et al., WACV 2023; apple/learning-compressible-subspaces),
and the baselines its README names, in its three settings:

  setting        methods                                     level (evaluation grid)
  structured     lcs_l, lcs_p, us, ns, lec (methods/lec.py)   width factor (LEC: channel keep fraction)
  unstructured   lcs_l, lcs_p, target_topk                    TopK = fraction of weights kept per layer
  quantized      lcs_l, lcs_p, target_bit_width               bit width of weights and conv inputs

LCS+L (`lcs_l`) trains a line w(α) = (1-α)·w0 + α·w1 whose α=1 end is the accurate one (dense,
full width, most bits) and maps α to a compression level; LCS+P (`lcs_p`) trains one set of weights
under random levels. Every training batch first asks `forward_levels` for its passes (one sampled
level; the sandwich rule and NS make several, their losses summed). At evaluation `at_level` sets
the model to one level of the grid; one row of results per level. Layers: methods/lcs_layers.py.
The option names are the README's flags (`--width_factor_limits` -> method_args.width_factor_limits);
the reference's per-setting defaults apply where an option is left out."""
import contextlib
import math
from dataclasses import dataclass, fields
from typing import ClassVar

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from core.metrics import prunable_layers

from .base import Method, register_method
from .channel_graph import norm_neighbours
from .lcs_layers import INITS, NORM_KINDS, SubspaceNorm, SubspaceWeight, alpha_bit_map, anneal_topk, init_weight_

SETTINGS = ("structured", "unstructured", "quantized")
LEVEL_KIND = {"structured": "width", "unstructured": "topk", "quantized": "bits"}
DEFAULT_GRID = {   # the reference's evaluation grids
    "structured": [1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25],
    "unstructured": [0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0],
    "target_topk": [0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0],
    "lec": [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0],
}
GRID_KEY = {"structured": "eval_width_factors", "unstructured": "eval_topk_grid", "quantized": "eval_bit_widths"}
# which methods (or method:setting) each option of the README applies to
OPTION_USERS = {
    "width_factors_list": {"ns"},
    "width_factor_limits": {"us", "lcs_l:structured", "lcs_p:structured"},
    "width_factor_samples": {"us", "lcs_l:structured", "lcs_p:structured"},
    "eval_width_factors": {"us", "ns", "lec", "lcs_l:structured", "lcs_p:structured"},
    "topk": {"target_topk"},
    "eval_topk_grid": {"target_topk", "lcs_l:unstructured", "lcs_p:unstructured"},
    "topk_lower_bound": {"lcs_l:unstructured", "lcs_p:unstructured"},
    "topk_upper_bound": {"lcs_l:unstructured", "lcs_p:unstructured"},
    "bit_width": {"target_bit_width"},
    "eval_bit_widths": {"target_bit_width", "lcs_l:quantized", "lcs_p:quantized"},
    "bit_width_limits": {"lcs_l:quantized", "lcs_p:quantized"},
    "eval_alpha": {"lcs_l:quantized"},
    "lec_sparsity": {"lec"},
    "fold_bn": {"target_bit_width", "lcs_l:quantized", "lcs_p:quantized"},
}


@dataclass
class LCSArgs:
    """method_args of every method in this module (None: the reference's default for the method)."""
    setting: str | None = None              # structured | unstructured | quantized (lcs_l, lcs_p)
    norm: str | None = None                 # IN | BN | GN; default IN (structured LCS), GN (other LCS), BN (baselines)
    warmup_budget: float = 80.0             # % of training iterations: TopK annealing, activation-quantization delay
    # structured
    width_factors_list: list | None = None  # ns: the widths trained in this order, losses summed (default [1, .75, .5, .25])
    width_factor_limits: list | None = None  # us / LCS: [low, high] (default [0.25, 1.0])
    width_factor_samples: int = 4           # sandwich rule: both limits + (samples - 2) uniform widths per batch
    eval_width_factors: list | None = None  # evaluation widths (LEC: channel keep fractions)
    # unstructured
    topk: float | None = None               # target_topk: the fraction of weights kept (default 0.9)
    eval_topk_grid: list | None = None
    topk_lower_bound: float | None = None   # TopK range trained (default 0.025..1); needs eval_topk_grid
    topk_upper_bound: float | None = None
    # quantized
    bit_width: int | None = None            # target_bit_width (default 6)
    eval_bit_widths: list | None = None
    bit_width_limits: list | None = None    # [min, max] bits trained (default [3, 8])
    # subspace training (reference constants)
    beta: float = 1.0                       # endpoint regularizer β·cos²(w0, w1) for lines
    endpoint_probability: float = 0.5       # unstructured lines: P(α is an end of [low, high])
    discrete_alpha_map: bool = True         # quantized lines: α ~ {k/D} (else U[0,1])
    init: str = "cpreresnet20"              # whose constructor's initialisation the layers take: cpreresnet20 |
                                            # vgg19 | resnet18 (line ends' weight1 and norm weight1 differ)
    topk_gradient: str = "masked"           # masked (reference: pruned weights get no gradient) | straight_through
    eval_alpha: str = "exact"               # quantized lines: α of b bits = k/D (exact) or floor(1000 k/D)/1000 (reference)
    lec_sparsity: float = 1.0e-5            # LEC: L1 strength on norm scales (network slimming's s)
    fold_bn: bool = True                    # quantized with BN: quantize each conv weight with the scale of
                                            # the BN it feeds folded in (reference ConvBn2d); false: unfolded

    method: ClassVar[str] = ""

    def __post_init__(self):
        check_args(self.method, self)
        for key, value in reference_defaults(self.method, self).items():
            setattr(self, key, value)


def _fail(key, message):
    raise ValueError(f"method_args.{key}: {message}")


def _setting(method, a):
    return FIXED_SETTING.get(method) or a.setting


def _norm(method, a):
    structured = _setting(method, a) == "structured"
    return (a.norm or ("BN" if method in ("us", "ns", "lec", "target_topk", "target_bit_width")
                       else "IN" if structured else "GN")).upper()


def _topk_bounds(a):
    return (a.topk_lower_bound if a.topk_lower_bound is not None else 0.025,
            a.topk_upper_bound if a.topk_upper_bound is not None else 1.0)


def reference_defaults(method, a):
    """The reference's value of each option left out (None), and the setting a baseline is fixed to."""
    lo, hi = _topk_bounds(a)
    return {"setting": _setting(method, a), "norm": _norm(method, a),
            "width_factor_limits": [float(v) for v in a.width_factor_limits or [0.25, 1.0]],
            "width_factors_list": a.width_factors_list or [1.0, 0.75, 0.5, 0.25],   # the reference's ns.yaml
            "topk_lower_bound": lo, "topk_upper_bound": hi, "topk": 0.9 if a.topk is None else a.topk,
            "bit_width_limits": [int(v) for v in a.bit_width_limits or [3, 8]],
            "bit_width": 6 if a.bit_width is None else a.bit_width}


def check_args(method, a):
    """Reject option combinations the reference rejects or ignores (one line each); changes nothing."""
    fixed, setting = FIXED_SETTING.get(method), _setting(method, a)
    if fixed and a.setting not in (None, fixed):
        _fail("setting", f"method {method!r} is {fixed} only; remove it")
    if setting not in SETTINGS:
        _fail("setting", f"{a.setting!r}: method {method!r} needs one of {', '.join(SETTINGS)}")
    defaults = {f.name: f.default for f in fields(LCSArgs)}
    for key, users in OPTION_USERS.items():
        if getattr(a, key) != defaults[key] and method not in users and f"{method}:{setting}" not in users:
            _fail(key, f"does not apply to method {method!r} ({setting}); it is for "
                       f"{', '.join(sorted(users))}; remove it")
    norm = _norm(method, a)
    if norm not in NORM_KINDS:
        _fail("norm", f"{a.norm!r}: use IN, BN or GN")
    if setting == "structured" and norm == "GN":
        _fail("norm", "GN is not supported with structured sparsity (slimmed channel counts do not divide into groups); use IN or BN")
    if method in ("us", "ns", "lec") and norm != "BN":
        _fail("norm", f"method {method!r} is defined with one shared BatchNorm; use BN (or lcs_p for US with {norm})")
    if not 0 <= a.warmup_budget <= 100:
        _fail("warmup_budget", f"{a.warmup_budget} is a percentage of training iterations; use 0..100")
    _check_pair(a, "width_factor_limits", 0.0, 1.0, float)
    for key in ("width_factors_list", "eval_width_factors"):
        for w in getattr(a, key) or []:
            if not 0 < w <= 1:
                _fail(key, f"width {w} is outside (0, 1]")
    if a.width_factor_samples < 2:
        _fail("width_factor_samples", "the sandwich rule needs at least 2 (both limits)")
    # unstructured: the README's rule, bounds only with a grid
    for key in ("topk_lower_bound", "topk_upper_bound"):
        if getattr(a, key) is not None and a.eval_topk_grid is None:
            _fail(key, "needs method_args.eval_topk_grid too (the README's rule: a grid that covers the new range)")
    lo, hi = _topk_bounds(a)
    if not 0 < lo < hi <= 1:
        _fail("topk_lower_bound", f"TopK bounds [{lo}, {hi}] must satisfy 0 < lower < upper <= 1")
    if a.topk is not None and not 0 < a.topk <= 1:
        _fail("topk", f"{a.topk} is the fraction of weights kept; use (0, 1]")
    for t in a.eval_topk_grid or []:
        if not 0 < t <= 1:
            _fail("eval_topk_grid", f"TopK {t} is outside (0, 1]")
    # quantized: 3..8 bits, as the reference's command line checks
    _check_pair(a, "bit_width_limits", 3, 8, int, strict=False)
    for key, values in (("bit_width", [a.bit_width] if a.bit_width is not None else []),
                        ("eval_bit_widths", a.eval_bit_widths or [])):
        for b in values:
            if not (isinstance(b, int) and 3 <= b <= 8):
                _fail(key, f"{b!r} bits: use whole numbers from 3 to 8")
    if a.topk_gradient not in ("masked", "straight_through"):
        _fail("topk_gradient", f"{a.topk_gradient!r}: use masked or straight_through")
    if a.eval_alpha not in ("exact", "reference"):
        _fail("eval_alpha", f"{a.eval_alpha!r}: use exact or reference")
    if not 0 <= a.endpoint_probability <= 1:
        _fail("endpoint_probability", "is a probability; use 0..1")
    if a.init not in INITS:
        _fail("init", f"{a.init!r}: use one of {', '.join(INITS)} (the model whose reference constructor to follow)")


def _check_pair(a, key, low, high, kind, strict=True):
    value = getattr(a, key)
    if value is None:
        return
    ok = (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)
          and (low < value[0] if strict else low <= value[0]) and value[0] <= value[1] <= high
          and (value[0] < value[1] or not strict))
    if not ok or (kind is int and not all(isinstance(v, int) for v in value)):
        bounds = f"{low} < low < high <= {high}" if strict else f"{low} <= low <= high <= {high}, whole numbers"
        _fail(key, f"{value!r} should be [low, high] with {bounds}")


FIXED_SETTING = {"us": "structured", "ns": "structured", "lec": "structured",
                 "target_topk": "unstructured", "target_bit_width": "quantized"}


def _args(method):
    return dataclass(type(f"{method.upper()}Args", (LCSArgs,), {"method": method}))


def _uniform(lo, hi):
    return lo + (hi - lo) * torch.rand(()).item()


class SubspaceMethod(Method):
    """What every method here shares: layers, levels, evaluation grid, storage, the endpoint
    regularizer. Subclasses say how training samples levels (`training_levels`)."""
    line = False
    # its width slices, instance norms and fake-quantized weights come out in NCHW: on the CPU, NHWC
    # made every elementwise op a layout conversion (a step 2x slower structured, 4x quantized)
    channels_last_on_cpu = False

    def __init__(self, args=None, budget=None, budget_file=None):
        super().__init__(args, budget, budget_file)
        a = self.args
        self.setting = a.setting
        self.level_kind = LEVEL_KIND[self.setting]
        self.lo_bits, self.hi_bits = a.bit_width_limits
        self.weights, self.norms = [], []
        self._reg_pending = False

    # -- build --------------------------------------------------------------------------------
    def build(self, model):
        a, line = self.args, self.line
        init_like_the_reference(model)
        folds = conv_bn_pairs(model) if self.setting == "quantized" and a.fold_bn and a.norm == "BN" else {}
        for name, m in list(model.named_modules()):
            for child_name, child in list(m.named_children()):
                if isinstance(child, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm)):
                    channels = child.num_features if hasattr(child, "num_features") else child.num_channels
                    norm = SubspaceNorm(a.norm, channels, line=line, weight1_init=INITS[a.init])
                    setattr(m, child_name, norm.to(next(child.parameters(), torch.empty(0)).device))
        self.norms = [m for m in model.modules() if isinstance(m, SubspaceNorm)]
        layers = prunable_layers(model)
        conv_line = line and self.setting != "structured"   # structured LCS+L: only the norms are a line
        for i, (_, m) in enumerate(layers):
            edge = i in (0, len(layers) - 1)
            p = SubspaceWeight(m.weight, line=conv_line, sparse=self.setting == "unstructured" and not edge,
                               quantized=self.setting == "quantized" and not edge,
                               slim=self.setting == "structured", first=i == 0, last=i == len(layers) - 1,
                               topk_gradient=a.topk_gradient, init=a.init)
            parametrize.register_parametrization(m, "weight", p, unsafe=p.slim)   # sliced while training
            if p.quantized:
                m.register_forward_pre_hook(p.quantize_input)
                if layers[i][0] in folds:
                    p.fold(model.get_submodule(folds[layers[i][0]]))
            self.weights.append(p)
        self._set(self.default_level())
        return model

    # -- levels -------------------------------------------------------------------------------
    def _set(self, level):
        """Put every layer at `level`: a dict of alpha, topk, width and bits (a number, or a list
        with one entry per quantized layer)."""
        alpha = level.get("alpha", 1.0)
        bits = level.get("bits")
        quantized = [p for p in self.weights if p.quantized]
        per_layer = bits if isinstance(bits, list) else [bits] * len(quantized)
        for p in self.weights:
            p.alpha, p.topk, p.width = alpha, level.get("topk"), level.get("width")
            p.quantize_inputs = level.get("quantize_inputs", False)
            p.restart_range = level.get("restart_range", False)
        for p, b in zip(quantized, per_layer):
            p.bits = b
        for n in self.norms:
            n.alpha, n.width = alpha, level.get("width")

    @contextlib.contextmanager
    def _level(self, level):
        self._set(level)
        yield

    def default_level(self):
        """The accurate end; the model stays there between batches (the per-epoch test accuracy)."""
        return {"alpha": 1.0, "bits": self.hi_bits if self.setting == "quantized" else None}

    def warmup_steps(self, progress):
        """The warmup: the first warmup_budget % of all iterations (reference: ceil(0.8·iterations))."""
        return math.ceil(self.args.warmup_budget / 100 * progress.total_steps)

    def forward_levels(self, model, progress):
        self._reg_pending = True
        delay = self.warmup_steps(progress)
        for level in self.training_levels(progress):
            if self.setting == "quantized":       # activation quantization and its range start after the
                level["quantize_inputs"] = progress.step >= delay     # warmup (reference iteration_delay),
                level["restart_range"] = progress.step == delay       # from the first active batch's range
            yield self._level(level)
        self._set(self.default_level())

    def training_levels(self, progress):
        raise NotImplementedError

    # -- evaluation ---------------------------------------------------------------------------
    def evaluation_points(self):
        grid = getattr(self.args, GRID_KEY[self.setting])
        if grid is None:
            grid = DEFAULT_GRID.get(self.name) or DEFAULT_GRID.get(self.setting) \
                or list(range(self.lo_bits, self.hi_bits + 1))
        return list(grid)

    def eval_level(self, level):
        """The layer settings of one grid level (subclasses add α for lines)."""
        return {"structured": {"width": level}, "unstructured": {"topk": level},
                "quantized": {"bits": level}}[self.setting]

    def at_level(self, model, level):
        return self._level(self.eval_level(level))

    @contextlib.contextmanager
    def narrow(self, model):
        """The width-sliced weights the network trains with, whatever the modules' train/eval mode:
        the narrow network, whose outputs are the masked full-width network's, at a fraction of its
        cost (the accuracy of a structured level; the slim export)."""
        slim = [p for p in self.weights if p.slim and not p.sliced]
        for p in slim:
            p.sliced = True
        try:
            yield
        finally:
            for p in slim:
                p.sliced = False

    def storage(self, model, layers):
        bits = {id(p): p.bits for p in self.weights if p.quantized}
        out = []
        for (_, m), r in zip(prunable_layers(model), layers):
            p = m.parametrizations.weight[0] if parametrize.is_parametrized(m, "weight") else None
            b = bits.get(id(p))
            out.append((b, r["params"]) if b else (32, r["nonzero"]))
        return out

    # -- the endpoint regularizer ---------------------------------------------------------------
    def line_pairs(self, model):
        if self.setting == "structured":
            return [(n.weight, n.weight1) for n in self.norms if n.weight1 is not None]
        return [(m.parametrizations.weight.original, m.parametrizations.weight[0].weight1)
                for _, m in prunable_layers(model) if parametrize.is_parametrized(m, "weight")
                and m.parametrizations.weight[0].weight1 is not None]

    def loss(self, model, outputs, base_loss):
        if not (self.line and self.args.beta > 0 and self._reg_pending):
            return base_loss
        self._reg_pending = False       # once per batch, however many passes
        return base_loss + self.args.beta * endpoint_cos2(self.line_pairs(model))

    def report(self, model):
        pairs = self.line_pairs(model) if self.line else []
        return {"setting": self.setting, "norm": self.args.norm, "line": self.line,
                "level_kind": self.level_kind, "bn_folded_layers": sum(bool(p.folded_norm) for p in self.weights),
                **({"endpoint_cos2": float(endpoint_cos2(pairs).detach())} if pairs else {})}


def init_like_the_reference(model):
    """Every conv / linear weight as the reference's Builder draws it (kaiming, fan_in); a bias
    starts at 0 (the reference's convs and 1x1-conv classifier have none). Norms keep 1 / 0."""
    with torch.no_grad():
        for _, m in prunable_layers(model):
            init_weight_(m.weight)
            if m.bias is not None:
                m.bias.zero_()


def conv_bn_pairs(model):
    """{conv name: BN name} for every conv whose output goes to a BatchNorm and nowhere else (the
    pairs a ConvBn2d fuses): the BNs' producers in `norm_neighbours`."""
    return {producer: norm for norm, (producer, _) in norm_neighbours(model).items() if producer}


def endpoint_cos2(pairs):
    """(Σ<w0,w1>)² / (Σ|w0|² · Σ|w1|²) over all line layers together (reference "equation 3")."""
    dot = sum((w0 * w1).sum() for w0, w1 in pairs)
    n0 = sum((w0 * w0).sum() for w0, _ in pairs)
    n1 = sum((w1 * w1).sum() for _, w1 in pairs)
    return dot ** 2 / (n0 * n1)


class _Line(SubspaceMethod):
    line = True

    def eval_level(self, level):
        out = super().eval_level(level)
        a = self.args
        if self.setting == "structured":
            lo, hi = a.width_factor_limits
            out["alpha"] = min(max((level - lo) / (hi - lo), 0.0), 1.0)
        elif self.setting == "unstructured":
            out["alpha"] = min(max(level, 0.0), 1.0)     # α is the TopK value itself
        else:
            d = self.hi_bits - self.lo_bits + 1
            alpha = min(max((level - self.lo_bits + 1) / d, 0.0), 1.0)
            out["alpha"] = int(alpha * 1000) / 1000 if a.eval_alpha == "reference" else alpha
        return out


def sandwich_widths(a):
    """US's sandwich rule: both limits and (samples - 2) uniform widths between, in the reference's
    order [low, high, U, U] (train_indep.py `width_factors = [low_factor, high_factor]`;
    train_curve.py `alphas = [0, 1]`): the passes update the shared BN statistics in turn."""
    lo, hi = a.width_factor_limits
    return [lo, hi] + [_uniform(lo, hi) for _ in range(a.width_factor_samples - 2)]


@register_method
class LCSLine(_Line):
    """LCS+L: a line between an efficient end (α=0) and an accurate end (α=1)."""
    name = "lcs_l"
    Args = _args("lcs_l")

    def training_levels(self, progress):
        a = self.args
        if self.setting == "structured":       # sandwich over α; width = low + (high-low)·α
            lo, hi = a.width_factor_limits
            return [{"alpha": (w - lo) / (hi - lo), "width": w} for w in sandwich_widths(a)]
        if self.setting == "unstructured":     # biased endpoint sampling, TopK annealed from 1
            lo, hi = a.topk_lower_bound, a.topk_upper_bound
            if torch.rand(()).item() < a.endpoint_probability:
                alpha = lo if torch.rand(()).item() < 0.5 else hi
            else:
                alpha = _uniform(lo, hi)
            return [{"alpha": alpha, "topk": anneal_topk(alpha, progress.step, self.warmup_steps(progress))}]
        d = self.hi_bits - self.lo_bits + 1
        alpha = torch.randint(1, d + 1, ()).item() / d if a.discrete_alpha_map else torch.rand(()).item()
        return [{"alpha": alpha, "bits": alpha_bit_map(alpha, self.lo_bits, self.hi_bits)}]


@register_method
class LCSPoint(SubspaceMethod):
    """LCS+P: one set of weights trained at random levels (structured: US's sandwich rule with the
    chosen norm; unstructured: TopK ~ U[low, high] after a warmup at TopK = high (1 by default);
    quantized: each layer its own random bit width after a warmup at the most bits)."""
    name = "lcs_p"
    Args = _args("lcs_p")

    def training_levels(self, progress):
        a = self.args
        warm = progress.step >= self.warmup_steps(progress)
        if self.setting == "structured":
            return [{"width": w} for w in sandwich_widths(a)]
        if self.setting == "unstructured":    # the warmup at the upper bound (train_indep.py: topk_upper)
            return [{"topk": _uniform(a.topk_lower_bound, a.topk_upper_bound) if warm else a.topk_upper_bound}]
        n = sum(p.quantized for p in self.weights)
        bits = torch.randint(self.lo_bits, self.hi_bits + 1, (n,)).tolist() if warm else self.hi_bits
        return [{"bits": bits}]


@register_method
class UniversallySlimmable(SubspaceMethod):
    """US (Yu & Huang 2019): sandwich rule, one shared BN, no BN recalibration."""
    name = "us"
    Args = _args("us")

    def training_levels(self, progress):
        return [{"width": w} for w in sandwich_widths(self.args)]


@register_method
class Slimmable(SubspaceMethod):
    """NS (slimmable networks, Yu et al. 2018): every width of width_factors_list each batch, in
    the list's order (the shared BN's statistics see them in turn), losses summed."""
    name = "ns"
    Args = _args("ns")

    def training_levels(self, progress):
        return [{"width": w} for w in self.args.width_factors_list]


@register_method
class TargetTopK(SubspaceMethod):
    """One network trained at a fixed TopK, annealed from 1 over the warmup."""
    name = "target_topk"
    Args = _args("target_topk")

    def default_level(self):
        return {"topk": self.args.topk}

    def training_levels(self, progress):
        return [{"topk": anneal_topk(self.args.topk, progress.step, self.warmup_steps(progress))}]


@register_method
class TargetBitWidth(SubspaceMethod):
    """One network trained at a fixed bit width."""
    name = "target_bit_width"
    Args = _args("target_bit_width")

    def default_level(self):
        return {"bits": self.args.bit_width}

    def training_levels(self, progress):
        return [{"bits": self.args.bit_width}]


# -- LEC: network slimming without finetuning ----------------------------------------------------
