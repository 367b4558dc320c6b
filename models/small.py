"""Small networks for tests and toy problems: a three-layer CNN and an MLP."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._init import dropout_or_identity, init_cifar_weights


class SmallCNN(nn.Module):
    """Three conv3x3-BN-ReLU layers (3->16->32->64), max-pool 2 after the first two,
    global average pool, [dropout], linear.  Trains in seconds on CPU."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (cin, cout) in enumerate(((3, 16), (16, 32), (32, 64))):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
            if i < 2:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.dropout = dropout_or_identity(dropout)
        self.fc = nn.Linear(64, num_classes)
        init_cifar_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.fc(self.dropout(x))


class MLP(nn.Module):
    """Flatten, then (Linear-ReLU-[dropout]) per hidden width, then a final Linear.

    Accepts images (B, C, H, W) with C*H*W == in_features, or flat (B, in_features) input.
    Dropout (if > 0) follows every hidden ReLU, i.e. it sits before every Linear but the first."""

    def __init__(
        self,
        in_features: int = 3 * 32 * 32,
        hidden: Sequence[int] = (256, 128),
        out_features: int = 10,
        dropout: float = 0.0,
    ):
        super().__init__()
        if isinstance(hidden, int):
            hidden = (hidden,)
        widths = [int(in_features), *(int(h) for h in hidden)]
        if any(w < 1 for w in widths) or out_features < 1:
            raise ValueError(f"MLP widths must be positive, got {in_features=}, hidden={tuple(hidden)}")
        self.in_features, self.hidden = widths[0], tuple(widths[1:])
        layers: list[nn.Module] = [nn.Flatten(1)]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(cin, cout), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(widths[-1], out_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
