"""STR, DNW and budgets against the values str.md derives from RAIVNLab/STR on fixed tensors."""
from types import SimpleNamespace

import pytest
import torch

import models
from core.budgets import match_layers, read_budget_csv, write_budget_csv
from core.metrics import layer_sparsity, prunable_layers
from core.spec import RunSpec
from harness.building import build_model
from harness.trainer import Trainer
from methods import get_method
from methods.dnw import _TopKStraightThrough
from methods.str_method import soft_threshold


def test_str_forward_backward_on_fixed_tensors():
    w = torch.tensor([0.5, -0.3, 0.02, -0.01, 0.0, 1.2], dtype=torch.float64, requires_grad=True)
    s = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    out = soft_threshold(w, s)
    assert out.tolist() == pytest.approx([0.38079707797788, -0.18079707797788, 0, 0, 0, 1.08079707797788])
    assert float((out == 0).double().mean()) == 0.5                 # getSparsity: 50 %
    out.sum().backward()
    assert w.grad.tolist() == [1, 1, 0, 0, 0, 1]
    assert s.grad.item() == pytest.approx(-0.1049935854035065)


def test_str_second_reference_vector():
    w = torch.tensor([-0.30, -0.05, 0.0, 0.02, 0.047, 0.048, 0.20, 1.00], requires_grad=True)
    s = torch.tensor(-3.0, requires_grad=True)
    out = soft_threshold(w, s)
    assert out.tolist() == pytest.approx([-0.2525741, -0.0025741, 0, 0, 0, 0.0005741, 0.1525741, 0.9525741], abs=1e-6)
    out.sum().backward()
    assert w.grad.tolist() == [1, 1, 0, 0, 0, 1, 1, 1] and s.grad.item() == pytest.approx(-0.0451767, abs=1e-6)


def test_large_negative_init_starts_dense_with_no_threshold_gradient():
    w = torch.randn(100, requires_grad=True)
    s = torch.tensor(-3200.0, requires_grad=True)
    out = soft_threshold(w, s)
    assert torch.equal(out, w)
    out.pow(2).sum().backward()
    assert s.grad.item() == 0.0


def str_model(s_init=-3200.0, st_decay=-1.0):
    cls = get_method("str")
    method = cls(cls.Args(s_init=s_init, st_decay=st_decay))
    return method.build(models.create_model("lenet300-100", 10)), method


def test_weight_decay_alone_moves_the_threshold_as_in_the_reference():
    """str.md check 3: SGD momentum 0.875, wd 2.251757813e-5, lr 0.0512 from s = -3200."""
    model, method = str_model()
    opt = torch.optim.SGD(method.param_groups(model, 2.251757813e-5), lr=0.0512, momentum=0.875)
    s = model[1].parametrizations.weight[0].s
    for step in range(10):
        for p in model.parameters():
            p.grad = torch.zeros_like(p)     # no loss gradient reaches s (test above): decay alone
        opt.step()
        if step == 0:
            assert s.item() == pytest.approx(-3199.99631072, abs=1e-3)
    assert s.item() == pytest.approx(-3199.85710737, abs=1e-3)


def test_threshold_decay_can_differ_from_the_weights():
    model, method = str_model(st_decay=0.5)
    groups = method.param_groups(model, 1e-4)
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.5] and len(groups[1]["params"]) == 3


def test_str_to_dense_conversion_is_exact():
    model, method = str_model(s_init=-4.0)   # threshold 0.018, inside the first layer's init range
    x = torch.randn(16, 1, 28, 28)
    before = model(x)
    assert 0.0 < layer_sparsity(model)[0]["sparsity"] < 1.0
    method.finalize(model)
    assert all(type(m.weight) is torch.nn.Parameter for _, m in prunable_layers(model))
    assert torch.equal(model(x), before)
    assert set(method.report(model)["thresholds"]) == {"1", "3", "5"}


@pytest.mark.slow
def test_str_reparameterizes_the_weights_the_builders_init_made():
    """The table's weight_init (STR's kaiming normal, fan_in) is applied before STR wraps the
    layers, and the reparameterized layer keeps those weights: N(0, 2/fan_in), biases 0."""
    spec = RunSpec(scale="smoke", paper="str", row="r", seed=0, method="str", model="resnet50", dataset="synthetic",
                   train={}, model_args={"weight_init": "kaiming_normal_fan_in"}, method_args={"s_init": -3200})
    torch.manual_seed(0)
    model, _ = build_model(spec, SimpleNamespace(num_classes=1000, shape=(3, 224, 224)), torch.device("cpu"))
    layers = prunable_layers(model)
    assert len(layers) == 54
    for name, m in layers:
        original = m.parametrizations.weight.original
        assert torch.equal(m.weight, original)   # sigmoid(-3200) == 0: S(W, s) = W
        assert abs(original.std().item() / (2 / original[0].numel()) ** 0.5 - 1) < 0.05, name
    assert torch.equal(model.fc.bias, torch.zeros(1000))


def test_dnw_forward_is_top_k_and_backward_straight_through():
    x = torch.tensor([0.5, -0.1, 0.3, -0.7, 0.05, 0.2, -0.25, 0.9], requires_grad=True)
    out = _TopKStraightThrough.apply(x, torch.tensor(0.5))
    assert out.tolist() == pytest.approx([0.5, 0, 0.3, -0.7, 0, 0, 0, 0.9])
    out.sum().backward()
    assert x.grad.tolist() == [1.0] * 8


@pytest.mark.parametrize("rate, n, pruned", [(0.9, 10, 9), (0.95, 20, 19), (0.9, 100, 90), (0.5, 9, 4)])
def test_dnw_prunes_int_of_the_python_float_product(rate, n, pruned):
    # RAIVNLab/STR utils/conv_type.py ChooseEdges: j = int(prune_rate * w.numel()) with prune_rate a
    # Python float, so 0.9 of 10 weights prunes int(9.0) = 9 (a float32 rate gives int(8.99999976) = 8)
    from methods.dnw import TopK
    w = torch.arange(1.0, n + 1)
    assert int((TopK(rate)(w) == 0).sum()) == pruned == int(rate * n)


@pytest.mark.slow
def test_str_reaches_high_sparsity_on_smoke_data(tmp_path):
    spec = RunSpec(scale="smoke", paper="t", row="str", seed=0, method="str", model="lenet300-100",
                   dataset="synthetic", dataset_args={"train_size": 1024, "test_size": 256}, device="cpu",
                   method_args={"s_init": -5.0}, train={"epochs": 4, "batch_size": 64, "lr": 0.1,
                                                        "weight_decay": 5e-2, "schedule": "constant"})
    history = Trainer(spec, tmp_path, log=lambda m: None).run()["history"]
    assert history[0]["sparsity"] < history[-1]["sparsity"] and history[-1]["sparsity"] > 0.8
    assert history[-1]["test_top1"] > 50


REFERENCE_STYLE = ("\ufeffMetric,Params,FLOPs,Sparsity (%),,\n"
                   "Overall,266200,266200,80.5,90.1\n"
                   "Layer 1 - fc1,235200,235200,82.5,91.0\n"
                   "Layer 2 - fc2,30000,30000,70,85\n"
                   "Layer 3 - fc3,1000,1000,50,60\n")


def test_reference_format_budget_loads_by_position_and_column(tmp_path):
    path = tmp_path / "budget.csv"
    path.write_text(REFERENCE_STYLE, encoding="utf-8")
    entries = read_budget_csv(path, column="90.1")
    assert entries == [("fc1", 235200, pytest.approx(0.91)), ("fc2", 30000, 0.85), ("fc3", 1000, 0.6)]
    model = models.create_model("lenet300-100", 10)
    layers = [(n, m.weight.numel()) for n, m in prunable_layers(model)]
    assert match_layers(entries, layers) == {"1": pytest.approx(0.91), "3": 0.85, "5": 0.6}
    with pytest.raises(Exception, match="match neither the names nor the sizes"):
        match_layers(entries[:2], layers)


def test_budget_round_trip_and_transfer_to_dnw(tmp_path):
    model = models.create_model("lenet300-100", 10)
    with torch.no_grad():
        model[1].weight[:, :392] = 0
        model[3].weight[:90] = 0
    layers = layer_sparsity(model)
    write_budget_csv(layers, tmp_path / "budget.csv")
    back = read_budget_csv(tmp_path / "budget.csv")
    assert [(n, p) for n, p, _ in back] == [(r["layer"], r["params"]) for r in layers]
    assert [s for _, _, s in back] == pytest.approx([r["sparsity"] for r in layers], abs=1e-6)

    cls = get_method("dnw")
    dnw = cls(budget={"sparsity": 0.5, "transfer": "str-row"}, budget_file=tmp_path / "budget.csv")
    pruned = dnw.build(models.create_model("lenet300-100", 10))
    got = [r["sparsity"] for r in layer_sparsity(pruned)]
    assert got == pytest.approx([0.5, 0.9, 0.0], abs=1e-4)


def test_shipped_reference_budget_fits_our_resnet50():
    from harness.tables import ROOT
    entries = read_budget_csv(ROOT / "budgets" / "STR_Budgets_ResNet50.csv", column="90.23")
    model = models.create_model("resnet50", 1000)
    layers = [(n, m.weight.numel()) for n, m in prunable_layers(model)]
    targets = match_layers(entries, layers)
    assert targets["stem.0"] == pytest.approx(0.598) and targets["fc"] == pytest.approx(0.645)
    assert targets["stages.0.0.shortcut.0"] == pytest.approx(0.8334)
    kept = sum(p * (1 - targets[n]) for n, p in layers)
    assert kept == pytest.approx(2.492e6, rel=1e-3)      # str.md: 2.492M nonzero of 25,502,912 at 90.23 %


@pytest.mark.slow
def test_sparse_flops_of_strs_published_budget():
    """str.md check 7: sum_l (1 - s_l) FLOPs_l + 100,352 (average pool) = 342.7M at 90.23 %."""
    from core.metrics import flops
    from harness.tables import ROOT
    from methods.masking import magnitude_mask
    model = models.create_model("resnet50", 1000)
    layers = [(n, m) for n, m in prunable_layers(model)]
    targets = match_layers(read_budget_csv(ROOT / "budgets" / "STR_Budgets_ResNet50.csv", column="90.23"),
                           [(n, m.weight.numel()) for n, m in layers])
    with torch.no_grad():
        for n, m in layers:
            m.weight.mul_(magnitude_mask(m.weight, round(targets[n] * m.weight.numel())))
    assert (flops(model, (3, 224, 224))["flops"] + 100_352) / 1e6 == pytest.approx(342.7, abs=0.1)
