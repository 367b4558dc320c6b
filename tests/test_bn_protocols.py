"""The controlled study's instruments: BatchNorm protocols, the weights file, ITOP, validation
curves, and that nothing fitted sees the test split (issue #39).

Each protocol's statistics are checked against a hand computation: every BatchNorm layer's
inputs are captured batch by batch with forward hooks (in training mode, where a BatchNorm
normalises by its batch and so its inputs do not depend on running statistics), averaged by hand,
and written into a copy of the module, whose eval-mode output the protocol must reproduce.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from cigl_bayes import metrics
from cigl_bayes.config import TrainConfig
from cigl_bayes.data import TensorLoader
from cigl_bayes.evaluate import evaluate_and_write, evaluate_weights, trainer_weights
from cigl_bayes.inference.training import Trainer
from cigl_bayes.masks import DeterministicMask
from cigl_bayes.predict import BN_PROTOCOLS, draws_log_probs, predictor_draws
from cigl_bayes.train import Data
from cigl_bayes.weights import WeightsFileError, load_run_weights, save_run_weights

N_IMAGES, BATCH = 192, 32


def protocol_data(seed: int = 0) -> Data:
    """Synthetic images; the 'augmented' loader serves visibly different images (flipped and
    shifted), so that a protocol reading the wrong loader gives other statistics."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N_IMAGES, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (N_IMAGES,), generator=g)
    x_aug = x.flip(-1) * 1.5 + 0.7
    xv = torch.randn(48, 3, 8, 8, generator=g, dtype=torch.float64)  # its own size: not mistakable for test
    yv = torch.randint(0, 10, (48,), generator=g)
    return Data(train=TensorLoader(x, y, batch_size=BATCH, shuffle=True, seed=seed),
                train_eval=TensorLoader(x, y, batch_size=64, shuffle=False),
                val=TensorLoader(xv, yv, batch_size=64, shuffle=False),
                test=TensorLoader(x[:64] + 0.1, y[:64], batch_size=64, shuffle=False), num_classes=10,
                train_bn_augmented=TensorLoader(x_aug, y, batch_size=64, shuffle=False))


def make_trainer(tmp_path, **overrides) -> Trainer:
    fields = {"method": "cigl", "model": "small-cnn", "sparsity": 0.8, "epochs": 3, "batch_size": BATCH,
              "delta_t": 4, "device": "cpu", "dtype": "float64", "log_every": 1000, "wma_start_epoch": 1,
              "temperature_scaling": False}
    fields.update(overrides)
    return Trainer(TrainConfig(**fields), tmp_path, progress=False, data=protocol_data())


def hand_statistics(module: nn.Module, loader) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{BatchNorm name: (mean of batch means, mean of unbiased batch variances)} over ``loader``."""
    bns = {n: m for n, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {n: [] for n in bns}
    hooks = [m.register_forward_pre_hook(
        lambda _m, args, n=n: seen[n].append((args[0].mean((0, 2, 3)), args[0].var((0, 2, 3), unbiased=True))))
        for n, m in bns.items()]
    module.train()
    with torch.no_grad():
        for x, _ in loader.epoch(0):
            module(x)
    for h in hooks:
        h.remove()
    return {n: (torch.stack([a for a, _ in v]).mean(0), torch.stack([b for _, b in v]).mean(0))
            for n, v in seen.items()}


def expected_log_probs(trainer, snap, loader_for_stats, x) -> torch.Tensor:
    """log softmax of a module copy holding ``snap`` with hand statistics (``None``: the tracked ones)."""
    module = copy.deepcopy(trainer.net.module)
    params = dict(module.named_parameters())
    with torch.no_grad():
        for name, view in zip(trainer.net.sparse_names, trainer.net.mask.views(snap.sparse)):
            params[name].copy_(view)
        for name, part in zip(trainer.net.other_names,
                              snap.other.split([p.numel() for p in trainer.net.other_params])):
            params[name].copy_(part.view_as(params[name]))
    if loader_for_stats is not None:
        stats = hand_statistics(module, loader_for_stats)
        for name, m in module.named_modules():
            if name in stats:
                m.running_mean.copy_(stats[name][0])
                m.running_var.copy_(stats[name][1])
    module.eval()
    with torch.no_grad():
        return torch.log_softmax(module(x), -1)


def test_each_bn_protocol_uses_its_own_statistics(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.fit()
    data = trainer.data
    weights = trainer_weights(trainer)
    by_protocol = evaluate_weights(trainer.net, trainer.cfg, data, weights, {"test": data.test})
    assert set(by_protocol) == set(BN_PROTOCOLS)
    assert set(by_protocol["tracked"]) == {"final"}  # an averaged model has no tracked statistics
    assert set(by_protocol["recomputed-clean"]) == set(by_protocol["recomputed-augmented"]) == {"final", "wma"}
    x = data.test.x
    sources = {"tracked": None, "recomputed-clean": data.train_eval, "recomputed-augmented": data.train_bn_augmented}
    for protocol, loader in sources.items():
        for name, snap in (("final", weights.final), ("wma", weights.wma)):
            if name not in by_protocol[protocol]:
                continue
            got = by_protocol[protocol][name]["test"]
            torch.testing.assert_close(got, expected_log_probs(trainer, snap, loader, x).to(got.dtype),
                                       rtol=1e-5, atol=1e-6, msg=f"{name} under {protocol}")
    # the protocols give different answers here (the augmented images differ), so the check has teeth
    assert not torch.allclose(by_protocol["recomputed-clean"]["wma"]["test"],
                              by_protocol["recomputed-augmented"]["wma"]["test"])
    assert not torch.allclose(by_protocol["tracked"]["final"]["test"], by_protocol["recomputed-clean"]["final"]["test"])


def test_tracked_statistics_are_refused_for_weights_that_were_not_trained(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.fit()
    w = trainer_weights(trainer)
    draws = predictor_draws("wma", w.final, wma=w.wma)
    with pytest.raises(ValueError, match="only for the final weights"):
        draws_log_probs(trainer.net, draws, {"test": trainer.data.test}, None, protocol="tracked")
    with pytest.raises(ValueError, match="unknown BatchNorm protocol"):
        draws_log_probs(trainer.net, draws, {"test": trainer.data.test}, trainer.data.train_eval, protocol="clean")


def test_metrics_json_records_every_protocol_and_each_headlines_own(tmp_path):
    trainer = make_trainer(tmp_path, method="rigl")
    trainer.fit()
    result = evaluate_and_write(trainer)
    assert result["bn_protocol"] == {"final": "tracked"}
    by = result["by_bn_protocol"]
    assert set(by) == set(BN_PROTOCOLS)
    assert by["tracked"]["test"]["final"] == result["test"]["final"]  # the headline is the tracked one
    assert by["recomputed-augmented"]["test"]["final"] != result["test"]["final"]
    assert set(by["recomputed-clean"]["reliability"]) == {"final"}
    stored = json.loads((tmp_path / "metrics.json").read_text())
    assert stored["by_bn_protocol"] == json.loads(json.dumps(by))
    assert stored["weights_file"] == "weights.safetensors" and (tmp_path / "weights.safetensors").is_file()
    assert stored["temperature"] is None and stored["temperature_by_bn_protocol"] == {}  # temperature scaling off


def test_cigl_headlines_recompute_on_clean_images(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.fit()
    result = evaluate_and_write(trainer)
    assert result["bn_protocol"] == {"final": "recomputed-clean", "wma": "recomputed-clean"}
    assert result["by_bn_protocol"]["recomputed-clean"]["test"]["wma"] == result["test"]["wma"]


# -- the weights file ---------------------------------------------------------------------------
def test_weights_file_round_trip_keeps_every_weight_setting(tmp_path):
    trainer = make_trainer(tmp_path, method="cigl-no-wma", save_samples=True)
    trainer.fit()
    w = trainer_weights(trainer)
    assert len(w.samples) == 2 and w.wma is None
    path = save_run_weights(tmp_path / "w.safetensors", w, trainer.cfg.to_dict(), trainer.net.sparse_names)
    back, meta = load_run_weights(path)
    assert meta["config"] == trainer.cfg.to_dict() and meta["sparse_names"] == trainer.net.sparse_names
    assert torch.equal(back.final.sparse, w.final.sparse) and torch.equal(back.final.other, w.final.other)
    assert torch.equal(back.mask, w.mask)
    for a, b in zip(back.samples, w.samples):
        assert torch.equal(a.sparse, b.sparse) and torch.equal(a.other, b.other)
    assert set(back.buffers) == set(w.buffers)
    for k in w.buffers:
        assert torch.equal(back.buffers[k], w.buffers[k])
    # stored as support bits plus the values on it: far below the dense size
    dense_bytes = w.final.sparse.numel() * w.final.sparse.element_size()
    assert path.stat().st_size < 3 * (dense_bytes * (1 - trainer.cfg.sparsity) + dense_bytes / 64) + 20_000


def test_weights_file_round_trip_with_wma(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.fit()
    w = trainer_weights(trainer)
    back, _ = load_run_weights(save_run_weights(tmp_path / "w.safetensors", w, trainer.cfg.to_dict(),
                                                trainer.net.sparse_names))
    assert torch.equal(back.wma.sparse, w.wma.sparse) and torch.equal(back.wma.other, w.wma.other)


def test_a_foreign_or_broken_weights_file_is_one_clear_error(tmp_path):
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(WeightsFileError, match="not a readable safetensors"):
        load_run_weights(bad)
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(3)}, str(other), metadata={"format": "something-else"})
    with pytest.raises(WeightsFileError, match="not a cigl-bayes weights file"):
        load_run_weights(other)
    with pytest.raises(WeightsFileError, match="no weights file"):
        load_run_weights(tmp_path / "missing.safetensors")


@pytest.mark.slow
def test_reevaluation_from_the_weights_file_equals_the_original_evaluation(tmp_path, cifar_data_dir):
    """Train a tiny run on real CIFAR-10, then rebuild it from weights.safetensors alone (another
    folder, no checkpoint): every predictor under every protocol scores exactly as before."""
    import shutil

    from cigl_bayes.experiments.reevaluate import main as reevaluate_main
    from cigl_bayes.inference.training import run

    cfg = TrainConfig(method="cigl", model="small-cnn", sparsity=0.9, epochs=2, wma_start_epoch=0, subset=400,
                      test_subset=300, batch_size=64, data_dir=str(cifar_data_dir), device="cpu", amp="off")
    result = run(cfg, tmp_path / "run", progress=False)
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy2(tmp_path / "run" / "weights.safetensors", moved)
    shutil.copy2(tmp_path / "run" / "metrics.json", moved)
    assert reevaluate_main([str(moved), "--no-progress", "--device", "cpu"]) == 0
    again = json.loads((moved / "reevaluation.json").read_text())
    assert again["by_bn_protocol"] == result["by_bn_protocol"]
    assert again["test"] == result["test"] and again["bn_protocol"] == result["bn_protocol"]
    assert again["temperature"] == result["temperature"]


# -- ITOP -----------------------------------------------------------------------------------
def test_itop_rate_counts_every_weight_that_was_ever_active():
    g = torch.Generator().manual_seed(0)
    shapes = [torch.Size([20, 10]), torch.Size([30])]
    mask = DeterministicMask.random(shapes, [40, 6], g, dtype=torch.float64)
    union = mask.flat.clone()
    for _ in range(5):
        w = torch.randn(230, generator=g, dtype=torch.float64) * mask.float
        mask.update(w, torch.randn(230, generator=g, dtype=torch.float64), 0.3)
        union |= mask.flat
    assert torch.equal(mask.ever_active, union)
    assert mask.itop_rate == pytest.approx(int(union.sum()) / 230)
    assert mask.itop_rate > mask.density  # the updates explored new weights
    restored = DeterministicMask.random(shapes, [40, 6], torch.Generator().manual_seed(9), dtype=torch.float64)
    restored.load_state_dict(mask.state_dict())
    assert torch.equal(restored.ever_active, union)


def test_trainer_records_the_itop_rate_of_the_masks_it_went_through(tmp_path):
    trainer = make_trainer(tmp_path, method="rigl")
    union = trainer.net.mask.flat.clone()
    original = trainer.cigl.update_mask

    def spy(score, fraction):
        original(score, fraction)
        union.logical_or_(trainer.net.mask.flat)

    trainer.cigl.update_mask = spy
    trainer.fit()
    assert trainer.history[-1]["itop_rate"] == pytest.approx(int(union.sum()) / union.numel())
    assert trainer.history[-1]["itop_rate"] > trainer.net.mask.density


# -- validation curves ------------------------------------------------------------------------
def test_validation_curves_score_the_last_weights_and_the_wma_each_epoch(tmp_path):
    trainer = make_trainer(tmp_path, curve_bn_batches=1000)  # every batch: the curve's WMA = the run's
    trainer.fit()
    assert [("val_accuracy" in h, "val_wma_nll" in h) for h in trainer.history] == [(True, False), (True, True),
                                                                                    (True, True)]
    result = evaluate_and_write(trainer)
    last = trainer.history[-1]
    wma = result["by_bn_protocol"]["recomputed-clean"]["val"]["wma"]
    assert last["val_wma_nll"] == pytest.approx(wma["nll"], rel=1e-9)
    assert last["val_wma_ece"] == pytest.approx(wma["ece"], rel=1e-9)
    final = result["by_bn_protocol"]["tracked"]["val"]["final"]
    assert last["val_nll"] == pytest.approx(final["nll"], rel=1e-9)
    assert last["val_accuracy"] == pytest.approx(final["accuracy"])


# -- nothing fitted sees the test split ---------------------------------------------------------
def test_temperature_is_fitted_on_the_validation_split_only(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, temperature_scaling=True)
    trainer.fit()
    seen = []
    original = metrics.fit_temperature

    def spy(log_probs, labels, *args, **kwargs):
        seen.append((log_probs.clone(), labels.clone()))
        return original(log_probs, labels, *args, **kwargs)

    monkeypatch.setattr(metrics, "fit_temperature", spy)
    result = evaluate_and_write(trainer)
    # the headline temperature, then one per weight setting and protocol (temperature_by_bn_protocol)
    settings = sum(len(by_name) for by_name in result["temperature_by_bn_protocol"].values())
    assert settings == sum(len(v["test"]) for v in result["by_bn_protocol"].values()) > 1
    assert len(seen) == 1 + settings
    # and every fit sees the validation split's own scores: the predictor on the validation images
    x_val = trainer.data.val.x
    for log_probs, labels in seen:
        assert torch.equal(labels, trainer.data.val.y)
        assert log_probs.shape[0] == x_val.shape[0] != trainer.data.test.x.shape[0]


def test_batchnorm_protocols_recompute_on_training_images_only(tmp_path):
    """Every recomputed protocol's loader serves the training images (clean or augmented), never
    the validation or test images."""
    trainer = make_trainer(tmp_path)
    data = trainer.data
    for protocol in ("recomputed-clean", "recomputed-augmented"):
        assert data.bn_loader(protocol) in (data.train_eval, data.train_bn_augmented)
        assert data.bn_loader(protocol) is not data.test and data.bn_loader(protocol) is not data.val
    assert data.bn_loader("tracked") is None
