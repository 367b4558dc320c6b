"""The predictors (cigl_bayes.predict) and the posterior report CLI on tiny real runs."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from cigl_bayes.averaging import Snapshot
from cigl_bayes.config import TrainConfig
from cigl_bayes.inference.training import Trainer, run
from cigl_bayes.predict import combine, draws_log_probs, nnz, predictor_draws


@pytest.fixture(scope="module")
def tiny_cfg(cifar_data_dir, cache_dir) -> TrainConfig:
    import os

    os.environ["CIGL_CACHE_DIR"] = str(cache_dir)
    return TrainConfig(method="cigl", model="small-cnn", data_dir=str(cifar_data_dir), sparsity=0.8, epochs=3,
                       subset=400, test_subset=200, batch_size=50, wma_start_epoch=0, delta_t=4, device="cpu",
                       log_every=4, amp="off")  # float32 everywhere: compared against plain module forwards


@pytest.fixture(scope="module")
def trained(tiny_cfg, tmp_path_factory) -> Trainer:
    trainer = Trainer(tiny_cfg, tmp_path_factory.mktemp("tiny"), progress=False)
    trainer.fit()
    return trainer


def final_of(trainer) -> Snapshot:
    with torch.no_grad():
        return Snapshot(trainer.net.effective_flat().clone(), trainer.net.other_flat().clone())


def test_wma_of_identical_samples_is_that_sample(trained):
    net, data = trained.net, trained.data
    snap = next(iter(trained.samples))
    loaders = {"test": data.test}
    one = draws_log_probs(net, predictor_draws("predictive", final_of(trained), [snap]), loaders, data.train_eval)
    wma_draws = predictor_draws("wma", final_of(trained), [snap, snap, snap])
    wma = draws_log_probs(net, wma_draws, loaders, data.train_eval)
    assert len(wma_draws) == 1 and len(wma["test"]) == 1
    torch.testing.assert_close(wma["test"][0], one["test"][0], rtol=1e-6, atol=1e-6)
    assert nnz(wma_draws[0][1]) == nnz(snap)


def test_predictive_with_one_sample_equals_final(trained):
    """The final weights as the only sample, with the training BN statistics kept (no recompute)."""
    net, data = trained.net, trained.data
    final = final_of(trained)
    loaders = {"test": data.test}
    by_final = draws_log_probs(net, predictor_draws("final", final), loaders, data.train_eval)["test"]
    predictive = draws_log_probs(net, predictor_draws("predictive", final, [final]), loaders, bn_loader=None)["test"]
    torch.testing.assert_close(combine("predictive", predictive), combine("final", by_final))
    assert nnz(final) == int((final.sparse != 0).sum()) + final.other.numel()


def test_predictive_averages_probabilities_and_its_draws_are_the_samples(trained):
    from cigl_bayes.experiments.posterior_report import PredictorResult

    net, data = trained.net, trained.data
    samples = list(trained.samples)
    assert len(samples) == 3
    draws = predictor_draws("predictive", final_of(trained), samples, count=3)
    assert [torch.equal(d.sparse, s.sparse) for (_, d), s in zip(draws, samples)] == [True] * 3
    assert len(predictor_draws("predictive", final_of(trained), samples, count=2)) == 2
    per_draw = draws_log_probs(net, draws, {"test": data.test}, data.train_eval)["test"]
    manual = torch.stack([d.exp() for d in per_draw]).mean(0).log()
    torch.testing.assert_close(combine("predictive", per_draw), manual)
    result = PredictorResult("predictive", per_draw, 3, 0)
    labels = torch.cat([y for _, y in data.test.epoch(0)])
    ll = result.per_draw_log_likelihood(labels)
    assert ll.shape == (3, len(labels))
    torch.testing.assert_close(ll[1], per_draw[1][torch.arange(len(labels)), labels])


def test_mc_z_draws_are_masked_final_weights(trained):
    final = final_of(trained)
    draws = [d for _, d in predictor_draws("mc-z", final, keep=0.9, count=4, seed=1)]
    w = final.sparse
    for d in draws:
        kept = d.sparse != 0
        assert torch.equal(d.sparse[kept], w[kept]) and kept.sum() < (w != 0).sum()
        assert 0.85 < kept.sum() / (w != 0).sum() < 0.95
    assert not torch.equal(draws[0].sparse, draws[1].sparse)
    again = predictor_draws("mc-z", final, keep=0.9, count=1, seed=1)[0][1]
    assert torch.equal(again.sparse, draws[0].sparse)  # seeded


def test_predictors_without_samples_are_refused_by_name(trained):
    final = final_of(trained)
    for name in ("wma", "predictive"):
        with pytest.raises(ValueError, match=f"predictor '{name}' needs collected weight samples"):
            predictor_draws(name, final, [])
    with pytest.raises(ValueError, match="unknown predictor"):
        predictor_draws("ensemble", final, [final])


def test_posterior_report_on_two_seeds(tiny_cfg, tmp_path):
    from cigl_bayes.experiments import posterior_report

    runs = []
    for seed in (0, 1):
        out = tmp_path / f"run-seed{seed}"
        run(dataclasses.replace(tiny_cfg, seed=seed), out, progress=False)
        runs.append(out)
    assert posterior_report.main([*map(str, runs), "--swag-samples", "3", "--mc-samples", "3", "--swag-rank", "2",
                                  "--device", "cpu", "--no-progress"]) == 0
    folder = runs[0] / "posterior"
    for name in ("report.md", "predictors.json", "predictors.csv", "zw.csv", "reliability.png", "zw.png",
                 "posterior.nc", "trace.png", "forest.png"):
        assert (folder / name).is_file() and (folder / name).stat().st_size > 0, name
    result = json.loads((folder / "predictors.json").read_text())
    names = {(r["run"], r["predictor"]) for r in result["predictors"]}
    assert names == {(r.name, p) for r in runs for p in ("final", "mc-z", "wma", "predictive", "swag")}
    # the report's wma/final numbers are the run's own evaluation of the same weights
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    report = {r["predictor"]: r for r in result["predictors"] if r["run"] == runs[0].name}
    assert report["final"]["accuracy"] == pytest.approx(metrics["test"]["final"]["accuracy"])
    assert report["wma"]["accuracy"] == pytest.approx(metrics["test"]["wma"]["accuracy"])
    assert report["predictive"]["forward_passes"] == 3 and report["swag"]["forward_passes"] == 3

    import arviz as az

    idata = az.from_netcdf(folder / "posterior.nc")
    assert idata.posterior.sizes["chain"] == 2 and idata.posterior.sizes["draw"] == 3
    assert "log_likelihood" in idata.groups() and "sample_stats" in idata.groups()
    # draws.json: each run's chain, per draw, small enough to commit; the same numbers as the netCDF
    chains = json.loads((folder / "draws.json").read_text())["chains"]
    assert [c["run"] for c in chains] == [r.name for r in runs]
    for c, chain in enumerate(chains):
        assert chain["theta_norm"] == pytest.approx(idata.posterior["theta_norm"].values[c].tolist())
        assert chain["test_nll"] == pytest.approx((-idata.log_likelihood["y"].values[c].mean(-1)).tolist())
        assert chain["train_loss"] == pytest.approx(idata.sample_stats["train_loss"].values[c].tolist())
    text = (folder / "report.md").read_text()
    assert "R-hat" in text and "Z–W" in text


def test_posterior_report_refuses_missing_and_unfinished_runs(tiny_cfg, tmp_path):
    from cigl_bayes.experiments import posterior_report

    with pytest.raises(FileNotFoundError, match="does not exist"):
        posterior_report.main([str(tmp_path / "nope"), "--device", "cpu"])
    out = tmp_path / "half"
    run(tiny_cfg, out, progress=False, stop_after_epochs=1)
    with pytest.raises(ValueError, match="stopped at epoch 1 of 3; resume it first"):
        posterior_report.main([str(out), "--device", "cpu"])
    assert not (out / "posterior").exists()  # a refused report leaves no (empty) report folder behind


def _masked_module_log_probs(trainer, loaders, recompute_bn: bool) -> torch.Tensor:
    """Test log-probabilities of a plain copy of the module holding M⊙W, evaluated in eval mode, with
    BatchNorm statistics re-estimated by torch's own SWA helper (``update_bn``) when asked."""
    import copy

    from torch.optim.swa_utils import update_bn

    net = trainer.net
    module = copy.deepcopy(net.module)
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, m in zip(net.sparse_names, net.mask.views(net.mask.float)):
            params[name].mul_(m)
    if recompute_bn:
        update_bn(trainer.data.train_eval.epoch(0), module)
    module.eval()
    with torch.no_grad():
        return torch.cat([torch.log_softmax(module(x).float(), -1) for x, _ in loaders["test"].epoch(0)])


def test_cigl_final_gets_batchnorm_statistics_of_its_own_weights(trained):
    """CigL trains under M⊙Z⊙W with an unscaled Z, so the BatchNorm statistics tracked in training
    belong to pre-activations ≈ keep × those of M⊙W.  Its ``final`` predictor evaluates M⊙W with
    statistics recomputed on the training images (torch's update_bn as the reference), not with
    the training ones."""
    from cigl_bayes.evaluate import predictor_log_probs

    assert trained.cfg.final_bn_recomputed and trained.cfg.keep < 1
    loaders = {"test": trained.data.test}
    got = predictor_log_probs(trained, loaders)["final"]["test"]
    torch.testing.assert_close(got, _masked_module_log_probs(trained, loaders, recompute_bn=True),
                               rtol=1e-4, atol=1e-4)
    stale = _masked_module_log_probs(trained, loaders, recompute_bn=False)
    assert (got - stale).abs().max() > 1e-3  # the test can tell the two statistics apart


def test_rigl_final_keeps_its_training_batchnorm_statistics(tiny_cfg, tmp_path):
    from cigl_bayes.evaluate import predictor_log_probs

    trainer = Trainer(dataclasses.replace(tiny_cfg, method="rigl", epochs=1), tmp_path, progress=False)
    trainer.fit()
    assert not trainer.cfg.final_bn_recomputed
    loaders = {"test": trainer.data.test}
    got = predictor_log_probs(trainer, loaders)["final"]["test"]
    torch.testing.assert_close(got, _masked_module_log_probs(trainer, loaders, recompute_bn=False),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method, rate, expected", [
    ("cigl", 0.1, True), ("cigl", 0.01, True), ("cigl-no-wma", 0.1, True), ("cigl", 0.0, False),
    ("rigl", 0.1, False), ("rigl-wdp", 0.1, False), ("dense", 0.1, False), ("cigl-no-rm", 0.1, False)])
def test_which_methods_recompute_final_batchnorm(method, rate, expected):
    """Only an unscaled random mask (CigL) leaves the training statistics on other weights than M⊙W."""
    assert TrainConfig(method=method, random_mask_rate=rate).final_bn_recomputed is expected


def test_model_pt_of_cigl_without_wma_holds_the_final_weights_batchnorm_statistics(tiny_cfg, tmp_path):
    """cigl-no-wma writes its final weights to model.pt; their BatchNorm statistics must be the
    ones recomputed for M⊙W (torch's update_bn as the reference), not those tracked under M⊙Z⊙W."""
    import copy

    from torch.optim.swa_utils import update_bn

    from cigl_bayes.evaluate import output_state_dict

    trainer = Trainer(dataclasses.replace(tiny_cfg, method="cigl-no-wma", epochs=1, random_mask_rate=0.3), tmp_path,
                      progress=False)
    trainer.fit()
    assert trainer.cfg.final_bn_recomputed
    training_stats = {k: v.clone() for k, v in trainer.net.module.state_dict().items() if "running_" in k}
    state = output_state_dict(trainer)
    module = copy.deepcopy(trainer.net.module)
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, m in zip(trainer.net.sparse_names, trainer.net.mask.views(trainer.net.mask.float)):
            params[name].mul_(m)
    update_bn(trainer.data.train_eval.epoch(0), module)
    expected = module.state_dict()
    stats = [k for k in state if "running_" in k]
    assert stats
    for k in stats:
        torch.testing.assert_close(state[k], expected[k], rtol=1e-4, atol=1e-5)
    assert any((state[k] - training_stats[k]).abs().max() > 1e-3 for k in stats)  # the two can be told apart


def test_batchnorm_recomputation_batches_mix_the_classes_of_a_class_sorted_training_set(monkeypatch):
    """CIFAR's folders store the training images class by class.  BatchNorm recomputation averages
    per-batch statistics (a cumulative average over batches), so single-class batches would lose the
    between-class variance, and a ``--bn-batches`` prefix would see one or two classes only.  The
    recomputation loader therefore serves one fixed, seeded shuffle: each batch's variance is the
    whole set's, every batch holds every class, and the order is the same every time."""
    import numpy as np

    from cigl_bayes import data as data_lib
    from cigl_bayes import train as train_lib

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 200).astype(np.int64)  # sorted by class, as the JPEG folders are
    images = np.clip(labels[:, None, None, None] * 25 + rng.normal(0, 5, (2000, 8, 8, 3)), 0, 255).astype(np.uint8)
    ds = data_lib.ArrayDataset(images, labels, tuple(f"c{i}" for i in range(10)))
    monkeypatch.setattr(train_lib.data_lib, "load_dataset", lambda *a, **k: (ds, ds.take(np.arange(100))))
    cfg = TrainConfig(model="small-cnn", epochs=1, batch_size=100, device="cpu", amp="off", seed=3).resolved()
    loader = train_lib.build_data(cfg, torch.device("cpu")).train_eval
    batches = list(loader.epoch(0))
    whole = torch.cat([x for x, _ in batches]).double()
    mean_of_batch_vars = torch.stack([x.double().var() for x, _ in batches]).mean()
    assert float(mean_of_batch_vars) == pytest.approx(float(whole.var()), rel=0.05)
    assert all(len(torch.unique(y)) == 10 for _, y in batches)
    again = torch.cat([y for _, y in loader.epoch(0)])
    assert torch.equal(again, torch.cat([y for _, y in batches]))
