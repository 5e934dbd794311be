"""LCS (methods/lcs.py, methods/lcs_layers.py) against the values lcs.md derives from
apple/learning-compressible-subspaces on fixed tensors (§6 and its appendix), the line's ends
against the two endpoint networks, width slimming against a physically narrower network, LEC's
pruning, and every README option reaching the run."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

import models
from core.metrics import dense_macs, flops, layer_sparsity, model_size, prunable_layers, sparsity_summary
from core.schedules import LRSchedule
from core.spec import RunSpec
from harness.tables import PAPERS_DIR, PaperTable
from harness.building import build_model
from methods import Progress, get_method
from methods.lcs import endpoint_cos2
from methods.lcs_layers import (SubspaceNorm, SubspaceWeight, alpha_bit_map, anneal_topk, kept_channels,
                                quantize_affine, topk_mask)

W10 = torch.tensor([0.3, -1.2, 0.05, 0.8, -0.4, 0.0, 2.0, -0.7, 0.1, 0.6])
W8 = torch.tensor([0.5, -0.1, 0.3, -0.7, 0.05, 0.2, -0.25, 0.9])
INFO = SimpleNamespace(num_classes=10, shape=(1, 28, 28))


# -- the compression operators on fixed tensors ----------------------------------------------------
@pytest.mark.parametrize("w, k, expected", [
    (W10, 0.5, [0, -1.2, 0, 0.8, 0, 0, 2.0, -0.7, 0, 0.6]),
    (W10, 0.35, [0, -1.2, 0, 0.8, 0, 0, 2.0, -0.7, 0, 0]),       # int(6.5) = 6 zeroed
    (W10, 0.025, [0, 0, 0, 0, 0, 0, 2.0, 0, 0, 0]),
    (W10, 1.0, W10.tolist()),
    (W8, 0.5, [0.5, 0, 0.3, -0.7, 0, 0, 0, 0.9]),                # appendix (run reference code)
    (W8, 0.3, [0.5, 0, 0, -0.7, 0, 0, 0, 0.9]),
])
def test_topk_mask(w, k, expected):
    assert (w * topk_mask(w, k)).tolist() == pytest.approx(expected)


def test_line_then_topk_at_alpha_quarter():
    w0 = torch.tensor([0.5, -0.1, 0.9, -0.8, 0.2, 0.05, -0.3, 0.7])
    w1 = torch.tensor([-0.2, 0.6, 0.1, 0.4, -0.9, 0.3, 0.8, -0.5])
    p = SubspaceWeight(w0, line=True, sparse=True)
    p.weight1.data.copy_(w1)
    p.alpha, p.topk = 0.25, 0.25                       # TopK = α on an unstructured line
    assert p(w0).tolist() == pytest.approx([0, 0, 0.7, -0.5, 0, 0, 0, 0])
    p.topk = None
    assert p(w0).tolist() == pytest.approx([0.325, 0.075, 0.7, -0.5, -0.075, 0.1125, -0.025, 0.4])


def test_topk_gradient_masked_or_straight_through():
    w = W10.clone().requires_grad_()
    for mode, grad in (("masked", [0, 1, 0, 1, 0, 0, 1, 1, 0, 1]), ("straight_through", [1] * 10)):
        w.grad = None
        p = SubspaceWeight(w.detach(), sparse=True, topk_gradient=mode)
        p.topk = 0.5
        p(w).sum().backward()
        assert w.grad.tolist() == grad, mode


@pytest.mark.parametrize("alpha, step, warmup, expected", [
    (0.025, 0, 62_500, 1.0), (0.025, 31_250, 62_500, 0.5125), (0.025, 62_500, 62_500, 0.025),
    (0.025, 70_000, 62_500, 0.025), (0.1, 0, 100, 1.0), (0.1, 50, 100, 0.55), (0.1, 100, 100, 0.1),
])
def test_topk_annealing_over_the_warmup(alpha, step, warmup, expected):
    assert anneal_topk(alpha, step, warmup) == pytest.approx(expected)


X = torch.tensor([-0.9, -0.31, 0.0, 0.27, 0.55, 1.3])


@pytest.mark.parametrize("x, bits, expected", [
    (X, 3, [-0.942857, -0.314286, 0, 0.314286, 0.628571, 1.257143]),
    (X, 4, [-0.88, -0.293333, 0, 0.293333, 0.586667, 1.32]),
    (X, 8, [-0.897255, -0.310588, 0, 0.267451, 0.552157, 1.302745]),
    (torch.tensor([0.1, 0.4, 0.75, 1.0]), 3, [0.142857, 0.428571, 0.714286, 1.0]),
    (W8, 3, [0.457143, 0, 0.228571, -0.685714, 0, 0.228571, -0.228571, 0.914286]),     # appendix
    (W8, 4, [0.533333, -0.106667, 0.32, -0.746667, 0, 0.213333, -0.213333, 0.853333]),
])
def test_affine_quantizer(x, bits, expected):
    assert quantize_affine(x, bits).tolist() == pytest.approx(expected, abs=1e-6)


def test_a_diverged_weight_passes_the_quantizer_as_nan():
    """A NaN weight (a diverged run) goes through, for the trainer to report as a non-finite loss,
    instead of failing to round the NaN zero point."""
    x = torch.tensor([0.5, float("nan"), -1.0])
    assert torch.isnan(quantize_affine(x, 4)).tolist() == [False, True, False]


def test_quantizer_is_straight_through_and_zero_stays_zero():
    w = X.clone().requires_grad_()
    p = SubspaceWeight(w.detach(), quantized=True)
    p.bits = 3
    out = p(w)
    out.sum().backward()
    assert w.grad.tolist() == [1] * 6 and out[2].item() == 0.0


@pytest.mark.parametrize("alpha, bits", [(0, 3), (0.1, 3), (0.166, 3), (1 / 6, 3), (0.17, 4), (0.2, 4), (0.333, 4),
                                         (1 / 3, 4), (0.499, 5), (0.5, 5), (0.666, 6), (0.833, 7), (1.0, 8)])
def test_alpha_to_bits(alpha, bits):
    assert alpha_bit_map(alpha, 3, 8) == bits


def test_width_slimming_channel_counts():
    grid = [1, 0.83333, 0.66667, 0.5, 0.33333, 0.166667, 0]
    widths = [0.25 + 0.75 * a for a in grid]
    expected = {1: [16, 32, 64, 128, 256], 0.83333: [14, 28, 56, 112, 224], 0.66667: [12, 24, 48, 96, 192],
                0.5: [10, 20, 40, 80, 160], 0.33333: [8, 16, 32, 64, 128], 0.166667: [6, 12, 24, 48, 96],
                0: [4, 8, 16, 32, 64]}
    for a, w in zip(grid, widths):
        assert [kept_channels(c, w) for c in (16, 32, 64, 128, 256)] == expected[a]
    assert kept_channels(20, 0.625) == 12 and kept_channels(4, 0.625) == 2       # half to even
    method = lcs("lcs_l", setting="structured")
    assert [method.eval_level(w)["alpha"] for w in (0.25, 0.625, 1.0)] == [0.0, 0.5, 1.0]


def test_width_mask_keeps_leading_channels_first_input_and_last_output():
    w = torch.ones(8, 6, 3, 3)
    for first, last, shape in ((False, False, (4, 3)), (True, False, (4, 6)), (False, True, (8, 3))):
        p = SubspaceWeight(w, slim=True, first=first, last=last)
        p.width = 0.5
        out = p(w)
        assert int((out != 0).flatten(2).any(2).sum()) == shape[0] * shape[1]
        assert out[:shape[0], :shape[1]].eq(1).all()


def test_endpoint_regularizer_is_a_global_squared_cosine():
    pairs = [(torch.tensor([1.0, 2, 0]), torch.tensor([2.0, 0, 1])), (torch.tensor([0.0, 1]), torch.tensor([1.0, 1]))]
    assert endpoint_cos2(pairs).item() == pytest.approx(9 / 42)


@pytest.mark.parametrize("epochs, epoch, lr", [(200, 0, 0.02), (200, 1, 0.04), (200, 4, 0.1), (200, 5, 0.1),
                                               (200, 100, 0.0520133), (200, 199, 6.49e-6), (90, 47, 0.0509240)])
def test_reference_lr_schedule(epochs, epoch, lr):
    sched = LRSchedule(0.1, epochs, "cosine", warmup_epochs=5, per_epoch=True)
    assert sched(epoch + 0.7) == pytest.approx(lr, rel=1e-3)


def test_biased_endpoint_sampling_mean():
    method = lcs("lcs_l", setting="unstructured")
    method.build(models.create_model("cpreresnet20", 10, 1, width=0.25))
    torch.manual_seed(0)
    after = Progress(epoch=0, step=10, steps_per_epoch=1, epochs=10)    # past the 80 % warmup
    alphas = [method.training_levels(after)[0]["alpha"] for _ in range(4000)]
    assert sum(alphas) / len(alphas) == pytest.approx(0.5125, abs=0.02)
    assert 0.2 < sum(a == 0.025 for a in alphas) / 4000 < 0.3


# -- the two ends of a line are the two endpoint networks -----------------------------------------
def lcs(name, **args):
    cls = get_method(name)
    return cls(cls.Args(**args))


def built(name, width=0.25, **args):
    torch.manual_seed(0)
    method = lcs(name, **args)
    model = method.build(models.create_model("cpreresnet20", 10, 1, width=width))
    return model.eval(), method


# -- initialisation: the reference's Builder and network constructors ------------------------------
# models/builder.py:119 `self.conv_init(conv.weight)` and :120-121 `conv.initialize(self.conv_init)`
# (both ends), with models/init.py:8-11 `nn.init.kaiming_normal_(weight)` (fan_in, gain sqrt(2));
# then cpreresnet.py:148-154 `if isinstance(m, nn.Conv2d) and m != self.fc: n = k*k*out_channels;
# weight{i}.normal_(0, sqrt(2/n))` for i >= 1 (weight1 only), :156-163 norm weight1 0.5, bias1 0;
# vgg.py:118-151 the same, with `if m.last_layer: weight{i}.normal_(0, 0.01)`; resnet.py: no loop.
def fan_in(w):
    return w[0].numel()                      # in·k·k (a Linear: in, the 1x1 conv's)


def fan_out(w):
    return w.shape[0] * w[0, 0].numel()      # k·k·out (a Linear: out)


def reference_std(end, init, last, w):
    if end == 0 or init == "resnet18" or (init == "cpreresnet20" and last):
        return (2 / fan_in(w)) ** 0.5
    if init == "vgg19" and last:
        return 0.01
    return (2 / fan_out(w)) ** 0.5


def assert_reference_init(model, init, line):
    layers = prunable_layers(model)
    for i, (name, m) in enumerate(layers):
        p = m.parametrizations.weight if parametrize.is_parametrized(m, "weight") else None
        ends = [p.original if p is not None else m.weight] + ([p[0].weight1] if line else [])
        for end, w in enumerate(ends):
            expected = reference_std(end, init, i == len(layers) - 1, w)
            tolerance = max(0.03, 4 / (2 * w.numel()) ** 0.5)     # 4 standard errors of a sample std
            assert abs(w.std().item() / expected - 1) < tolerance, (name, end, w.std().item(), expected)
            assert abs(w.mean().item()) < 4 * expected / w.numel() ** 0.5, (name, end)
        if getattr(m, "bias", None) is not None:
            assert m.bias.eq(0).all(), name     # the reference's 1x1-conv classifier has no bias


@pytest.mark.parametrize("name, args, line", [
    ("lcs_l", {"setting": "unstructured"}, True), ("lcs_l", {"setting": "quantized"}, True),
    ("lcs_l", {"setting": "structured"}, False),       # only its norms are a line
    ("lcs_p", {"setting": "unstructured"}, False), ("us", {}, False), ("ns", {}, False), ("lec", {}, False),
    ("target_topk", {}, False), ("target_bit_width", {}, False),
])
def test_full_size_cpreresnet20_starts_at_the_reference_init(name, args, line):
    torch.manual_seed(0)
    model = lcs(name, **args).build(models.create_model("cpreresnet20", 10, 3))
    assert_reference_init(model, "cpreresnet20", line)
    fc = model.fc.parametrizations.weight if name != "lec" else None
    if line:     # the classifier's second end: kaiming fan_in, sqrt(2/256), not 5x that (sqrt(2/10))
        assert fc[0].weight1.std().item() == pytest.approx((2 / 256) ** 0.5, rel=0.05)
        assert fc.original.std().item() == pytest.approx((2 / 256) ** 0.5, rel=0.05)


@pytest.mark.parametrize("model_name, init, width, norm_weight1", [
    ("vgg19", "vgg19", 0.25, 0.5), ("resnet18", "resnet18", 0.5, 1.0), ("cpreresnet20", "cpreresnet20", 1.0, 0.5)])
@pytest.mark.slow
def test_line_layers_start_at_their_constructors_init(model_name, init, width, norm_weight1):
    torch.manual_seed(0)
    method = lcs("lcs_l", setting="unstructured", init=init)
    model = method.build(models.create_model(model_name, 100, 3, width=width))
    assert_reference_init(model, init, line=True)
    for n in method.norms:      # the norms: weight 1, bias 0 at both ends but weight1
        assert n.weight.eq(1).all() and n.bias.eq(0).all() and n.bias1.eq(0).all()
        assert n.weight1.eq(norm_weight1).all()


def test_structured_line_norms_start_at_half():
    _, method = built("lcs_l", setting="structured")
    assert all(n.weight1.eq(0.5).all() and n.bias1.eq(0).all() and n.weight.eq(1).all() for n in method.norms)


def endpoint_network(line_model, end, setting, norm):
    """A network of plain (non-line) layers holding one end of the line's weights."""
    point, method = built("lcs_p", setting=setting, norm=norm)
    lines = dict(line_model.named_modules())
    with torch.no_grad():
        for name, m in point.named_modules():
            src = lines[name]
            if isinstance(m, SubspaceNorm):
                m.weight.copy_(src.weight1 if end else src.weight)
                m.bias.copy_(src.bias1 if end else src.bias)
            elif name in dict(prunable_layers(point)):
                p = src.parametrizations.weight
                lined = p[0].weight1 is not None
                m.parametrizations.weight.original.copy_(p[0].weight1 if end and lined else p.original)
    return point, method


@pytest.mark.parametrize("setting, norm, end_levels", [
    ("unstructured", "GN", [{"alpha": 0.0, "topk": 0.1}, {"alpha": 1.0, "topk": 0.1}, {"alpha": 1.0}]),
    ("quantized", "GN", [{"alpha": 0.0, "bits": 3}, {"alpha": 1.0, "bits": 8}, {"alpha": 1.0, "bits": 4}]),
    ("structured", "IN", [{"alpha": 0.0, "width": 0.25}, {"alpha": 1.0, "width": 1.0}, {"alpha": 1.0, "width": 0.5}]),
])
@pytest.mark.slow
def test_line_ends_equal_the_endpoint_networks(setting, norm, end_levels):
    line, line_method = built("lcs_l", setting=setting, norm=norm)
    x = torch.randn(8, 1, 28, 28)
    for level in end_levels:
        point, point_method = endpoint_network(line, level["alpha"] == 1.0, setting, norm)
        line_method._set(level)
        point_method._set({k: v for k, v in level.items() if k != "alpha"})
        with torch.no_grad():
            assert torch.equal(line(x), point(x)), level
        assert sparsity_summary(layer_sparsity(line)) == sparsity_summary(layer_sparsity(point))


def test_evaluating_a_structured_line_at_its_grid_ends_is_the_endpoint_network():
    line, method = built("lcs_l", setting="structured")
    x = torch.randn(8, 1, 28, 28)
    for width, end in ((0.25, False), (1.0, True)):
        point, point_method = endpoint_network(line, end, "structured", "IN")
        with torch.no_grad(), method.at_level(line, width), point_method.at_level(point, width):
            assert torch.equal(line(x), point(x))


# -- width slimming = a physically narrower network, in outputs, parameters and FLOPs ----------------
def test_slimmed_network_equals_the_narrow_network():
    full, method = built("us", width=1.0)
    narrow = models.create_model("cpreresnet20", 10, 1, width=0.5).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for m in full.modules():
            if isinstance(m, SubspaceNorm):
                m.running_mean.normal_(0, 0.1), m.running_var.uniform_(0.5, 2), m.weight.normal_(1, 0.2)
        full_mods = dict(full.named_modules())
        for name, m in narrow.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                o, i = m.weight.shape[:2]
                m.weight.copy_(full_mods[name].weight[:o, :i])
                if m.bias is not None:
                    m.bias.copy_(full_mods[name].bias)
            elif isinstance(m, nn.BatchNorm2d):
                c, src = m.num_features, full_mods[name]
                for attr in ("weight", "bias", "running_mean", "running_var"):
                    getattr(m, attr).copy_(getattr(src, attr)[:c])
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad(), method.at_level(full, 0.5):
        assert torch.allclose(full(x), narrow(x), atol=1e-5)
        layers = layer_sparsity(full)
        assert sparsity_summary(layers)["nonzero_params"] == sum(m.weight.numel() for _, m in prunable_layers(narrow))
        assert flops(full, (1, 28, 28), layers)["flops"] == flops(narrow, (1, 28, 28))["flops"]


@pytest.mark.parametrize("name,setting", [("lcs_l", "structured"), ("us", "structured"), ("lcs_p", "unstructured"),
                                          ("lcs_l", "quantized")])
def test_one_count_of_dense_macs_serves_every_level(name, setting):
    """harness/evaluate.py counts a model's MACs once and reuses them at every level: each level's
    sparse FLOPs from that count are those of a count at the level itself."""
    model, method = built(name, setting=setting)
    points = method.evaluation_points()
    with method.at_level(model, points[0]):
        counted = dense_macs(model, (1, 28, 28))
    for level in points:
        with method.at_level(model, level):
            layers = layer_sparsity(model)
            assert flops(model, (1, 28, 28), layers, counted=counted) == flops(model, (1, 28, 28), layers)


def test_training_runs_narrow_with_the_numbers_of_the_masked_network():
    model, method = built("lcs_p", width=0.5, setting="structured")       # IN: no batch statistics kept
    x = torch.randn(4, 1, 28, 28)
    method._set({"width": 0.375})
    with torch.no_grad():
        masked = model.eval()(x)
        sliced = model.train()(x)
    assert torch.allclose(masked, sliced, atol=1e-5)
    assert model.stem.weight.shape[0] == kept_channels(8, 0.375) == 3       # narrow while training
    assert model.eval().stem.weight.shape[0] == 8


@pytest.mark.parametrize("name", ["us", "lcs_l"])
def test_eval_under_narrow_is_the_masked_network_at_every_level(name):
    """harness/evaluate.py takes a structured level's accuracy under `narrow`: the sliced network in
    eval mode (BN with its running statistics sliced too), with the masked network's outputs."""
    model, method = built(name, width=0.5, setting="structured")
    x = torch.randn(8, 1, 28, 28)
    model.train()
    for _ in range(3):                   # running statistics that are not BN's initial ones
        with torch.no_grad():
            model(x + 1)
    model.eval()
    for level in method.evaluation_points():
        with method.at_level(model, level), torch.no_grad():
            masked = model(x)
            with method.narrow(model):
                sliced = model(x)
                assert model.stem.weight.shape[0] == kept_channels(8, level)
            assert model.stem.weight.shape[0] == 8
        assert torch.allclose(masked, sliced, atol=1e-5), level


def test_norm_statistics_of_dropped_channels_are_untouched():
    norm = SubspaceNorm("BN", 8)
    norm.width = 0.5
    norm(torch.randn(16, 8, 4, 4) + 3)
    assert (norm.running_mean[:4] != 0).all() and (norm.running_mean[4:] == 0).all()
    assert (norm.running_var[4:] == 1).all()


# -- quantized storage --------------------------------------------------------------------------
def test_quantized_levels_report_their_bits():
    model, method = built("lcs_l", setting="quantized")
    with method.at_level(model, 4):
        layers = layer_sparsity(model)
        size = model_size(layers, method.storage(model, layers))
    n = [r["params"] for r in layers]
    edge = n[0] + n[-1]                                   # first conv and classifier stay 32-bit floats
    assert size["size_bits"] == pytest.approx(4 * (sum(n) - edge) + 32 * sum(r["nonzero"] for r in (layers[0], layers[-1])))
    assert 4 < size["bits"] < 32 and size["compression"] > 1


def test_activation_quantization_waits_for_the_warmup_in_training_only():
    model, method = built("target_bit_width")
    p = next(p for p in method.weights if p.quantized)
    x = torch.randn(8, 1, 28, 28)
    model.train()
    before = Progress(epoch=0, step=0, steps_per_epoch=10, epochs=1)
    for level in method.forward_levels(model, before):
        with level:
            assert p.quantize_inputs is False and p.bits == 6
            model(x)
    assert p.act_min == 0 and p.act_max == 0          # not tracked before the delay (reference QuantizeAffine)
    after = Progress(epoch=0, step=9, steps_per_epoch=10, epochs=1)
    for level in method.forward_levels(model, after):
        with level:
            assert p.quantize_inputs is True


def identity_stem_net():
    """float 1x1 stem (set to the identity) -> one quantized 1x1 conv -> linear: the quantized
    layer's input is the batch itself."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 2, 1, bias=False), nn.Conv2d(2, 2, 1, bias=False),
                         nn.Flatten(), nn.Linear(2 * 2 * 2, 2))


def test_activation_range_starts_at_the_delay_from_the_batch_range():
    """reference models/quantize_affine.py QuantizeAffine.forward: while training, only once
    `iteration_count >= iteration_delay`; `if self.iteration_count == self.iteration_delay:` the
    batch's [min(x,0), max(x,0)], else (1-0.1)·running + 0.1·batch. Delay = ceil(50 % of 4 steps) = 2."""
    model, method = identity_stem_net(), lcs("target_bit_width", bit_width=4, warmup_budget=50)
    method.build(model).train()
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2).view(2, 2, 1, 1))
    p = method.weights[1]
    batches = [(-1.0, 2.0), (-3.0, 1.0), (-0.5, 4.0), (-2.0, 2.0), (0.5, 1.0)]    # (min, max) of each batch
    expected = [(0, 0), (0, 0), (-0.5, 4.0), (-0.65, 3.8), (-0.585, 3.52)]      # 0.9·(-0.65) + 0.1·0 (0 forced in)
    seen = []      # what the quantized conv computes with (this hook runs after the quantizing one)
    hook = model[1].register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach().clone()))
    for step, ((lo, hi), (e_lo, e_hi)) in enumerate(zip(batches, expected)):
        x = torch.full((1, 2, 2, 2), (lo + hi) / 2)
        x[0, 0, 0, 0], x[0, 1, 1, 1] = lo, hi
        for level in method.forward_levels(model, Progress(epoch=0, step=step, steps_per_epoch=4, epochs=1)):
            with level:
                model(x)
        assert (p.act_min.item(), p.act_max.item()) == (pytest.approx(e_lo), pytest.approx(e_hi)), step
        quantized = quantize_affine(x, 4, e_lo, e_hi)
        assert torch.allclose(seen[-1], x if step < 2 else quantized, atol=1e-6), step     # float before the delay
    hook.remove()


# -- LEC ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_lec_prunes_the_smallest_scales_globally_and_zeroes_their_weights():
    torch.manual_seed(0)
    method = lcs("lec")
    model = method.build(models.create_model("cpreresnet20", 10, 1, width=0.25)).eval()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in norms:
            m.weight.uniform_(0.1, 1), m.bias.normal_(0, 0.1), m.running_var.uniform_(0.5, 2)
    total = sum(m.num_features for m in norms)
    x = torch.randn(4, 1, 28, 28)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad(), method.at_level(model, 1.0):
        assert torch.equal(model(x), model(x)) and sparsity_summary(layer_sparsity(model))["sparsity"] == 0
    with torch.no_grad(), method.at_level(model, 0.5):
        assert sum(int((m.weight == 0).sum()) for m in norms) == int(0.5 * total)
        pruned_out = model(x)
        sparsity = sparsity_summary(layer_sparsity(model))["sparsity"]
    assert sparsity > 0.2
    with torch.no_grad():       # zeroing only γ and β gives the same outputs: the weights zeroed were dead
        for m, idx in zip(norms, method.pruned_channels(model, 0.5).values()):
            m.weight[idx] = 0
            m.bias[idx] = 0
        assert torch.allclose(model(x), pruned_out, atol=1e-6)
    model.load_state_dict(before)
    # each block's bnK feeds convK (and is conv(K-1)'s only use), the final norm feeds the classifier
    assert method.neighbours["stages.0.0.bn2"] == ("stages.0.0.conv1", ["stages.0.0.conv2"])
    assert method.neighbours["stages.0.0.bn1"] == (None, ["stages.0.0.conv1"])   # the stem also feeds the shortcut
    assert method.neighbours["norm"] == (None, ["fc"])


def test_lec_finds_producers_in_post_norm_networks():
    method = lcs("lec")
    method.build(models.create_model("vgg19", 10, 3, width=0.125))
    assert method.neighbours["1"] == ("0", ["3"])        # conv 0 -> norm 1 -> relu -> conv 3


# -- quantized layers with BatchNorm: the BN scale is folded in before quantizing (reference ConvBn2d) --
def conv_bn_net():
    """stem conv (float) -> conv -> BN -> relu -> pool -> linear (float): one quantized, folded conv."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1, bias=False), nn.Conv2d(3, 4, 3, padding=1, bias=False),
                         nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def test_bn_folded_quantization_is_the_reference_convbn():
    model, method = conv_bn_net(), lcs("target_bit_width", bit_width=3)
    method.build(model)
    norm = model[2]
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([2.0, -0.5, 0.25, 1.5]))
        norm.bias.copy_(torch.tensor([0.1, 0.0, -0.2, 0.3]))
        norm.running_mean.copy_(torch.tensor([0.2, -0.1, 0.0, 0.05]))
        norm.running_var.copy_(torch.tensor([4.0, 0.25, 1.0, 0.5]))
    model.eval()
    x = torch.randn(2, 1, 6, 6)
    conv = model[1]
    w = conv.parametrizations.weight.original.detach()
    s = (norm.weight / torch.sqrt(norm.running_var + norm.eps)).detach()
    # reference _ConvBnNd._forward: conv with q(w·s), divided by s, then the BN (input range unset: no input quantization)
    folded = F.conv2d(model[0](x), quantize_affine(w * s.view(-1, 1, 1, 1), 3), padding=1) / s.view(1, -1, 1, 1)
    expected = model[6](model[5](model[4](model[3](F.batch_norm(folded, norm.running_mean, norm.running_var,
                                                               norm.weight, norm.bias, False, 0.1, norm.eps)))))
    with torch.no_grad(), method.at_level(model, 3):
        assert torch.allclose(model(x), expected, atol=1e-5)
        unfolded = quantize_affine(w, 3)
        assert not torch.allclose(conv.weight, unfolded)      # folding moves the quantization grid
    assert method.report(model)["bn_folded_layers"] == 1


@pytest.mark.parametrize("args, folded", [({}, 1), ({"fold_bn": False}, 0), ({"norm": "GN"}, 0)])
def test_only_batchnorm_is_folded_and_only_when_asked(args, folded):
    model, method = conv_bn_net(), lcs("target_bit_width", bit_width=4, **args)
    method.build(model).eval()
    with torch.no_grad(), method.at_level(model, 4):
        w = model[1].parametrizations.weight.original
        expected = quantize_affine(w, 4) if not folded else None
        assert sum(bool(p.folded_norm) for p in method.weights) == folded
        if not folded:      # GN / IN: scale 1 in the reference, i.e. the plain quantized weight
            assert torch.equal(model[1].weight, expected)


@pytest.mark.parametrize("position, folded", [("before_conv", 12), ("after_conv", 21)])
@pytest.mark.slow
def test_quantized_cpreresnet_layout(position, folded):
    """after_conv: every block conv (shortcuts too) feeds its own norm, as the reference's ConvBn2d
    blocks; before_conv (pre-activation) folds only the convs that feed the next BN directly."""
    model = models.create_model("cpreresnet20", 10, 3, width=0.25, norm_position=position)
    method = lcs("target_bit_width")
    method.build(model).eval()
    assert sum(p.quantized for p in method.weights) == 21
    assert method.report(model)["bn_folded_layers"] == folded
    with method.at_level(model, 5):
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_layouts_are_the_same_function_where_norms_are_identities():
    """With every norm an identity, moving it from before to after the conv changes nothing."""
    torch.manual_seed(0)
    no_norm = models.Layers(norm="none")
    a = models.create_model("cpreresnet20", 10, 3, width=0.25, layers=no_norm)
    b = models.create_model("cpreresnet20", 10, 3, width=0.25, layers=no_norm, norm_position="after_conv")
    # conv1 -> Sequential(conv1, norm): stages.0.0.conv1.weight becomes stages.0.0.conv1.0.weight
    b.load_state_dict({k: a.state_dict()[k.replace(".0.weight", ".weight")] for k in b.state_dict()})
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(a(x), b(x), atol=1e-5)


# -- options: every README option reaches the run, bad combinations fail in one line ---------------
def spec(method, **method_args):
    return RunSpec(scale="smoke", paper="lcs", row="r", seed=0, method=method, model="cpreresnet20",
                   dataset="synthetic", train={}, model_args={"width": 0.25}, method_args=method_args)


AFTER = Progress(epoch=0, step=99, steps_per_epoch=10, epochs=10)
BEFORE = Progress(epoch=0, step=0, steps_per_epoch=10, epochs=10)


def levels(method, progress=AFTER):
    return method.training_levels(progress)


@pytest.mark.parametrize("method_name, args, check", [
    ("ns", {"width_factors_list": [0.3, 1.0]}, lambda m: [lv["width"] for lv in levels(m)] == [0.3, 1.0]),
    ("us", {"width_factor_limits": [0.5, 0.9]}, lambda m: [lv["width"] for lv in levels(m)][:2] == [0.5, 0.9]),
    ("lcs_l", {"setting": "structured", "width_factor_limits": [0.5, 1.0]},
     lambda m: m.eval_level(0.75)["alpha"] == 0.5 and levels(m)[0] == {"alpha": 0.0, "width": 0.5}),
    ("lcs_p", {"setting": "structured", "width_factor_samples": 6}, lambda m: len(levels(m)) == 6),
    ("lec", {"eval_width_factors": [0.3, 1.0]}, lambda m: m.evaluation_points() == [0.3, 1.0]),
    ("us", {"eval_width_factors": [0.3, 1.0]}, lambda m: m.evaluation_points() == [0.3, 1.0]),
    ("target_topk", {"topk": 0.3}, lambda m: levels(m) == [{"topk": 0.3}] and levels(m, BEFORE) == [{"topk": 1.0}]),
    ("target_topk", {"eval_topk_grid": [0.1, 0.5]}, lambda m: m.evaluation_points() == [0.1, 0.5]),
    ("lcs_p", {"setting": "unstructured", "topk_lower_bound": 0.005, "topk_upper_bound": 0.05,
               "eval_topk_grid": [0.005, 0.05]},
     lambda m: all(0.005 <= levels(m)[0]["topk"] <= 0.05 for _ in range(50)) and levels(m, BEFORE) == [{"topk": 0.05}]),
    ("lcs_p", {"setting": "unstructured"}, lambda m: levels(m, BEFORE) == [{"topk": 1.0}]),
    ("lcs_l", {"setting": "unstructured", "topk_lower_bound": 0.1, "eval_topk_grid": [0.1, 1.0]},
     lambda m: min(levels(m)[0]["alpha"] for _ in range(200)) == 0.1),
    ("target_bit_width", {"bit_width": 4}, lambda m: levels(m) == [{"bits": 4}]),
    ("lcs_p", {"setting": "quantized", "eval_bit_widths": [4, 8]}, lambda m: m.evaluation_points() == [4, 8]),
    ("lcs_l", {"setting": "quantized", "bit_width_limits": [4, 6]},
     lambda m: {levels(m)[0]["bits"] for _ in range(100)} == {4, 5, 6} and m.evaluation_points() == [4, 5, 6]),
    ("lcs_p", {"setting": "quantized", "bit_width_limits": [3, 5]},
     lambda m: set(sum((levels(m)[0]["bits"] for _ in range(20)), [])) == {3, 4, 5} and levels(m, BEFORE) == [{"bits": 5}]),
    ("lcs_l", {"setting": "quantized", "eval_alpha": "reference"}, lambda m: m.eval_level(3)["alpha"] == 0.166),
    ("lcs_l", {"setting": "quantized"}, lambda m: m.eval_level(3)["alpha"] == 1 / 6),
    ("lcs_p", {"setting": "unstructured", "norm": "BN"},
     lambda m: {n.kind for n in m.norms} == {"BN"}),
    ("lcs_p", {"setting": "unstructured"}, lambda m: {n.kind for n in m.norms} == {"GN"}),
    ("lcs_p", {"setting": "structured"}, lambda m: {n.kind for n in m.norms} == {"IN"}),
    ("lcs_l", {"setting": "unstructured", "warmup_budget": 50}, lambda m: m.warmup_steps(AFTER) == 50),
    ("lcs_l", {"setting": "unstructured", "init": "resnet18"}, lambda m: m.norms[0].weight1.eq(1.0).all()),
    ("lcs_l", {"setting": "unstructured"}, lambda m: m.norms[0].weight1.eq(0.5).all()),
    ("target_bit_width", {}, lambda m: sum(bool(p.folded_norm) for p in m.weights) == 12),
    ("target_bit_width", {"fold_bn": False}, lambda m: not any(p.folded_norm for p in m.weights)),
])
def test_every_option_reaches_the_run(method_name, args, check):
    torch.manual_seed(0)
    _, method = build_model(spec(method_name, **args), INFO, torch.device("cpu"))
    assert check(method)


@pytest.mark.parametrize("name, args", [("us", {}), ("lcs_p", {"setting": "structured"}),
                                        ("lcs_l", {"setting": "structured"}), ("ns", {}),
                                        ("ns", {"width_factors_list": [0.25, 0.5, 0.75, 1.0]})])
def test_sandwich_passes_run_in_the_reference_order(name, args):
    """The passes share the BN statistics, so their order counts: train_indep.py `us` branch
    `width_factors = [low_factor, high_factor]` + (samples-2)·U; train_curve.py `alphas = [0, 1]` + U;
    NS: `for width_factor in regime_params["width_factors_list"]` (ns.yaml: [1.0, 0.75, 0.50, 0.25])."""
    model, method = built(name, **args)
    widths = []
    for level in method.forward_levels(model, AFTER):
        with level:
            widths.append(method.norms[0].width)
    if name == "ns":
        assert widths == (args.get("width_factors_list") or [1.0, 0.75, 0.5, 0.25])
    else:
        assert widths[:2] == [0.25, 1.0] and len(widths) == 4 and all(0.25 <= w <= 1 for w in widths[2:])


@pytest.mark.slow
def test_sandwich_order_changes_the_shared_statistics():
    """Why the order matters: a narrow pass feeds the shared BN other activations than the full
    one, and its EMA weighs the later pass more (0.1·b + 0.09·a after a then b)."""
    torch.manual_seed(0)
    model, method = built("us")
    model.train()
    x = torch.randn(8, 1, 28, 28)
    stats = []
    for order in ([0.25, 1.0], [1.0, 0.25]):
        for n in method.norms:
            n.running_mean.zero_()
        for w in order:
            with torch.no_grad(), method._level({"width": w}):
                model(x)
        stats.append(method.norms[-1].running_mean.clone())
    assert not torch.allclose(stats[0], stats[1])


@pytest.mark.parametrize("method_name, args, message", [
    ("lcs_p", {"setting": "unstructured", "topk_lower_bound": 0.01}, "method_args.topk_lower_bound: needs method_args.eval_topk_grid"),
    ("target_bit_width", {"bit_width": 2}, "method_args.bit_width: 2 bits: use whole numbers from 3 to 8"),
    ("lcs_l", {"setting": "quantized", "bit_width_limits": [2, 8]}, "method_args.bit_width_limits: [2, 8] should be"),
    ("lcs_l", {"setting": "quantized", "eval_bit_widths": [3, 9]}, "method_args.eval_bit_widths: 9 bits"),
    ("lcs_l", {"setting": "structured", "norm": "GN"}, "method_args.norm: GN is not supported with structured"),
    ("lec", {"norm": "IN"}, "method_args.norm: method 'lec' is defined with one shared BatchNorm; use BN"),
    ("ns", {"norm": "GN"}, "method_args.norm: GN is not supported"),
    ("ns", {"norm": "IN"}, "method_args.norm: method 'ns' is defined with one shared BatchNorm"),
    ("us", {"width_factor_limits": [0.25, 1.5]}, "method_args.width_factor_limits: [0.25, 1.5] should be [low, high] with 0.0 < low"),
    ("us", {"width_factor_limits": [0.0, 1.0]}, "method_args.width_factor_limits"),
    ("ns", {"width_factors_list": [0.5, 1.2]}, "method_args.width_factors_list: width 1.2 is outside (0, 1]"),
    ("lcs_l", {}, "method_args.setting: None: method 'lcs_l' needs one of structured, unstructured, quantized"),
    ("target_topk", {"setting": "quantized"}, "method_args.setting: method 'target_topk' is unstructured only"),
    ("us", {"topk": 0.5}, "method_args.topk: does not apply to method 'us' (structured)"),
    ("lcs_l", {"setting": "unstructured", "width_factors_list": [0.5]}, "method_args.width_factors_list: does not apply"),
    ("lcs_l", {"setting": "unstructured", "norm": "XN"}, "method_args.norm: 'XN': use IN, BN or GN"),
    ("target_topk", {"topk": 1.5}, "method_args.topk: 1.5 is the fraction of weights kept"),
    ("lcs_l", {"setting": "unstructured", "warmup_budget": 120}, "method_args.warmup_budget"),
    ("lcs_p", {"setting": "unstructured", "fold_bn": False}, "method_args.fold_bn: does not apply to method 'lcs_p' (unstructured)"),
    ("us", {"init": "resnet50"}, "method_args.init: 'resnet50': use one of cpreresnet20, vgg19, resnet18"),
])
def test_invalid_combinations_fail_with_one_line(method_name, args, message):
    with pytest.raises(ValueError) as err:
        get_method(method_name).Args(**args)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_table_errors_name_the_row(tmp_path):
    text = (PAPERS_DIR / "lcs.yaml").read_text().replace("method_args: {setting: quantized}",
                                                          "method_args: {setting: quantized, bit_width_limits: [2, 8]}")
    (tmp_path / "lcs.yaml").write_text(text)
    with pytest.raises(ValueError, match=r"row 'cpreresnet20-quantized-lcs_l' .*method_args.bit_width_limits"):
        PaperTable(tmp_path / "lcs.yaml").specs("laptop", [0])


@pytest.mark.parametrize("scale, n", [("smoke", 11), ("laptop", 11)])
def test_table_has_every_method_of_every_setting(scale, n):
    specs = PaperTable(PAPERS_DIR / "lcs.yaml").specs(scale, [0])
    pairs = {(s.method, s.method_args["setting"]) for s in specs}
    assert len(specs) == n and pairs == {
        ("lcs_l", "structured"), ("lcs_p", "structured"), ("us", "structured"), ("ns", "structured"),
        ("lec", "structured"), ("lcs_l", "unstructured"), ("lcs_p", "unstructured"),
        ("target_topk", "unstructured"), ("lcs_l", "quantized"), ("lcs_p", "quantized"),
        ("target_bit_width", "quantized")}


def test_paper_rows_use_the_reference_recipe():
    specs = {s.row: s for s in PaperTable(PAPERS_DIR / "lcs.yaml").specs("paper", [0])}
    cifar = specs["cpreresnet20-unstructured-lcs_l"].train
    assert (cifar["epochs"], cifar["batch_size"], cifar["lr"], cifar["momentum"], cifar["weight_decay"],
            cifar["warmup_epochs"], cifar["lr_per_epoch"], cifar["eval_every"]) == (200, 128, 0.1, 0.9, 5e-4, 5, True, 20)
    assert specs["cpreresnet20-quantized-lcs_p"].train["lr"] == 0.025
    vgg = specs["vgg19-structured-us"]
    assert (vgg.dataset, vgg.train["epochs"], vgg.train["batch_size"], vgg.train["weight_decay"]) == ("imagenet", 90, 256, 5e-5)
    assert specs["resnet18-quantized-lcs_l"].train["batch_size"] == 128
    assert specs["cpreresnet20-quantized-lcs_p"].model_args["norm_position"] == "after_conv"   # ConvBn2d blocks
    assert specs["cpreresnet20-quantized-target_bit_width-3"].model_args["norm_position"] == "after_conv"
    assert "norm_position" not in specs["cpreresnet20-structured-lcs_l"].model_args
    assert specs["cpreresnet20-unstructured-lcs_p-high-sparsity"].method_args["topk_lower_bound"] == 0.005
    assert all(s.method_args.get("warmup_budget") == 80 for s in specs.values())


@pytest.mark.slow
def test_sandwich_passes_add_their_gradients():
    """The trainer backpropagates each pass of forward_levels; NS's gradient is the sum of its widths'."""
    from harness.trainer import Trainer
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        s = spec("ns")
        s.train = {"epochs": 1, "batch_size": 32}
        s.dataset_args = {"train_size": 32, "test_size": 32}
        t = Trainer(s, d)
        x, y = next(iter(t.train_loader))
        model, method = t.model, t.method
        expected = 0
        for w in (1.0, 0.75, 0.5, 0.25):
            method._set({"width": w})
            expected = expected + nn.functional.cross_entropy(model(x), y)
        grads = torch.autograd.grad(expected, [model.fc.parametrizations.weight.original])[0]
        t.optimizer.param_groups[0]["lr"] = 0.0
        model.zero_grad()
        for level in method.forward_levels(model, t.progress()):
            with level:
                nn.functional.cross_entropy(model(x), y).backward()
        assert torch.allclose(model.fc.parametrizations.weight.original.grad, grads, atol=1e-6)
