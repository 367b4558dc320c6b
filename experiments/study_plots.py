"""The study's pictures: metric versus sparsity, the calibration baselines (paper Fig. 4), pooled
reliability diagrams (Fig. 1a–b and RigL against every CigL variant) and the training-NLL curves.

Every picture is drawn from the finished runs' small files (metrics.json), so committed runs from
other machines are drawn too.  Called by :func:`experiments.study_tables.write_reports`.
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from cigl_bayes import metrics
from cigl_bayes.runs import atomic_save_figure

from .study_runs import family_of, run_dir


def _legend_label(method: str, entries: list[dict]) -> str:
    """Legend entry of one method's summary entries: the method, the predictor its numbers come from, and
    how many seeds its points have (a range where sparsities differ)."""
    counts = sorted({e["seeds"] for e in entries})
    n = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    predictors = sorted({p for e in entries for p in (e.get("predictor") or "?").split("/")})
    return f"{method} ({'/'.join(predictors)}, {n} seed{'s' if counts[-1] > 1 else ''})"


def plot_title(what: str, study: str, protocol: str, engine: str) -> str:
    """Title of a summary plot: what it shows, of which study, and how its points and bars are made."""
    return (f"{what}, study {study} (protocol {protocol}, {engine} engine)\n"
            "test split; mean ± std over seeds (no bar: one seed)")


def _std_or_nan(entries: list[dict], key: str) -> list[float]:
    """Error bars: the std over seeds, none (nan) for a single seed, whose 0.0 would read as 'no spread'."""
    return [e[f"{key}_std"] if e["seeds"] > 1 else float("nan") for e in entries]


def plot_vs_sparsity(summary: list[dict], key: str, label: str, path: Path, title: str = "") -> None:
    """Metric versus sparsity per method (x: −log10(1 − sparsity), so 0.9, 0.99, 0.999 are evenly
    spaced as in the paper's Fig. 1c); dense as a horizontal line; error bars: std over seeds."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    by_method: dict[str, list[dict]] = defaultdict(list)
    for e in summary:
        by_method[e["method"]].append(e)
    for m, es in sorted(by_method.items()):
        es = sorted(es, key=lambda e: e["sparsity"])
        if all(e["sparsity"] == 0 for e in es):
            ax.axhline(es[0][f"{key}_mean"], color="grey", ls=":", label=_legend_label(m, es) + ", dense reference")
            continue
        x = [-math.log10(1 - e["sparsity"]) for e in es]
        ax.errorbar(x, [e[f"{key}_mean"] for e in es], yerr=_std_or_nan(es, key), marker="o", capsize=3,
                    label=_legend_label(m, es))
    ticks = sorted({e["sparsity"] for e in summary if e["sparsity"] > 0})
    ax.set_xticks([-math.log10(1 - s) for s in ticks], [f"{s:g}" for s in ticks])
    ax.set_xlabel("sparsity (axis spaced by −log₁₀(1 − sparsity))")
    ax.set_ylabel(label)
    if title:
        ax.set_title(title, fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    atomic_save_figure(fig, path)


def plot_baselines(summary: list[dict], methods: list[str], path: Path, title: str = "") -> None:
    """Fig. 4: test ECE of RigL's calibration baselines and CigL, bars per sparsity; error bars: std over seeds."""
    import matplotlib.pyplot as plt

    sparsities = sorted({e["sparsity"] for e in summary if e["sparsity"] > 0})
    index = {(e["method"], e["sparsity"]): e for e in summary}
    present = [m for m in methods if any((m, s) in index for s in sparsities)]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    width = 0.8 / max(1, len(present))
    for i, m in enumerate(present):
        xs = [j + i * width for j, s in enumerate(sparsities) if (m, s) in index]
        es = [index[(m, s)] for s in sparsities if (m, s) in index]
        ax.bar(xs, [e["ece_mean"] for e in es], width, yerr=_std_or_nan(es, "ece"), capsize=2,
               label=_legend_label(m, es))
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(sparsities))], [f"{s:g}" for s in sparsities])
    ax.set_xlabel("sparsity")
    ax.set_ylabel("test ECE (15 bins)")
    if title:
        ax.set_title(title, fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    atomic_save_figure(fig, path)


def reliability_bins(folder: Path) -> dict | None:
    """Test reliability bins of the run's output predictor: from metrics.json, or, for a run
    evaluated before metrics.json kept them, computed from predictions.npz; None when neither has them."""
    try:
        result = json.loads((folder / "metrics.json").read_text())
        output = result["output_predictor"]
    except (OSError, ValueError, KeyError):
        return None
    stored = (result.get("reliability") or {}).get("test", {}).get(output)
    if stored is not None:
        return stored
    try:
        with np.load(folder / "predictions.npz") as z:
            probs, labels = z[output], z["labels"]
    except (OSError, KeyError, ValueError):
        return None
    return metrics.reliability_to_dict(metrics.reliability_data(probs, labels, from_logits=False))


def pooled_panel(runs_root: Path, rows: list[dict], engine: str, method: str,
                 sparsity: float) -> tuple[str, metrics.ReliabilityData] | None:
    """One reliability-diagram panel: the test reliability bins of ``method`` at ``sparsity``, pooled
    over its seeds (counts added, per-bin accuracy and confidence count-weighted) from the bins kept
    in each run's metrics.json, so that committed small files suffice.  Returns (label, pooled bins),
    or None when no run of the cell has bins."""
    parts, seeds = [], []
    for r in rows:
        if r["method"] != method or r["sparsity"] != sparsity:
            continue
        bins = reliability_bins(run_dir(runs_root, method, sparsity, r["seed"], engine))
        if bins is None:
            print(f"note: {method} seed {r['seed']} at sparsity {sparsity:g} has no reliability bins in metrics.json "
                  "and no predictions.npz; left out of the reliability plots", file=sys.stderr)
            continue
        parts.append(bins)
        seeds.append(r["seed"])
    if not parts:
        return None
    pred = next(r["predictor"] for r in rows if r["method"] == method and r["sparsity"] == sparsity)
    where = "" if sparsity == 0 else f" at {sparsity:g}"
    label = f"{method}{where} ({pred}), seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, sorted(seeds)))}"
    return label, metrics.pooled_reliability(parts)


def plot_reliability_dense_vs_sparse(runs_root: Path, rows: list[dict], engine: str, path: Path) -> bool:
    """Fig. 1a–b: test reliability of dense training against RigL and CigL at the study's highest
    sparsity, each pooled over its seeds from the committed bins (:func:`pooled_panel`).  Returns
    False (and draws nothing) when dense or a sparse method has no run with bins."""
    sparse = sorted({r["sparsity"] for r in rows if r["sparsity"] > 0})
    if not sparse:
        return False
    panels = dict(p for m, s in (("dense", 0.0), ("rigl", sparse[-1]), ("cigl", sparse[-1]))
                  if (p := pooled_panel(runs_root, rows, engine, m, s)) is not None)
    if len(panels) < 2 or not next(iter(panels)).startswith("dense"):
        return False
    metrics.plot_reliability_diagram(panels, path, title="Test-set reliability, dense vs sparse (paper Fig. 1a–b), "
                                     "pooled over seeds (15 bins)")
    return True


def plot_reliability_rigl_vs_cigl(runs_root: Path, rows: list[dict], engine: str, sparsity: float, path: Path) -> bool:
    """Test reliability diagrams of RigL and of every CigL variant at ``sparsity``, each pooled over
    its seeds from the bins kept in metrics.json (so it works from committed small files).
    Returns False (and draws nothing) when RigL or CigL has no such run."""
    methods = ["rigl", *sorted({r["method"] for r in rows if family_of(r["method"]) == "cigl"})]
    panels = dict(p for m in methods if (p := pooled_panel(runs_root, rows, engine, m, sparsity)) is not None)
    if len(panels) < 2 or not any(k.startswith("rigl") for k in panels):
        return False
    metrics.plot_reliability_diagram(panels, path, title=f"Test-set reliability at sparsity {sparsity:g}, "
                                     "pooled over seeds (15 bins)")
    return True


def paired_curve(curves: list[dict], method: str, sparsity: float) -> dict[int, tuple[float, int]]:
    """Epoch → (mean over seeds of ``method``'s training NLL minus RigL's of the same seed, number
    of seeds paired); seeds without a RigL run of that sparsity are left out."""
    nll = {(c["method"], c["sparsity"], c["seed"], c["epoch"]): c["train_nll"] for c in curves}
    diffs: dict[int, list[float]] = defaultdict(list)
    for (m, s, seed, epoch), value in nll.items():
        rigl = nll.get(("rigl", s, seed, epoch))
        if m == method and s == sparsity and rigl is not None:
            diffs[epoch].append(value - rigl)
    return {epoch: (float(np.mean(d)), len(d)) for epoch, d in sorted(diffs.items())}


def plot_training_curves(curves: list[dict], sparsity: float, path: Path) -> bool:
    """Left: training NLL per epoch of every method at ``sparsity`` (and dense), mean over seeds with
    the seeds' range shaded.  Right: each method's paired difference from RigL (same seed).  Shows
    where a gap in fit opens.  Returns False (and draws nothing) when no run has a history."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    chosen = [c for c in curves if c["sparsity"] in (0.0, sparsity)]
    if not chosen:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for method in sorted({c["method"] for c in chosen}):
        by_epoch: dict[int, list[float]] = defaultdict(list)
        for c in chosen:
            if c["method"] == method:
                by_epoch[c["epoch"]].append(c["train_nll"])
        epochs = sorted(by_epoch)
        seeds = len({c["seed"] for c in chosen if c["method"] == method})
        line, = left.plot(epochs, [np.mean(by_epoch[e]) for e in epochs], marker=".",
                          label=f"{method} ({seeds} seed{'s' if seeds > 1 else ''})")
        left.fill_between(epochs, [min(by_epoch[e]) for e in epochs], [max(by_epoch[e]) for e in epochs],
                          color=line.get_color(), alpha=0.2)
        paired = paired_curve(curves, method, sparsity) if method != "rigl" else {}
        if paired:
            n_paired = max(n for _, n in paired.values())
            right.plot(list(paired), [d for d, _ in paired.values()], marker=".", color=line.get_color(),
                       label=f"{method} − rigl ({n_paired} paired seed{'s' if n_paired > 1 else ''})")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_yscale("log")
    left.set_xlabel("epoch")
    left.set_ylabel("mean training NLL (augmented batches)")
    left.set_title(f"Training fit at sparsity {sparsity:g}")
    left.legend(fontsize=8)
    right.axhline(0, color="grey", lw=0.8)
    right.set_xlabel("epoch")
    right.set_ylabel("Δ training NLL vs RigL, same seed")
    right.set_title("Paired difference (> 0: fits worse than RigL)")
    if right.get_legend_handles_labels()[0]:
        right.legend(fontsize=8)
    atomic_save_figure(fig, path)
    return True


