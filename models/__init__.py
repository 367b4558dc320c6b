"""Network definitions (WRN, CIFAR ResNets, small test nets) and a name -> model registry."""

from .registry import UnknownModelError, build_model, check_model_name, list_models
from .resnet import ResNet, resnet18, resnet50
from .small import MLP, SmallCNN
from .wrn import WideResNet

__all__ = [
    "check_model_name",
    "MLP",
    "ResNet",
    "SmallCNN",
    "UnknownModelError",
    "WideResNet",
    "build_model",
    "list_models",
    "resnet18",
    "resnet50",
]
