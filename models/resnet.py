"""ResNets for CIFAR (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

The CIFAR variant used by RigL / CigL: a 3x3 stride-1 stem conv (64 channels) with no max-pool,
four stages of widths 64/128/256/512 with strides 1/2/2/2, global average pool, linear.
ResNet-18 uses basic blocks [2, 2, 2, 2]; ResNet-50 bottleneck blocks [3, 4, 6, 3] (expansion 4).
Shortcuts that change shape are 1x1 conv + BN (option B of He et al.).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._init import dropout_or_identity, init_cifar_weights


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """1x1 conv + BN shortcut when the shape changes, identity otherwise."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    conv = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, added to the shortcut, then ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _projection(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1(x4)-BN, added to the shortcut, then ReLU."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = _projection(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stem, no max-pool, stages 64/128/256/512, avg-pool, [dropout], linear."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: tuple[int, int, int, int],
        num_classes: int = 10,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        stages: list[nn.Module] = []
        for planes, n, stride in zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2)):
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(block(in_planes, planes, s))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.dropout = dropout_or_identity(dropout)
        self.linear = nn.Linear(in_planes, num_classes)
        init_cifar_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.linear(self.dropout(x))


def resnet18(num_classes: int = 10, dropout: float = 0.0) -> ResNet:
    """CIFAR ResNet-18 (basic blocks [2, 2, 2, 2]); 11,173,962 parameters for 10 classes."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, dropout)


def resnet50(num_classes: int = 10, dropout: float = 0.0) -> ResNet:
    """CIFAR ResNet-50 (bottleneck blocks [3, 4, 6, 3]) as used by RigL / CigL."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, dropout)
