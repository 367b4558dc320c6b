"""arviz diagnostics of collected samples: InferenceData contents, netCDF, summaries, elpd, plots."""

from __future__ import annotations

import json
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from cigl_bayes.averaging import Snapshot, SnapshotStore
from cigl_bayes.inference import diagnostics as diag
from cigl_bayes.inference import elpd

az = diag.az  # arviz, imported by the module with its once-a-day refactor FutureWarning filtered

LAYERS = [("conv1", 40), ("conv2", 25), ("fc", 15)]
N_SPARSE = sum(n for _, n in LAYERS)
N_OTHER = 7


def _snapshot(rng: np.random.Generator, density: float = 0.2, offset: float = 0.0) -> Snapshot:
    values = rng.normal(size=N_SPARSE) * (rng.random(N_SPARSE) < density)
    return Snapshot(torch.tensor(values, dtype=torch.float32),
                    torch.tensor(offset + rng.normal(size=N_OTHER), dtype=torch.float32))


def _chains(lengths: list[int], seed: int = 0) -> list[list[Snapshot]]:
    rng = np.random.default_rng(seed)
    return [[_snapshot(rng) for _ in range(n)] for n in lengths]


def _split(vec: np.ndarray) -> list[np.ndarray]:
    return np.split(vec, np.cumsum([n for _, n in LAYERS])[:-1])


def _logmeanexp_sum(log_lik: np.ndarray) -> float:
    flat = log_lik.reshape(-1, log_lik.shape[-1])
    return float(np.sum(np.log(np.mean(np.exp(flat), axis=0))))


def _full_idata(lengths: list[int] = (6, 6, 6)) -> tuple[az.InferenceData, dict]:
    rng = np.random.default_rng(1)
    chains = _chains(list(lengths))
    n_test = 12
    inputs = {
        "log_likelihood": [rng.normal(-1.0, 0.3, size=(n, n_test)) for n in lengths],
        "posterior_predictive": [rng.integers(0, 10, size=(n, n_test)) for n in lengths],
        "observed": rng.integers(0, 10, size=n_test),
        "train_loss": [rng.random(n) for n in lengths],
    }
    return diag.posterior_inference_data(chains, LAYERS, n_weights=8, seed=5, **inputs), inputs


def test_posterior_variables_equal_numpy_values():
    chains = _chains([6, 6, 6])
    idata = diag.posterior_inference_data(chains, LAYERS, n_weights=10, seed=3)
    post = idata.posterior
    assert dict(post.sizes) == {"chain": 3, "draw": 6, "layer": 3, "weight_index": 10}
    assert list(post.layer.values) == [name for name, _ in LAYERS]
    for c, chain in enumerate(chains):
        for d, snap in enumerate(chain):
            parts = _split(snap.sparse.numpy().astype(np.float64))
            np.testing.assert_allclose(post.layer_norm.values[c, d], [np.linalg.norm(p) for p in parts], rtol=1e-12)
            np.testing.assert_allclose(post.density.values[c, d], [np.count_nonzero(p) / p.size for p in parts])
            theta = snap.other.numpy().astype(np.float64)
            np.testing.assert_allclose(post.theta_norm.values[c, d], np.linalg.norm(theta), rtol=1e-12)

    positions = post.weight_index.values
    active = np.zeros(N_SPARSE, dtype=bool)
    for chain in chains:
        for snap in chain:
            active |= snap.sparse.numpy() != 0
    assert len(set(positions.tolist())) == 10 and np.all(np.diff(positions) > 0)
    assert active[positions].all(), "every tracked weight is non-zero in some draw"
    expected = np.array([[snap.sparse.numpy()[positions] for snap in chain] for chain in chains])
    np.testing.assert_array_equal(post.weight.values, expected.astype(np.float64))
    owner = np.repeat([name for name, _ in LAYERS], [n for _, n in LAYERS])
    assert list(post.weight_layer.values) == owner[positions].tolist()

    again = diag.posterior_inference_data(chains, LAYERS, n_weights=10, seed=3)
    np.testing.assert_array_equal(again.posterior.weight_index.values, positions)


def test_fewer_active_positions_than_requested_takes_them_all():
    chains = [[Snapshot(torch.zeros(N_SPARSE), torch.ones(N_OTHER)) for _ in range(3)] for _ in range(2)]
    for d, pos in enumerate([4, 50, 4]):
        chains[1][d].sparse[pos] = 1.5 + d
    chains[0][2].sparse[79] = -2.0
    idata = diag.posterior_inference_data(chains, LAYERS, n_weights=32)
    assert idata.posterior.weight_index.values.tolist() == [4, 50, 79]
    assert list(idata.posterior.weight_layer.values) == ["conv1", "conv2", "fc"]
    np.testing.assert_array_equal(idata.posterior.weight.values[1, :, 0], [1.5, 0.0, 3.5])
    np.testing.assert_allclose(idata.posterior.theta_norm.values, np.sqrt(N_OTHER))

    none_active = [[Snapshot(torch.zeros(N_SPARSE), torch.ones(N_OTHER))]]
    assert "weight" not in diag.posterior_inference_data(none_active, LAYERS).posterior


def test_unequal_chains_are_truncated_to_the_shortest():
    lengths = [6, 4, 5]
    idata, inputs = _full_idata(lengths)
    chains = _chains(lengths)
    assert idata.posterior.sizes["draw"] == 4
    assert idata.posterior.attrs["draws_per_chain_collected"] == lengths
    assert idata.posterior.attrs["draws_truncated"] == 15 - 12
    norms = [[np.linalg.norm(snap.sparse.numpy().astype(np.float64)[:40]) for snap in chain[:4]] for chain in chains]
    np.testing.assert_allclose(idata.posterior.layer_norm.sel(layer="conv1").values, norms, rtol=1e-12)
    np.testing.assert_array_equal(idata.log_likelihood.y.values, np.stack([a[:4] for a in inputs["log_likelihood"]]))
    np.testing.assert_array_equal(idata.sample_stats.train_loss.values, np.stack([a[:4] for a in inputs["train_loss"]]))

    with pytest.raises(ValueError, match="chain=3, draw=4"):
        diag.posterior_inference_data(chains, LAYERS, log_likelihood=np.zeros((3, 5, 12)))


def test_snapshot_store_chains_equal_in_memory_chains(tmp_path):
    chains = _chains([4, 3])
    stores = []
    for c, chain in enumerate(chains):
        store = SnapshotStore(tmp_path / f"seed{c}")
        for d, snap in enumerate(chain):
            store.save(d, snap, epoch=d)
        stores.append(store)
    from_lists = diag.posterior_inference_data(chains, LAYERS, n_weights=6)
    from_disk = diag.posterior_inference_data(stores, LAYERS, n_weights=6)
    for name in ("layer_norm", "theta_norm", "density", "weight", "weight_index"):
        np.testing.assert_array_equal(from_disk.posterior[name].values, from_lists.posterior[name].values)


def test_invalid_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"chains \[1\] hold no draws"):
        diag.posterior_inference_data(_chains([3, 0]), LAYERS)
    with pytest.raises(ValueError, match="no chains"):
        diag.posterior_inference_data([], LAYERS)
    with pytest.raises(ValueError, match="sum of layer sizes"):
        diag.posterior_inference_data(_chains([2]), [("conv1", 40), ("fc", 15)])
    with pytest.raises(ValueError, match="test points"):
        diag.posterior_inference_data(_chains([2]), LAYERS, log_likelihood=np.zeros((1, 2, 5)), observed=np.zeros(6))


def test_netcdf_round_trip(tmp_path):
    idata, _ = _full_idata()
    path = tmp_path / "run" / "posterior.nc"
    assert diag.save_netcdf(idata, path) == path
    diag.save_netcdf(idata, path)  # overwriting an existing file is fine too
    assert [p.name for p in path.parent.iterdir()] == ["posterior.nc"], "no temporary file left behind"

    for reopened in (az.from_netcdf(str(path)), diag.load_netcdf(path)):
        assert set(reopened.groups()) == set(idata.groups()) == {
            "posterior", "log_likelihood", "posterior_predictive", "observed_data", "sample_stats"}
        for group in idata.groups():
            original, back = idata[group], reopened[group]
            assert set(back.data_vars) == set(original.data_vars)
            for name in original.data_vars:
                np.testing.assert_array_equal(back[name].values, original[name].values)
                assert back[name].dims == original[name].dims
            for name in original.coords:
                assert back[name].values.tolist() == original[name].values.tolist()
            back.close()
        assert reopened.posterior.attrs["predictor_name"] == "predictive"


def test_summary_table_one_chain_is_quiet_and_has_nan_rhat():
    idata = diag.posterior_inference_data(_chains([6]), LAYERS, n_weights=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = diag.summary_table(idata)
    assert {"mean", "sd", "ess_bulk", "ess_tail", "r_hat"} <= set(df.columns)
    assert "layer_norm[conv1]" in df.index and "theta_norm" in df.index
    assert df["r_hat"].isna().all()
    assert df.loc["theta_norm", "ess_bulk"] > 0
    assert df.attrs["n_chains"] == 1

    few = diag.posterior_inference_data(_chains([2, 2]), LAYERS, n_weights=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df_few = diag.summary_table(few, var_names=["theta_norm"])
    assert list(df_few.index) == ["theta_norm"] and np.isnan(df_few.loc["theta_norm", "ess_bulk"])


def test_rhat_near_one_for_same_distribution_and_large_for_different_means():
    rng = np.random.default_rng(7)
    same = [[_snapshot(rng) for _ in range(200)] for _ in range(4)]
    df = diag.summary_table(diag.posterior_inference_data(same, LAYERS, n_weights=5))
    assert df["r_hat"].max() < 1.05, df["r_hat"]
    assert (df["ess_bulk"] > 200).all()

    apart = [[_snapshot(rng, offset=3.0 * c) for _ in range(200)] for c in range(3)]
    df = diag.summary_table(diag.posterior_inference_data(apart, LAYERS, n_weights=5), var_names=["theta_norm"])
    assert df.loc["theta_norm", "r_hat"] > 1.5


def test_chain_summaries_hold_each_draws_test_nll_accuracy_and_norms():
    idata, inputs = _full_idata((5, 5))
    summaries = json.loads(json.dumps(diag.chain_summaries(idata)))  # what draws.json stores
    assert len(summaries) == 2 and summaries[0]["layers"] == [name for name, _ in LAYERS]
    for c, s in enumerate(summaries):
        np.testing.assert_allclose(s["test_nll"], -inputs["log_likelihood"][c].mean(axis=1))
        hits = inputs["posterior_predictive"][c] == inputs["observed"]
        np.testing.assert_allclose(s["test_accuracy"], hits.mean(axis=1))
        np.testing.assert_allclose(s["train_loss"], inputs["train_loss"][c])
        np.testing.assert_allclose(s["layer_norm"], idata.posterior["layer_norm"].values[c])
        np.testing.assert_allclose(s["density"], idata.posterior["density"].values[c])
        np.testing.assert_allclose(s["theta_norm"], idata.posterior["theta_norm"].values[c])
    assert "weight" not in summaries[0]  # single weights are not comparable across seeds


def test_chains_summarised_apart_pool_to_the_joint_diagnostics():
    """Runs that finished on different machines, each summarised alone, give the R-hat and ESS of
    the InferenceData built from all their samples at once."""
    rng = np.random.default_rng(11)
    chains = [[_snapshot(rng, offset=0.3 * c) for _ in range(8)] for c in range(3)]
    loss = [rng.random(8) for _ in chains]
    joint = diag.posterior_inference_data(chains, LAYERS, n_weights=4, train_loss=loss)
    apart = [diag.chain_summaries(diag.posterior_inference_data([ch], LAYERS, train_loss=[lo]))[0]
             for ch, lo in zip(chains, loss)]
    pooled = diag.summaries_inference_data(apart, ["seed0", "seed1", "seed2"])
    assert list(pooled.posterior["chain"].values) == ["seed0", "seed1", "seed2"]
    want = diag.summary_table(joint, var_names=["layer_norm", "theta_norm", "density"], round_to="none")
    got = diag.summary_table(pooled, var_names=["layer_norm", "theta_norm", "density"], round_to="none")
    assert list(got.index) == list(want.index)
    for col in ("mean", "sd", "ess_bulk", "r_hat"):
        np.testing.assert_allclose(got[col].to_numpy(float), want[col].to_numpy(float), rtol=1e-9)
    np.testing.assert_allclose(pooled.sample_stats["train_loss"].values, np.stack(loss))
    # chains of unequal length are cut to the shortest, as posterior_inference_data does
    short = dict(apart[1], theta_norm=apart[1]["theta_norm"][:5], layer_norm=apart[1]["layer_norm"][:5],
                 density=apart[1]["density"][:5], train_loss=apart[1]["train_loss"][:5])
    cut = diag.summaries_inference_data([apart[0], short])
    assert cut.posterior.sizes["draw"] == 5 and cut.posterior.attrs["draws_truncated"] == 3


def test_chain_summaries_of_different_networks_are_refused():
    idata, _ = _full_idata((3, 3))
    a, b = diag.chain_summaries(idata)
    with pytest.raises(ValueError, match="not the same network"):
        diag.summaries_inference_data([a, dict(b, layers=["x", "y", "z"])])
    with pytest.raises(ValueError, match="hold no draws"):
        diag.summaries_inference_data([a, dict(b, theta_norm=[], layer_norm=[], density=[])])
    with pytest.raises(ValueError, match="no chain summaries"):
        diag.summaries_inference_data([])


def test_point_predictor_elpd_is_the_plain_test_log_density():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(30, 10))
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    labels = rng.integers(0, 10, size=30)
    log_lik = log_probs[np.arange(30), labels]
    for shaped in (log_lik, log_lik[None, None], torch.from_numpy(log_lik)):
        out = elpd.predictor_elpd(shaped)
        assert out["point_predictor"] and not out["ic_applicable"]
        assert out["loo"] is None and out["waic"] is None
        assert out["test_lppd"] == pytest.approx(log_lik.sum(), rel=1e-12)
        assert out["test_lppd_se"] == pytest.approx(np.sqrt(30 * np.var(log_lik)), rel=1e-12)
        assert out["test_lppd_mean"] == pytest.approx(log_lik.mean(), rel=1e-12)


def test_multi_draw_elpd_matches_numpy_lppd():
    rng = np.random.default_rng(3)
    log_lik = rng.normal(-1.0, 0.4, size=(2, 50, 20))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = elpd.predictor_elpd(log_lik)
    lppd = _logmeanexp_sum(log_lik)
    assert out["n_samples"] == 100 and out["ic_applicable"]
    assert out["test_lppd"] == pytest.approx(lppd, rel=1e-10)
    assert out["waic"]["lppd"] == pytest.approx(lppd, rel=1e-10)
    assert out["loo"]["lppd"] == pytest.approx(lppd, rel=1e-10)
    p_waic = np.var(log_lik.reshape(100, 20), axis=0).sum()
    assert out["waic"]["p"] == pytest.approx(p_waic, rel=1e-10)
    assert out["waic"]["elpd"] == pytest.approx(lppd - p_waic, rel=1e-10)
    k = out["loo"]["pareto_k"]
    assert k["good"] + k["bad"] + k["very_bad"] == 20
    assert out["loo"]["warning"] == bool(out["loo"]["warnings"])


def test_compare_predictors_lists_every_predictor():
    rng = np.random.default_rng(4)
    n = 25
    log_liks = {
        "final": rng.normal(-1.2, 0.5, size=n),
        "wma": rng.normal(-0.9, 0.5, size=(1, 1, n)),
        "predictive": rng.normal(-1.0, 0.3, size=(3, 20, n)),
        "mc-z": rng.normal(-1.1, 0.3, size=(20, n)),
    }
    for ic in ("lppd", "loo", "waic"):
        df = elpd.compare_predictors(log_liks, ic=ic)
        assert set(df.index) == set(log_liks)
        assert {"elpd", "se", "d_elpd", "dse", "weight", "test_lppd"} <= set(df.columns)
        assert df["d_elpd"].iloc[0] == 0 and (df["d_elpd"] >= 0).all()
        assert df["weight"].sum() == pytest.approx(1.0, abs=1e-6)
        for name, ll in log_liks.items():
            single = elpd.predictor_elpd(ll)
            assert df.loc[name, "test_lppd"] == pytest.approx(single["test_lppd"], rel=1e-12)
            if ic == "lppd" or single["point_predictor"]:
                assert df.loc[name, "estimate"] == "test_lppd"
                assert df.loc[name, "elpd"] == pytest.approx(single["test_lppd"], rel=1e-12)
            else:
                assert df.loc[name, "estimate"] == ic
                assert df.loc[name, "elpd"] == pytest.approx(single[ic]["elpd"], rel=1e-12)
        best = df["elpd"].iloc[0]
        np.testing.assert_allclose(df["d_elpd"], best - df["elpd"], atol=1e-9)

    with pytest.raises(ValueError, match="same test points"):
        elpd.compare_predictors({"a": np.zeros(3) - 1, "b": np.zeros(4) - 1})


def test_plots_write_png_files_and_close_figures(tmp_path):
    idata, _ = _full_idata()
    before = set(plt.get_fignums())
    paths = [
        diag.plot_trace(idata, tmp_path / "trace.png"),
        diag.plot_forest(idata, tmp_path / "forest.png"),
        diag.plot_forest(idata, tmp_path / "forest_density.png", var_names=["density"], combined=True),
        diag.plot_trace(idata, tmp_path / "weights.png", var_names=["weight"]),
    ]
    for path in paths:
        assert path.stat().st_size > 1000
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(plt.get_fignums()) == before

    one_draw = diag.posterior_inference_data(_chains([1, 1]), LAYERS)
    with pytest.raises(ValueError, match="at least 2 draws"):
        diag.plot_trace(one_draw, tmp_path / "bad.png")


def test_the_elpd_functions_keep_their_old_import_path():
    """predictor_elpd and compare_predictors moved to inference/elpd.py; a user's
    `from cigl_bayes.inference.diagnostics import compare_predictors` still gets the same functions."""
    from cigl_bayes.inference.diagnostics import compare_predictors, predictor_elpd

    assert compare_predictors is elpd.compare_predictors and predictor_elpd is elpd.predictor_elpd
    with pytest.raises(AttributeError):
        diag.no_such_function  # noqa: B018
