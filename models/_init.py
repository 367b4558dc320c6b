"""Weight initialisation shared by the CIFAR networks."""

from __future__ import annotations

from torch import nn


def init_cifar_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, relu) convs, BN weight 1 / bias 0, Linear left at PyTorch's default.

    This is the scheme of the common CIFAR WRN / ResNet code (and torchvision's ResNet)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def dropout_or_identity(p: float) -> nn.Module:
    """``nn.Dropout(p)`` when p > 0, otherwise ``nn.Identity`` (so p = 0 adds no Dropout module)."""
    return nn.Dropout(p) if p > 0 else nn.Identity()
