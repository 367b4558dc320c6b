"""Classification and calibration metrics: accuracy, NLL, Brier, ECE/MCE, reliability diagrams, temperature.

Conventions
-----------
* ``scores`` is an ``(N, C)`` array of logits *or* probabilities (torch tensor on any device, numpy
  array, or nested list); ``labels`` an integer ``(N,)`` array with values in ``[0, C)``.  All metric
  math runs in float64 on the CPU; every function returns plain Python floats (or numpy arrays).
* ``from_logits=None`` (auto): the scores are taken as probabilities iff every value lies in
  ``[0, 1]`` and every row sums to 1 within ``1e-3``; otherwise they are logits and go through a
  softmax.  Pass ``from_logits=True/False`` to skip the guess.  Probabilities are not renormalised.
* Calibration is *top-label*: confidence ``c_i = max_k p_ik``, correctness ``[argmax_k p_ik = y_i]``
  (ties → lowest class index, as ``torch.argmax``).

Binning (ECE, MCE, reliability diagrams)
----------------------------------------
We follow torchmetrics' ``_binning_bucketize`` (``multiclass_calibration_error``, norm ``"l1"`` /
``"max"``) without depending on torchmetrics, to keep the dependency list short:

* ``n_bins`` equal-width bins with edges ``e_b = b / n_bins`` (``linspace(0, 1, n_bins + 1)``);
* bins are right-closed: ``c`` goes to bin ``b`` iff ``e_b < c <= e_{b+1}``, and ``c == 0`` goes to
  the first bin;
* ``ECE = Σ_b |B_b|/N · |acc_b − conf_b|`` (empty bins contribute 0);
  ``MCE = max_b |acc_b − conf_b|`` over non-empty bins.

One deliberate refinement: ``torch.linspace`` rounds some edges one ulp away from ``b / n_bins``,
and a float32 probability such as ``0.3`` is a little above the float64 ``0.3``, so a literal
float comparison would put values that are "on an edge" into either bin at random.  We therefore
use the correctly rounded edges ``b / n_bins`` and count a confidence lying less than two machine
epsilons of the *input's* float dtype above an edge as on the edge (it goes to the lower bin).  Away
from edges this is exactly torchmetrics' binning.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from .runs import atomic_save_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "ReliabilityData",
    "accuracy",
    "apply_temperature",
    "brier",
    "calibration_metrics",
    "ece",
    "fit_temperature",
    "mce",
    "nll",
    "plot_reliability_diagram",
    "reliability_data",
    "to_probs",
]

_PROB_SUM_TOL = 1e-3


# ----------------------------------------------------------------------------------------- inputs


def _as_tensor(x: Any, what: str) -> torch.Tensor:
    """Detached CPU tensor from a tensor / numpy array / array-like."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{what} must be a tensor or array, got {type(x).__name__}") from err


def _check_scores(scores: Any) -> tuple[torch.Tensor, float]:
    """``scores`` as float64 CPU ``(N, C)`` plus the edge tolerance of its input dtype."""
    s = _as_tensor(scores, "scores")
    if s.dtype == torch.bool or s.is_complex():
        raise ValueError(f"scores must be real numbers, got dtype {s.dtype}")
    if s.ndim != 2:
        raise ValueError(f"scores must have shape (N, C), got shape {tuple(s.shape)}")
    n, c = s.shape
    if n == 0:
        raise ValueError("empty input: scores has no samples (N == 0)")
    if c < 2:
        raise ValueError(
            f"scores needs at least 2 classes (columns), got C = {c}; give binary scores as 2 columns"
        )
    in_dtype = s.dtype if s.is_floating_point() else torch.float64
    s = s.to(torch.float64)
    if not torch.isfinite(s).all():
        raise ValueError("scores contain non-finite values (NaN or ±inf)")
    return s, 2.0 * torch.finfo(in_dtype).eps


def _check_labels(labels: Any, n: int, c: int) -> torch.Tensor:
    """``labels`` as int64 CPU ``(N,)`` with values in ``[0, C)``."""
    y = _as_tensor(labels, "labels")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if y.ndim != 1:
        raise ValueError(f"labels must have shape (N,), got shape {tuple(y.shape)}")
    if y.shape[0] != n:
        raise ValueError(f"shape mismatch: scores has N = {n} rows but labels has {y.shape[0]} entries")
    y = y.to(torch.int64)
    if n and (int(y.min()) < 0 or int(y.max()) >= c):
        raise ValueError(f"labels out of range [0, {c}): min {int(y.min())}, max {int(y.max())}")
    return y


def _looks_like_probs(s: torch.Tensor) -> bool:
    """All values in [0, 1] and every row sums to 1 within 1e-3."""
    in_range = bool(((s >= 0) & (s <= 1)).all())
    return in_range and bool(((s.sum(dim=1) - 1).abs() <= _PROB_SUM_TOL).all())


def _resolve_from_logits(s: torch.Tensor, from_logits: bool | None) -> bool:
    return (not _looks_like_probs(s)) if from_logits is None else bool(from_logits)


def _probs(s: torch.Tensor, from_logits: bool) -> torch.Tensor:
    return torch.softmax(s, dim=1) if from_logits else s


def _prepare(
    scores: Any, labels: Any, from_logits: bool | None
) -> tuple[torch.Tensor, torch.Tensor, bool, float]:
    """Validated (float64 scores, int64 labels, from_logits resolved, edge tolerance)."""
    s, tol = _check_scores(scores)
    y = _check_labels(labels, *s.shape)
    return s, y, _resolve_from_logits(s, from_logits), tol


# ------------------------------------------------------------------------------- point metrics


def to_probs(scores: Any, *, from_logits: bool | None = None) -> torch.Tensor:
    """Class probabilities, float64 on the CPU, shape ``(N, C)``.

    ``from_logits=None`` guesses: probabilities iff all values are in [0, 1] and each row sums to 1
    within 1e-3 (returned unchanged, not renormalised), otherwise ``softmax(scores, dim=1)``.
    """
    s, _ = _check_scores(scores)
    return _probs(s, _resolve_from_logits(s, from_logits))


def _accuracy(p: torch.Tensor, y: torch.Tensor) -> float:
    return float((p.argmax(dim=1) == y).double().mean())


def _nll(s: torch.Tensor, y: torch.Tensor, from_logits: bool, eps: float) -> float:
    if from_logits:
        logp_y = torch.log_softmax(s, dim=1).gather(1, y[:, None]).squeeze(1)
    else:
        logp_y = s.gather(1, y[:, None]).squeeze(1).clamp_min(eps).log()
    return float(-logp_y.mean())


def _brier(p: torch.Tensor, y: torch.Tensor) -> float:
    onehot = F.one_hot(y, p.shape[1]).to(p.dtype)
    return float(((p - onehot) ** 2).sum(dim=1).mean())


def accuracy(scores: Any, labels: Any) -> float:
    """Top-1 accuracy ``mean_i [argmax_k s_ik = y_i]`` (same for logits and probabilities)."""
    s, _ = _check_scores(scores)
    return _accuracy(s, _check_labels(labels, *s.shape))


def nll(scores: Any, labels: Any, *, from_logits: bool | None = None, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood ``−mean_i log p_{i, y_i}`` (nats).

    From logits it uses ``log_softmax`` (exact, equals ``F.cross_entropy``); from probabilities
    ``p_{i, y_i}`` is clamped below at ``eps`` so a zero probability gives a large finite value.
    """
    s, y, fl, _ = _prepare(scores, labels, from_logits)
    return _nll(s, y, fl, eps)


def brier(scores: Any, labels: Any, *, from_logits: bool | None = None) -> float:
    """Multi-class Brier score ``mean_i Σ_k (p_ik − [k = y_i])²``, in [0, 2]."""
    s, y, fl, _ = _prepare(scores, labels, from_logits)
    return _brier(_probs(s, fl), y)


# ---------------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class ReliabilityData:
    """Per-bin statistics of top-label confidence (see the module docstring for the binning)."""

    bin_edges: np.ndarray  # (n_bins + 1,)  b / n_bins
    counts: np.ndarray  # (n_bins,) samples per bin (int64)
    mean_confidence: np.ndarray  # (n_bins,) mean top-label confidence, NaN for empty bins
    accuracy: np.ndarray  # (n_bins,) fraction correct, NaN for empty bins
    ece: float  # Σ_b |B_b|/N · |acc_b − conf_b|
    mce: float  # max over non-empty bins of |acc_b − conf_b|


def _reliability(p: torch.Tensor, y: torch.Tensor, n_bins: int, tol: float) -> ReliabilityData:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    n_bins = int(n_bins)
    conf, pred = p.max(dim=1)
    correct = (pred == y).to(torch.float64)
    edges = torch.arange(n_bins + 1, dtype=torch.float64) / n_bins
    # right-closed bins (e_b, e_{b+1}]; c == 0 (and c within tol of an edge) handled as in the docstring
    idx = (torch.bucketize(conf - tol, edges, right=False) - 1).clamp_(0, n_bins - 1)
    counts = torch.bincount(idx, minlength=n_bins).to(torch.float64)
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, idx, conf)
    corr_sum = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, idx, correct)
    nonempty = counts > 0
    safe = counts.clamp_min(1.0)
    nan = torch.full_like(counts, float("nan"))
    mean_conf = torch.where(nonempty, conf_sum / safe, nan)
    acc = torch.where(nonempty, corr_sum / safe, nan)
    gap = (corr_sum - conf_sum).abs() / safe  # |acc_b − conf_b|, 0 for empty bins
    ece_val = float((counts * gap).sum() / counts.sum())
    mce_val = float(gap[nonempty].max())
    return ReliabilityData(
        bin_edges=edges.numpy(),
        counts=counts.to(torch.int64).numpy(),
        mean_confidence=mean_conf.numpy(),
        accuracy=acc.numpy(),
        ece=ece_val,
        mce=mce_val,
    )


def reliability_data(
    scores: Any, labels: Any, *, n_bins: int = 15, from_logits: bool | None = None
) -> ReliabilityData:
    """Bin counts, mean confidence, accuracy, ECE and MCE for ``n_bins`` equal-width right-closed bins."""
    s, y, fl, tol = _prepare(scores, labels, from_logits)
    return _reliability(_probs(s, fl), y, n_bins, tol)


def reliability_to_dict(data: ReliabilityData) -> dict:
    """JSON-ready bins of a reliability diagram: ``bin_edges``, ``counts``, ``accuracy`` and
    ``confidence`` per bin (None for an empty bin).  Small enough to keep in metrics.json, so that
    diagrams can be redrawn, and pooled over runs, where the predictions themselves are absent."""
    def clean(a: np.ndarray) -> list:
        return [None if not math.isfinite(v) else float(v) for v in a.tolist()]

    return {"bin_edges": [float(e) for e in data.bin_edges], "counts": [int(c) for c in data.counts],
            "accuracy": clean(data.accuracy), "confidence": clean(data.mean_confidence)}


def pooled_reliability(parts: Sequence[Mapping]) -> ReliabilityData:
    """The reliability diagram of the union of several prediction sets (e.g. one run per seed) from
    their :func:`reliability_to_dict` bins: per bin, counts add up and accuracy and confidence are
    count-weighted means, so ECE = Σ_b |B_b|/N · |acc_b − conf_b| over the pooled bins.  That is the
    ECE of all predictions together, not the mean of the parts' ECEs."""
    if not parts:
        raise ValueError("nothing to pool")
    edges = np.asarray(parts[0]["bin_edges"], dtype=np.float64)
    if any(not np.array_equal(np.asarray(p["bin_edges"], dtype=np.float64), edges) for p in parts):
        raise ValueError("reliability bins differ between the parts; pool only diagrams with the same bins")
    counts = np.sum([np.asarray(p["counts"], dtype=np.float64) for p in parts], axis=0)

    def weighted(key: str) -> np.ndarray:
        return np.sum([np.nan_to_num(np.asarray(p[key], dtype=np.float64)) * np.asarray(p["counts"]) for p in parts],
                      axis=0)

    nonempty = counts > 0
    safe = np.maximum(counts, 1.0)
    acc_sum, conf_sum = weighted("accuracy"), weighted("confidence")
    gap = np.abs(acc_sum - conf_sum) / safe
    return ReliabilityData(bin_edges=edges, counts=counts.astype(np.int64),
                           mean_confidence=np.where(nonempty, conf_sum / safe, np.nan),
                           accuracy=np.where(nonempty, acc_sum / safe, np.nan),
                           ece=float((counts * gap).sum() / counts.sum()), mce=float(gap[nonempty].max()))


def ece(scores: Any, labels: Any, *, n_bins: int = 15, from_logits: bool | None = None) -> float:
    """Top-label expected calibration error ``Σ_b |B_b|/N · |acc_b − conf_b|`` (L1, equal-width bins)."""
    return reliability_data(scores, labels, n_bins=n_bins, from_logits=from_logits).ece


def mce(scores: Any, labels: Any, *, n_bins: int = 15, from_logits: bool | None = None) -> float:
    """Top-label maximum calibration error ``max_b |acc_b − conf_b|`` over non-empty bins."""
    return reliability_data(scores, labels, n_bins=n_bins, from_logits=from_logits).mce


def calibration_metrics(scores: Any, labels: Any, *, from_logits: bool | None = None) -> dict[str, float]:
    """``accuracy``, ``confidence`` (mean top-class probability; confidence − accuracy > 0 is
    over-confidence), ``ece`` (15 bins), ``ece10`` (10 bins, the official CigL code), ``mce``
    (15 bins), ``nll`` and ``brier`` in one pass over validated inputs."""
    s, y, fl, tol = _prepare(scores, labels, from_logits)
    p = _probs(s, fl)
    rel15 = _reliability(p, y, 15, tol)
    return {
        "accuracy": _accuracy(p, y),
        "confidence": float(p.max(dim=1).values.mean()),
        "ece": rel15.ece,
        "ece10": _reliability(p, y, 10, tol).ece,
        "mce": rel15.mce,
        "nll": _nll(s, y, fl, 1e-12),
        "brier": _brier(p, y),
    }


# ------------------------------------------------------------------------------------- plotting


def _draw_reliability(ax: Axes, data: ReliabilityData, title: str | None) -> None:
    """Per bin: a blue bar up to min(accuracy, confidence), then the gap between the two, light red
    and hatched where confidence exceeds accuracy (over-confident), orange where accuracy exceeds
    confidence (under-confident).  Every colour is opaque and named in the legend, whose swatches
    are drawn apart from the bars: a category with no bin (a model never under-confident) still
    shows its own colour, not matplotlib's fallback for an empty bar container."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    edges = data.bin_edges
    width = np.diff(edges)
    left = edges[:-1]
    full = data.counts > 0
    acc = np.where(full, data.accuracy, 0.0)
    conf = np.where(full, data.mean_confidence, 0.0)
    lo = np.minimum(acc, conf)
    edge = {"edgecolor": "black", "linewidth": 0.6}
    up_to = {"facecolor": "tab:blue"}
    over_gap = {"facecolor": "mistyrose", "hatch": "//"}
    under_gap = {"facecolor": "tab:orange"}
    ax.bar(left, lo, width=width, align="edge", **edge, **up_to)
    over = full & (conf > acc)
    under = full & (acc > conf)
    ax.bar(left[over], (conf - acc)[over], bottom=acc[over], width=width[over], align="edge", **edge, **over_gap)
    ax.bar(left[under], (acc - conf)[under], bottom=conf[under], width=width[under], align="edge", **edge,
           **under_gap)
    ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1.0)
    handles = [
        Line2D([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1.0, label="perfect calibration"),
        Patch(**edge, **up_to, label=f"accuracy, up to the confidence (ECE = {data.ece:.4f})"),
        Patch(**edge, **over_gap, label="gap: confidence above accuracy (over-confident)"),
        Patch(**edge, **under_gap, label="accuracy above confidence (under-confident)"),
    ]
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("confidence (bin of the top-class probability)")
    ax.set_ylabel("accuracy in the bin")
    if title:
        ax.set_title(title)
    ax.legend(handles=handles, loc="upper left", fontsize="x-small")


def plot_reliability_diagram(
    data: ReliabilityData | Mapping[str, ReliabilityData],
    path: str | os.PathLike | None = None,
    *,
    title: str | None = None,
    ax: Axes | Sequence[Axes] | None = None,
) -> Figure:
    """Reliability diagram: per-bin accuracy bars, red gap to mean confidence, diagonal, ECE in the legend.

    A mapping ``{name: ReliabilityData}`` draws one panel per predictor side by side (titled by
    name, ``title`` becomes the figure title).  With ``ax`` (one Axes, or one per predictor) it draws
    there; otherwise it builds a standalone Agg figure (no pyplot, so no global figure state and no
    GUI backend).  If ``path`` is given the figure is saved atomically (format from the extension).
    """
    from matplotlib.figure import Figure

    panels = dict(data) if isinstance(data, Mapping) else {"": data}
    if not panels:
        raise ValueError("data is an empty mapping: nothing to plot")
    for name, d in panels.items():
        if not isinstance(d, ReliabilityData):
            raise ValueError(f"expected ReliabilityData for {name or 'data'!r}, got {type(d).__name__}")
    if ax is None:
        fig = Figure(figsize=(4.5 * len(panels), 4.8), layout="constrained")
        axes = list(np.atleast_1d(fig.subplots(1, len(panels))))
    else:
        axes = [ax] if not isinstance(ax, Sequence | np.ndarray) else list(np.ravel(ax))
        if len(axes) != len(panels):
            raise ValueError(f"got {len(axes)} Axes for {len(panels)} reliability panels")
        fig = axes[0].figure
    single = not isinstance(data, Mapping)
    for a, (name, d) in zip(axes, panels.items()):
        _draw_reliability(a, d, title if single else name)
    if not single and title:
        fig.suptitle(title)
    if path is not None:
        atomic_save_figure(fig, path, close=False)
    return fig


# ---------------------------------------------------------------------------- temperature scaling


def fit_temperature(logits: Any, labels: Any, *, max_iter: int = 50) -> float:
    """Temperature ``T > 0`` minimising ``NLL(softmax(logits / T), labels)`` (Guo et al. 2017).

    Fit on *held-out validation* logits, then apply to test logits with :func:`apply_temperature`.
    Optimises ``log T`` (so ``T`` stays positive) with L-BFGS + strong-Wolfe line search in float64,
    starting at ``T = 1``; ``log T`` is kept within ``[-7, 7]`` (``T`` in about [1e-3, 1e3]) for
    separable or all-wrong data where the optimum runs off to 0 or ∞.  Never returns a ``T`` whose
    NLL is above that of ``T = 1``.  The input must be logits (not probabilities).
    """
    s, _ = _check_scores(logits)
    y = _check_labels(labels, *s.shape)
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    bound = 7.0

    def loss_at(log_t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(s / log_t.clamp(-bound, bound).exp(), y)

    with torch.enable_grad():
        log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS(
            [log_t],
            lr=1.0,
            max_iter=max_iter,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-10,
            tolerance_change=1e-12,
        )

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = loss_at(log_t)
            loss.backward()
            return loss

        opt.step(closure)
    with torch.no_grad():
        fitted = log_t.detach().clamp(-bound, bound)
        if not torch.isfinite(fitted) or loss_at(fitted) > loss_at(torch.zeros((), dtype=torch.float64)):
            return 1.0
    return float(fitted.exp())


def apply_temperature(logits: Any, temperature: float) -> torch.Tensor:
    """Scaled logits ``logits / T`` (same device and dtype as a tensor input; numpy → tensor)."""
    t = float(temperature)
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    x = logits if isinstance(logits, torch.Tensor) else torch.as_tensor(np.asarray(logits))
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    return x / t


def ood_detection(in_scores: Any, out_scores: Any, *, tpr: float = 0.95) -> dict[str, float]:
    """How well an uncertainty score (higher = more likely out-of-distribution) separates OOD
    inputs (the positive class) from in-distribution ones, by scikit-learn's metrics:

    * ``auroc``: area under the ROC curve (``roc_auc_score``);
    * ``aupr``: average precision with OOD as the positive class (``average_precision_score``;
      "AUPR-Out" in Hendrycks & Gimpel 2017);
    * ``fpr95``: the fraction of in-distribution inputs flagged as OOD at the largest threshold
      that still flags ``tpr`` (95%) of the OOD inputs (the first ROC point with TPR ≥ 95%, read off
      ``roc_curve``, as torch-uncertainty's FPR95).
    """
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    s_in = np.asarray(_as_tensor(in_scores, "in_scores").double().flatten())
    s_out = np.asarray(_as_tensor(out_scores, "out_scores").double().flatten())
    if not len(s_in) or not len(s_out):
        raise ValueError("OOD detection needs in-distribution and OOD scores")
    if not (np.isfinite(s_in).all() and np.isfinite(s_out).all()):
        raise ValueError("OOD scores must be finite")
    y = np.concatenate([np.zeros(len(s_in)), np.ones(len(s_out))])
    s = np.concatenate([s_in, s_out])
    fpr, tpr_curve, _ = roc_curve(y, s)
    return {"auroc": float(roc_auc_score(y, s)), "aupr": float(average_precision_score(y, s)),
            "fpr95": float(fpr[np.searchsorted(tpr_curve, tpr, side="left")])}
