"""Tests for models/: parameter counts, forward/backward, registry errors, dropout, conventions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cigl_bayes.models import UnknownModelError, build_model, list_models

# Exact parameter counts for 10 classes.  Cross-checked against published numbers:
# CIFAR ResNet-18 11,173,962 and ResNet-50 23,520,842 (the widely used CIFAR code), WRN-22-2 ~1.1M,
# WRN-28-10 36.5M and WRN-16-8 11.0M (Zagoruyko & Komodakis 2016, Table), torchvision ResNet-50 with
# a 10-way head = 25,557,032 - 2048*990 - 990.
PARAMS_10 = {
    "mlp": 820_874,
    "mlp-1d": 4_938,  # 1·64+64 + 64·64+64 + 64·10+10
    "resnet18": 11_173_962,
    "resnet50": 23_520_842,
    "resnet50-imagenet": 23_528_522,
    "small-cnn": 24_346,
    "wrn-22-2": 1_079_642,
}
PARAMS_100 = {"resnet18": 11_220_132, "wrn-22-2": 1_091_252}
LAYERS = (nn.Conv2d, nn.Linear)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def input_for(name: str, batch: int = 2) -> torch.Tensor:
    if name == "mlp-1d":
        return torch.randn(batch, 1)
    side = 64 if name == "resnet50-imagenet" else 32
    return torch.randn(batch, 3, side, side)


def weight_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, LAYERS)]


def test_list_models():
    assert list_models() == sorted(PARAMS_10)


@pytest.mark.parametrize("name", sorted(PARAMS_10))
def test_param_count_10_classes(name):
    assert n_params(build_model(name, num_classes=10)) == PARAMS_10[name]


@pytest.mark.parametrize("name", sorted(PARAMS_100))
def test_param_count_100_classes(name):
    assert n_params(build_model(name, num_classes=100)) == PARAMS_100[name]


@pytest.mark.parametrize(
    "name, count", [("wrn-16-8", 10_961_370), ("wrn-28-10", 36_479_194), ("wrn-10-1", 77_850)]
)
def test_generic_wrn_param_counts(name, count):
    assert n_params(build_model(name)) == count


def test_torchvision_resnet50_count_matches_imagenet_head():
    assert n_params(build_model("resnet50-imagenet", num_classes=1000)) == 25_557_032


@pytest.mark.parametrize("name", sorted(PARAMS_10))
def test_forward_backward(name):
    torch.manual_seed(0)
    num_classes = 7
    model = build_model(name, num_classes=num_classes)
    x = input_for(name)
    logits = model(x)
    assert logits.shape == (2, num_classes)
    assert torch.isfinite(logits).all()
    logits.logsumexp(dim=1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


def test_wrn_generic_forward():
    model = build_model("wrn-10-1", num_classes=5)  # n = 1, first group keeps 16 channels
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_mlp_regression_toy():
    model = build_model("mlp", num_classes=1, in_features=1, hidden=(64, 64))
    assert n_params(model) == (1 * 64 + 64) + (64 * 64 + 64) + (64 * 1 + 1)
    out = model(torch.linspace(-1, 1, 9).unsqueeze(1))
    assert out.shape == (9, 1)
    flat = build_model("mlp")(torch.randn(4, 3 * 32 * 32))
    assert flat.shape == (4, 10)


def test_unknown_model_lists_known_names():
    with pytest.raises(UnknownModelError) as info:
        build_model("vgg16")
    msg = str(info.value)
    assert "unknown model 'vgg16'" in msg
    for name in list_models():
        assert name in msg
    assert "wrn-D-K" in msg and "6n+4" in msg
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", ["wrn-20-2", "wrn-4-2", "wrn-23-2", "wrn-22-0"])
def test_bad_wrn_name(name):
    with pytest.raises(ValueError):
        build_model(name)


def test_bad_wrn_depth_message():
    with pytest.raises(ValueError, match="6n\\+4"):
        build_model("wrn-20-2")


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("resnet18", {"width": 2}),
        ("wrn-22-2", {"in_features": 3}),
        ("mlp", {"hiden": (4,)}),
        ("small-cnn", {"foo": 1}),
    ],
)
def test_unexpected_kwarg_is_named(name, kwargs):
    with pytest.raises(TypeError, match=next(iter(kwargs))):
        build_model(name, **kwargs)


@pytest.mark.parametrize("kwargs", [{"num_classes": 0}, {"dropout": 1.0}, {"dropout": -0.1}])
def test_bad_common_args(kwargs):
    with pytest.raises(ValueError):
        build_model("small-cnn", **kwargs)


@pytest.mark.parametrize("name", sorted(PARAMS_10))
def test_dropout_modules(name):
    assert not any(isinstance(m, nn.Dropout) for m in build_model(name).modules())
    model = build_model(name, dropout=0.3)
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert drops and all(d.p == 0.3 for d in drops)
    assert n_params(model) == PARAMS_10[name]  # dropout adds no parameters
    # the classifier stays the last weight layer
    assert weight_layers(model)[-1].out_features == 10


def test_wrn_dropout_sits_in_every_block():
    model = build_model("wrn-16-1", dropout=0.3)  # n = 2 blocks per group
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 6


@pytest.mark.parametrize("name", ["small-cnn", "mlp", "wrn-10-1"])
def test_dropout_eval_deterministic_train_stochastic(name):
    torch.manual_seed(0)
    model = build_model(name, dropout=0.5).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        model.train()
        torch.manual_seed(1)
        a = model(x)
        torch.manual_seed(2)
        b = model(x)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(PARAMS_10))
def test_deterministic_creation(name):
    torch.manual_seed(123)
    a = build_model(name).state_dict()
    torch.manual_seed(123)
    b = build_model(name).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", sorted(PARAMS_10))
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_first_and_last_layer_convention(name, dropout):
    num_classes = 100
    kwargs = {"in_features": 12, "hidden": (8,)} if name == "mlp" else {}
    layers = weight_layers(build_model(name, num_classes=num_classes, dropout=dropout, **kwargs))
    first, last = layers[0], layers[-1]
    if isinstance(first, nn.Conv2d):
        assert first.in_channels == 3
    else:
        assert first.in_features == (1 if name == "mlp-1d" else 12)
    assert isinstance(last, nn.Linear) and last.out_features == num_classes and last.bias is not None
    # every other Linear/Conv feeds from a previous layer, never from the input
    assert all(getattr(m, "in_channels", None) != 3 for m in layers[1:] if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name", sorted(set(PARAMS_10) - {"mlp", "mlp-1d"}))
def test_convs_have_no_bias_and_init(name):
    model = build_model(name)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.bias is None for c in convs)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_kaiming_fan_out_init():
    torch.manual_seed(0)
    model = build_model("wrn-22-2")
    conv = model.block3[1].conv2  # 128 -> 128, 3x3
    fan_out = conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.05)


def test_name_is_case_insensitive():
    assert n_params(build_model("WRN-22-2")) == PARAMS_10["wrn-22-2"]


def test_torchvision_and_timm_models_by_name():
    import torch

    from cigl_bayes.models import build_model

    net = build_model("torchvision:resnet18", num_classes=7)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    dropped = build_model("torchvision:resnet18", num_classes=7, dropout=0.2)
    assert isinstance(dropped.fc[0], torch.nn.Dropout)
    with pytest.raises(ValueError, match="unknown torchvision model 'nonet'"):
        build_model("torchvision:nonet")
    with pytest.raises(ValueError, match="unknown model 'foo:bar'"):
        build_model("foo:bar")
    timm = pytest.importorskip("timm")
    assert timm is not None
    net = build_model("timm:resnet18", num_classes=5)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    with pytest.raises(ValueError, match="unknown timm model"):
        build_model("timm:not-a-net")
