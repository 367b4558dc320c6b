"""Wide Residual Networks for CIFAR (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

WRN-D-K: a 3x3 stem conv to 16 channels, three groups of n = (D - 4) / 6 pre-activation basic
blocks (BN-ReLU-conv3x3-BN-ReLU-[dropout]-conv3x3) of widths 16K, 32K, 64K with strides 1, 2, 2,
then BN-ReLU-global-avg-pool-linear.  A block whose width or stride changes uses a 1x1 conv
shortcut on the pre-activated input, as in the authors' reference code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._init import dropout_or_identity, init_cifar_weights


def wrn_blocks_per_group(depth: int) -> int:
    """n for depth D = 6n + 4 (n >= 1); ValueError otherwise."""
    if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, ...), got {depth!r}")
    return (depth - 4) // 6


class WideBasicBlock(nn.Module):
    """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3 plus shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.dropout = dropout_or_identity(dropout)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if in_planes != out_planes or stride != 1:
            self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        # identity blocks add the raw input; projection blocks project the pre-activated one
        skip = x if self.shortcut is None else self.shortcut(o)
        o = self.conv1(o)
        o = self.conv2(self.dropout(F.relu(self.bn2(o))))
        return o + skip


class WideResNet(nn.Module):
    """WRN-``depth``-``width`` for 32x32 inputs (Zagoruyko & Komodakis 2016)."""

    def __init__(self, depth: int = 22, width: int = 2, num_classes: int = 10, dropout: float = 0.0):
        super().__init__()
        n = wrn_blocks_per_group(depth)
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"WRN width must be a positive integer, got {width!r}")
        self.depth, self.width = depth, width
        widths = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        groups: list[nn.Module] = []
        in_planes = widths[0]
        for out_planes, stride in zip(widths[1:], (1, 2, 2)):
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(WideBasicBlock(in_planes, out_planes, s, dropout))
                in_planes = out_planes
            groups.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = groups
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        init_cifar_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = F.relu(self.bn(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)
