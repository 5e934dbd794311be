"""LeNet-300-100 and two LeNet-5s of the Caffe layout (conv 20 and 50 filters of 5x5, fc 500):
`lenet5-caffe`, ADMM's CaffeLeNet (hyang1990/sparsity_quantization_joint model/caffelenet.py), with
no nonlinearity after its convs, and `lenet5`, DeepHoyer's LeNet_5 (yanghr/DeepHoyer
mnist/CNN/net/models.py), with a ReLU after each conv. DeepHoyer's LeNet-300-100 is `lenet300-100`."""
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


def _lenet5(layers, num_classes, in_channels, input_size, width, conv_relu):
    c1, c2, h = int(20 * width), int(50 * width), int(500 * width)
    side = ((input_size - 4) // 2 - 4) // 2
    act = [nn.ReLU(inplace=True)] if conv_relu else []
    return nn.Sequential(
        layers.conv(in_channels, c1, 5), *act, nn.MaxPool2d(2),
        layers.conv(c1, c2, 5), *act, nn.MaxPool2d(2),
        nn.Flatten(),
        layers.linear(c2 * side * side, h), nn.ReLU(inplace=True),
        layers.linear(h, num_classes),
    )


@register_model("lenet5-caffe")
def lenet5_caffe(num_classes=10, in_channels=1, layers=None, input_size=28, width=1.0):
    """ADMM's CaffeLeNet: conv-pool-conv-pool-fc-relu-fc, no ReLU after the convs."""
    return _lenet5(layers, num_classes, in_channels, input_size, width, conv_relu=False)


@register_model("lenet5")
def lenet5(num_classes=10, in_channels=1, layers=None, input_size=28, width=1.0):
    """DeepHoyer's LeNet_5: conv-relu-pool x2, fc-relu-fc (431,080 parameters). The reference ends
    in log_softmax; we return the logits, which gives the same cross-entropy and predictions."""
    return _lenet5(layers, num_classes, in_channels, input_size, width, conv_relu=True)
