"""Scoring predictors on the held-out test points: the test log predictive density, PSIS-LOO and
WAIC with arviz, and a ranking of several predictors with ``az.compare``.

Each predictor gives a log-likelihood array ``log p(y_i | θ_s)`` of shape (chain, draw, n_test),
(draw, n_test) or (n_test,) for a point predictor.  The primary quantity is the test-set
``lppd = Σ_i log (1/S) Σ_s p(y_i | θ_s)``: the points are held out, so it is already out of sample.
PSIS-LOO and WAIC are secondary diagnostics on the same numbers (``inference/diagnostics.py``'s
module docstring says how to read them).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr
from scipy.special import logsumexp

from .diagnostics import ArrayLike, _to_numpy, az

__all__ = ["compare_predictors", "predictor_elpd"]


def _as_log_lik(log_lik: ArrayLike, name: str = "log_lik") -> np.ndarray:
    """(chain, draw, n_test) float64; (n_test,) is one draw, (draw, n_test) one chain."""
    arr = _to_numpy(log_lik, np.float64)
    if arr.ndim == 1:
        arr = arr[None, None]
    elif arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim != 3:
        raise ValueError(f"{name}: expected (chain, draw, n_test), (draw, n_test) or (n_test,), got {arr.shape}")
    if 0 in arr.shape:
        raise ValueError(f"{name}: empty log-likelihood array {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: log-likelihoods must be finite")
    return arr


def _lppd_pointwise(arr: np.ndarray) -> np.ndarray:
    """log (1/S) Σ_s p(y_i | θ_s) per test point."""
    flat = arr.reshape(-1, arr.shape[-1])
    return logsumexp(flat, axis=0) - math.log(flat.shape[0])


def _se(pointwise: np.ndarray) -> float:
    """Standard error of a sum of n pointwise terms, sqrt(n · var) (arviz's convention)."""
    return float(math.sqrt(pointwise.size * np.var(pointwise)))


def _elpd_table_entry(pointwise: np.ndarray, label: str, n_samples: int, p: float) -> az.ELPDData:
    """An ``ELPDData`` holding precomputed pointwise values, for ``az.compare``'s bookkeeping."""
    return az.ELPDData(
        data=[float(pointwise.sum()), _se(pointwise), p, n_samples, pointwise.size, False,
              xr.DataArray(pointwise, dims=["test_point"], name=f"{label}_i"), "log"],
        index=[f"elpd_{label}", "se", f"p_{label}", "n_samples", "n_data_points", "warning", f"{label}_i", "scale"],
    )


def _arviz_ic(arr: np.ndarray, ic: Literal["loo", "waic"], reff: float) -> tuple[az.ELPDData, list[str]]:
    """Pointwise ``az.loo`` / ``az.waic`` of a (chain, draw, n_test) array, and the warnings it raised."""
    dataset = xr.Dataset({"y": (("chain", "draw", "test_point"), arr)})
    idata = az.InferenceData(log_likelihood=dataset)
    with warnings.catch_warnings(record=True) as caught, np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("always")
        if ic == "loo":
            res = az.loo(idata, pointwise=True, reff=reff, scale="log")
        else:
            res = az.waic(idata, pointwise=True, scale="log")
    return res, list(dict.fromkeys(str(w.message).strip() for w in caught))


def predictor_elpd(log_lik: ArrayLike, *, reff: float = 1.0) -> dict[str, Any]:
    """Test-set log predictive density of one predictor, plus PSIS-LOO and WAIC where defined.

    ``log_lik`` is log p(y_i | draw) on the test points, shaped (chain, draw, n_test); a (draw,
    n_test) array is one chain and a (n_test,) vector one draw.  Returns a JSON-friendly dict:

    * ``n_chains``, ``n_draws`` (per chain), ``n_samples`` (= chains × draws), ``n_test``,
      ``point_predictor`` (one draw, e.g. ``final`` or ``wma``), ``ic_applicable`` (≥ 2 draws);
    * ``test_lppd`` = Σ_i log (1/S) Σ_s p(y_i | θ_s) — the primary, held-out quantity (for one
      draw simply Σ_i log p(y_i)); ``test_lppd_se`` = sqrt(n · var_i); ``test_lppd_mean`` = lppd / n
      (minus the NLL of the averaged predictive);
    * ``loo``: ``{elpd, se, p, lppd, warning, warnings, good_k, pareto_k: {good, bad, very_bad,
      max}}`` from ``az.loo`` and ``waic``: ``{elpd, se, p, lppd, warning, warnings}`` from
      ``az.waic`` (``lppd`` = elpd + p, equal to ``test_lppd``), or ``None`` for a point predictor.

    On test points loo/waic are pessimistic by p (see the module docstring).  Pareto k needs tails
    of more than a few draws: with tens of draws expect large k (flagged, not raised).  ``reff``
    (relative ESS of the draws) only sets PSIS's tail length, min(0.2·S, 3·sqrt(S / reff)), which
    for reff ≤ 1 is 0.2·S whenever S ≤ 225 draws.
    """
    arr = _as_log_lik(log_lik)
    n_chain, n_draw, n_test = arr.shape
    n_samples = n_chain * n_draw
    lppd_i = _lppd_pointwise(arr)
    out: dict[str, Any] = {
        "n_chains": n_chain,
        "n_draws": n_draw,
        "n_samples": n_samples,
        "n_test": n_test,
        "point_predictor": n_samples == 1,
        "ic_applicable": n_samples >= 2,
        "test_lppd": float(lppd_i.sum()),
        "test_lppd_se": _se(lppd_i),
        "test_lppd_mean": float(lppd_i.mean()),
        "loo": None,
        "waic": None,
    }
    if n_samples < 2:
        return out
    loo, loo_msgs = _arviz_ic(arr, "loo", reff)
    k = np.asarray(loo["pareto_k"], dtype=np.float64)
    good_k = float(loo["good_k"])
    out["loo"] = {
        "elpd": float(loo["elpd_loo"]),
        "se": float(loo["se"]),
        "p": float(loo["p_loo"]),
        "lppd": float(loo["elpd_loo"] + loo["p_loo"]),
        "warning": bool(loo["warning"]),
        "warnings": loo_msgs,
        "good_k": good_k,
        "pareto_k": {
            "good": int(np.sum(k <= good_k)),
            "bad": int(np.sum((k > good_k) & (k <= 1))),
            "very_bad": int(np.sum(k > 1)),
            "max": float(np.max(k)),
        },
    }
    waic, waic_msgs = _arviz_ic(arr, "waic", reff)
    out["waic"] = {
        "elpd": float(waic["elpd_waic"]),
        "se": float(waic["se"]),
        "p": float(waic["p_waic"]),
        "lppd": float(waic["elpd_waic"] + waic["p_waic"]),
        "warning": bool(waic["warning"]),
        "warnings": waic_msgs,
    }
    return out


def compare_predictors(
    log_liks: Mapping[str, ArrayLike],
    *,
    ic: Literal["lppd", "loo", "waic"] = "lppd",
    method: Literal["stacking", "BB-pseudo-BMA", "pseudo-BMA"] = "stacking",
    reff: float = 1.0,
    seed: int = 0,
) -> pd.DataFrame:
    """Rank predictors on the test points with ``az.compare``; one row per predictor, best first.

    ``log_liks[name]`` is shaped as for :func:`predictor_elpd`; all must share n_test.  What each
    row's ``elpd`` is:

    * ``ic="lppd"`` (default, the primary quantity): every predictor's test-set lppd (for a
      multi-draw predictor, that of its draw-averaged predictive);
    * ``ic="loo"`` / ``"waic"``: ``az.loo`` / ``az.waic`` for predictors with ≥ 2 draws, and for
      point predictors their test-set lppd (what loo/waic reduce to for one draw, with p = 0).
      Multi-draw rows are then penalised by p while point predictors are not — see the module
      docstring before reading the ranking as "ensemble vs. point".

    The pointwise values go to ``az.compare`` as precomputed ``ELPDData`` (labelled loo/waic, the
    only kinds it accepts), which does the bookkeeping: rank, differences and their SEs, weights.
    Columns: ``rank``, ``elpd``, ``p`` (NaN for ``ic="lppd"``), ``d_elpd`` (best − this),
    ``weight``, ``se``, ``dse`` (SE of d_elpd from pointwise differences), ``warning``, ``scale``,
    ``estimate`` (``"test_lppd"``, ``"loo"`` or ``"waic"``), ``n_samples``, ``test_lppd``,
    ``test_lppd_se``.  ``df.attrs``: ``ic``, ``warnings`` (per predictor, from arviz).
    """
    if ic not in ("lppd", "loo", "waic"):
        raise ValueError(f"ic must be 'lppd', 'loo' or 'waic', got {ic!r}")
    if not log_liks:
        raise ValueError("no predictors to compare")
    arrays = {str(name): _as_log_lik(ll, f"log_liks[{name!r}]") for name, ll in log_liks.items()}
    n_tests = {name: arr.shape[-1] for name, arr in arrays.items()}
    if len(set(n_tests.values())) != 1:
        raise ValueError(f"all predictors must be scored on the same test points, got n_test {n_tests}")

    label: Literal["loo", "waic"] = "waic" if ic == "waic" else "loo"
    entries: dict[str, az.ELPDData] = {}
    estimate: dict[str, str] = {}
    messages: dict[str, list[str]] = {}
    lppd: dict[str, np.ndarray] = {}
    for name, arr in arrays.items():
        n_samples = arr.shape[0] * arr.shape[1]
        lppd[name] = _lppd_pointwise(arr)
        if ic == "lppd" or n_samples == 1:
            entries[name] = _elpd_table_entry(lppd[name], label, n_samples, math.nan if ic == "lppd" else 0.0)
            estimate[name] = "test_lppd"
        else:
            entries[name], messages[name] = _arviz_ic(arr, label, reff)
            estimate[name] = label

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = az.compare(entries, ic=label, method=method, scale="log", seed=seed)
    if caught:
        messages["compare"] = list(dict.fromkeys(str(w.message).strip() for w in caught))
    df = df.rename(columns={f"elpd_{label}": "elpd", f"p_{label}": "p", "elpd_diff": "d_elpd"})
    df.index.name = "predictor"
    df["estimate"] = [estimate[name] for name in df.index]
    df["n_samples"] = [int(np.prod(arrays[name].shape[:2])) for name in df.index]
    df["test_lppd"] = [float(lppd[name].sum()) for name in df.index]
    df["test_lppd_se"] = [_se(lppd[name]) for name in df.index]
    df.attrs.update(ic=ic, warnings=messages)
    return df


