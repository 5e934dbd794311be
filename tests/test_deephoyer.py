"""DeepHoyer's regularizers, pruning rules and masked finetuning against the values the reference
notes derive from yanghr/DeepHoyer's formulas on fixed tensors (admm_hoyer.md B-1..B-3)."""
import math

import pytest
import torch

import models
from core.metrics import layer_sparsity, prunable_layers, sparsity_summary
from core.spec import RunSpec
from harness.trainer import Trainer
from methods import get_method
from methods.finetune import prune_tensor
from methods.regularizers import ELEMENT, group_hs, group_lasso, group_norms, hoyer, hoyer_square, l1, tl1

W = torch.tensor([3.0, -4.0, 0.0, 0.0])


@pytest.mark.parametrize("scale, expected", [
    (1.0, {l1: 7.0, hoyer: 1.4, hoyer_square: 1.96, tl1: 3.1}),
    (10.0, {l1: 70.0, hoyer: 1.4, hoyer_square: 1.96, tl1: 3.88670338}),
    (0.1, {l1: 0.7, hoyer: 1.4, hoyer_square: 1.96, tl1: 1.03296703}),
])
def test_element_regularizer_values_and_scale_invariance(scale, expected):
    for fn, value in expected.items():
        assert fn(W * scale).item() == pytest.approx(value, rel=1e-6), fn.__name__


def test_dense_vector_reaches_the_hoyer_maximum():
    ones = torch.ones(4)
    assert hoyer(ones).item() == pytest.approx(2.0) and hoyer_square(ones).item() == pytest.approx(4.0)
    assert tl1(ones).item() == pytest.approx(4.0)


@pytest.mark.parametrize("fn, grad", [
    (hoyer, [1 / 5 - 7 * 3 / 125, -1 / 5 + 7 * 4 / 125, 0, 0]),          # sign/||w|| - sum|w| w/||w||^3
    (hoyer_square, [2 * 7 / 25 - 2 * 49 * 3 / 625, -2 * 7 / 25 + 2 * 49 * 4 / 625, 0, 0]),
    (tl1, [2 / 16, -2 / 25, 0, 0]),                                      # 2 sign(w) / (1 + |w|)^2
    (l1, [1, -1, 0, 0]),
])
def test_element_regularizer_gradients(fn, grad):
    w = W.clone().requires_grad_()
    fn(w).backward()
    assert w.grad.tolist() == pytest.approx(grad, abs=1e-7)


def test_group_regularizers_on_a_linear_weight():
    w = torch.tensor([[3.0, 0.0, 0.0], [4.0, 0.0, 1.0]])   # out x in
    cols, rows = group_norms(w)
    assert cols.tolist() == pytest.approx([5, 0, 1]) and rows.tolist() == pytest.approx([3, math.sqrt(17)])
    assert group_lasso(w).item() == pytest.approx(13.12310563)
    assert group_hs(w).item() == pytest.approx(3.33610130)


def test_group_regularizers_on_a_conv_weight():
    w = torch.arange(1.0, 17.0).reshape(2, 2, 2, 2)
    channels, filters = group_norms(w)
    assert channels.sum().item() == pytest.approx(53.75486307) and filters.sum().item() == pytest.approx(50.22725837)
    assert group_hs(w).item() == pytest.approx(3.61788956)
    assert group_lasso(w).item() == pytest.approx(103.98212144)
    assert group_lasso(w, "fiber").item() == pytest.approx(206.50644665)   # the reference's MNIST-CNN variant


def test_group_hs_minimum_for_one_filter_and_channel_and_scale_invariance():
    w = torch.zeros(2, 2, 2, 2)
    w[0, 0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert group_hs(w).item() == pytest.approx(2.0)
    dense = torch.randn(4, 3, 3, 3)
    assert group_hs(dense * 7).item() == pytest.approx(group_hs(dense).item(), rel=1e-5)


T = [0.5, -0.01, 0.02, -0.7, 0.03, 0.0, 0.0005, -0.2]


@pytest.mark.parametrize("rule, value, expected", [
    ("std", 0.1, [0.5, 0, 0, -0.7, 0, 0, 0, -0.2]),                     # thr = 0.1 * 0.30928248
    ("threshold", 0.001, [0.5, -0.01, 0.02, -0.7, 0.03, 0, 0, -0.2]),
    ("threshold", 0.02, [0.5, 0, 0.02, -0.7, 0.03, 0, 0, -0.2]),          # strict: |w| < s
])
def test_pruning_rules(rule, value, expected):
    w = torch.tensor(T, dtype=torch.float64)
    prune_tensor(w, rule, value)
    assert w.tolist() == expected


def test_regularized_loss_adds_decay_times_regularizer():
    cls = get_method("hoyer_square")
    method = cls(cls.Args(decay=0.5))
    model = models.create_model("lenet300-100", 10)
    expected = sum(hoyer_square(p) for p in model.parameters())
    assert method.loss(model, None, torch.tensor(1.0)).item() == pytest.approx(1 + 0.5 * expected.item(), rel=1e-5)


@pytest.mark.slow
def test_finetuning_keeps_pruned_weights_at_zero(tmp_path):
    spec = dict(scale="smoke", paper="t", seed=0, model="lenet5-caffe", dataset="synthetic",
                dataset_args={"train_size": 256, "test_size": 64}, device="cpu")
    Trainer(RunSpec(row="dense", method="dense", train={"epochs": 1, "batch_size": 64, "lr": 0.05}, **spec),
            tmp_path / "dense", log=lambda m: None).run()
    tune = RunSpec(row="tune", method="finetune", method_args={"prune": "std", "value": 0.5},
                   train={"epochs": 2, "batch_size": 64, "optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-4},
                   **spec)
    trainer = Trainer(tune, tmp_path / "tune", init_path=tmp_path / "dense" / "model.pt", log=lambda m: None)
    before = _effective(trainer.model)
    zeros = {n: p == 0 for n, p in before.items()}
    assert sum(int(z.sum()) for z in zeros.values()) > 1000
    trainer.run()
    after = _effective(trainer.model)
    assert all(bool((after[n][z] == 0).all()) for n, z in zeros.items())
    assert not torch.equal(after["5.weight"][~zeros["5.weight"]], before["5.weight"][~zeros["5.weight"]])


def _effective(model):
    out = {}
    for name, m in prunable_layers(model):
        out[name + ".weight"] = m.weight.detach().clone()
        out[name + ".bias"] = m.bias.detach().clone()
    return out


# -- which tensors are pruned and masked (method_args.tensors) -----------------------------------------
# cifar/cifar_prun_tune.py: `for name, p in model.named_parameters(): if 'weight' in name:` threshold
# |w| < sensitivity and mask the gradient: conv, linear AND BatchNorm weights (gamma), no biases.
# mnist/*/prun_tune_T.py / _V.py: every named parameter (the LeNets' weights and biases).
SMALL = {"conv.weight": [[[[0.5, 5e-5], [-0.3, 2e-5]]], [[[1e-5, 0.2], [0.1, -0.4]]]], "conv.bias": [5e-5, 0.3],
         "bn.weight": [0.8, 3e-5], "bn.bias": [2e-5, 0.1],
         "fc.weight": [[0.3, -6e-5, 0.2, 0.1, -0.2, 0.4, 7e-5, 0.1], [0.2] * 8], "fc.bias": [1e-5, 0.2]}


def conv_bn_fc():
    model = torch.nn.Sequential()
    model.add_module("conv", torch.nn.Conv2d(1, 2, 2))
    model.add_module("bn", torch.nn.BatchNorm2d(2))
    model.add_module("flat", torch.nn.Flatten())
    model.add_module("fc", torch.nn.Linear(8, 2))
    model.load_state_dict({**model.state_dict(), **{k: torch.tensor(v) for k, v in SMALL.items()}})
    return model


@pytest.mark.parametrize("tensors, pruned", [
    ("weights_norm", {"conv.weight", "bn.weight", "fc.weight"}),      # cifar_prun_tune.py
    ("weights_biases", {"conv.weight", "conv.bias", "fc.weight", "fc.bias"}),   # the MNIST scripts
    ("weights", {"conv.weight", "fc.weight"}),                          # ADMM's finetune.py masks
])
def test_pruned_tensors_follow_the_option_and_stay_zero_through_training(tensors, pruned):
    cls = get_method("finetune")
    method = cls(cls.Args(prune="threshold", value=1e-4, tensors=tensors))
    model = method.build(conv_bn_fc())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        opt.zero_grad()
        model(x).pow(2).sum().backward()
        opt.step()
    method.finalize(model)
    assert not any(".parametrizations." in k for k in model.state_dict())        # masks baked, BN's too
    state = model.state_dict()
    for name, start in SMALL.items():
        start = torch.tensor(start)
        small = start.abs() < 1e-4
        if name in pruned:
            assert torch.all(state[name][small] == 0), name                      # pruned and kept at 0
            assert torch.all(state[name][~small] != 0), name
        else:
            assert torch.all(state[name] != 0), name                             # neither pruned nor masked
    report = method.report(model)
    assert report == ({"norm_weights": 2, "norm_nonzero": 1} if tensors == "weights_norm" else {})
    assert sparsity_summary(layer_sparsity(model))["nonzero_params"] == 24 - 5   # conv/linear weights only


def test_unknown_tensors_option_is_a_clear_error():
    cls = get_method("finetune")
    with pytest.raises(ValueError, match="tensors 'norms' unknown; use one of weights_biases, weights, weights_norm"):
        cls(cls.Args(tensors="norms")).build(conv_bn_fc())


@pytest.mark.parametrize("name", ["l1", "hoyer", "hoyer_square", "tl1"])
def test_element_regularizers_value_and_gradient_are_the_formulas(name):
    """The hand-written backward passes give what autograd gives on the plain formulas; an all-zero
    tensor adds 0 with a zero gradient (the reference skips it)."""
    plain = {"l1": lambda p: p.abs().sum(), "hoyer": lambda p: p.abs().sum() / p.pow(2).sum().sqrt(),
             "hoyer_square": lambda p: p.abs().sum() ** 2 / p.pow(2).sum(),
             "tl1": lambda p: (2 * p.abs() / (1 + p.abs())).sum()}[name]
    g = torch.Generator().manual_seed(0)
    for shape in [(300, 784), (20, 1, 5, 5), (7,)]:
        p = torch.randn(shape, dtype=torch.float64, generator=g)
        p.view(-1)[::5] = 0                                   # sign(0) = 0, as abs's gradient
        ours, theirs = p.clone().requires_grad_(), p.clone().requires_grad_()
        a, b = ELEMENT[name](ours), plain(theirs)
        (3 * a).backward()
        (3 * b).backward()
        assert torch.allclose(a, b, rtol=1e-12)
        assert torch.allclose(ours.grad, theirs.grad, rtol=1e-9, atol=1e-12)
    zero = torch.zeros(5, requires_grad=True)
    value = ELEMENT[name](zero)
    value.backward()
    assert value.item() == 0 and torch.equal(zero.grad, torch.zeros(5))


@pytest.mark.parametrize("name", ["l1", "hoyer", "hoyer_square", "tl1"])
def test_element_regularizer_over_several_tensors_is_the_sum_over_each(name):
    """The model's tensors go through one autograd node together; value and gradients are those of
    each tensor alone, summed, an all-zero tensor among them included."""
    fn = ELEMENT[name]
    g = torch.Generator().manual_seed(1)
    shapes = [(30, 78), (30,), (10, 30), (4,)]
    tensors = [torch.randn(s, dtype=torch.float64, generator=g) for s in shapes]
    tensors[3].zero_()
    together = [t.clone().requires_grad_() for t in tensors]
    alone = [t.clone().requires_grad_() for t in tensors]
    a = fn(*together)
    b = sum(fn(t) for t in alone)
    (2 * a).backward()
    (2 * b).backward()
    assert torch.allclose(a, b, rtol=1e-12)
    for x, y in zip(together, alone):
        assert torch.allclose(x.grad, y.grad, rtol=1e-12, atol=1e-15)
    assert torch.equal(together[3].grad, torch.zeros(4, dtype=torch.float64))
    assert float(fn()) == 0                      # no tensors: nothing to add
