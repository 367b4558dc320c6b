"""Tests for cigl_bayes.metrics: hand-computed ECE/MCE, binning edges, NLL/Brier, plots, temperature."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from cigl_bayes.metrics import (
    ReliabilityData,
    accuracy,
    apply_temperature,
    brier,
    calibration_metrics,
    ece,
    fit_temperature,
    mce,
    nll,
    plot_reliability_diagram,
    pooled_reliability,
    reliability_data,
    reliability_to_dict,
    to_probs,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _logits(
    n: int = 500, c: int = 10, scale: float = 2.0, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g, dtype=torch.float64) * scale
    y = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
    return z, y


def _binary(conf: list[float], labels: list[int], dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-class probabilities [c, 1 - c] per row."""
    c = torch.tensor(conf, dtype=torch.float64)
    return torch.stack([c, 1 - c], 1).to(dtype), torch.tensor(labels)


def _loop_ece_mce(p: np.ndarray, y: np.ndarray, n_bins: int) -> tuple[float, float]:
    """Independent oracle: torchmetrics' _binning_with_loop (gt lower, le upper), first bin takes c == 0."""
    conf, correct = p.max(1), (p.argmax(1) == y).astype(float)
    edges = np.arange(n_bins + 1) / n_bins
    e, m = 0.0, 0.0
    for b in range(n_bins):
        inb = (conf > edges[b]) & (conf <= edges[b + 1])
        if b == 0:
            inb |= conf == 0
        if inb.any():
            gap = abs(correct[inb].mean() - conf[inb].mean())
            e += inb.mean() * gap
            m = max(m, gap)
    return e, m


# ------------------------------------------------------------------------------ hand-computed ECE


def test_ece_mce_hand_case():
    # n_bins = 5, edges 0, .2, .4, .6, .8, 1 (right-closed bins)
    # row  conf  pred  label  correct  bin
    #  0   0.9    0     0       1      (0.8, 1.0] -> 4
    #  1   0.8    0     1       0      (0.6, 0.8] -> 3   (on the edge 0.8 -> lower bin)
    #  2   0.7    1     1       1      (0.6, 0.8] -> 3
    #  3   0.6    0     0       1      (0.4, 0.6] -> 2   (on the edge 0.6 -> lower bin)
    # bin 4: n=1, acc 1,  conf .9,  gap .10
    # bin 3: n=2, acc .5, conf .75, gap .25
    # bin 2: n=1, acc 1,  conf .6,  gap .40
    # ECE = 1/4*.10 + 2/4*.25 + 1/4*.40 = .025 + .125 + .100 = .25 ; MCE = .40
    p = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    y = torch.tensor([0, 1, 1, 0])
    r = reliability_data(p, y, n_bins=5)
    np.testing.assert_array_equal(r.counts, [0, 0, 1, 2, 1])
    np.testing.assert_allclose(r.bin_edges, [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(r.accuracy[2:], [1.0, 0.5, 1.0])
    np.testing.assert_allclose(r.mean_confidence[2:], [0.6, 0.75, 0.9], atol=1e-7)
    assert np.isnan(r.accuracy[:2]).all() and np.isnan(r.mean_confidence[:2]).all()  # empty bins
    assert r.ece == pytest.approx(0.25, abs=1e-7)
    assert r.mce == pytest.approx(0.40, abs=1e-7)
    assert ece(p, y, n_bins=5) == pytest.approx(0.25, abs=1e-7)
    assert mce(p, y, n_bins=5) == pytest.approx(0.40, abs=1e-7)


def test_all_correct_confidence_one_has_zero_error():
    # one-hot probabilities, labels = argmax: acc 1 = conf 1 in the last bin -> ECE = MCE = 0
    y = torch.tensor([0, 2, 1, 2, 0])
    p = F.one_hot(y, 3).double()
    r = reliability_data(p, y)
    assert r.ece == 0.0 and r.mce == 0.0
    assert r.counts[-1] == 5 and r.counts.sum() == 5


def test_all_wrong():
    # 15 bins: conf .7 in (10/15, 11/15] = (.667, .733] -> bin 10; conf .8 = 12/15 on an edge -> bin 11
    # both wrong: gaps .7 and .8, ECE = .5*.7 + .5*.8 = .75, MCE = .8
    p, y = _binary([0.7, 0.8], [1, 1])
    r = reliability_data(p, y)
    assert r.counts[10] == 1 and r.counts[11] == 1 and r.counts.sum() == 2
    assert r.ece == pytest.approx(0.75) and r.mce == pytest.approx(0.8)
    assert accuracy(p, y) == 0.0


def test_mce_ignores_empty_bins():
    # a single sample: conf .55 correct -> gap .45 in its bin, every other bin empty (NaN stats)
    p, y = _binary([0.55], [0])
    r = reliability_data(p, y, n_bins=15)
    assert r.mce == pytest.approx(0.45) and r.ece == pytest.approx(0.45)
    assert (r.counts > 0).sum() == 1
    assert np.isnan(r.accuracy).sum() == 14 and np.isnan(r.mean_confidence).sum() == 14


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_confidence_on_bin_edges_goes_to_lower_bin(dtype):
    # conf = k/15 (k = 8..15) lies exactly on the upper edge of bin k-1 = ((k-1)/15, k/15]
    ks = list(range(8, 16))
    p, y = _binary([k / 15 for k in ks], [0] * len(ks), dtype=dtype)
    counts = reliability_data(p, y, n_bins=15).counts
    expected = np.zeros(15, dtype=int)
    expected[[k - 1 for k in ks]] = 1
    np.testing.assert_array_equal(counts, expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_point_three_with_ten_bins(dtype):
    # n_bins = 10: conf 0.3 goes into (0.2, 0.3] = bin 2, not bin 3
    p = torch.tensor([[0.3, 0.25, 0.25, 0.2]], dtype=dtype)
    r = reliability_data(p, torch.tensor([0]), n_bins=10)
    assert r.counts[2] == 1 and r.counts.sum() == 1
    assert r.ece == pytest.approx(0.7, abs=1e-6)  # correct with conf .3 -> |1 - .3|


def test_confidence_zero_goes_to_first_bin():
    # unnormalised "probabilities" all zero (explicitly not logits): conf 0, pred class 0
    p = torch.zeros(2, 3)
    r = reliability_data(p, torch.tensor([0, 1]), n_bins=15, from_logits=False)
    assert r.counts[0] == 2 and r.counts.sum() == 2
    # acc .5, conf 0 -> ECE = |.5 - 0| = .5
    assert r.ece == pytest.approx(0.5)


def test_single_bin_is_abs_acc_minus_mean_conf():
    z, y = _logits(300, 5, seed=3)
    p = torch.softmax(z, 1)
    expected = abs(accuracy(z, y) - float(p.max(1).values.mean()))
    assert ece(z, y, n_bins=1) == pytest.approx(expected, abs=1e-12)
    assert mce(z, y, n_bins=1) == pytest.approx(expected, abs=1e-12)


def test_matches_loop_oracle_random():
    z, y = _logits(1000, 10, seed=1)
    for n_bins in (1, 10, 15, 20):
        e, m = _loop_ece_mce(torch.softmax(z, 1).numpy(), y.numpy(), n_bins)
        assert ece(z, y, n_bins=n_bins) == pytest.approx(e, abs=1e-12)
        assert mce(z, y, n_bins=n_bins) == pytest.approx(m, abs=1e-12)


# --------------------------------------------------------------------------------- point metrics


def test_accuracy_hand_case():
    s = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [0.0, 0.0, -1.0]])
    # preds 0, 1, 2, 0 (tie -> lowest index); labels 0, 2, 2, 1 -> 2/4 correct
    assert accuracy(s, torch.tensor([0, 2, 2, 1])) == 0.5


def test_brier_hand_case():
    # row 0: p = (.7, .2, .1), y = 0 -> (.3)^2 + .2^2 + .1^2 = .09 + .04 + .01 = .14
    # row 1: p = (.5, .5, 0),  y = 2 -> .25 + .25 + 1   = 1.5
    # mean = (.14 + 1.5) / 2 = .82
    p = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]])
    assert brier(p, torch.tensor([0, 2])) == pytest.approx(0.82, abs=1e-7)
    # extremes: perfect one-hot -> 0, confidently wrong one-hot -> 2
    assert brier(torch.eye(3), torch.arange(3)) == 0.0
    assert brier(torch.eye(3), torch.tensor([1, 2, 0])) == pytest.approx(2.0)


def test_nll_hand_case_and_eps_clamp():
    # -(log .7 + log .5) / 2
    p = torch.tensor([[0.7, 0.2, 0.1], [0.25, 0.5, 0.25]])
    assert nll(p, torch.tensor([0, 1])) == pytest.approx(-(math.log(0.7) + math.log(0.5)) / 2)
    # a zero probability on the label is clamped at eps: -log(1e-12) = 27.63...
    assert nll(torch.tensor([[1.0, 0.0]]), torch.tensor([1])) == pytest.approx(-math.log(1e-12))
    assert nll(torch.tensor([[1.0, 0.0]]), torch.tensor([1]), eps=1e-6) == pytest.approx(-math.log(1e-6))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nll_from_logits_equals_cross_entropy(dtype):
    z, y = _logits(400, 10, scale=5.0, seed=2)
    z = z.to(dtype)
    ref = float(F.cross_entropy(z.double(), y))
    assert nll(z, y) == pytest.approx(ref, rel=1e-12)
    assert nll(z, y) == pytest.approx(float(F.cross_entropy(z, y)), rel=1e-5)


def test_logits_and_probabilities_give_same_metrics():
    z, y = _logits(600, 10, seed=4)
    from_logits = calibration_metrics(z, y)
    from_probs = calibration_metrics(torch.softmax(z, 1), y)
    assert set(from_logits) == {"accuracy", "confidence", "ece", "ece10", "mce", "nll", "brier"}
    for key in from_logits:
        assert from_probs[key] == pytest.approx(from_logits[key], abs=1e-9), key
    assert from_logits["ece"] == pytest.approx(ece(z, y, n_bins=15))
    # one bin: ECE = |mean confidence − accuracy|
    assert from_logits["confidence"] == pytest.approx(float(torch.softmax(z.double(), 1).max(1).values.mean()))
    assert ece(z, y, n_bins=1) == pytest.approx(abs(from_logits["confidence"] - from_logits["accuracy"]), abs=1e-9)
    assert from_logits["ece10"] == pytest.approx(ece(z, y, n_bins=10))
    assert from_logits["mce"] == pytest.approx(mce(z, y, n_bins=15))
    assert from_logits["nll"] == pytest.approx(nll(z, y))
    assert from_logits["brier"] == pytest.approx(brier(z, y))
    assert from_logits["accuracy"] == pytest.approx(accuracy(z, y))


def test_numpy_and_torch_inputs_agree():
    z, y = _logits(300, 4, seed=5)
    z32 = z.float()
    a = calibration_metrics(z32, y)
    b = calibration_metrics(z32.numpy(), y.numpy())
    c = calibration_metrics(z32.numpy(), y.numpy().astype(np.int32))
    assert a == b == c
    ra, rb = reliability_data(z, y), reliability_data(z.numpy(), y.numpy())
    np.testing.assert_array_equal(ra.counts, rb.counts)
    np.testing.assert_allclose(ra.accuracy, rb.accuracy, equal_nan=True)


def test_to_probs_auto_detection():
    z, _ = _logits(50, 3, seed=6)
    p = torch.softmax(z, 1)
    assert torch.equal(to_probs(p), p)  # probabilities are returned as they are (float64, CPU)
    assert to_probs(p).dtype == torch.float64 and to_probs(p).device.type == "cpu"
    torch.testing.assert_close(to_probs(z), p)  # logits -> softmax
    # rows summing to 1 within 1e-3 count as probabilities (not renormalised)
    near = torch.tensor([[0.5, 0.5004]])
    assert torch.equal(to_probs(near), near.double())
    # values in [0, 1] but rows not summing to 1 are logits
    torch.testing.assert_close(
        to_probs(torch.tensor([[0.2, 0.3]])), torch.softmax(torch.tensor([[0.2, 0.3]]).double(), 1)
    )
    # explicit flags override the guess
    torch.testing.assert_close(to_probs(p, from_logits=True), torch.softmax(p, 1))
    assert torch.equal(
        to_probs(torch.tensor([[0.2, 0.3]]), from_logits=False), torch.tensor([[0.2, 0.3]]).double()
    )


# -------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("scores", "labels", "kwargs", "match"),
    [
        (torch.zeros(3, 2), torch.zeros(4, dtype=torch.long), {}, "shape mismatch"),
        (torch.zeros(3, 2), torch.tensor([0, 1, 2]), {}, "out of range"),
        (torch.zeros(3, 2), torch.tensor([0, -1, 1]), {}, "out of range"),
        (torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), {}, "empty"),
        (torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), {"n_bins": 0}, "n_bins"),
        (torch.tensor([[0.0, float("nan")]]), torch.tensor([0]), {}, "non-finite"),
        (torch.tensor([[0.0, float("inf")]]), torch.tensor([0]), {}, "non-finite"),
        (torch.zeros(3), torch.zeros(3, dtype=torch.long), {}, r"shape \(N, C\)"),
        (torch.zeros(3, 1), torch.zeros(3, dtype=torch.long), {}, "2 classes"),
        (torch.zeros(3, 2), torch.zeros(3), {}, "integers"),
        (torch.zeros(3, 2), torch.zeros(3, 1, dtype=torch.long), {}, r"shape \(N,\)"),
    ],
)
def test_bad_inputs_raise(scores, labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        reliability_data(scores, labels, **kwargs)


def test_bad_inputs_raise_everywhere():
    s, y = torch.zeros(3, 2), torch.tensor([0, 1, 5])
    for fn in (accuracy, nll, brier, ece, mce, calibration_metrics, fit_temperature):
        with pytest.raises(ValueError, match="out of range"):
            fn(s, y)
    with pytest.raises(ValueError, match="empty"):
        to_probs(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(s, 0.0)
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(s, float("nan"))


# -------------------------------------------------------------------------------- reliability


def test_reliability_counts_sum_to_n():
    z, y = _logits(777, 10, seed=8)
    r = reliability_data(z, y, n_bins=20)
    assert isinstance(r, ReliabilityData)
    assert r.counts.shape == (20,) and r.bin_edges.shape == (21,)
    assert r.counts.sum() == 777
    empty = r.counts == 0
    assert np.isnan(r.accuracy[empty]).all() and not np.isnan(r.accuracy[~empty]).any()
    # the count-weighted per-bin accuracy is the overall accuracy
    assert np.nansum(r.accuracy * r.counts) / 777 == pytest.approx(accuracy(z, y))


def test_pooled_reliability_of_two_parts_is_the_reliability_of_their_union():
    """Pooling the JSON bins of two prediction sets gives the diagram (and ECE) of all the
    predictions together, which is not the mean of the two ECEs."""
    import json

    z1, y1 = _logits(400, 10, scale=4.0, seed=11)
    z2, y2 = _logits(300, 10, scale=0.5, seed=12)
    parts = [json.loads(json.dumps(reliability_to_dict(reliability_data(z, y)))) for z, y in ((z1, y1), (z2, y2))]
    pooled = pooled_reliability(parts)
    union = reliability_data(torch.cat([z1, z2]), torch.cat([y1, y2]))
    np.testing.assert_array_equal(pooled.counts, union.counts)
    np.testing.assert_allclose(pooled.accuracy, union.accuracy, equal_nan=True, rtol=1e-12)
    np.testing.assert_allclose(pooled.mean_confidence, union.mean_confidence, equal_nan=True, rtol=1e-12)
    assert pooled.ece == pytest.approx(union.ece, rel=1e-12) and pooled.mce == pytest.approx(union.mce, rel=1e-12)
    mean_of_parts = (ece(z1, y1) + ece(z2, y2)) / 2
    assert abs(pooled.ece - mean_of_parts) > 1e-4
    with pytest.raises(ValueError, match="bins differ"):
        pooled_reliability([parts[0], reliability_to_dict(reliability_data(z1, y1, n_bins=10))])


def _is_png(path) -> bool:
    return path.exists() and path.read_bytes()[:8] == PNG_MAGIC


def test_plot_single_writes_png(tmp_path):
    z, y = _logits(500, 10, seed=9)
    out = tmp_path / "sub" / "rel.png"
    fig = plot_reliability_diagram(reliability_data(z, y), out, title="final")
    assert _is_png(out)
    assert len(fig.axes) == 1 and fig.axes[0].get_title() == "final"
    assert any("ECE" in t.get_text() for t in fig.axes[0].get_legend().get_texts())
    assert sorted(p.name for p in out.parent.iterdir()) == ["rel.png"]  # no temporary left behind


def test_plot_dict_writes_png_one_panel_each(tmp_path):
    z, y = _logits(500, 10, seed=10)
    data = {"final": reliability_data(z * 2, y), "wma": reliability_data(z, y)}
    out = tmp_path / "compare.png"
    fig = plot_reliability_diagram(data, out, title="CigL")
    assert _is_png(out)
    assert [a.get_title() for a in fig.axes] == ["final", "wma"]
    # overwrite in place works (atomic replace)
    plot_reliability_diagram(data, out)
    assert _is_png(out)


def test_plot_legend_names_each_colour_even_when_a_category_has_no_bin():
    """A model that is over-confident in every bin draws no orange bar; its legend must still show
    orange for "under-confident" (an empty bar container used to lend the legend its default blue)."""
    from matplotlib.colors import to_rgba
    from matplotlib.figure import Figure

    g = torch.Generator().manual_seed(12)
    z, y = torch.randn(2000, 10, generator=g) * 10, torch.randint(0, 10, (2000,), generator=g)
    data = reliability_data(z, y)  # confident logits, labels at random: over-confident in every bin
    full = data.counts > 0
    assert (data.mean_confidence[full] > data.accuracy[full]).all()
    fig = Figure()
    plot_reliability_diagram(data, ax=fig.subplots())
    legend = fig.axes[0].get_legend()
    faces = {t.get_text(): h.get_facecolor() for t, h in zip(legend.get_texts(), legend.legend_handles)
             if hasattr(h, "get_facecolor")}
    under = next(v for k, v in faces.items() if "under-confident" in k)
    over = next(v for k, v in faces.items() if "over-confident" in k)
    up_to = next(v for k, v in faces.items() if "ECE" in k)
    assert under == to_rgba("tab:orange") and over == to_rgba("mistyrose") and up_to == to_rgba("tab:blue")


def test_plot_on_given_axes_without_path():
    from matplotlib.figure import Figure

    z, y = _logits(100, 3, seed=11)
    fig = Figure()
    ax = fig.subplots()
    assert plot_reliability_diagram(reliability_data(z, y), ax=ax) is fig
    with pytest.raises(ValueError, match="Axes"):
        plot_reliability_diagram({"a": reliability_data(z, y), "b": reliability_data(z, y)}, ax=ax)


# ------------------------------------------------------------------------ temperature scaling


def test_fit_temperature_recovers_overconfidence():
    # labels drawn from softmax(z); the model reports 3 z -> over-confident, best T is about 3
    z, y = _logits(8000, 10, scale=1.5, seed=12)
    over = 3.0 * z
    t = fit_temperature(over, y)
    assert t > 0
    assert t == pytest.approx(3.0, rel=0.10)
    assert nll(apply_temperature(over, t), y) < nll(over, y)
    assert ece(apply_temperature(over, t), y) < ece(over, y)


def test_fit_temperature_float32_numpy_and_no_grad():
    z, y = _logits(2000, 5, scale=1.5, seed=13)
    ref = fit_temperature(z / 2.0, y)  # under-confident -> T < 1
    assert ref == pytest.approx(0.5, rel=0.15)
    with torch.no_grad():
        assert fit_temperature((z / 2.0).float().numpy(), y.numpy()) == pytest.approx(ref, rel=1e-4)


def test_fit_temperature_separable_stays_finite():
    # every prediction right: NLL keeps falling as T -> 0; the fit must stay finite and positive
    y = torch.arange(4).repeat(10)
    z = F.one_hot(y, 4).double() * 2.0
    t = fit_temperature(z, y)
    assert 0 < t < 1 and math.isfinite(t)
    assert nll(apply_temperature(z, t), y) <= nll(z, y)


def test_apply_temperature_keeps_dtype_and_divides():
    z = torch.randn(4, 3, dtype=torch.float32)
    out = apply_temperature(z, 2.0)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, z / 2.0)
    assert isinstance(apply_temperature(z.numpy(), 2.0), torch.Tensor)


# ------------------------------------------------------------------------------ property tests

_n = st.integers(1, 40)
_c = st.integers(2, 6)


@st.composite
def _scores_labels(draw):
    n, c = draw(_n), draw(_c)
    z = draw(arrays(np.float64, (n, c), elements=st.floats(-30, 30, allow_nan=False)))
    y = draw(arrays(np.int64, (n,), elements=st.integers(0, c - 1)))
    return z, y


@settings(max_examples=60, deadline=None)
@given(data=_scores_labels(), n_bins=st.integers(1, 25))
def test_property_ece_bounds_and_mce_dominates(data, n_bins):
    z, y = data
    r = reliability_data(z, y, n_bins=n_bins)
    assert 0.0 <= r.ece <= 1.0
    assert 0.0 <= r.mce <= 1.0
    assert r.mce >= r.ece - 1e-12
    assert r.counts.sum() == len(y)
    e, m = _loop_ece_mce(torch.softmax(torch.as_tensor(z), 1).numpy(), y, n_bins)
    assert r.ece == pytest.approx(e, abs=1e-9) and r.mce == pytest.approx(m, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(data=_scores_labels(), seed=st.integers(0, 2**32 - 1))
def test_property_permutation_invariant(data, seed):
    z, y = data
    perm = np.random.default_rng(seed).permutation(len(y))
    a, b = calibration_metrics(z, y), calibration_metrics(z[perm], y[perm])
    for key in a:
        assert b[key] == pytest.approx(a[key], abs=1e-12), key


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), c=st.integers(2, 10))
def test_property_perfectly_calibrated_has_small_ece(seed, c):
    # top-label confidence u ~ U(1/c, 1) on class 0, the rest spread evenly; the label is the
    # predicted class with probability u (else uniformly one of the others): calibrated by construction
    rng = np.random.default_rng(seed)
    n = 20000
    u = rng.uniform(1.0 / c + 1e-6, 1.0, size=n)
    p = np.empty((n, c))
    p[:, 0] = u
    p[:, 1:] = ((1 - u) / (c - 1))[:, None]
    correct = rng.uniform(size=n) < u
    y = np.where(correct, 0, rng.integers(1, c, size=n))
    assert ece(p, y) < 0.03
    assert mce(p, y) >= ece(p, y)


@settings(max_examples=30, deadline=None)
@given(levels=st.sets(st.integers(6, 10), min_size=1), reps=st.integers(1, 5), n_bins=st.integers(1, 25),
       seed=st.integers(0, 2**32 - 1))
def test_property_exactly_calibrated_predictions_have_zero_ece(levels, reps, n_bins, seed):
    """Binary predictions at confidence k/10 with exactly k of every 10 correct: ECE = 0 for any binning."""
    rng = np.random.default_rng(seed)
    probs, labels = [], []
    for k in levels:
        for _ in range(reps):
            conf = k / 10
            predicted = rng.integers(0, 2, 10)
            correct = np.zeros(10, dtype=bool)
            correct[rng.choice(10, size=k, replace=False)] = True
            p1 = np.where(predicted == 1, conf, 1 - conf)
            probs.append(np.stack([1 - p1, p1], 1))
            labels.append(np.where(correct, predicted, 1 - predicted))
    p, y = np.concatenate(probs), np.concatenate(labels)  # levels ≥ 6: no 0.5/0.5 ties
    assert reliability_data(p, y, n_bins=n_bins, from_logits=False).ece < 1e-9
