"""Shifted and OOD test sets (cigl_bayes.corruptions, .ood, .shift), OOD metrics, and the shift report."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch

from cigl_bayes import corruptions as C
from cigl_bayes import metrics, ood
from cigl_bayes.data import ArrayDataset, load_dataset
from cigl_bayes.shift import build_shift_sets


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Smooth, textured 32×32 images (so blurs and noise change them measurably)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    base = np.stack([xx, yy, 0.5 * (xx + yy)], -1)
    stripes = 0.25 * np.sin(xx[..., None] * rng.uniform(5, 15, (6, 1, 1, 3)) * np.pi)
    return (np.clip(base + stripes, 0, 1) * 255).astype(np.uint8)


# The CIFAR-10 parameters as published in make_cifar_c.py (hendrycks/robustness, ImageNet-C/create_c),
# severity 1..5; zoom blur as the (start, stop) of its arange(start, stop, 0.01).
CIFAR_10_C = {
    "gaussian_noise": [0.04, 0.06, .08, .09, .10],
    "shot_noise": [500, 250, 100, 75, 50],
    "impulse_noise": [.01, .02, .03, .05, .07],
    "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
    "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
    "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
    "zoom_blur": [(1, 1.06), (1, 1.11), (1, 1.16), (1, 1.21), (1, 1.26)],
    "snow": [(0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
             (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)],
    "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
    "fog": [(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
    "brightness": [.05, .1, .15, .2, .3],
    "contrast": [.75, .5, .4, .3, 0.15],
    "elastic_transform": [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)],
    "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
    "jpeg_compression": [80, 65, 58, 50, 40],
}


def test_parameters_are_the_published_cifar_ones():
    assert C.CORRUPTIONS == tuple(CIFAR_10_C) and set(C.PARAMETERS) == set(CIFAR_10_C)
    for name, published in CIFAR_10_C.items():
        assert [tuple(v) if isinstance(v, tuple) else v for v in C.PARAMETERS[name]] == published, name


@pytest.mark.parametrize("name", C.CORRUPTIONS)
def test_every_corruption_is_seeded_changes_the_image_and_keeps_the_format(images, name):
    first = C.corrupted_set(images, name, 3, seed=1)
    assert first.dtype == np.uint8 and first.shape == images.shape
    assert np.array_equal(first, C.corrupted_set(images, name, 3, seed=1))
    assert np.array_equal(first[2:4], C.corrupted_set(images, name, 3, seed=1)[2:4])
    assert np.array_equal(first[:2], C.corrupted_set(images[:2], name, 3, seed=1))  # seeded per position
    assert np.abs(first.astype(int) - images).mean() > 0.5


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "contrast",
                                  "brightness", "fog", "zoom_blur"])
def test_stronger_severity_changes_the_image_more(images, name):
    change = [np.abs(C.corrupted_set(images, name, s).astype(int) - images).mean() for s in (1, 5)]
    assert change[1] > change[0]


def test_gaussian_noise_has_the_cifar_standard_deviation():
    flat = np.full((200, 32, 32, 3), 128, np.uint8)
    noisy = C.corrupted_set(flat, "gaussian_noise", 5).astype(float) / 255.0
    assert noisy.std() == pytest.approx(0.10, rel=0.05)  # severity 5: σ = 0.10 on [0, 1]


def test_contrast_scales_the_deviation_from_the_mean():
    img = np.zeros((1, 32, 32, 3), np.uint8)
    img[0, :16] = 200
    out = C.corrupted_set(img, "contrast", 2).astype(float)  # c = 0.5
    assert out[0, :16].mean() - out[0, 16:].mean() == pytest.approx(100, abs=1.5)


def test_bad_corruption_inputs_are_refused(images):
    with pytest.raises(ValueError, match="unknown corruption"):
        C.corrupted_set(images, "rain", 1)
    with pytest.raises(ValueError, match="severity"):
        C.corrupt(images[0], "fog", 6, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"uint8 \(N, 32, 32, 3\)"):
        C.corrupted_set(images.astype(np.float32), "fog", 1)


@pytest.mark.parametrize("name", ood.OOD_SETS)
def test_ood_sets_are_seeded_images(name):
    x = ood.ood_set(name, 30, seed=3)
    assert x.shape == (30, 32, 32, 3) and x.dtype == np.uint8 and x.std() > 5
    assert np.array_equal(x, ood.ood_set(name, 30, seed=3)) and not np.array_equal(x, ood.ood_set(name, 30, seed=4))
    with pytest.raises(ValueError, match="at least one image"):
        ood.ood_set(name, 0)


def test_digits_are_grey_upscaled_handwritten_digits():
    x = ood.digits(5)
    assert np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 1], x[..., 2])


def brute_force_ood(s_in: np.ndarray, s_out: np.ndarray) -> tuple[float, float]:
    """AUROC as P(out > in) + ½P(tie), and FPR at the largest threshold flagging ≥ 95% of OOD."""
    diff = s_out[:, None] - s_in[None, :]
    auroc = (diff > 0).mean() + 0.5 * (diff == 0).mean()
    best = 1.0
    for t in np.unique(np.concatenate([s_in, s_out])):
        if (s_out >= t).mean() >= 0.95:
            best = min(best, (s_in >= t).mean())
    return auroc, best


@pytest.mark.parametrize("rounded", [True, False])  # with ties, and with a TPR that lands between ROC points
def test_ood_metrics_agree_with_a_hand_computation_and_with_scikit_learn(rounded):
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    s_in, s_out = rng.normal(0, 1, 300), rng.normal(1.2, 1, 200)
    if rounded:
        s_out = s_out.round(1)
    got = metrics.ood_detection(s_in, s_out)
    auroc, fpr95 = brute_force_ood(s_in, s_out)
    assert got["auroc"] == pytest.approx(auroc, abs=1e-12)
    assert got["fpr95"] == pytest.approx(fpr95, abs=1e-12)
    y = np.r_[np.zeros(300), np.ones(200)]
    assert got["aupr"] == pytest.approx(average_precision_score(y, np.r_[s_in, s_out]))
    perfect = metrics.ood_detection(np.zeros(10), np.ones(10))
    assert perfect == {"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0}
    with pytest.raises(ValueError, match="finite"):
        metrics.ood_detection([0.0, float("nan")], [1.0])


def test_shift_sets_are_cached_and_rebuilt_from_a_broken_cache(images, tmp_path):
    test = ArrayDataset(np.concatenate([images] * 4), np.arange(24) % 3, ("a", "b", "c"))
    kw = {"images": 9, "ood_size": 5, "corruption_names": ("gaussian_noise", "pixelate"), "ood_names": ("blobs",),
          "cache_dir": tmp_path, "progress": False}
    first = build_shift_sets(test, **kw)
    assert not first.from_cache and len(first.clean) == 9 and set(first.corrupted) == {
        (n, s) for n in ("gaussian_noise", "pixelate") for s in C.SEVERITIES}
    again = build_shift_sets(test, **kw)
    assert again.from_cache and all(np.array_equal(again.corrupted[k], v) for k, v in first.corrupted.items())
    cache = next(tmp_path.glob("shift-*.npz"))
    cache.write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="unreadable shift cache"):
        rebuilt = build_shift_sets(test, **kw)
    assert not rebuilt.from_cache and np.array_equal(rebuilt.ood["blobs"], first.ood["blobs"])
    with pytest.raises(ValueError, match="unknown OOD set"):
        build_shift_sets(test, **{**kw, "ood_names": ("svhn",)})


def test_shift_report_on_a_tiny_run(cifar_data_dir, cache_dir, tmp_path, monkeypatch):
    from cigl_bayes.config import TrainConfig
    from cigl_bayes.experiments import shift_report
    from cigl_bayes.inference import run

    monkeypatch.setenv("CIGL_CACHE_DIR", str(cache_dir))
    cfg = TrainConfig(method="cigl", model="small-cnn", data_dir=str(cifar_data_dir), sparsity=0.9, epochs=3,
                      wma_start_epoch=0, subset=400, test_subset=100, batch_size=50, delta_t=4, device="cpu")
    runs = [tmp_path / "cigl", tmp_path / "rigl"]
    run(cfg, runs[0], progress=False)
    run(dataclasses.replace(cfg, method="rigl"), runs[1], progress=False)
    args = ["--images", "20", "--ood-size", "30", "--corruptions", "gaussian_noise", "contrast", "--draws", "2",
            "--device", "cpu", "--no-progress", "--out", str(tmp_path / "cmp")]
    assert shift_report.main([*map(str, runs), *args]) == 0
    out = runs[0] / "shift"
    for name in ("shift.json", "shift.csv", "ood.csv", "ece_vs_severity.png", "accuracy_vs_severity.png",
                 "ood_scores.png", "examples.png"):
        assert (out / name).stat().st_size > 0, name
    report = json.loads((out / "shift.json").read_text())
    predictors = {r["predictor"] for r in report["shift"]}
    assert predictors == {"final", "wma", "temperature_scaled", "predictive", "mc-z", "swag"}
    assert len(report["shift"]) == len(predictors) * (1 + 2 * 5)  # clean + 2 corruptions × 5 severities
    assert report["forward_passes"]["mc-z"] == 2 and report["forward_passes"]["predictive"] == 3
    ood_rows = report["ood"]
    assert {r["ood_set"] for r in ood_rows} == set(ood.OOD_SETS)
    assert {r["score"] for r in ood_rows if r["predictor"] == "swag"} == {"max_prob", "entropy", "mutual_information"}
    assert {r["score"] for r in ood_rows if r["predictor"] == "wma"} == {"max_prob", "entropy"}
    assert all(0 <= r["auroc"] <= 1 and 0 <= r["fpr95"] <= 1 for r in ood_rows)
    # the clean row of wma is the run's own evaluation of the same weights on the same images
    clean_wma = next(r for r in report["shift"] if r["predictor"] == "wma" and r["severity"] == 0)
    from cigl_bayes.inference import load_run

    trained = load_run(runs[0], device="cpu")
    sets = build_shift_sets(load_dataset("cifar10", cifar_data_dir)[1],
                            images=20, ood_size=30, corruption_names=("gaussian_noise", "contrast"), progress=False)
    probs = trained.predict(sets.clean, "wma").probs
    assert clean_wma["accuracy"] == pytest.approx(float((probs.argmax(-1) == torch.as_tensor(sets.labels)).float()
                                                        .mean()))
    # one OOD row recomputed from the predictions: clean subset (negative) against the blobs (positive)
    blobs = trained.predict(sets.ood["blobs"], "wma").probs
    by_hand = metrics.ood_detection(1 - probs.max(-1).values, 1 - blobs.max(-1).values)
    row = next(r for r in ood_rows if r["predictor"] == "wma" and r["ood_set"] == "blobs" and r["score"] == "max_prob")
    assert row["auroc"] == pytest.approx(by_hand["auroc"]) and row["fpr95"] == pytest.approx(by_hand["fpr95"])
    assert row["mean_in"] == pytest.approx(float((1 - probs.max(-1).values).mean()))
    assert row["mean_out"] == pytest.approx(float((1 - blobs.max(-1).values).mean()))
    assert (tmp_path / "cmp" / "comparison.md").read_text().count("| cigl |") >= 1
    # mc-z draws at each run's own keep: CigL's default 0.99; RigL (no Z) 1 − its method's rate 0.1
    assert report["mc_z_keep"] == pytest.approx(0.99)
    assert json.loads((runs[1] / "shift" / "shift.json").read_text())["mc_z_keep"] == pytest.approx(0.9)
    with open(tmp_path / "cmp" / "comparison.csv") as f:
        keeps = {(r["run"], r["predictor"]): r["keep"] for r in csv.DictReader(f)}
    assert float(keeps["cigl", "mc-z"]) == pytest.approx(0.99) and float(keeps["rigl", "mc-z"]) == pytest.approx(0.9)
    assert keeps["cigl", "wma"] == ""


@pytest.mark.parametrize(("extra", "match"), [
    (["--images", "0"], "--images must be ≥ 1"),
    (["--draws", "0"], "--draws must be ≥ 1"),
    (["--bn-batches", "0"], "--bn-batches must be ≥ 1"),
    (["--corruptions", "rain"], "unknown corruption 'rain'"),
    (["--ood", "svhn"], "unknown OOD set 'svhn'"),
    (["--corruptions", "fog", "fog"], "given more than once"),
])
def test_shift_report_refuses_bad_input_before_writing(tmp_path, extra, match):
    from cigl_bayes.experiments import shift_report

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(ValueError, match=match):
        shift_report.main([str(run_dir), *extra])
    assert not any(run_dir.iterdir())
    with pytest.raises(ValueError, match="more than once"):
        shift_report.main([str(run_dir), str(tmp_path / "run" / ".." / "run")])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        shift_report.main([str(tmp_path / "missing")])
