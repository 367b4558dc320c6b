"""The last-layer Laplace baseline (inference/laplace.py): fitted on training data, its prior
precision chosen on the validation split, the test split only scored."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

laplace = pytest.importorskip("laplace")

from cigl_bayes.inference import laplace as laplace_module  # noqa: E402
from tests.test_bn_protocols import make_trainer  # noqa: E402

Laplace = laplace.Laplace


class FullNetworkLoader:
    """A loader of images as laplace-torch reads one: the reference fit runs the whole network."""

    def __init__(self, loader):
        self.loader, self.batch_size, self.dataset = loader, loader.batch_size, range(loader.num_samples)

    def __iter__(self):
        return iter(self.loader.epoch(0))

    def __len__(self):
        return len(self.loader)


def test_laplace_on_stored_features_equals_laplace_torch_on_the_whole_network(tmp_path):
    trainer = make_trainer(tmp_path, method="rigl")
    trainer.fit()
    data, module = trainer.data, trainer.net.module
    ours = laplace_module.last_layer_laplace(module, data.train_eval, {"test": data.test, "val": data.val})
    reference_net = copy.deepcopy(module).to(memory_format=torch.contiguous_format).eval()
    la = Laplace(reference_net, "classification", subset_of_weights="last_layer", hessian_structure="kron")
    la.fit(FullNetworkLoader(data.train_eval))
    la.optimize_prior_precision(pred_type="glm", method="gridsearch", val_loader=FullNetworkLoader(data.val),
                                link_approx="probit", loss=laplace_module.validation_nll)
    assert ours.prior_precision == pytest.approx(float(la.prior_precision.mean()), rel=1e-9)
    # the choice is the grid's lowest validation NLL, each point scored on its own
    val_labels = torch.cat([y for _, y in data.val.epoch(0)])
    grid = torch.logspace(-4, 4, 100)
    nll = []
    for delta in grid:
        la.prior_precision = float(delta)
        with torch.no_grad():
            probs = torch.cat([la(x, pred_type="glm", link_approx="probit") for x, _ in data.val.epoch(0)])
        nll.append(float(laplace_module.validation_nll(probs, val_labels)))
    assert ours.prior_precision == pytest.approx(float(grid[int(np.argmin(nll))]), rel=1e-6)
    la.prior_precision = ours.prior_precision
    # the reported curve: the validation NLL a decade apart, of which the chosen one is the lowest
    # among the grid's own end points 10^-4 and 10^4
    curve = ours.val_nll_by_prior_precision
    assert sorted(curve) == [10.0 ** d for d in range(-4, 5)]
    chosen_nll = float(-ours.log_probs["val"].gather(1, val_labels[:, None]).mean())
    assert chosen_nll <= min(curve[1e-4], curve[1e4]) + 1e-6
    la.prior_precision = 1e-4
    with torch.no_grad():
        low = torch.cat([la(x, pred_type="glm", link_approx="probit") for x, _ in data.val.epoch(0)])
    low_nll = float(-low.float().clamp_min(1e-12).log().gather(1, val_labels[:, None]).mean())
    assert curve[1e-4] == pytest.approx(low_nll, rel=1e-5)
    la.prior_precision = ours.prior_precision
    for split, loader in {"test": data.test, "val": data.val}.items():
        with torch.no_grad():
            probs = torch.cat([la(x, pred_type="glm", link_approx="probit") for x, _ in loader.epoch(0)])
        torch.testing.assert_close(ours.log_probs[split], probs.float().clamp_min(1e-12).log(), rtol=1e-5, atol=1e-6)


def test_laplace_fits_on_training_data_and_tunes_on_validation_only(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, method="rigl")
    trainer.fit()
    extracted = {}  # id(features tensor) -> the loader it came from
    original_inputs = laplace_module.last_layer_inputs

    def spy_inputs(module, head, loader):
        inputs, targets = original_inputs(module, head, loader)
        extracted[id(inputs)] = loader
        return inputs, targets

    read = {}  # what laplace-torch was handed: {"hessian": loader, "prior": loader}
    real_laplace = laplace.Laplace

    def spy_laplace(*args, **kwargs):
        la = real_laplace(*args, **kwargs)
        fit, optimize = la.fit, la.optimize_prior_precision
        la.fit = lambda view, **kw: (read.setdefault("hessian", extracted[id(view.inputs)]), fit(view, **kw))[1]
        la.optimize_prior_precision = lambda *a, val_loader, **kw: (
            read.setdefault("prior", extracted[id(val_loader.inputs)]), optimize(*a, val_loader=val_loader, **kw))[1]
        return la

    monkeypatch.setattr(laplace_module, "last_layer_inputs", spy_inputs)
    monkeypatch.setattr(laplace, "Laplace", spy_laplace)
    data = trainer.data
    before = {k: v.clone() for k, v in trainer.net.module.state_dict().items()}
    result = laplace_module.last_layer_laplace(trainer.net.module, data.train_eval,
                                               {"test": data.test, "val": data.val})
    assert read["hessian"] is data.train_eval  # the Hessian: training images
    assert read["prior"] is data.val  # the prior precision: the validation split, never the test split
    assert set(result.log_probs) == {"test", "val"}
    probs = result.log_probs["test"].exp()
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(probs)), rtol=1e-5, atol=1e-5)
    assert 1e-4 * (1 - 1e-6) <= result.prior_precision <= 1e4 * (1 + 1e-6)  # the grid 10^[-4, 4], float32
    for k, v in trainer.net.module.state_dict().items():  # the trained network itself is left alone
        assert torch.equal(v, before[k])


def test_laplace_refuses_a_network_whose_output_is_not_its_last_linear_layer():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softmax(-1))
    with pytest.raises(ValueError, match="final nn.Linear"):
        laplace_module.last_linear_layer(net, torch.randn(2, 4))
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    assert laplace_module.last_linear_layer(net, torch.randn(2, 4)) is net[2]


def test_laplace_needs_a_validation_split(tmp_path):
    trainer = make_trainer(tmp_path, method="rigl")
    with pytest.raises(ValueError, match="validation split"):
        laplace_module.last_layer_laplace(trainer.net.module, trainer.data.train_eval, {"test": trainer.data.test})


def test_the_prior_precision_is_the_grids_lowest_validation_nll_for_an_overconfident_head():
    """An overconfident linear classifier (its true weights × 4) on noisy labels: some posterior
    variance helps and too much hurts, so the validation NLL has its minimum inside the grid,
    and that minimum is the choice (a score that ran on over the grid would pick its end)."""
    from cigl_bayes.data import TensorLoader

    g = torch.Generator().manual_seed(0)
    true_w = torch.randn(4, 8, generator=g, dtype=torch.float64)

    def split(n):
        x = torch.randn(n, 8, generator=g, dtype=torch.float64)
        y = torch.distributions.Categorical(logits=x @ true_w.T).sample()
        return TensorLoader(x, y, batch_size=64, shuffle=False)

    head = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(8, 4)).double()
    with torch.no_grad():
        head[1].weight.copy_(4 * true_w)
        head[1].bias.zero_()
    train, val = split(64), split(512)
    fit = laplace_module.last_layer_laplace(head, train, {"val": val})
    curve = fit.val_nll_by_prior_precision
    assert min(curve, key=curve.get) not in (1e-4, 1e4)  # the setting this test needs: an inner minimum
    labels = torch.cat([y for _, y in val.epoch(0)])
    chosen = float(laplace_module.validation_nll(fit.log_probs["val"].exp(), labels))
    assert 1e-4 * 1.001 < fit.prior_precision < 1e4 / 1.001
    assert chosen <= min(curve.values()) + 0.01


@pytest.mark.slow
def test_the_laplace_baseline_command_writes_a_complete_laplace_json(tmp_path, cifar_data_dir):
    """End to end on a tiny real run: experiments.laplace_baseline reads weights.safetensors and writes
    laplace.json with the fitted prior precision inside the grid, its validation-NLL curve, the
    scores of every split, and the installed laplace-torch's version (the package has no __version__)."""
    import json
    from importlib.metadata import version

    from cigl_bayes.config import TrainConfig
    from cigl_bayes.experiments.laplace_baseline import main as laplace_main
    from cigl_bayes.inference.training import run

    cfg = TrainConfig(method="rigl", model="small-cnn", sparsity=0.9, epochs=1, subset=300, test_subset=200,
                      batch_size=64, data_dir=str(cifar_data_dir), device="cpu", amp="off")
    run(cfg, tmp_path / "run", progress=False)
    assert laplace_main([str(tmp_path / "run"), "--no-progress", "--device", "cpu",
                         "--data-dir", str(cifar_data_dir)]) == 0
    fit = json.loads((tmp_path / "run" / "laplace.json").read_text())
    assert fit["laplace_torch"] == version("laplace-torch")
    assert 1e-4 <= fit["prior_precision"] <= 1e4
    curve = fit["val_nll_by_prior_precision"]
    assert list(curve) == [f"{10.0 ** k:g}" for k in range(-4, 5)]
    # the chosen point (the grid's minimum) is no worse than any of the grid's decades (float32 NLLs)
    assert fit["val"]["nll"] <= min(curve.values()) + 1e-4
    for split in ("val", "test"):
        assert {"accuracy", "ece", "nll", "brier"} <= set(fit[split])
    assert fit["method"] == "rigl" and fit["bn_protocol"] == "tracked"


def test_plain_lists_of_batches_fit_as_the_projects_loaders_do():
    """A user's own model and batches: lists of (x, y) give the fit that TensorLoaders give."""
    from cigl_bayes.data import TensorLoader

    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(192, 8, generator=g, dtype=torch.float64), torch.randint(0, 4, (192,), generator=g)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).double()
    as_lists = [list(zip(x[a:b].split(32), y[a:b].split(32))) for a, b in ((0, 128), (128, 192))]
    as_loaders = [TensorLoader(x[a:b], y[a:b], batch_size=32, shuffle=False) for a, b in ((0, 128), (128, 192))]
    ours = laplace_module.last_layer_laplace(net, as_lists[0], {"val": as_lists[1]})
    theirs = laplace_module.last_layer_laplace(net, as_loaders[0], {"val": as_loaders[1]})
    assert ours.prior_precision == theirs.prior_precision
    assert torch.allclose(ours.log_probs["val"], theirs.log_probs["val"])


def test_a_generator_of_batches_is_read_whole():
    """A one-shot iterable: its first batch (read to find the last layer) must not be lost to the fit."""
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(128, 8, generator=g, dtype=torch.float64), torch.randint(0, 4, (128,), generator=g)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).double()
    train = list(zip(x[:96].split(32), y[:96].split(32)))
    val = list(zip(x[96:].split(32), y[96:].split(32)))
    as_list = laplace_module.last_layer_laplace(net, train, {"val": val})
    as_generator = laplace_module.last_layer_laplace(net, (b for b in train), {"val": (b for b in val)})
    assert as_list.val_nll_by_prior_precision == as_generator.val_nll_by_prior_precision
