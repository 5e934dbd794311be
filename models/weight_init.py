"""Weight initialisation as the papers' reference code does it. A table row picks a scheme with
`model_args: {weight_init: <name>}`; `create_model` applies it to the plain model right after
building it, before a method wraps its layers (STR's parametrization, masks and quantizers keep the
weight they find). The default, `torch`, keeps PyTorch's own initialisation, so rows that name no
scheme are built exactly as before."""
import torch.nn as nn


def keep_torch_default(model):
    """PyTorch's defaults: conv/linear weights kaiming_uniform(a=sqrt(5)), i.e. U(+-1/sqrt(fan_in)),
    biases U(+-1/sqrt(fan_in)); norms weight 1, bias 0. DeepHoyer's MNIST LeNets and ADMM's
    CaffeLeNet use these (neither re-initialises)."""


def _kaiming_normal_fan_in(layer):
    nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
    if layer.bias is not None:   # the reference's layers have no bias: zero keeps the same function
        nn.init.zeros_(layer.bias)


def kaiming_normal_fan_in(model):
    """STR (RAIVNLab/STR utils/builder.py Builder._init_conv with the configs' `init: kaiming_normal,
    mode: fan_in, nonlinearity: relu`): every layer its Builder.conv builds, the convs and the fc
    (a bias-free 1x1 conv, `builder.conv1x1(2048, 1000)`, fan_in 2048 = our Linear's in_features),
    gets N(0, 2/fan_in). Biases are zeroed. Norms keep weight 1, bias 0 (bn_type LearnedBatchNorm is
    plain nn.BatchNorm2d; `last_bn` is ignored: no zero-init of the last BN)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            _kaiming_normal_fan_in(m)


def kaiming_normal_fan_in_fc(model):
    """STR's MobileNetV1 (RAIVNLab/STR models/mobilenetv1.py): its convs come from
    `builder.conv2d`, which skips `_init_conv` (PyTorch's default stays); only the fc,
    `builder.conv1x1(1024, 1000)`, gets N(0, 2/fan_in)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("model_args.weight_init kaiming_normal_fan_in_fc: the model has no linear classifier")
    _kaiming_normal_fan_in(linears[-1])


def kaiming_normal_fan_out(model):
    """bearpaw/pytorch-classification models/cifar/resnet.py (DeepHoyer's CIFAR ResNets): every conv
    weight ~ N(0, 2/n) with n = k*k*out_channels (= torch's fan_out), BN weight 1, bias 0; the fc and
    conv biases keep PyTorch's default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


WEIGHT_INITS = {
    "torch": keep_torch_default,
    "kaiming_normal_fan_in": kaiming_normal_fan_in,
    "kaiming_normal_fan_in_fc": kaiming_normal_fan_in_fc,
    "kaiming_normal_fan_out": kaiming_normal_fan_out,
}


def check_weight_init(name):
    if name not in WEIGHT_INITS:
        raise ValueError(f"model_args.weight_init {name!r}: use one of {', '.join(WEIGHT_INITS)}")


def apply_weight_init(model, name):
    check_weight_init(name)
    WEIGHT_INITS[name](model)
    return model
