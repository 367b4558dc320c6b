"""Sparse kernels (cigl_bayes.sparse_kernels) and the compact export (cigl_bayes.export, experiments.export)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cigl_bayes.export import export_network, fold_batchnorm, load_exported
from cigl_bayes.models import build_model
from cigl_bayes.sparse_kernels import SparseConv2d, SparseLinear, sparsify


def sparse_random(shape, density, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen)
    return w * (torch.rand(shape, generator=gen) < density)


@pytest.mark.parametrize(("stride", "padding", "dilation", "batch"), [(1, 1, 1, 1), (2, 1, 1, 3), (1, 0, 2, 2),
                                                                      (2, 0, 1, 4)])
def test_sparse_conv_equals_dense_conv(stride, padding, dilation, batch):
    conv = nn.Conv2d(6, 5, 3, stride=stride, padding=padding, dilation=dilation, bias=True)
    with torch.no_grad():
        conv.weight.copy_(sparse_random(conv.weight.shape, 0.2))
    x = torch.randn(batch, 6, 11, 9)
    sparse = SparseConv2d(conv)
    assert sparse.density == pytest.approx(float((conv.weight != 0).float().mean()))
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), conv(x), rtol=1e-5, atol=1e-5)


def test_sparse_linear_equals_dense_linear():
    lin = nn.Linear(20, 7)
    with torch.no_grad():
        lin.weight.copy_(sparse_random(lin.weight.shape, 0.1))
    x = torch.randn(5, 20)
    with torch.no_grad():
        torch.testing.assert_close(SparseLinear(lin)(x), lin(x), rtol=1e-5, atol=1e-6)


def masked_small_cnn(sparsity: float, seed: int = 0) -> nn.Module:
    """A small CNN with an ERK mask at ``sparsity`` and non-trivial BatchNorm statistics."""
    from cigl_bayes.sparsity import densities_for, layer_nnz, sparse_parameter_names

    torch.manual_seed(seed)
    model = build_model("small-cnn", num_classes=10).eval()
    names = sparse_parameter_names(model)
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    nnz = layer_nnz(shapes, densities_for(shapes, sparsity, "erk"))
    with torch.no_grad():
        for n, k in zip(names, nnz):
            p = params[n]
            keep = torch.zeros(p.numel(), dtype=torch.bool)
            keep[torch.randperm(p.numel())[:k]] = True
            p.mul_(keep.view_as(p))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


def test_folding_batchnorm_keeps_outputs_and_zeros():
    model = masked_small_cnn(0.9)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)
    before = (model.features[0].weight == 0).sum()
    assert (folded.get_submodule("features.0").weight == 0).sum() == before


@pytest.mark.parametrize("kernels", ["dense", "sparse", "auto"])
def test_export_round_trip_predicts_as_the_network(tmp_path, kernels):
    model = masked_small_cnn(0.95)
    path = export_network(model, tmp_path / "m.safetensors", model="small-cnn", classes=[f"c{i}" for i in range(10)],
                          mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), temperature=1.5, method="cigl")
    loaded = load_exported(path, kernels=kernels, example=torch.randn(2, 3, 32, 32) if kernels == "auto" else None)
    assert loaded.classes[3] == "c3" and loaded.temperature == 1.5 and loaded.info["method"] == "cigl"
    assert not loaded.network.training
    if kernels == "sparse":
        assert set(loaded.kernels.values()) == {"sparse"}
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    x = (torch.as_tensor(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(loaded(x), logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loaded.predict(images), torch.softmax(logits / 1.5, -1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loaded.predict(images, temperature=False), torch.softmax(logits, -1),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernels", ["dense", "sparse"])
def test_the_loaded_export_is_in_eval_mode_and_checks_its_images(tmp_path, kernels):
    model = masked_small_cnn(0.9)
    path = export_network(model, tmp_path / "m.safetensors", model="small-cnn", classes=list("abcdefghij"),
                          mean=(0.5,) * 3, std=(0.25,) * 3, image_size=(32, 32))
    loaded = load_exported(path, kernels=kernels)
    assert not loaded.training and not any(m.training for m in loaded.modules())
    assert loaded.image_size == (32, 32)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\]"):
        loaded.predict(images.astype(np.float32))  # 0–255 floats used to be taken as they were
    torch.testing.assert_close(loaded.predict(images.astype(np.float32) / 255), loaded.predict(images))
    with pytest.raises(ValueError, match="images must be 32×32"):
        loaded.predict(np.zeros((2, 64, 64, 3), np.uint8))
    unsized = load_exported(export_network(model, tmp_path / "old.safetensors", model="small-cnn",
                                           classes=list("abcdefghij"), mean=(0.5,) * 3, std=(0.25,) * 3))
    assert unsized.image_size is None  # as exports written before the size was recorded: not checked


def test_export_is_smaller_than_the_dense_state_and_keeps_only_nonzeros(tmp_path):
    from safetensors import safe_open

    model = masked_small_cnn(0.95)
    path = export_network(model, tmp_path / "m.safetensors", model="small-cnn", classes=list("abcdefghij"),
                          mean=(0,) * 3, std=(1,) * 3)
    dense = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert path.stat().st_size < 0.5 * dense
    nnz = sum(int((p != 0).sum()) for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1)
    with safe_open(str(path), framework="pt") as f:
        stored = sum(f.get_tensor(k).numel() for k in f.keys() if k.endswith("::values"))  # noqa: SIM118
    assert stored == nnz


def test_loading_refuses_other_files(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_exported(tmp_path / "x.safetensors")
    with pytest.raises(FileNotFoundError):
        load_exported(tmp_path / "missing.safetensors")
    with pytest.raises(IsADirectoryError, match="is a folder, expected a .safetensors file"):
        load_exported(tmp_path)  # used to be "does not exist"
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2)}, str(tmp_path / "other.safetensors"), metadata={"format": "something-else"})
    with pytest.raises(ValueError, match="not a cigl-bayes export"):
        load_exported(tmp_path / "other.safetensors")


@pytest.mark.parametrize(("name", "classes", "match"), [
    ("my-cnn", 10, r"model='my-cnn'.*rebuilds only built-in architectures.*known models: .*small-cnn"),
    (None, 10, r"model=None.*rebuilds only built-in architectures"),
    ("mlp", 10, r"model='mlp': the module is not that architecture with 10 classes"),
    ("small-cnn", 7, r"model='small-cnn': the module is not that architecture with 7 classes .*fc"),
])
def test_export_refuses_a_model_name_load_exported_cannot_rebuild(tmp_path, name, classes, match):
    """What load_exported could not load is refused when exporting, in one line, with nothing written
    (a user's own name used to give a file that only failed to load; None a TypeError of safetensors)."""
    path = tmp_path / "m.safetensors"
    with pytest.raises(ValueError, match=match) as err:
        export_network(masked_small_cnn(0.9), path, model=name, classes=[str(c) for c in range(classes)],
                       mean=(0.5,) * 3, std=(0.25,) * 3)
    assert "\n" not in str(err.value) and not path.exists()


def test_sparsify_by_threshold_swaps_only_sparse_layers():
    model = masked_small_cnn(0.9)
    first_density = float((model.features[0].weight != 0).float().mean())
    choice = sparsify(model, max_density=0.5)
    assert set(choice) == {"features.0", "features.4", "features.8", "fc"}
    assert (choice["features.0"] == "sparse") == (first_density <= 0.5)
    for name, kind in choice.items():
        layer = model.get_submodule(name)
        assert isinstance(layer, (SparseConv2d, SparseLinear)) == (kind == "sparse")
        assert kind == "dense" or layer.density <= 0.5


def test_export_cli_round_trips_a_tiny_run(cifar_data_dir, cache_dir, tmp_path, monkeypatch):
    import cigl_bayes
    from cigl_bayes.config import TrainConfig
    from cigl_bayes.experiments import export
    from cigl_bayes.inference import load_run, run

    monkeypatch.setenv("CIGL_CACHE_DIR", str(cache_dir))
    cfg = TrainConfig(method="cigl", model="small-cnn", data_dir=str(cifar_data_dir), sparsity=0.9, epochs=3,
                      wma_start_epoch=1, subset=400, test_subset=100, batch_size=50, delta_t=4, device="cpu",
                      amp="bf16")  # a run of a bf16 machine: the export must still recompute BatchNorm in float32
    run(cfg, tmp_path / "run", progress=False)
    assert export.main([str(tmp_path / "run"), "--out", str(tmp_path / "m.safetensors"), "--device", "cpu"]) == 0
    exported = cigl_bayes.load_exported(tmp_path / "m.safetensors", kernels="sparse")
    trained = load_run(tmp_path / "run", device="cpu", amp="off")  # the exported model computes in float32
    images = trained.data().test.images[:16].permute(0, 2, 3, 1).cpu().numpy()
    expected = trained.predict(images, "wma").probs
    metrics = trained.metrics
    got = exported.predict(images, temperature=False)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert exported.temperature == pytest.approx(metrics["temperature"]) and exported.classes[0] == "airplane"
    assert exported.image_size == (32, 32) and not exported.training
    with pytest.raises(SystemExit):
        from cigl_bayes.experiments.cli import run_cli

        run_cli(lambda: export.main([str(tmp_path / "run"), "--out", str(tmp_path)]))


def test_sparsify_by_timing_records_both_kernels_and_keeps_outputs():
    model = masked_small_cnn(0.95)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    timings = {}
    choice = sparsify(model, example=x, repeats=2, timings=timings)
    assert set(timings) == set(choice)
    for name, t in timings.items():
        assert t["dense_ms"] > 0 and t["sparse_ms"] > 0 and 0 < t["density"] <= 1
        assert choice[name] == ("sparse" if t["sparse_ms"] < t["dense_ms"] else "dense")
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("options", "match"), [
    ({"std": (0.0, 0.0, 0.0)}, r"std must be positive in every channel"),
    ({"std": (0.25, float("nan"), 0.25)}, r"std must be finite numbers"),
    ({"mean": (0.5, 0.5)}, r"mean has 2 channels and std 3"),
    ({"temperature": -1.0}, r"temperature must be a positive number"),
    ({"temperature": 0.0}, r"temperature must be a positive number"),
    ({"temperature": float("inf")}, r"temperature must be a positive number"),
])
def test_export_refuses_normalisation_and_temperature_that_would_break_predictions(tmp_path, options, match):
    """std 0 gave NaN predictions and a negative temperature flipped every argmax, from a file that
    loaded without complaint (the trial of 2026-12-06); now nothing is written."""
    path = tmp_path / "m.safetensors"
    kwargs = {"mean": (0.5,) * 3, "std": (0.25,) * 3, **options}
    with pytest.raises(ValueError, match=match) as err:
        export_network(masked_small_cnn(0.9), path, model="small-cnn", classes=[str(c) for c in range(10)], **kwargs)
    assert "\n" not in str(err.value) and not path.exists()
    export_network(masked_small_cnn(0.9), path, model="small-cnn", classes=[str(c) for c in range(10)],
                   mean=(0.5,) * 3, std=(0.25,) * 3, temperature=1.5)
    assert path.exists()


def test_export_of_a_wrapper_names_the_attribute_to_pass(tmp_path):
    class Wrapper(nn.Module):  # as a LightningModule holds its network
        def __init__(self):
            super().__init__()
            self.net = masked_small_cnn(0.9)
            self.criterion = nn.CrossEntropyLoss()

        def forward(self, x):
            return self.net(x)

    with pytest.raises(ValueError, match=r"it wraps one: pass module\.net$"):
        export_network(Wrapper(), tmp_path / "m.safetensors", model="small-cnn", classes=[str(c) for c in range(10)],
                       mean=(0.5,) * 3, std=(0.25,) * 3)
    with pytest.raises(ValueError, match=r"in 'small-cnn'\), and load_exported rebuilds the network from that name "
                                         r"and model_options \(the builder's keyword arguments\)$"):
        export_network(masked_small_cnn(0.9), tmp_path / "m.safetensors", model="small-cnn",
                       classes=[str(c) for c in range(7)], mean=(0.5,) * 3, std=(0.25,) * 3)


def test_no_wrapper_hint_when_the_wrapper_has_layers_of_its_own(tmp_path):
    """Exporting the inner network of a wrapper with an adapter would drop the adapter: no hint."""
    class Adapted(nn.Module):
        def __init__(self):
            super().__init__()
            self.adapter = nn.Conv2d(3, 3, 1)
            self.net = masked_small_cnn(0.9)

        def forward(self, x):
            return self.net(self.adapter(x))

    with pytest.raises(ValueError, match=r"\(the builder's keyword arguments\)$"):
        export_network(Adapted(), tmp_path / "m.safetensors", model="small-cnn", classes=[str(c) for c in range(10)],
                       mean=(0.5,) * 3, std=(0.25,) * 3)


def test_numpy_scalars_are_accepted_as_temperature_and_normalisation(tmp_path):
    path = export_network(masked_small_cnn(0.9), tmp_path / "m.safetensors", model="small-cnn",
                          classes=[str(c) for c in range(10)], mean=np.full(3, 0.5, dtype=np.float32),
                          std=torch.full((3,), 0.25), temperature=np.float32(1.5))
    assert load_exported(path).temperature == pytest.approx(1.5)


def test_a_builder_s_options_travel_with_the_export(tmp_path):
    """An mlp with other hidden sizes: refused without its builder options, round-trips with them."""
    torch.manual_seed(0)
    mlp = build_model("mlp", num_classes=10, in_features=48, hidden=(16, 8)).eval()
    kwargs = {"model": "mlp", "classes": [str(c) for c in range(10)], "mean": (0.0,) * 3, "std": (1.0,) * 3}
    with pytest.raises(ValueError, match=r"model_options \(the builder's keyword arguments\)$"):
        export_network(mlp, tmp_path / "no.safetensors", **kwargs)
    with pytest.raises(ValueError, match="model_options must hold JSON values"):
        export_network(mlp, tmp_path / "no.safetensors", model_options={"hidden": object()}, **kwargs)
    path = export_network(mlp, tmp_path / "mlp.safetensors", model_options={"in_features": 48, "hidden": (16, 8)},
                          **kwargs)
    x = torch.rand(5, 3, 4, 4)
    torch.testing.assert_close(load_exported(path, kernels="dense")(x), mlp(x))


class _GatedCNN(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, so BatchNorm stays unfolded."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        if h.mean() > 0:  # a Python branch on a value
            h = h * 2
        return self.fc(h.mean((2, 3)))


def _trained_user_cnn(make):
    """A network of the user's own, sparse through CigL, with BatchNorm statistics that moved."""
    from cigl_bayes import CigL

    torch.manual_seed(0)
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    cigl = CigL(model, opt, method="rigl", sparsity=0.8, total_steps=4)
    for _ in range(4):
        opt.zero_grad()
        model(torch.randn(8, 3, 8, 8)).logsumexp(-1).mean().backward()
        cigl.step()
    return cigl.detach().eval()


@pytest.mark.parametrize(("make", "folded"), [("UserCNN", True), ("_GatedCNN", False)])
def test_your_own_architecture_exports_as_custom_and_loads_into_an_instance(tmp_path, make, folded):
    import json

    from safetensors import safe_open

    from tests.test_drop_in import UserCNN

    make = {"UserCNN": UserCNN, "_GatedCNN": _GatedCNN}[make]
    model = _trained_user_cnn(make)
    classes = [str(c) for c in range(model(torch.zeros(1, 3, 8, 8)).shape[1])]
    path = export_network(model, tmp_path / "mine.safetensors", model="custom", classes=classes,
                          mean=(0.5,) * 3, std=(0.25,) * 3)
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["folded"]) is folded and any(k.endswith("::crow") for k in f.keys())  # noqa: SIM118
    x = torch.randn(5, 3, 8, 8)
    fresh = make()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    for kernels in ("dense", "sparse"):
        loaded = load_exported(path, module=fresh, kernels=kernels)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), rtol=1e-4, atol=1e-5)
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())  # the instance is not changed
    with pytest.raises(ValueError, match="holds an architecture of your own .*module=YourNet"):
        load_exported(path)
    other = UserCNN if make is _GatedCNN else _GatedCNN
    with pytest.raises(ValueError, match=f"does not fit the module given \\({other.__name__}\\)"):
        load_exported(path, module=other())
