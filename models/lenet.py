"""LeNet-300-100 and LeNet-5 (Caffe variant, 20-50-500), as used by DeepHoyer and the ADMM paper."""
import torch.nn as nn

from .registry import register_model


@register_model("lenet300-100")
def lenet300_100(num_classes=10, in_channels=1, layers=None, input_size=28, width=1.0):
    h1, h2 = int(300 * width), int(100 * width)
    return nn.Sequential(
        nn.Flatten(),
        layers.linear(in_channels * input_size * input_size, h1), nn.ReLU(inplace=True),
        layers.linear(h1, h2), nn.ReLU(inplace=True),
        layers.linear(h2, num_classes),
    )


@register_model("lenet5-caffe")
def lenet5_caffe(num_classes=10, in_channels=1, layers=None, input_size=28, width=1.0):
    c1, c2, h = int(20 * width), int(50 * width), int(500 * width)
    side = ((input_size - 4) // 2 - 4) // 2
    return nn.Sequential(
        layers.conv(in_channels, c1, 5), nn.MaxPool2d(2),
        layers.conv(c1, c2, 5), nn.MaxPool2d(2),
        nn.Flatten(),
        layers.linear(c2 * side * side, h), nn.ReLU(inplace=True),
        layers.linear(h, num_classes),
    )
