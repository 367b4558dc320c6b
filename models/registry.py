"""Name -> network registry: ``build_model("wrn-22-2", num_classes=10, dropout=0.0)``.

Every builder takes ``num_classes`` and ``dropout`` plus its own keyword arguments; anything else
is rejected with a TypeError naming it.  ``wrn-D-K`` is parsed for any valid depth and width;
``torchvision:NAME`` builds ``torchvision.models.get_model(NAME)`` and ``timm:NAME``
``timm.create_model(NAME)`` (optional: ``pip install timm``), both randomly initialised.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable

import torchvision
from torch import nn

from .resnet import resnet18, resnet50
from .small import MLP, SmallCNN
from .wrn import WideResNet, wrn_blocks_per_group

Builder = Callable[..., nn.Module]

_WRN_PATTERN = re.compile(r"wrn-(\d+)-(\d+)")
_WRN_HINT = "wrn-D-K for any depth D = 6n+4 and width K"


class UnknownModelError(ValueError):
    """Raised by ``build_model`` for a name that is neither registered nor of the form wrn-D-K."""

    def __init__(self, name: str, known: list[str]):
        super().__init__(f"unknown model {name!r}; known models: {', '.join(known)} (and {_WRN_HINT})")
        self.name = name
        self.known = known


def _wrn(depth: int, width: int) -> Builder:
    def build(num_classes: int, dropout: float) -> nn.Module:
        return WideResNet(depth, width, num_classes, dropout)

    build.__doc__ = f"WRN-{depth}-{width} (Zagoruyko & Komodakis 2016)."
    return build


def _resnet50_imagenet(num_classes: int, dropout: float) -> nn.Module:
    """torchvision's ImageNet ResNet-50 (7x7 stem + max-pool), randomly initialised, never downloaded.

    With dropout > 0 the classifier becomes ``fc = Sequential(Dropout, Linear)``."""
    model = torchvision.models.resnet50(weights=None, num_classes=num_classes)
    if dropout > 0:
        model.fc = nn.Sequential(nn.Dropout(dropout), model.fc)
    return model


def _mlp(
    num_classes: int, dropout: float, *, in_features: int = 3 * 32 * 32, hidden: tuple[int, ...] = (256, 128)
) -> nn.Module:
    return MLP(in_features=in_features, hidden=hidden, out_features=num_classes, dropout=dropout)


def _mlp_1d(num_classes: int, dropout: float, *, hidden: tuple[int, ...] = (64, 64)) -> nn.Module:
    """An MLP on scalar inputs (B, 1) for toy 1-D regression; ``num_classes`` is the output size."""
    return MLP(in_features=1, hidden=hidden, out_features=num_classes, dropout=dropout)


# The only module-level mutable state: name -> builder(num_classes, dropout, **kwargs).
MODELS: dict[str, Builder] = {
    "wrn-22-2": _wrn(22, 2),
    "resnet18": resnet18,
    "resnet50": resnet50,
    "resnet50-imagenet": _resnet50_imagenet,
    "small-cnn": SmallCNN,
    "mlp": _mlp,
    "mlp-1d": _mlp_1d,
}


def list_models() -> list[str]:
    """Registered model names, sorted (any wrn-D-K is accepted as well)."""
    return sorted(MODELS)


def _torchvision(arch: str) -> Builder:
    """torchvision's ``arch`` (``torchvision.models.get_model``), randomly initialised, never downloaded."""
    if arch not in torchvision.models.list_models():
        raise ValueError(f"unknown torchvision model {arch!r} (torchvision.models.list_models() names them)")

    def build(num_classes: int, dropout: float) -> nn.Module:
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
        if dropout > 0:
            if not isinstance(getattr(model, "fc", None), nn.Linear):
                raise ValueError(f"dropout > 0 is supported for torchvision models with an `fc` classifier, "
                                 f"not {arch!r}")
            model.fc = nn.Sequential(nn.Dropout(dropout), model.fc)
        return model

    build.__doc__ = f"torchvision.models.{arch} (weights=None)."
    return build


def _timm(arch: str) -> Builder:
    """timm's ``arch`` (``timm.create_model``), randomly initialised, never downloaded; needs ``pip install timm``."""
    try:
        import timm
    except ImportError:
        raise ValueError(f"model 'timm:{arch}' needs the timm package: pip install timm") from None
    if not timm.is_model(arch):
        raise ValueError(f"unknown timm model {arch!r} (timm.list_models() names them)")

    def build(num_classes: int, dropout: float) -> nn.Module:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, drop_rate=dropout)

    build.__doc__ = f"timm.create_model({arch!r}, pretrained=False)."
    return build


def _resolve(name: str) -> Builder:
    key = name.strip().lower() if isinstance(name, str) else name
    if key in MODELS:
        return MODELS[key]
    if isinstance(key, str) and ":" in key:
        source, _, arch = name.strip().partition(":")
        if source.lower() == "torchvision":
            return _torchvision(arch)
        if source.lower() == "timm":
            return _timm(arch)
        raise UnknownModelError(str(name), list_models())
    match = _WRN_PATTERN.fullmatch(key) if isinstance(key, str) else None
    if match is None:
        raise UnknownModelError(str(name), list_models())
    depth, width = int(match.group(1)), int(match.group(2))
    wrn_blocks_per_group(depth)  # ValueError for a depth that is not 6n+4
    if width < 1:
        raise ValueError(f"WRN width must be a positive integer, got {width} in {name!r}")
    return _wrn(depth, width)


def check_model_name(name: str) -> None:
    """Raise :class:`UnknownModelError` (a ValueError) for a name ``build_model`` would refuse, without
    building anything (the benchmarks check their ``--model`` before timing)."""
    _resolve(name)


def _check_kwargs(name: str, builder: Builder, kwargs: dict) -> None:
    params = inspect.signature(builder).parameters
    accepted = [p for p in params if p not in ("num_classes", "dropout")]
    unexpected = [k for k in kwargs if k not in accepted]
    if unexpected:
        listed = ", ".join(repr(k) for k in unexpected)
        allowed = ", ".join(repr(k) for k in accepted) or "none"
        raise TypeError(f"model {name!r} got unexpected keyword argument(s) {listed}; it accepts: {allowed}")


def build_model(name: str, num_classes: int = 10, *, dropout: float = 0.0, **kwargs) -> nn.Module:
    """Build the network ``name`` with a ``num_classes``-way output layer.

    ``dropout`` > 0 inserts ``nn.Dropout`` where each architecture puts it (WRN: between the two
    convs of every block; ResNets / small-cnn: before the classifier; mlp: after every hidden ReLU).
    Extra ``kwargs`` go to the builder (e.g. ``in_features``, ``hidden`` for ``mlp``)."""
    builder = _resolve(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    _check_kwargs(name, builder, kwargs)
    return builder(num_classes=num_classes, dropout=float(dropout), **kwargs)
