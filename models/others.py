"""VGG19 (network-slimming CIFAR configuration, used by LCS), MobileNetV1 (as in STR) and AlexNet
(torchvision layout, as in the ADMM paper's ImageNet experiments)."""
import torch.nn as nn

from .registry import register_model

VGG19_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
             512, 512, 512, 512, "M", 512, 512, 512, 512]


@register_model("vgg19")
def vgg19(num_classes=10, in_channels=3, layers=None, width=1.0):
    feats, c = [], in_channels
    for v in VGG19_CFG:
        if v == "M":
            feats.append(nn.MaxPool2d(2))
        else:
            v = max(1, int(round(v * width)))
            feats += [layers.conv(c, v, 3, 1, 1, bias=False), layers.norm2d(v), nn.ReLU(inplace=True)]
            c = v
    return nn.Sequential(*feats, nn.AdaptiveAvgPool2d(1), nn.Flatten(), layers.linear(c, num_classes))


MOBILENET_CFG = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                 (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]


@register_model("mobilenetv1")
def mobilenetv1(num_classes=1000, in_channels=3, layers=None, width=1.0):
    def conv_bn(cin, cout, k, stride, groups=1):
        return [layers.conv(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                layers.norm2d(cout), nn.ReLU(inplace=True)]

    c = int(32 * width)
    body = conv_bn(in_channels, c, 3, 2)
    for out, stride in MOBILENET_CFG:
        out = int(out * width)
        body += conv_bn(c, c, 3, stride, groups=c) + conv_bn(c, out, 1, 1)
        c = out
    return nn.Sequential(*body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), layers.linear(c, num_classes))


@register_model("alexnet")
def alexnet(num_classes=1000, in_channels=3, layers=None, width=1.0, dropout=0.5):
    w = lambda v: max(1, int(round(v * width)))  # noqa: E731
    return nn.Sequential(
        layers.conv(in_channels, w(64), 11, 4, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        layers.conv(w(64), w(192), 5, 1, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        layers.conv(w(192), w(384), 3, 1, 1), nn.ReLU(inplace=True),
        layers.conv(w(384), w(256), 3, 1, 1), nn.ReLU(inplace=True),
        layers.conv(w(256), w(256), 3, 1, 1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.AdaptiveAvgPool2d(6), nn.Flatten(),
        nn.Dropout(dropout), layers.linear(w(256) * 36, w(4096)), nn.ReLU(inplace=True),
        nn.Dropout(dropout), layers.linear(w(4096), w(4096)), nn.ReLU(inplace=True),
        layers.linear(w(4096), num_classes),
    )
