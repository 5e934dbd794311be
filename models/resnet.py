"""Residual networks: CIFAR ResNet-20/56/110 (He et al. 2016: option-A shortcuts by default;
`shortcut: conv` gives option B, the 1x1 conv + BN downsample of bearpaw/pytorch-classification
models/cifar/resnet.py, the network of DeepHoyer's CIFAR experiments), the pre-activation
bottleneck cPreResNet20 of network slimming (used by LCS), and ImageNet ResNet18/50 (v1.5: stride
on the 3x3 conv, as in torchvision and STR)."""
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, layers, inplanes, planes, stride=1, shortcut="conv"):
        super().__init__()
        self.conv1 = layers.conv(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = layers.norm2d(planes)
        self.conv2 = layers.conv(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = layers.norm2d(planes)
        self.shortcut = _shortcut(layers, inplanes, planes, stride, shortcut)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, layers, inplanes, planes, stride=1, shortcut="conv"):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = layers.conv(inplanes, planes, 1, bias=False)
        self.bn1 = layers.norm2d(planes)
        self.conv2 = layers.conv(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = layers.norm2d(planes)
        self.conv3 = layers.conv(planes, out, 1, bias=False)
        self.bn3 = layers.norm2d(out)
        self.shortcut = _shortcut(layers, inplanes, out, stride, shortcut)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class PadShortcut(nn.Module):
    """Option A of He et al.: subsample and zero-pad channels; no parameters."""

    def __init__(self, planes, stride):
        super().__init__()
        self.stride, self.pad = stride, planes

    def forward(self, x):
        x = x[:, :, ::self.stride, ::self.stride]
        extra = self.pad - x.shape[1]
        return F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))


SHORTCUTS = ("pad", "conv")


def _shortcut(layers, inplanes, planes, stride, kind):
    if stride == 1 and inplanes == planes:
        return nn.Identity()
    if kind == "pad":
        return PadShortcut(planes, stride)
    return nn.Sequential(layers.conv(inplanes, planes, 1, stride, bias=False), layers.norm2d(planes))


class ResNet(nn.Module):
    def __init__(self, layers, block, depths, widths, num_classes, in_channels, stem, shortcut):
        super().__init__()
        if shortcut not in SHORTCUTS:
            raise ValueError(f"model_args.shortcut {shortcut!r}: use one of {', '.join(SHORTCUTS)}")
        self.inplanes = widths[0]
        if stem == "cifar":
            self.stem = nn.Sequential(layers.conv(in_channels, self.inplanes, 3, 1, 1, bias=False),
                                      layers.norm2d(self.inplanes), nn.ReLU(inplace=True))
        else:
            self.stem = nn.Sequential(layers.conv(in_channels, self.inplanes, 7, 2, 3, bias=False),
                                      layers.norm2d(self.inplanes), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, 2, 1))
        stages = []
        for i, (depth, width) in enumerate(zip(depths, widths)):
            blocks = []
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(layers, self.inplanes, width, stride, shortcut))
                self.inplanes = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = layers.linear(self.inplanes, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.stages(self.stem(x))).flatten(1))


def _scaled(widths, width):
    return [max(1, int(round(w * width))) for w in widths]


@register_model("resnet20")
def resnet20(num_classes=10, in_channels=3, layers=None, width=1.0, shortcut="pad"):
    return ResNet(layers, BasicBlock, [3, 3, 3], _scaled([16, 32, 64], width), num_classes,
                  in_channels, "cifar", shortcut)


@register_model("resnet56")
def resnet56(num_classes=10, in_channels=3, layers=None, width=1.0, shortcut="pad"):
    return ResNet(layers, BasicBlock, [9, 9, 9], _scaled([16, 32, 64], width), num_classes,
                  in_channels, "cifar", shortcut)


@register_model("resnet110")
def resnet110(num_classes=10, in_channels=3, layers=None, width=1.0, shortcut="pad"):
    return ResNet(layers, BasicBlock, [18, 18, 18], _scaled([16, 32, 64], width), num_classes,
                  in_channels, "cifar", shortcut)


@register_model("resnet18")
def resnet18(num_classes=1000, in_channels=3, layers=None, width=1.0):
    return ResNet(layers, BasicBlock, [2, 2, 2, 2], _scaled([64, 128, 256, 512], width),
                  num_classes, in_channels, "imagenet", "conv")


@register_model("resnet50")
def resnet50(num_classes=1000, in_channels=3, layers=None, width=1.0):
    return ResNet(layers, Bottleneck, [3, 4, 6, 3], _scaled([64, 128, 256, 512], width),
                  num_classes, in_channels, "imagenet", "conv")


class PreBottleneck(nn.Module):
    """Pre-activation bottleneck of network slimming's preresnet: norm-relu-conv x3. With
    norm_position "after_conv" each conv (the shortcut's too) is followed by its own norm instead,
    relu-conv-norm x3: the layout of LCS's quantized cPreResNet20, whose ConvBn2d blocks carry the
    norm after the conv and leave the pre-activation norms out (its builder's NoOpBN)."""
    expansion = 4

    def __init__(self, layers, inplanes, planes, stride, norm_position="before_conv"):
        super().__init__()
        before = norm_position == "before_conv"

        def conv(cin, cout, *args):
            c = layers.conv(cin, cout, *args, bias=False)
            return c if before else nn.Sequential(c, layers.norm2d(cout))

        def norm(channels):
            return layers.norm2d(channels) if before else nn.Identity()

        self.bn1 = norm(inplanes)
        self.conv1 = conv(inplanes, planes, 1)
        self.bn2 = norm(planes)
        self.conv2 = conv(planes, planes, 3, stride, 1)
        self.bn3 = norm(planes)
        self.conv3 = conv(planes, planes * 4, 1)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = conv(inplanes, planes * 4, 1, stride)

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + (x if self.downsample is None else self.downsample(x))


NORM_POSITIONS = ("before_conv", "after_conv")


class PreResNet(nn.Module):
    def __init__(self, layers, depth, widths, num_classes, in_channels, norm_position="before_conv"):
        super().__init__()
        if norm_position not in NORM_POSITIONS:
            raise ValueError(f"model_args.norm_position {norm_position!r}: use one of {', '.join(NORM_POSITIONS)}")
        n = (depth - 2) // 9
        self.stem = layers.conv(in_channels, widths[0], 3, 1, 1, bias=False)
        inplanes, stages = widths[0], []
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(PreBottleneck(layers, inplanes, planes, 2 if (i > 0 and j == 0) else 1, norm_position))
                inplanes = planes * 4
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.norm = layers.norm2d(inplanes)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = layers.linear(inplanes, num_classes)

    def forward(self, x):
        out = F.relu(self.norm(self.stages(self.stem(x))))
        return self.fc(self.pool(out).flatten(1))


@register_model("cpreresnet20")
def cpreresnet20(num_classes=10, in_channels=3, layers=None, width=1.0, norm_position="before_conv"):
    return PreResNet(layers, 20, _scaled([16, 32, 64], width), num_classes, in_channels, norm_position)
