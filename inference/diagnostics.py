"""Posterior diagnostics of collected CigL samples with arviz.

A run collects one posterior sample ("draw") per epoch from T* on, each a
:class:`~cigl_bayes.averaging.Snapshot` (flat sparse weights M⊙Z⊙W and flat dense θ); runs with
different seeds are independent "chains".  This module turns them into an ``az.InferenceData``
of low-dimensional summaries (per-layer norms and densities, ‖θ‖, a few tracked weights),
summarises them (mean, sd, ESS, R-hat) and draws trace / forest plots; ``inference/elpd.py``
scores predictors on the held-out test points.  Plain functions, numpy/torch in, arviz/pandas out.

How to read the numbers
-----------------------
* The log-likelihoods are evaluated on **held-out test points**, not on the training data the
  posterior was fitted to.  The test-set log predictive density
  ``lppd = Σ_i log (1/S) Σ_s p(y_i | θ_s)`` is therefore already an out-of-sample estimate and is
  the primary quantity.  PSIS-LOO on the same numbers estimates the fit after *removing* each
  test point from a posterior that never contained it; in plain importance-sampling form
  ``elpd_loo_i = −log E_s[1/p(y_i | θ_s)] ≤ lppd_i`` (PSIS smooths those weights), so it is
  pessimistic by ``p_loo`` and mainly measures how much the draws disagree on each test point.
  WAIC likewise subtracts the across-draw variance ``p_waic``.  Both are secondary diagnostics.
* R-hat across seeds of a multimodal network posterior measures whether the chains visit the
  same mode.  Different seeds generally end in different modes (different masks, permuted hidden
  units), so R-hat ≫ 1 across seeds — certainly for individual ``weight`` values — is expected
  and is not a failure of any single run.  For permutation-invariant summaries (layer norms,
  densities, ‖θ‖) R-hat near 1 says the runs reached modes of similar scale, not one mode.
  Within a chain, ESS says how autocorrelated the per-epoch draws are.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import xarray as xr

from cigl_bayes.averaging import Snapshot
from cigl_bayes.runs import atomic_save_figure, atomic_write_via

with warnings.catch_warnings():
    # arviz 0.23 announces its refactor with a FutureWarning once a day on import; nothing to act on here.
    warnings.filterwarnings("ignore", message=r"\s*ArviZ is undergoing a major refactor", category=FutureWarning)
    import arviz as az

__all__ = [
    "chain_summaries",
    "load_netcdf",
    "plot_forest",
    "plot_trace",
    "posterior_inference_data",
    "save_netcdf",
    "summaries_inference_data",
    "summary_table",
]

ArrayLike = np.ndarray | torch.Tensor | Sequence[Any]
_MOVED_TO_ELPD = ("predictor_elpd", "compare_predictors")


def __getattr__(name: str) -> Any:
    """``predictor_elpd`` and ``compare_predictors`` lived here until they moved to
    :mod:`cigl_bayes.inference.elpd` (2026-12-05); the old names keep working (imported on first use,
    since elpd itself imports this module)."""
    if name in _MOVED_TO_ELPD:
        from . import elpd

        return getattr(elpd, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
PerChain = np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor | Sequence[Any]]

DEFAULT_TRACE_VARS = ("theta_norm", "layer_norm", "density")
DEFAULT_FOREST_VARS = ("layer_norm",)


# ----------------------------------------------------------------------------------------------
# helpers


def _to_numpy(x: Any, dtype: Any = None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


@contextlib.contextmanager
def _quiet_arviz() -> Iterator[None]:
    """Silence what arviz reports about tiny samples (few draws, one chain, constant variables).

    Those cases yield NaN ESS / MCSE / R-hat, which the returned tables show; the warnings and the
    ``Shape validation failed`` log lines would only repeat it.
    """
    log = getattr(az, "_log", None)  # arviz's own logger (not registered with logging.getLogger)
    level = log.level if isinstance(log, logging.Logger) else None
    if level is not None:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            yield
    finally:
        if level is not None:
            log.setLevel(level)


def _attrs(**extra: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "arviz_version": az.__version__,
        "inference_library": "cigl-bayes",
    }
    attrs.update(extra)
    return attrs


def _check_layers(layers: Sequence[tuple[str, int]]) -> tuple[list[str], list[int]]:
    names = [str(name) for name, _ in layers]
    sizes = [int(n) for _, n in layers]
    if not names:
        raise ValueError("layers is empty: need at least one (name, numel)")
    if len(set(names)) != len(names):
        raise ValueError(f"layer names must be unique, got {names}")
    if any(n <= 0 for n in sizes):
        raise ValueError(f"every layer needs numel > 0, got {list(zip(names, sizes))}")
    return names, sizes


def _per_chain(x: PerChain, name: str, n_chain: int, n_draw: int, ndim: int, dtype: Any) -> np.ndarray:
    """(chain, draw, ...) array from a rectangular array (must match exactly) or per-chain arrays (truncated)."""
    if isinstance(x, (np.ndarray, torch.Tensor)):
        arr = _to_numpy(x, dtype)
        if arr.ndim != ndim or arr.shape[:2] != (n_chain, n_draw):
            raise ValueError(
                f"{name}: expected an array of {ndim} dims starting (chain={n_chain}, draw={n_draw}), "
                f"got shape {arr.shape}; pass a list of per-chain arrays to have them truncated like the snapshots"
            )
        return arr
    if len(x) != n_chain:
        raise ValueError(f"{name}: expected {n_chain} chains, got {len(x)}")
    parts = []
    for c, chain in enumerate(x):
        arr = _to_numpy(chain, dtype)
        if arr.ndim != ndim - 1 or arr.shape[0] < n_draw:
            raise ValueError(
                f"{name}: chain {c} must have {ndim - 1} dims and at least {n_draw} draws, got shape {arr.shape}"
            )
        parts.append(arr[:n_draw])
    try:
        return np.stack(parts)
    except ValueError as err:
        raise ValueError(f"{name}: chains disagree in their trailing shape") from err


# ----------------------------------------------------------------------------------------------
# InferenceData


def posterior_inference_data(
    chains: Sequence[Sequence[Snapshot]],
    layers: Sequence[tuple[str, int]],
    *,
    n_weights: int = 32,
    seed: int = 0,
    log_likelihood: PerChain | None = None,
    posterior_predictive: PerChain | None = None,
    observed: ArrayLike | None = None,
    train_loss: PerChain | None = None,
    predictor_name: str = "predictive",
) -> az.InferenceData:
    """Summaries of the collected samples as ``az.InferenceData``.

    ``chains[c]`` lists the draws of chain c (one seed) in collection order: a list of Snapshots or
    anything with ``len()`` that can be iterated twice, e.g. a :class:`~cigl_bayes.averaging.SnapshotStore`
    (read from disk one snapshot at a time, so memory stays at one dense snapshot).  ``layers`` is the
    (name, numel) of each sparsified layer in the order they are concatenated in ``Snapshot.sparse``.

    Chains may hold different numbers of draws: **every chain is truncated to the shortest** (its
    first draws), because arviz needs a rectangular (chain, draw) array; the collected lengths are
    kept in ``posterior.attrs["draws_per_chain_collected"]``.  An empty chain (or no chain) raises
    ``ValueError``.  Optional per-draw inputs (``log_likelihood``, ``posterior_predictive``,
    ``train_loss``) may be a list of per-chain arrays, truncated the same way, or one array whose
    first two dims are exactly (chain, truncated draw).

    Groups and variables:

    * ``posterior``: ``layer_norm`` (chain, draw, layer) L2 norm of each layer's weights;
      ``theta_norm`` (chain, draw) L2 norm of the dense parameters θ (``Snapshot.other``);
      ``density`` (chain, draw, layer) fraction of non-zero weights; ``weight`` (chain, draw,
      weight_index) the values at ``n_weights`` flat positions drawn (numpy ``default_rng(seed)``,
      without replacement, then sorted) among positions non-zero in at least one kept draw of any
      chain.  The coordinate ``weight_index`` holds those flat positions and ``weight_layer`` their
      layer.  Fewer are taken if fewer are active; ``weight`` is omitted if none is (or n_weights=0).
    * ``log_likelihood`` (if given, (chain, draw, n_test)): ``y`` = log p(y_i | draw), dim ``test_point``.
    * ``posterior_predictive`` (if given, (chain, draw, n_test)): ``y`` = predicted class labels.
    * ``observed_data`` (if ``observed``, (n_test,)): ``y`` = true test labels.
    * ``sample_stats`` (if ``train_loss``, (chain, draw)): ``train_loss``.

    ``predictor_name`` (the predictor whose per-draw outputs fill the test-point groups) is
    recorded in the attrs of every group.
    """
    if n_weights < 0:
        raise ValueError(f"n_weights must be >= 0, got {n_weights}")
    if len(chains) == 0:
        raise ValueError("no chains given")
    lengths = [len(chain) for chain in chains]
    if min(lengths) == 0:
        empty = [c for c, n in enumerate(lengths) if n == 0]
        raise ValueError(f"chains {empty} hold no draws (draws per chain: {lengths})")
    names, sizes = _check_layers(layers)
    n_chain, n_draw = len(chains), min(lengths)

    def kept() -> Iterator[tuple[int, int, Snapshot]]:
        for c, chain in enumerate(chains):
            for d, snap in enumerate(itertools.islice(iter(chain), n_draw)):
                yield c, d, snap
    n_sparse = sum(sizes)

    layer_norm = np.empty((n_chain, n_draw, len(names)))
    density = np.empty((n_chain, n_draw, len(names)))
    theta_norm = np.empty((n_chain, n_draw))
    numel = torch.tensor(sizes, dtype=torch.float64)
    active: torch.Tensor | None = None
    n_other: int | None = None
    for c, d, snap in kept():
        sparse, other = torch.as_tensor(snap.sparse).detach(), torch.as_tensor(snap.other).detach()
        if sparse.dim() != 1 or sparse.numel() != n_sparse:
            raise ValueError(
                f"chain {c} draw {d}: Snapshot.sparse must be flat with {n_sparse} elements "
                f"(sum of layer sizes), got shape {tuple(sparse.shape)}"
            )
        if n_other is None:
            n_other = other.numel()
        elif other.numel() != n_other:
            raise ValueError(f"chain {c} draw {d}: Snapshot.other has {other.numel()} elements, expected {n_other}")
        nonzero = sparse != 0
        active = nonzero.clone() if active is None else active.logical_or_(nonzero.to(active.device))
        segments = torch.split(sparse, sizes)
        norms = torch.stack([torch.linalg.vector_norm(s, dtype=torch.float64) for s in segments])
        counts = torch.stack([torch.count_nonzero(s) for s in segments]).to(torch.float64)
        layer_norm[c, d] = norms.cpu().numpy()
        density[c, d] = (counts.cpu() / numel).numpy()
        theta_norm[c, d] = float(torch.linalg.vector_norm(other.reshape(-1), dtype=torch.float64))

    active_idx = torch.nonzero(active).flatten().cpu().numpy()
    n_pick = min(n_weights, active_idx.size)
    positions = np.sort(np.random.default_rng(seed).choice(active_idx, size=n_pick, replace=False)).astype(np.int64)

    coords: dict[str, Any] = {"chain": np.arange(n_chain), "draw": np.arange(n_draw), "layer": names}
    data_vars: dict[str, Any] = {
        "layer_norm": (("chain", "draw", "layer"), layer_norm),
        "theta_norm": (("chain", "draw"), theta_norm),
        "density": (("chain", "draw", "layer"), density),
    }
    if n_pick > 0:
        weight = np.empty((n_chain, n_draw, n_pick))
        index = torch.from_numpy(positions)
        for c, d, snap in kept():
            sparse = torch.as_tensor(snap.sparse).detach()
            weight[c, d] = sparse[index.to(sparse.device)].to(torch.float64).cpu().numpy()
        bounds = np.cumsum(sizes)
        data_vars["weight"] = (("chain", "draw", "weight_index"), weight)
        coords["weight_index"] = positions
        coords["weight_layer"] = ("weight_index", [names[i] for i in np.searchsorted(bounds, positions, side="right")])

    common = {"predictor_name": predictor_name}
    posterior = xr.Dataset(
        data_vars,
        coords=coords,
        attrs=_attrs(
            **common,
            draws_per_chain_collected=lengths,
            draws_truncated=int(sum(lengths) - n_chain * n_draw),
            weight_seed=int(seed),
            n_sparse=int(n_sparse),
            n_other=int(n_other or 0),
            n_active=int(active_idx.size),
        ),
    )
    groups: dict[str, xr.Dataset] = {"posterior": posterior}
    chain_draw = {"chain": np.arange(n_chain), "draw": np.arange(n_draw)}

    n_test: int | None = None

    def test_coords(arr_n: int, what: str) -> dict[str, Any]:
        nonlocal n_test
        if n_test is not None and arr_n != n_test:
            raise ValueError(f"{what} has {arr_n} test points, another input has {n_test}")
        n_test = arr_n
        return {"test_point": np.arange(arr_n)}

    dims3 = ("chain", "draw", "test_point")
    if log_likelihood is not None:
        ll = _per_chain(log_likelihood, "log_likelihood", n_chain, n_draw, 3, np.float64)
        groups["log_likelihood"] = xr.Dataset(
            {"y": (dims3, ll)},
            coords={**chain_draw, **test_coords(ll.shape[2], "log_likelihood")},
            attrs=_attrs(**common),
        )
    if posterior_predictive is not None:
        pp = _per_chain(posterior_predictive, "posterior_predictive", n_chain, n_draw, 3, np.int64)
        groups["posterior_predictive"] = xr.Dataset(
            {"y": (dims3, pp)},
            coords={**chain_draw, **test_coords(pp.shape[2], "posterior_predictive")},
            attrs=_attrs(**common),
        )
    if observed is not None:
        obs = _to_numpy(observed, np.int64).reshape(-1)
        groups["observed_data"] = xr.Dataset(
            {"y": (("test_point",), obs)}, coords=test_coords(obs.size, "observed"), attrs=_attrs(**common)
        )
    if train_loss is not None:
        loss = _per_chain(train_loss, "train_loss", n_chain, n_draw, 2, np.float64)
        groups["sample_stats"] = xr.Dataset(
            {"train_loss": (("chain", "draw"), loss)}, coords=chain_draw, attrs=_attrs(**common)
        )
    return az.InferenceData(**groups)


# ----------------------------------------------------------------------------------------------
# per-chain summaries small enough to commit: chains from different machines


SUMMARY_VARS = ("layer_norm", "density", "theta_norm", "test_nll", "test_accuracy")


def chain_summaries(idata: az.InferenceData) -> list[dict[str, Any]]:
    """The permutation-invariant per-draw summaries of each chain, as JSON-able dicts.

    A study's runs finish on different machines, and their samples (weights) are not kept in git,
    so the chains of one posterior never sit on one machine.  What R-hat and ESS across seeds need
    is far smaller: per draw, ``layer_norm`` and ``density`` (per layer), ``theta_norm``, the
    ``train_loss`` at the draw's epoch, and, if the held-out groups are present, the draw's test
    NLL ``−(1/n) Σᵢ log p(yᵢ | θ_s)`` (from ``log_likelihood``) and test accuracy (from
    ``posterior_predictive`` against ``observed_data``).  The traced individual ``weight`` values
    are left out: they are not comparable across seeds (different masks, permuted units).
    :func:`summaries_inference_data` turns a list of these (one per run) back into InferenceData.
    """
    post = idata.posterior
    layers = [str(v) for v in post["layer"].values]
    n_chain = int(post.sizes["chain"])
    per_var: dict[str, np.ndarray] = {
        "layer_norm": post["layer_norm"].transpose("chain", "draw", "layer").values,
        "density": post["density"].transpose("chain", "draw", "layer").values,
        "theta_norm": post["theta_norm"].transpose("chain", "draw").values,
    }
    if "log_likelihood" in idata.groups():
        per_var["test_nll"] = -idata.log_likelihood["y"].mean("test_point").transpose("chain", "draw").values
    if "posterior_predictive" in idata.groups() and "observed_data" in idata.groups():
        hits = idata.posterior_predictive["y"] == idata.observed_data["y"]
        per_var["test_accuracy"] = hits.mean("test_point").transpose("chain", "draw").values.astype(np.float64)
    if "sample_stats" in idata.groups() and "train_loss" in idata.sample_stats:
        per_var["train_loss"] = idata.sample_stats["train_loss"].transpose("chain", "draw").values
    return [{"layers": layers, **{name: arr[c].tolist() for name, arr in per_var.items()}} for c in range(n_chain)]


def summaries_inference_data(
    summaries: Sequence[Mapping[str, Any]], chain_names: Sequence[str] | None = None
) -> az.InferenceData:
    """InferenceData of chains given as :func:`chain_summaries` dicts (one per chain, e.g. per seed).

    ``posterior`` holds ``layer_norm`` and ``density`` (chain, draw, layer), ``theta_norm`` and,
    where every chain has them, ``test_nll`` and ``test_accuracy`` (chain, draw): quantities
    derived from the draw θ_s, so arviz's R-hat and ESS apply to them as to any function of the
    posterior.  ``sample_stats`` holds ``train_loss`` where every chain has it.  Chains are
    truncated to the shortest, as in :func:`posterior_inference_data`; chains with different
    layers, or a chain without draws, raise ``ValueError``.  ``chain_names`` label the chain
    coordinate (default 0, 1, …).
    """
    if len(summaries) == 0:
        raise ValueError("no chain summaries given")
    layers = list(summaries[0]["layers"])
    for c, s in enumerate(summaries):
        if list(s["layers"]) != layers:
            raise ValueError(f"chain {c} has layers {list(s['layers'])[:3]}…, chain 0 has {layers[:3]}…: "
                             "not the same network")
    lengths = [len(s["theta_norm"]) for s in summaries]
    if min(lengths) == 0:
        raise ValueError(f"chains {[c for c, n in enumerate(lengths) if n == 0]} hold no draws")
    n_draw = min(lengths)
    names = list(chain_names) if chain_names is not None else list(range(len(summaries)))
    if len(names) != len(summaries):
        raise ValueError(f"{len(names)} chain names for {len(summaries)} chains")
    coords = {"chain": names, "draw": np.arange(n_draw), "layer": layers}

    def stacked(name: str) -> np.ndarray:
        arr = np.stack([np.asarray(s[name], dtype=np.float64)[:n_draw] for s in summaries])
        if arr.ndim == 3 and arr.shape[2] != len(layers):
            raise ValueError(f"{name} has {arr.shape[2]} values per draw for {len(layers)} layers")
        return arr

    def shared(candidates: Sequence[str]) -> list[str]:
        return [n for n in candidates if all(n in s for s in summaries)]

    data_vars: dict[str, Any] = {name: (("chain", "draw", "layer"), stacked(name))
                                 for name in ("layer_norm", "density")}
    for name in shared(("theta_norm", "test_nll", "test_accuracy")):
        data_vars[name] = (("chain", "draw"), stacked(name))
    attrs = _attrs(draws_per_chain_collected=lengths, draws_truncated=int(sum(lengths) - len(lengths) * n_draw),
                   source="chain summaries")
    groups = {"posterior": xr.Dataset(data_vars, coords=coords, attrs=attrs)}
    if shared(("train_loss",)):
        groups["sample_stats"] = xr.Dataset({"train_loss": (("chain", "draw"), stacked("train_loss"))},
                                            coords={"chain": names, "draw": np.arange(n_draw)}, attrs=_attrs())
    return az.InferenceData(**groups)


def save_netcdf(idata: az.InferenceData, path: str | Path) -> Path:
    """Write ``idata`` to netCDF atomically: a temporary file in the same folder, then ``os.replace``."""
    return atomic_write_via(path, idata.to_netcdf)


def load_netcdf(path: str | Path) -> az.InferenceData:
    """Read a file written by :func:`save_netcdf` fully into memory (the file is closed afterwards).

    ``az.from_netcdf`` also works but loads lazily and keeps the file open.
    """
    with az.rc_context({"data.load": "eager"}):
        return az.from_netcdf(str(path))


# ----------------------------------------------------------------------------------------------
# summaries


def summary_table(
    idata: az.InferenceData,
    var_names: Sequence[str] | None = None,
    *,
    kind: Literal["all", "stats", "diagnostics"] = "all",
    hdi_prob: float | None = None,
    round_to: int | str | None = None,
) -> pd.DataFrame:
    """``az.summary`` of the posterior: mean, sd, HDI, MCSE, ``ess_bulk``, ``ess_tail``, ``r_hat``.

    One row per scalar (e.g. ``layer_norm[conv1]``).  With one chain ``r_hat`` is NaN; with fewer
    than 4 draws per chain ESS, MCSE and R-hat are NaN; constant quantities give NaN MCSE/R-hat.
    arviz's warnings about these cases are silenced and a note is put in ``df.attrs["notes"]``.
    Across seeds, R-hat ≫ 1 means the runs sit in different modes (expected for networks).
    ``round_to`` is arviz's (None: its default rounding; ``"none"``: full precision).
    """
    post = idata.posterior
    n_chain, n_draw = int(post.sizes["chain"]), int(post.sizes["draw"])
    with _quiet_arviz():
        df = az.summary(idata, var_names=list(var_names) if var_names is not None else None, kind=kind,
                        hdi_prob=hdi_prob, round_to=round_to)
    notes = []
    if n_chain < 2:
        if "r_hat" in df.columns:
            df["r_hat"] = np.nan
        notes.append("one chain: R-hat is not defined (NaN)")
    if n_draw < 4:
        notes.append(f"{n_draw} draws per chain (< 4): ESS, MCSE and R-hat are NaN")
    if n_chain >= 2:
        notes.append("R-hat across seeds measures whether chains share a mode; networks generally do not")
    df.attrs.update(n_chains=n_chain, n_draws=n_draw, notes=notes)
    return df


# ----------------------------------------------------------------------------------------------
# plots


@contextlib.contextmanager
def _quiet_plotting() -> Iterator[None]:
    """:func:`_quiet_arviz`, arviz 0.23's own deprecation notice under matplotlib ≥ 3.11, and its note
    on densities of constant data (a sparse weight that stays 0 throughout one chain is expected)."""
    from matplotlib import MatplotlibDeprecationWarning

    with _quiet_arviz(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Passing a dict or None as alias_mapping",
                                category=MatplotlibDeprecationWarning)
        warnings.filterwarnings("ignore", message="Your data appears to have a single value", category=UserWarning)
        yield


def plot_trace(
    idata: az.InferenceData,
    path: str | Path,
    var_names: Sequence[str] = DEFAULT_TRACE_VARS,
    *,
    title: str | None = None,
    dpi: int = 100,
    **kwargs: Any,
) -> Path:
    """``az.plot_trace`` (one row per variable, every layer / chain overlaid) written atomically as PNG.

    Needs ≥ 2 draws per chain (a trace and a density of one value are meaningless; ``ValueError``).
    ``title`` replaces the default figure title (which describes per-layer variables).  Uses
    pyplot (arviz does); the figure is closed afterwards.  Extra ``kwargs`` go to arviz.
    """
    n_draw = int(idata.posterior.sizes["draw"])
    if n_draw < 2:
        raise ValueError(f"plot_trace needs at least 2 draws per chain, got {n_draw}")
    with _quiet_plotting():
        kwargs.setdefault("legend", True)  # names the chains
        axes = az.plot_trace(idata, var_names=list(var_names), show=False, **kwargs)
        fig = np.ravel(axes)[0].figure
        chains = ", ".join(map(str, idata.posterior["chain"].values))
        fig.suptitle(title or f"posterior samples: one line per layer, line style per chain ({chains}: one seed "
                     "each); x: sample value (left), draw = collected epoch (right)", fontsize=9)
        fig.tight_layout(rect=(0, 0, 1, 0.96))
        return atomic_save_figure(fig, path, dpi)


def plot_forest(
    idata: az.InferenceData,
    path: str | Path,
    var_names: Sequence[str] = DEFAULT_FOREST_VARS,
    *,
    combined: bool = False,
    r_hat: bool | None = None,
    ess: bool = False,
    dpi: int = 100,
    **kwargs: Any,
) -> Path:
    """``az.plot_forest`` written atomically as PNG: 94% HDI per chain (per seed) unless ``combined``.

    Variables share one x axis, so plot quantities of similar scale together (the default is
    ``layer_norm``; call again for ``density`` or ``weight``).  arviz draws the R-hat column only
    for ``combined=True``, so ``r_hat`` defaults to "combined, ≥ 2 chains and ≥ 4 draws".  Uses
    pyplot (arviz does); the figure is closed afterwards.  Extra ``kwargs`` go to arviz.
    """
    post = idata.posterior
    if r_hat is None:
        r_hat = combined and post.sizes["chain"] >= 2 and post.sizes["draw"] >= 4
    with _quiet_plotting():
        axes = az.plot_forest(idata, var_names=list(var_names), combined=combined, r_hat=r_hat, ess=ess,
                              show=False, **kwargs)
        fig = np.ravel(axes)[0].figure
        per = "all chains combined" if combined else f"one line per chain ({post.sizes['chain']} seeds, top to bottom)"
        fig.suptitle(f"94% HDI of each layer's value over the collected samples; {per}", fontsize=9)
        return atomic_save_figure(fig, path, dpi)
