"""GMP against the formulas: Zhu & Gupta's cubic schedule, and STR's reference variant with the
values its notes derive from RAIVNLab/STR main.py and utils/conv_type.py on fixed inputs."""
import pytest
import torch

import models
from core.metrics import layer_sparsity
from methods import Progress, get_method
from methods.gmp import str_reference_rate, zhu_gupta_sparsity
from methods.masking import magnitude_mask, raw_weight


@pytest.mark.parametrize("epoch, rate", [(0, 0.0), (20, 0.0), (21, 0.04425416666666682), (35, 0.5203125),
                                         (50, 0.7875), (65, 0.8859375), (78, 0.899967), (79, 0.8999958333333333),
                                         (90, 0.8999958333333333)])
def test_str_reference_schedule_never_reaches_its_target(epoch, rate):
    assert str_reference_rate(epoch, 0.9, 20, 79) == pytest.approx(rate, abs=5e-7)


def test_zhu_gupta_schedule_follows_the_cubic_formula():
    s = lambda t: zhu_gupta_sparsity(t, 0.9, 0.0, begin=0, end=100, frequency=10)  # noqa: E731
    assert s(0) == 0.0
    assert s(55) == pytest.approx(0.9 * (1 - (1 - 50 / 100) ** 3))   # held since the update at 50
    assert s(99) == pytest.approx(0.9 * (1 - 0.1 ** 3))
    assert s(100) == 0.9 and s(500) == 0.9                          # reaches the target exactly
    assert zhu_gupta_sparsity(3, 0.8, 0.2, begin=5, end=10) == 0.2   # s_i before t0


def test_magnitude_mask_matches_reference_choose_edges():
    x = torch.tensor([0.5, -0.1, 0.3, -0.7, 0.05, 0.2, -0.25, 0.9])
    assert torch.equal(x * magnitude_mask(x, int(0.25 * 8)),
                       torch.tensor([0.5, 0, 0.3, -0.7, 0, 0.2, -0.25, 0.9]))
    assert torch.equal(x * magnitude_mask(x, int(0.5 * 8)),
                       torch.tensor([0.5, 0, 0.3, -0.7, 0, 0, 0, 0.9]))


def test_magnitude_mask_is_a_stable_sort_at_ties_and_edges():
    """The selection (kthvalue) prunes what a stable ascending sort of |w| puts first."""
    def by_sort(w, n):
        mask = torch.ones(w.numel())
        mask[w.abs().flatten().argsort(stable=True)[:n]] = 0
        return mask.view(w.shape)
    w = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    w[:300], w[500:600], w[700:750] = 0.0, -0.5, 0.5     # ties at zero and at +-0.5, on either side of many cuts
    for n in range(0, 1001):
        assert torch.equal(magnitude_mask(w, n), by_sort(w, n)), n
    conv = torch.randn(8, 4, 3, 3).to(memory_format=torch.channels_last)
    assert torch.equal(magnitude_mask(conv, 100), by_sort(conv, 100))


def _gmp(model, sparsity, **args):
    cls = get_method("gmp")
    method = cls(cls.Args(**args), {"sparsity": sparsity})
    return method.build(model), method


def _run_schedule(model, method, epochs=4, steps=5, start=0):
    for epoch in range(start, epochs):
        method.on_epoch_start(model, Progress(epoch, epoch * steps, steps, epochs))
        for i in range(steps):
            method.on_step(model, Progress(epoch, epoch * steps + i + 1, steps, epochs))


@pytest.mark.parametrize("target", [0.5, 0.9, 0.98])
def test_gmp_reaches_target_exactly_in_every_layer(target):
    model, method = _gmp(models.create_model("lenet300-100", 10), target, end_epoch=2)
    _run_schedule(model, method)
    for row in layer_sparsity(model):
        assert row["params"] - row["nonzero"] == round(target * row["params"])


@pytest.mark.slow
def test_zhu_gupta_masks_are_monotone_and_reference_masks_are_not():
    for schedule, revived in [("zhu_gupta", False), ("str_reference", True)]:
        model, method = _gmp(models.create_model("lenet300-100", 10), 0.5, end_epoch=3, schedule=schedule)
        _run_schedule(model, method, epochs=2)
        layer = model[1]
        pruned = method.masks["1"].mask == 0
        assert pruned.any()
        with torch.no_grad():
            raw_weight(layer)[pruned] = 100.0          # pruned weights grow large mid-schedule
        _run_schedule(model, method, epochs=4, start=2)
        assert bool((layer.weight[pruned] != 0).any()) is revived


def test_layerwise_budget_overrides_uniform_sparsity():
    model, method = _gmp(models.create_model("lenet300-100", 10), 0.5, end_epoch=1)
    method.budget["layerwise"] = {"1": 0.9}
    _run_schedule(model, method, epochs=2)
    got = {r["layer"]: r["sparsity"] for r in layer_sparsity(model)}
    assert got["1"] == pytest.approx(0.9) and got["3"] == pytest.approx(0.5)
