"""The study's tables: one row per finished run, mean ± std over seeds, the paper-shaped tables
(Table 1, Table 3, ablations, Fig. 4's baselines), paired differences against RigL with their t
intervals, the regime reached, the keep choice (validation split only) and the posterior reports.

:func:`write_reports` writes all of them (and, through ``experiments.study_plots``, the pictures)
from the finished runs' small files; ``experiments.sweep`` calls it after each run.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from cigl_bayes.runs import atomic_write_bytes, atomic_write_csv, atomic_write_json

from .study_plots import (
    plot_baselines,
    plot_reliability_dense_vs_sparse,
    plot_reliability_rigl_vs_cigl,
    plot_title,
    plot_training_curves,
    plot_vs_sparsity,
)
from .study_runs import ABLATIONS, BASELINES, RUN_NAME, SUMMARY_KEYS, family_of, run_dir


def scored_as(rows: list[dict]) -> str:
    """One sentence naming each method's predictor and the BatchNorm statistics it was scored with
    (``bn_protocol``: ``tracked`` during training, or ``recomputed-clean`` / ``-augmented``).  Methods
    whose headlines use different statistics are not compared alike; the sentence makes that visible."""
    seen: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        seen[r["method"]].add(f"{r['predictor']} [{r.get('bn_protocol') or 'unrecorded'}]")
    parts = [f"{m}: {', '.join(sorted(v))}" for m, v in seen.items()]
    return "Predictor [BatchNorm statistics] per method: " + "; ".join(parts) + "." if parts else ""


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean ± std (ddof 1) over seeds of every :data:`SUMMARY_KEYS` column the rows have."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["method"], r["engine"], r["sparsity"])].append(r)
    summary = []
    for (method, engine, sparsity), rs in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][0])):
        entry = {"method": method, "engine": engine, "sparsity": sparsity, "seeds": len(rs),
                 "predictor": "/".join(sorted({r["predictor"] for r in rs}))}
        for k in SUMMARY_KEYS:
            values = np.array([r[k] for r in rs if r.get(k) is not None], dtype=np.float64)
            if len(values) < len(rs):
                continue  # a run without this metric (an older metrics.json): leave the column out
            entry[f"{k}_mean"] = float(values.mean())
            entry[f"{k}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        summary.append(entry)
    return summary


def _pm(mean: float, std: float, n: int, digits: int) -> str:
    """"mean ± std", or only the mean for one seed (a std of 0 would claim no seed noise)."""
    if n < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def mean_pm(values, digits: int = 2) -> str:
    """"mean ± std" (ddof 1) of ``values``; only the value when there is one (no spread to show)."""
    v = np.asarray(values, dtype=np.float64)
    return _pm(v.mean(), v.std(ddof=1) if len(v) > 1 else 0.0, len(v), digits)


def _cell(entry: dict | None, key: str, scale: float = 100.0, digits: int = 2) -> str:
    if entry is None:
        return "–"
    return _pm(entry[f"{key}_mean"] * scale, entry[f"{key}_std"] * scale, entry.get("seeds", 2), digits)


def pivot_table(summary: list[dict], key: str, methods: list[str], mark_vs_rigl: bool = False) -> str:
    """Methods × sparsities, mean ± std (in %); optionally mark ECE ≥ 15% lower than RigL's."""
    sparsities = sorted({e["sparsity"] for e in summary if e["sparsity"] > 0})
    index = {(e["method"], e["sparsity"]): e for e in summary}
    lines = ["| method | " + " | ".join(f"{s:g}" for s in sparsities) + " |", "|---|" + "---|" * len(sparsities)]
    most = max((e["seeds"] for e in summary if e["method"] in methods), default=0)
    fewer = False
    for m in methods:
        cells = []
        for s in sparsities:
            e = index.get((m, s)) or index.get((m, 0.0))
            text = _cell(e, key)
            if e is not None and e["seeds"] < most:
                text += f" (n = {e['seeds']})"
                fewer = True
            rigl = index.get(("rigl", s))
            if mark_vs_rigl and e is not None and rigl is not None and m != "rigl" and e["sparsity"] > 0:
                cut = 1 - e[f"{key}_mean"] / rigl[f"{key}_mean"] if rigl[f"{key}_mean"] > 0 else 0.0
                text += f" **({-cut:+.0%})**" if cut >= 0.15 else f" ({-cut:+.0%})"
            cells.append(text)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if fewer:
        lines += ["", f"(n = k): k of the {most} seeds so far; a change versus RigL there compares unequal seed sets "
                  "(`paired.md` pairs runs by seed)."]
    return "\n".join(lines)


def regime_table(summary: list[dict]) -> str:
    """Where the study's training lands: per method and sparsity, test accuracy, mean confidence,
    over-confidence (confidence − accuracy) and the last epoch's training NLL.  The paper's
    calibration gain is a cure for over-confidence; a regime without it cannot show the gain."""
    lines = ["| method | sparsity | seeds | test accuracy (%) | mean confidence (%) | confidence − accuracy (pp) "
             "| last-epoch training NLL |", "|---|---|---|---|---|---|---|"]
    for e in sorted(summary, key=lambda e: (e["sparsity"], e["method"])):
        if "overconfidence_mean" not in e:
            continue
        train = _cell(e, "train_nll", scale=1.0, digits=3) if "train_nll_mean" in e else "–"
        lines.append(f"| {e['method']} | {e['sparsity']:g} | {e['seeds']} | {_cell(e, 'accuracy')} | "
                     f"{_cell(e, 'confidence')} | {_cell(e, 'overconfidence')} | {train} |")
    return "\n".join(lines)


def keep_choice(rows: list[dict], family: str = "cigl") -> tuple[float | None, str]:
    """The keep probability of Z for ``family`` (the base method of ``cigl``, ``cigl-keep0.99``, …),
    chosen on the **validation split**: the lowest validation NLL of the output predictor, averaged
    first over seeds and then over the sparsities at which every candidate keep has runs.  NLL is
    a proper scoring rule, so it rewards accuracy and calibration together; the test set plays no
    part.  Returns (chosen keep or None, a Markdown table with the reason)."""
    mine = [r for r in rows if r.get("keep") is not None and r.get("val_nll") is not None
            and family_of(r["method"]) == family and r["method"] not in BASELINES]
    by_cell: dict[tuple[float, float], list[dict]] = defaultdict(list)
    for r in mine:
        by_cell[(r["keep"], r["sparsity"])].append(r)
    keeps = sorted({k for k, _ in by_cell})
    shared = sorted(set.intersection(*({s for k2, s in by_cell if k2 == k} for k in keeps))) if keeps else []
    lines = [f"Validation split only (the test set is not used). Family `{family}`; output predictor of each run; "
             "mean ± std over seeds.", "",
             "| keep | sparsity | seeds | val accuracy (%) | val ECE (%) | val NLL |", "|---|---|---|---|---|---|"]
    def stat(rs: list[dict], key: str, scale: float, digits: int) -> str:
        return mean_pm([r[key] * scale for r in rs], digits)

    for (k, s), rs in sorted(by_cell.items()):
        lines.append(f"| {k:g} | {s:g} | {len(rs)} | {stat(rs, 'val_accuracy', 100, 2)} | "
                     f"{stat(rs, 'val_ece', 100, 2)} | {stat(rs, 'val_nll', 1, 4)} |")
    if len(keeps) < 2 or not shared:
        return None, "\n".join(lines + ["", "No choice yet: fewer than two keep values have finished runs at a "
                                           "common sparsity."])
    score = {k: float(np.mean([np.mean([r["val_nll"] for r in by_cell[(k, s)]]) for s in shared])) for k in keeps}
    best = min(keeps, key=lambda k: score[k])
    ranking = ", ".join(f"keep {k:g}: {score[k]:.4f}" for k in sorted(keeps, key=lambda k: score[k]))
    return best, "\n".join(lines + ["", f"Mean validation NLL over sparsities {', '.join(f'{s:g}' for s in shared)}: "
                                       f"{ranking}. **Chosen: keep {best:g}.**"])


def with_keep_variants(methods: list[str], present: set[str]) -> list[str]:
    """The methods of ``methods`` that ``present`` holds, each followed by its keep variants there
    (``cigl`` → ``cigl``, ``cigl-keep0.99``; ``cigl-no-wma`` → ``cigl-no-wma-keep0.99``), in order."""
    out = []
    for base in methods:
        out += [m for m in sorted(present) if (m == base or m.startswith(f"{base}-keep")) and m not in out]
    return out


def write_reports(root: Path, rows: list[dict], methods: list[str], seeds: list[int], protocol: str, engine: str,
                  overrides: dict) -> None:
    """runs.csv, summary, the paper-shaped tables and the plots of the runs finished so far."""
    summary = aggregate(rows)
    atomic_write_csv(rows, root / "runs.csv")
    atomic_write_csv(summary, root / "summary.csv")
    atomic_write_json({"protocol": protocol, "engine": engine, "overrides": overrides, "summary": summary},
                      root / "summary.json")
    shown = [m for m in ["dense", *methods, *(["rigl+ts"] if "rigl" in methods else [])]
             if any(e["method"] == m for e in summary)]
    shown = list(dict.fromkeys(shown))
    header = (f"Protocol `{protocol}`, engine `{engine}`, seeds {seeds}; mean ± std over seeds, in %.  "
              + scored_as(rows))
    atomic_write_bytes(f"# Accuracy (Table 1)\n\n{header}\n\n{pivot_table(summary, 'accuracy', shown)}\n".encode(),
                       root / "table_accuracy.md")
    atomic_write_bytes(f"# ECE (Table 3)\n\n{header} Bold: ECE ≥ 15% lower than RigL's at that sparsity; "
                       f"(±x%): change versus RigL.\n\n{pivot_table(summary, 'ece', shown, True)}\n".encode(),
                       root / "table_ece.md")
    atomic_write_bytes(("# Paired differences versus RigL (same seed)\n\n" + scored_as(rows) + "\n\n"
                        + paired_table(rows)
                        + "\n\n## Over seeds\n\nMean ± std (ddof 1) of the per-seed differences above, and the "
                        "95% interval of a paired t-test (n − 1 degrees of freedom): an interval containing 0 "
                        "does not separate the method from RigL.  The paper's bar is an ECE at least 15% "
                        "below RigL's at equal accuracy.\n\n" + paired_summary(rows) + "\n").encode(),
                       root / "paired.md")
    present = {e["method"] for e in summary}
    ablations = with_keep_variants(ABLATIONS, present)
    atomic_write_bytes(("# Ablations\n\n" + header + "\n\nAccuracy\n\n" + pivot_table(summary, "accuracy", ablations)
                        + "\n\nECE\n\n" + pivot_table(summary, "ece", ablations, True) + "\n").encode(),
                       root / "ablations.md")
    baselines = with_keep_variants(["rigl", "rigl+ts", "rigl+mixup", "rigl+ls", "rigl-wdp", "rigl-mcdp", "cigl"],
                                   present)
    text = ("# Baselines (Fig. 4)\n\n" + header + "\n\nECE\n\n" + pivot_table(summary, "ece", baselines, True)
            + "\n\nAccuracy\n\n" + pivot_table(summary, "accuracy", baselines) + "\n")
    atomic_write_bytes(text.encode(), root / "baselines.md")
    plot_vs_sparsity(summary, "accuracy", "test accuracy", root / "accuracy_vs_sparsity.png",
                     plot_title("Accuracy vs sparsity", root.name, protocol, engine))
    plot_vs_sparsity(summary, "ece", "test ECE (15 bins)", root / "ece_vs_sparsity.png",
                     plot_title("ECE vs sparsity", root.name, protocol, engine))
    plot_reliability_dense_vs_sparse(root / "runs", rows, engine, root / "reliability_dense_vs_sparse.png")
    plot_baselines(summary, baselines, root / "baselines.png",
                   plot_title("Calibration baselines (paper Fig. 4)", root.name, protocol, engine))
    atomic_write_bytes(("# Regime reached\n\n" + header + "\n\n" + regime_table(summary) + "\n").encode(),
                       root / "regime.md")
    _, keep_text = keep_choice(rows)
    atomic_write_bytes(("# Keep probability of Z\n\n" + keep_text + "\n").encode(), root / "keep.md")
    for sparsity in sorted({r["sparsity"] for r in rows if r["sparsity"] > 0}):
        plot_reliability_rigl_vs_cigl(root / "runs", rows, engine, sparsity,
                                      root / f"reliability_rigl_vs_cigl_s{sparsity:g}.png")
    curves = training_curves(root / "runs", rows, engine)
    if curves:
        atomic_write_csv(curves, root / "training_curves.csv")
    for sparsity in sorted({c["sparsity"] for c in curves if c["sparsity"] > 0}):
        plot_training_curves(curves, sparsity, root / f"training_nll_s{sparsity:g}.png")
    atomic_write_bytes(("# Posterior predictors per run (experiments.posterior_report)\n\n"
                        "Test split; mean ± std over seeds; each run's report is in runs/<run>/posterior/.  "
                        "The reports may recompute BatchNorm on fewer batches than the run's own evaluation "
                        "(the protocol's --bn-batches), so their final/wma rows can differ slightly from "
                        "metrics.json.\n\n"
                        + posterior_table(root / "runs")
                        + "\n\n## Across seeds: arviz with one chain per seed\n\n"
                        "Each run's posterior report keeps per-draw summaries of its samples "
                        "(runs/<run>/posterior/draws.json: test NLL and accuracy of each collected sample with "
                        "BatchNorm recomputed, ‖θ‖, per-layer weight norms), so runs that finished on different "
                        "machines are pooled here as chains.  R-hat ≫ 1 across seeds says the seeds sit in "
                        "different modes, which is expected for networks; ESS is that of the few epoch-end "
                        "draws of each chain.\n\n"
                        + posterior_chains_table(root / "runs", root) + "\n").encode(), root / "posterior.md")


def own_report_entries(runs_root: Path, filename: str, key: str):
    """(run-name match, entries) of every run's posterior report ``runs/<run>/posterior/<filename>``:
    the list under ``key``, only the entries whose "run" is that run (a report made over several
    runs lists all of them in the first run's folder).  Unreadable files are skipped."""
    for path in sorted(runs_root.glob(f"*/posterior/{filename}")) if runs_root.is_dir() else []:
        name = path.parent.parent.name
        match = RUN_NAME.match(name)
        if not match:
            continue
        try:
            entries = json.loads(path.read_text())[key]
        except (OSError, ValueError, KeyError):
            continue
        yield match, [e for e in entries if e.get("run") == name]


def posterior_table(runs_root: Path) -> str:
    """The predictors of every run's posterior report (``runs/<run>/posterior/predictors.json``),
    mean ± std over seeds per method, sparsity and predictor: accuracy, ECE and NLL with the
    forward passes each needs."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for match, found in own_report_entries(runs_root, "predictors.json", "predictors"):
        for r in found:
            groups[(match["method"], match["engine"], float(match["sparsity"]), r["predictor"])].append(
                r | {"seed": int(match["seed"])})
    order = {name: i for i, name in enumerate(("final", "wma", "predictive", "mc-z", "swag"))}
    lines = ["| method | engine | sparsity | predictor | seeds | forward passes | accuracy (%) | ECE (%) | NLL |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (method, engine, sparsity, pred), rs in sorted(groups.items(),
                                                       key=lambda kv: (kv[0][:3], order.get(kv[0][3], 9))):
        def stat(key: str, scale: float, digits: int, rs=rs) -> str:
            return mean_pm([r[key] * scale for r in rs], digits)
        passes = sorted({r["forward_passes"] for r in rs})
        lines.append(f"| {method} | {engine} | {sparsity:g} | {pred} | {', '.join(str(r['seed']) for r in rs)} | "
                     f"{'/'.join(map(str, passes))} | {stat('accuracy', 100, 2)} | {stat('ece', 100, 2)} | "
                     f"{stat('nll', 1, 4)} |")
    return "\n".join(lines) if groups else "No posterior reports yet."


def chain_summaries_of(runs_root: Path) -> dict[tuple, dict[int, dict]]:
    """Each run's own chain from its posterior report's ``draws.json``, grouped by method, engine and
    sparsity: {(method, engine, sparsity): {seed: chain summary}}."""
    groups: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for match, own in own_report_entries(runs_root, "draws.json", "chains"):
        if own:
            groups[(match["method"], match["engine"], float(match["sparsity"]))][int(match["seed"])] = own[0]
    return groups


def posterior_chains_table(runs_root: Path, plot_root: Path) -> str:
    """arviz across seeds from the committed per-draw summaries: each seed's run is one chain.

    Per group (method, engine, sparsity): ``az.summary`` (mean, sd, ESS, R-hat) of the draws' test
    NLL, test accuracy and ‖θ‖, and the largest R-hat / smallest bulk ESS over the per-layer weight
    norms; a trace plot ``posterior_chains_<method>_<engine>_s<sparsity>.png`` where draws ≥ 2."""
    from cigl_bayes.inference import diagnostics

    groups = chain_summaries_of(runs_root)
    if not groups:
        return "No per-draw summaries yet (runs/<run>/posterior/draws.json)."

    def num(v: float, digits: int) -> str:
        return "–" if not np.isfinite(v) else f"{v:.{digits}f}"

    lines = ["| method | engine | sparsity | chains (seeds) | draws | quantity | mean | sd | ess_bulk | r_hat |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (method, engine, sparsity), by_seed in sorted(groups.items()):
        seeds = sorted(by_seed)
        try:
            idata = diagnostics.summaries_inference_data([by_seed[s] for s in seeds], [f"seed{s}" for s in seeds])
        except ValueError as err:
            lines.append(f"| {method} | {engine} | {sparsity:g} | {seeds} | – | not pooled: {err} | | | | |")
            continue
        post = idata.posterior
        chains = f"{len(seeds)} ({', '.join(map(str, seeds))})"
        head = f"| {method} | {engine} | {sparsity:g} | {chains} | {post.sizes['draw']} |"
        scalars = [v for v in ("test_nll", "test_accuracy", "theta_norm") if v in post]
        table = diagnostics.summary_table(idata, var_names=[*scalars, "layer_norm"], round_to="none")
        for v in scalars:
            r = table.loc[v]
            lines.append(f"{head} {v} | {num(r['mean'], 4)} | {num(r['sd'], 4)} | {num(r['ess_bulk'], 1)} | "
                         f"{num(r['r_hat'], 3)} |")
        layer_rows = table[[str(i).startswith("layer_norm[") for i in table.index]]
        lines.append(f"{head} layer_norm ({len(layer_rows)} layers): min ess_bulk, max r_hat | | | "
                     f"{num(layer_rows['ess_bulk'].min(), 1)} | {num(layer_rows['r_hat'].max(), 3)} |")
        if post.sizes["draw"] >= 2:
            diagnostics.plot_trace(idata, plot_root / f"posterior_chains_{method}_{engine}_s{sparsity:g}.png",
                                   var_names=[*scalars],
                                   title=f"{method} ({engine}) at sparsity {sparsity:g}: each collected sample's "
                                         "test NLL, test accuracy and ‖θ‖; one line per seed; x: value (left), "
                                         "draw = collected epoch (right)")
    return "\n".join(lines)


def paired_table(rows: list[dict]) -> str:
    """Per seed and sparsity: each method's ECE and accuracy minus RigL's (percentage points), and
    the precision the two runs trained in (``compute_dtype``; "unrecorded" for runs from before that
    record).  A pair whose runs are recorded in different precisions is marked †: its difference
    mixes the method's effect with the precision's."""
    index = {(r["method"], r["sparsity"], r["seed"]): r for r in rows}
    lines = ["| method | sparsity | seed | ΔECE (pp) | ΔECE / RigL's ECE | Δaccuracy (pp) | precision |",
             "|---|---|---|---|---|---|---|"]
    mixed = False
    for (method, sparsity, seed), r in sorted(index.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
        rigl = index.get(("rigl", sparsity, seed))
        if method == "rigl" or rigl is None or sparsity == 0:
            continue
        d_ece, d_acc = r["ece"] - rigl["ece"], r["accuracy"] - rigl["accuracy"]
        rel = f"{d_ece / rigl['ece']:+.0%}" if rigl["ece"] > 0 else "–"
        precision, known_apart = pair_precision(r, rigl)
        mixed |= known_apart
        lines.append(f"| {method} | {sparsity:g} | {seed} | {100 * d_ece:+.2f} | {rel} | {100 * d_acc:+.2f} "
                     f"| {precision} |")
    if mixed:
        lines += ["", "†: the two runs of this pair recorded different precisions (runs.csv → compute_dtype), "
                  "so the difference mixes the method's effect with the precision's."]
    return "\n".join(lines)


def pair_precision(row: dict, rigl: dict) -> tuple[str, bool]:
    """(what paired.md shows, whether the two runs are *known* to differ) for a pair's precisions
    (``compute_dtype``).  A run from before that record shows "unrecorded" and is not known to differ."""
    ours, theirs = row.get("compute_dtype") or "unrecorded", rigl.get("compute_dtype") or "unrecorded"
    known_apart = "unrecorded" not in (ours, theirs) and ours != theirs
    if ours == theirs:
        return ours, False
    return (f"{ours} vs rigl's {theirs} †", True) if known_apart else (f"{ours}, rigl's {theirs}", False)


def paired_summary(rows: list[dict], criterion: float = -0.15) -> str:
    """Per method and sparsity, the paired differences of :func:`paired_table` summarised over seeds.

    With d_k the difference of seed k against RigL's seed k and n paired seeds: mean d̄ ± s
    (sample std, ddof 1), and the 95% interval d̄ ± t₀.₉₇₅,ₙ₋₁ · s/√n of a paired t-test (Student's
    t with n − 1 degrees of freedom; none for n = 1).  An interval that contains 0 does not tell
    the method from RigL at that confidence.  The relative ECE change is the mean of the per-seed
    ratios ΔECE_k / ECE_k(RigL), and "≤ −15%" counts the seeds that pass the paper's bar; a seed
    whose RigL ECE is 0 has no ratio and is left out of those two columns.  The last column counts
    the pairs whose runs recorded different precisions (:func:`pair_precision`), pooled here all the same.
    """
    from scipy import stats

    index = {(r["method"], r["sparsity"], r["seed"]): r for r in rows}
    pairs: dict[tuple, list[tuple[float, float, float]]] = defaultdict(list)
    for (method, sparsity, seed), r in index.items():
        rigl = index.get(("rigl", sparsity, seed))
        if method == "rigl" or rigl is None or sparsity == 0:
            continue
        rel = (r["ece"] - rigl["ece"]) / rigl["ece"] if rigl["ece"] > 0 else float("nan")
        d_ece, d_acc = 100 * (r["ece"] - rigl["ece"]), 100 * (r["accuracy"] - rigl["accuracy"])
        pairs[(method, sparsity)].append((d_ece, rel, d_acc, float(pair_precision(r, rigl)[1])))

    def interval(values: np.ndarray) -> str:
        if len(values) < 2:
            return "–"
        half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
        return f"[{values.mean() - half:+.2f}, {values.mean() + half:+.2f}]"

    lines = ["| method | sparsity | paired seeds | ΔECE (pp) | 95% interval | mean ΔECE / RigL's ECE "
             f"| seeds with ≤ {criterion:.0%} | Δaccuracy (pp) | 95% interval | pairs of two precisions |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (method, sparsity), ds in sorted(pairs.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        d_ece, rel, d_acc, apart = (np.array(v, dtype=np.float64) for v in zip(*ds))
        n_apart = int(apart.sum())
        n = len(ds)
        ok = np.isfinite(rel)
        mean_rel = f"{rel[ok].mean():+.0%}" if ok.any() else "–"
        passed = f"{int(np.sum(rel[ok] <= criterion))} of {int(ok.sum())}"
        lines.append(f"| {method} | {sparsity:g} | {n} | {_signed_pm(d_ece)} | {interval(d_ece)} "
                     f"| {mean_rel} | {passed} | {_signed_pm(d_acc)} | {interval(d_acc)} "
                     f"| {f'{n_apart} †' if n_apart else 0} |")
    return "\n".join(lines)


def _signed_pm(values: np.ndarray) -> str:
    """Signed "mean ± std" (ddof 1) of paired differences; only the mean for one seed."""
    if len(values) < 2:
        return f"{values.mean():+.2f}"
    return f"{values.mean():+.2f} ± {values.std(ddof=1):.2f}"


def training_curves(runs_root: Path, rows: list[dict], engine: str) -> list[dict]:
    """One row per finished run and epoch: the epoch's mean training NLL (``train_data_loss`` of
    metrics.json's history, the cross-entropy of the augmented batches under the masks the run
    trains with, M⊙Z⊙W for CigL).  Read from the small files, so it works on runs finished elsewhere."""
    curves = []
    for method, sparsity, seed in sorted({(r["method"], r["sparsity"], r["seed"]) for r in rows}):
        try:
            result = json.loads((run_dir(runs_root, method, sparsity, seed, engine) / "metrics.json").read_text())
        except (OSError, ValueError):
            continue  # a derived row such as rigl+ts has no folder of its own
        curves += [{"method": method, "sparsity": sparsity, "seed": seed, "epoch": h["epoch"],
                    "train_nll": h["train_data_loss"]}
                   for h in result.get("history") or [] if "epoch" in h and "train_data_loss" in h]
    return curves
