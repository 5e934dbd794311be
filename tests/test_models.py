import pytest
import torch
import torch.nn as nn

import models
from harness.metrics import count_params, flops, layer_sparsity

SHAPES = {"lenet300-100": (1, 28, 28), "lenet5-caffe": (1, 28, 28), "resnet20": (3, 32, 32),
          "resnet56": (3, 32, 32), "resnet110": (3, 32, 32), "cpreresnet20": (3, 32, 32), "vgg19": (3, 32, 32),
          "resnet18": (3, 64, 64), "resnet50": (3, 64, 64), "mobilenetv1": (3, 64, 64),
          "alexnet": (3, 224, 224)}


def test_every_registered_model_is_tested():
    assert set(models.model_names()) == set(SHAPES)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_forward_shape(name):
    shape = SHAPES[name]
    model = models.create_model(name, num_classes=7, in_channels=shape[0]).eval()
    assert model(torch.zeros(2, *shape)).shape == (2, 7)


@pytest.mark.parametrize("name, expected", [
    ("lenet300-100", 266_610),      # DeepHoyer notes: 266,200 weights + 410 biases
    ("lenet5-caffe", 431_080),      # 430,500 weights + 580 biases
    ("resnet50", 25_557_032),       # torchvision / STR README "25.6M"
    ("mobilenetv1", 4_231_976),     # STR README "4.21M" (conv+fc weights, below)
    ("resnet20", 269_722),          # He et al. "0.27M"
    ("resnet56", 853_018),          # He et al. "0.85M"
    ("resnet110", 1_727_962),       # He et al. "1.7M"
    ("resnet18", 11_689_512),       # torchvision
    ("alexnet", 61_100_840),        # torchvision; ADMM notes: 61,090,496 weights
])
def test_parameter_counts(name, expected):
    nc = 10 if name in ("lenet300-100", "lenet5-caffe", "resnet20", "resnet56", "resnet110") else 1000
    assert count_params(models.create_model(name, nc, in_channels=SHAPES[name][0])) == expected


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
