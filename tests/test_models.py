import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import models
from core.metrics import count_params, flops, layer_sparsity

SHAPES = {"lenet300-100": (1, 28, 28), "lenet5-caffe": (1, 28, 28), "lenet5": (1, 28, 28), "resnet20": (3, 32, 32),
          "resnet56": (3, 32, 32), "resnet110": (3, 32, 32), "cpreresnet20": (3, 32, 32), "vgg19": (3, 32, 32),
          "resnet18": (3, 64, 64), "resnet50": (3, 64, 64), "mobilenetv1": (3, 64, 64),
          "alexnet": (3, 224, 224)}


def test_every_registered_model_is_tested():
    assert set(models.model_names()) == set(SHAPES)


@pytest.mark.parametrize("name", sorted(SHAPES))
@pytest.mark.slow
def test_forward_shape(name):
    shape = SHAPES[name]
    model = models.create_model(name, num_classes=7, in_channels=shape[0]).eval()
    assert model(torch.zeros(2, *shape)).shape == (2, 7)


@pytest.mark.parametrize("name, expected", [
    ("lenet300-100", 266_610),      # DeepHoyer notes: 266,200 weights + 410 biases
    ("lenet5-caffe", 431_080),      # 430,500 weights + 580 biases
    ("lenet5", 431_080),            # DeepHoyer mnist/CNN/net/models.py LeNet_5: 20*25+20 + 50*20*25+50 + 800*500+500 + 500*10+10
    ("resnet50", 25_557_032),       # torchvision / STR README "25.6M"
    ("mobilenetv1", 4_231_976),     # STR README "4.21M" (conv+fc weights, below)
    ("resnet20", 269_722),          # He et al. "0.27M"
    ("resnet56", 853_018),          # He et al. "0.85M"
    ("resnet110", 1_727_962),       # He et al. "1.7M"
    ("resnet18", 11_689_512),       # torchvision
    ("alexnet", 61_100_840),        # torchvision; ADMM notes: 61,090,496 weights
])
@pytest.mark.slow
def test_parameter_counts(name, expected):
    nc = 10 if name in ("lenet300-100", "lenet5-caffe", "lenet5", "resnet20", "resnet56", "resnet110") else 1000
    assert count_params(models.create_model(name, nc, in_channels=SHAPES[name][0])) == expected


@pytest.mark.slow
def test_prunable_weights_match_papers():
    """STR's budget CSV counts 25,502,912 ResNet50 weights (fc as bias-free 1x1 conv) and 4,209,088
    for MobileNetV1; ADMM's AlexNet 61,090,496; ours have the same weights plus fc biases."""
    for name, weights in [("resnet50", 25_502_912), ("mobilenetv1", 4_209_088), ("alexnet", 61_090_496)]:
        model = models.create_model(name, 1000)
        assert sum(r["params"] for r in layer_sparsity(model)) == weights


@pytest.mark.parametrize("name, macs", [
    ("resnet50", 4_089_184_256),    # STR: 4,089,284,608 incl. 100,352 for the global average pool
    ("mobilenetv1", 568_740_352),   # STR README: 569M
    ("lenet300-100", 266_200),
])
@pytest.mark.slow
def test_dense_flops_as_papers_count_them(name, macs):
    shape = {"lenet300-100": (1, 28, 28)}.get(name, (3, 224, 224))
    model = models.create_model(name, 10 if name.startswith("lenet") else 1000, in_channels=shape[0])
    assert flops(model, shape)["dense_flops"] == macs


@pytest.mark.parametrize("norm, cls", [("bn", nn.BatchNorm2d), ("in", nn.InstanceNorm2d), ("gn", nn.GroupNorm)])
def test_norm_factory_swaps_every_norm(norm, cls):
    model = models.create_model("cpreresnet20", 10, layers=models.Layers(norm=norm))
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d, nn.GroupNorm))]
    assert norms and all(isinstance(m, cls) for m in norms)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_conv_and_linear_factories_swap_layer_types():
    class MyConv(nn.Conv2d):
        pass

    class MyLinear(nn.Linear):
        pass

    model = models.create_model("resnet20", 10, layers=models.Layers(conv=MyConv, linear=MyLinear))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is MyConv for m in convs)
    assert type(model.fc) is MyLinear


def test_unknown_model_suggests_a_name():
    with pytest.raises(KeyError, match="did you mean 'resnet50'"):
        models.create_model("resnet-50", 10)


# -- the reference networks: same parameter shapes in the same order, same function ----------------
def _lenet5_reference(params, x, conv_relu):
    """yanghr/DeepHoyer mnist/CNN/net/models.py LeNet_5.forward (conv_relu=True: conv -> relu ->
    max_pool2d(2, 2), twice; view(-1, 800); fc1 -> relu -> fc2) and hyang1990/sparsity_quantization_joint
    model/caffelenet.py CaffeLeNet (conv_relu=False: no relu after the convs), without DeepHoyer's
    final log_softmax (our models return logits)."""
    w1, b1, w2, b2, w3, b3, w4, b4 = params
    act = F.relu if conv_relu else (lambda t: t)
    x = F.max_pool2d(act(F.conv2d(x, w1, b1)), 2, 2)
    x = F.max_pool2d(act(F.conv2d(x, w2, b2)), 2, 2)
    return F.linear(F.relu(F.linear(x.reshape(-1, 800), w3, b3)), w4, b4)


@pytest.mark.parametrize("name, conv_relu", [("lenet5", True), ("lenet5-caffe", False)])
def test_lenet5s_compute_their_references_function(name, conv_relu):
    torch.manual_seed(0)
    params = [torch.randn(20, 1, 5, 5) * 0.2, torch.randn(20) * 0.1, torch.randn(50, 20, 5, 5) * 0.05,
              torch.randn(50) * 0.1, torch.randn(500, 800) * 0.03, torch.randn(500) * 0.1,
              torch.randn(10, 500) * 0.05, torch.randn(10) * 0.1]
    model = models.create_model(name, 10).eval()
    assert [tuple(p.shape) for p in model.parameters()] == [tuple(p.shape) for p in params]
    with torch.no_grad():
        for p, value in zip(model.parameters(), params):
            p.copy_(value)
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(model(x), _lenet5_reference(params, x, conv_relu), rtol=0, atol=1e-6)
    # the two LeNet-5s differ only by the conv ReLUs, and that changes the function
    assert not torch.allclose(model(x), _lenet5_reference(params, x, not conv_relu), atol=1e-3)


def _bearpaw_resnet_shapes(depth=110, num_classes=10):
    """state_dict shapes, in order, of bearpaw/pytorch-classification models/cifar/resnet.py (as in
    yanghr/DeepHoyer cifar/models/cifar/resnet.py) resnet(depth, num_classes), BasicBlock: conv1, bn1,
    then per block conv1, bn1, conv2, bn2 and, where stride != 1 or inplanes != planes, downsample =
    1x1 conv (stride) + BN; AvgPool2d(8); fc Linear(64, num_classes). Each BN: weight, bias,
    running_mean, running_var, num_batches_tracked."""
    bn = lambda c: [(c,), (c,), (c,), (c,), ()]  # noqa: E731
    shapes, inplanes = [(16, 3, 3, 3)] + bn(16), 16
    for planes, stride in [(16, 1), (32, 2), (64, 2)]:
        for block in range((depth - 2) // 6):
            shapes += [(planes, inplanes, 3, 3)] + bn(planes) + [(planes, planes, 3, 3)] + bn(planes)
            if block == 0 and (stride != 1 or inplanes != planes):
                shapes += [(planes, inplanes, 1, 1)] + bn(planes)
            inplanes = planes
    return shapes + [(num_classes, 64), (num_classes,)]


def test_bearpaw_resnet110_has_the_references_parameters_in_its_order():
    model = models.create_model("resnet110", 10, shortcut="conv")
    # 1,730,714: bearpaw's resnet(depth=110, num_classes=10) counted with sum(p.numel()) (README: "1.70M")
    assert count_params(model) == 1_730_714
    shapes = [tuple(v.shape) for v in model.state_dict().values()]
    assert len(shapes) == 668 and shapes == _bearpaw_resnet_shapes()   # 668 state_dict entries there too


def _bearpaw_resnet_forward(tensors, x, depth=110):
    """bearpaw ResNet.forward (BasicBlock) in torch.nn.functional, eval mode, reading the tensors in
    the reference's state_dict order."""
    it = iter(tensors)
    conv = lambda t, stride=1, pad=1: F.conv2d(t, next(it), stride=stride, padding=pad)  # noqa: E731

    def bn(t):
        w, b, mean, var, _ = (next(it) for _ in range(5))
        return F.batch_norm(t, mean, var, w, b, training=False, eps=1e-5)

    x, inplanes = F.relu(bn(conv(x))), 16
    for planes, stride in [(16, 1), (32, 2), (64, 2)]:
        for block in range((depth - 2) // 6):
            s = stride if block == 0 else 1
            out = F.relu(bn(conv(x, s)))
            out = bn(conv(out))
            residual = bn(conv(x, s, 0)) if block == 0 and (s != 1 or inplanes != planes) else x
            x, inplanes = F.relu(out + residual), planes
    x = F.avg_pool2d(x, 8).reshape(x.shape[0], -1)
    return F.linear(x, next(it), next(it))


@pytest.mark.slow
def test_bearpaw_resnet110_computes_the_references_function():
    torch.manual_seed(0)
    model = models.create_model("resnet110", 10, shortcut="conv", weight_init="kaiming_normal_fan_out")
    with torch.no_grad():   # BN statistics and affine away from 0/1, so that every tensor matters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.0), m.bias.uniform_(-0.1, 0.1)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    expected = _bearpaw_resnet_forward(list(model.state_dict().values()), x)
    assert torch.allclose(model(x), expected, rtol=1e-5, atol=1e-5)


def test_shortcut_default_stays_he_et_al_option_a():
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)
                   for m in models.create_model("resnet110", 10).modules())
    with pytest.raises(ValueError, match="model_args.shortcut 'B': use one of pad, conv"):
        models.create_model("resnet20", 10, shortcut="B")


# -- initialisation schemes (models/weight_init.py) --------------------------------------------------
def _std_matches(weight, expected_std):
    """Sample std within 5 standard errors (std / sqrt(2n)) of the expected one, or 3 %, and the mean
    within 5 standard errors (std / sqrt(n)) of 0: with ~100 layers a test, 4 is exceeded by chance."""
    n = weight.numel()
    return (abs(weight.std().item() / expected_std - 1) < max(0.03, 5 / math.sqrt(2 * n))
            and abs(weight.mean().item()) < 5 * expected_std / math.sqrt(n))


def test_str_init_is_kaiming_normal_fan_in_on_every_conv_and_the_fc_of_resnet50():
    """RAIVNLab/STR utils/builder.py _init_conv: nn.init.kaiming_normal_(w, mode="fan_in",
    nonlinearity="relu"), std = sqrt(2 / fan_in), on every conv and on the fc (conv1x1(2048, 1000),
    fan_in 2048: std 0.03125)."""
    torch.manual_seed(0)
    model = models.create_model("resnet50", 1000, weight_init="kaiming_normal_fan_in")
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 54
    for m in layers:
        fan_in = m.weight[0].numel()
        assert _std_matches(m.weight, math.sqrt(2 / fan_in)), m
    assert model.fc.weight[0].numel() == 2048 and torch.equal(model.fc.bias, torch.zeros(1000))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):   # LearnedBatchNorm = nn.BatchNorm2d: no zero-init of the last BN
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))


def _within_torch_default_bound(m):
    """PyTorch's default conv/linear init, kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in)), std bound/sqrt(3)."""
    bound = 1 / math.sqrt(m.weight[0].numel())
    return m.weight.abs().max().item() <= bound and _std_matches(m.weight, bound / math.sqrt(3))


def test_str_mobilenetv1_init_touches_only_the_fc():
    """STR models/mobilenetv1.py: convs from builder.conv2d (no _init_conv: PyTorch's default);
    fc = builder.conv1x1(1024, 1000): kaiming normal fan_in, std sqrt(2/1024)."""
    torch.manual_seed(0)
    model = models.create_model("mobilenetv1", 1000, weight_init="kaiming_normal_fan_in_fc")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 27 and all(_within_torch_default_bound(m) for m in convs if m.weight.numel() > 1000)
    fc = model[-1]
    assert _std_matches(fc.weight, math.sqrt(2 / 1024)) and torch.equal(fc.bias, torch.zeros(1000))


def test_bearpaw_init_of_resnet110():
    """bearpaw models/cifar/resnet.py: conv weight.normal_(0, sqrt(2 / n)), n = k*k*out_channels;
    BN weight 1, bias 0; the fc keeps nn.Linear's default."""
    torch.manual_seed(0)
    model = models.create_model("resnet110", 10, shortcut="conv", weight_init="kaiming_normal_fan_out")
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            assert _std_matches(m.weight, math.sqrt(2 / n)), m
        elif isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))
    assert _within_torch_default_bound(model.fc)


@pytest.mark.parametrize("name", sorted(SHAPES))
@pytest.mark.slow
def test_default_init_leaves_models_as_pytorch_builds_them(name):
    shape = SHAPES[name]
    torch.manual_seed(0)
    default = models.create_model(name, 10, in_channels=shape[0]).state_dict()
    torch.manual_seed(0)
    named = models.create_model(name, 10, in_channels=shape[0], weight_init="torch").state_dict()
    assert all(torch.equal(default[k], named[k]) for k in default)


@pytest.mark.slow
def test_default_init_is_pytorchs_own():
    torch.manual_seed(0)
    layers = [m for m in models.create_model("resnet50", 1000).modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert all(_within_torch_default_bound(m) for m in layers if m.weight.numel() > 1000)


def test_model_args_are_checked_with_one_line():
    with pytest.raises(ValueError, match="model_args.weight_init 'kaiming': use one of torch, kaiming_normal_fan_in"):
        models.create_model("resnet20", 10, weight_init="kaiming")
    with pytest.raises(ValueError, match="unknown model_args key 'shortcuts' for model 'resnet110'; did you mean 'shortcut'"):
        models.check_model_args("resnet110", {"shortcuts": "conv"})
    with pytest.raises(ValueError, match="model_args.shortcut 'option_b': use one of pad, conv"):
        models.check_model_args("resnet110", {"shortcut": "option_b"})
    with pytest.raises(ValueError, match="model_args.weight_init 'bearpaw'"):
        models.check_model_args("resnet110", {"weight_init": "bearpaw"})
    models.check_model_args("lenet5", {"width": 0.5, "input_size": 28, "weight_init": "kaiming_normal_fan_in"})
