"""Grid of methods × sparsities × seeds, then the paper's tables and plots.

    python -m experiments.sweep --protocol cpu-smoke                       # minutes on 2 CPU cores
    python -m experiments.sweep --protocol gpu-short --sparsities 0.9 0.95 --seeds 0 1 2
    python -m experiments.sweep --protocol paper --methods dense rigl cigl --sparsities 0.8 0.9 0.95 0.99

Methods are the trainer's (dense static set rigl cigl cigl-no-rm cigl-no-wma rigl-wdp rigl-mcdp)
plus the baselines of paper Fig. 4 as ``rigl+mixup`` (α = 0.2) and ``rigl+ls`` (ε = 0.1); RigL
with temperature scaling is read from every rigl run (``rigl+ts``, no extra training).  Dense
runs once per seed.  Finished runs are skipped and unfinished ones resume, so an interrupted
sweep continues where it stopped.  Several sweeps may share one study: a run (or posterior
report) another process is writing is skipped, so two sweeps of the same grid split it between
them (on a CPU, give each ``OMP_NUM_THREADS`` = cores / sweeps).

Output in ``results/<study>/``: runs.csv (one row per run),
summary.csv/json (mean ± std over seeds), table_accuracy.md (Table 1), table_ece.md (Table 3,
marking ≥ 15% ECE reduction vs RigL), ablations.md, baselines.md, and the plots
accuracy_vs_sparsity.png, ece_vs_sparsity.png (Fig. 1c), reliability_dense_vs_sparse.png
(Fig. 1a–b: dense and the sparsest rigl and cigl, pooled over seeds from metrics.json) and
baselines.png (Fig. 4); also paired.md (per-seed differences against RigL,
and over seeds their mean ± std and paired-t 95% interval),
regime.md (accuracy, confidence − accuracy and training NLL: the regime the runs reach),
keep.md (the keep probability of Z chosen on the validation split), one
reliability_rigl_vs_cigl_s<sparsity>.png per sparsity (pooled over seeds from metrics.json),
training_curves.csv and training_nll_s<sparsity>.png (per-epoch training NLL, and each method's
paired difference from RigL: where a gap in fit opens) and
posterior.md (each CigL run's posterior report, ``--posterior``, summarised over seeds, and arviz
R-hat / ESS across seeds with posterior_chains_<method>_<engine>_s<sparsity>.png).  Every
table is rebuilt from the small files of all finished runs, so a study can accumulate across
machines.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cigl_bayes import metrics
from cigl_bayes.config import METHODS, RESUME_FREE_FIELDS, TrainConfig
from cigl_bayes.device import resolve_device
from cigl_bayes.inference.training import run
from cigl_bayes.runs import RunFolderBusy, atomic_save_figure, atomic_write_bytes, atomic_write_csv, atomic_write_json

from .cli import ArgumentParser, add_host_allocator_argument, apply_host_allocator, run_cli

CPU_STUDY_EPOCHS = 16
# The keep these studies' runs were trained with (the library default then), pinned behind every
# method that draws Z (cigl and its ablation cigl-no-wma, the baseline rigl-wdp), so they compare alike.
AT_KEEP_09 = {name: {"random_mask_rate": 0.1} for name, spec in METHODS.items() if spec.random_mask}

# Protocol → TrainConfig overrides and default grid.
PROTOCOLS: dict[str, dict] = {
    "paper": {"config": {"model": "wrn-22-2"},
              "methods": ["dense", "rigl", "cigl"], "sparsities": [0.8, 0.9, 0.95, 0.99], "seeds": [0, 1, 2]},
    # One WRN-22-2 run in ≤ 8 min on one H100 is the target; 40 epochs with the schedule rescaled.
    "gpu-short": {"config": {"model": "wrn-22-2", "epochs": 40},
                  "methods": ["rigl", "cigl"], "sparsities": [0.9, 0.95], "seeds": [0, 1, 2]},
    # WRN-22-2 on full CIFAR-10 on a 2-core CPU (docs/reproduction.md): E = 16 epochs, ≈ 20 min a run at the
    # bf16 fast path of an AMX CPU, ≈ 1 h 50 min in float32 on an AVX2-only one.  The paper's optimiser;
    # a cosine descent to the step schedule's lr at T*, held through the WMA window (cosine-window);
    # ΔT = 100, mask updates until 75%, T* = 0.8·E.
    # After each CigL run, its posterior report (predictors with costs, Z–W) is kept beside it, so the
    # WMA / predictive / mc-z / swag comparison accumulates from small files; BatchNorm recomputed on
    # 10 batches of 500 training images per weight setting keeps it ≈ 10 min a run on the AVX2 CPU.
    "cpu-study": {"config": {"model": "wrn-22-2", "epochs": CPU_STUDY_EPOCHS,
                             "lr_schedule": "cosine-window"},
                  "methods": ["rigl", "cigl", "cigl-keep0.99"], "sparsities": [0.95], "seeds": [0, 1, 2],
                  "pinned": AT_KEEP_09,
                  "posterior": ["--bn-batches", "10", "--mc-samples", "4", "--swag-samples", "4"]},
    # The pre-registered controlled study (docs/preregistration.md): the cpu-study's training protocol in float32
    # on five new seeds, every run scored under every BatchNorm protocol, its weights committed
    # (weights.safetensors).  Order: rigl and cigl-keep0.99 seeds 3–7, then cigl-no-rm and cigl-no-wma seeds 3–5.
    "controlled": {"config": {"model": "wrn-22-2", "epochs": CPU_STUDY_EPOCHS, "lr_schedule": "cosine-window"},
                   "methods": ["rigl", "cigl-keep0.99", "cigl-no-rm", "cigl-no-wma-keep0.99"], "sparsities": [0.95],
                   "seeds": [3, 4, 5, 6, 7]},
    "cpu-smoke": {"config": {"model": "small-cnn", "epochs": 6, "subset": 5000, "test_subset": 2000,
                             "batch_size": 64, "delta_t": 20, "log_every": 10},
                  "methods": ["dense", "rigl", "cigl"], "sparsities": [0.9, 0.95], "seeds": [0, 1],
                  "pinned": AT_KEEP_09},
}
# "pinned": settings a protocol fixes behind a method name, so that the runs a study has committed
# keep their meaning when a library default changes (the study's plain ``cigl`` is keep 0.9, the
# default these runs were trained with, and so are its ablation and baseline that draw Z); an explicit
# ``<method>-keep<k>`` still wins.
BASELINES = {"rigl+mixup": ("rigl", {"mixup": 0.2}), "rigl+ls": ("rigl", {"label_smoothing": 0.1})}
ABLATIONS = ["rigl", "cigl-no-rm", "cigl-no-wma", "cigl"]


def method_spec(name: str) -> tuple[str, dict]:
    """Sweep method name → (trainer method, extra config).

    ``<method>-keep<k>`` runs a random-mask method at keep probability k (e.g. ``cigl-keep0.99``,
    the official code's value; plain ``cigl`` uses the library default, unless the protocol pins
    it: cpu-study and cpu-smoke keep 0.9, see ``AT_KEEP_09``)."""
    if name in BASELINES:
        return BASELINES[name]
    if name in METHODS:
        return name, {}
    base, sep, keep = name.rpartition("-keep")
    if sep and base in METHODS and METHODS[base].random_mask:
        try:
            value = float(keep)
        except ValueError:
            value = float("nan")
        if not 0.0 < value <= 1.0:
            raise ValueError(f"bad keep in method {name!r}: expected <method>-keep<k> with k in (0, 1]")
        return base, {"random_mask_rate": round(1.0 - value, 12)}
    raise ValueError(f"unknown method {name!r}; known: {', '.join([*METHODS, *BASELINES])}, "
                     "or <random-mask method>-keep<k> (e.g. cigl-keep0.99)")


def cell_config(proto: dict, method: str, sparsity: float, seed: int, engine: str, overrides: dict) -> TrainConfig:
    """The validated TrainConfig of one grid cell: the protocol's settings with the command line's
    ``overrides``, what the protocol pins behind ``method``, then what the method name itself says."""
    base, extra = method_spec(method)
    settings = {**overrides, **proto.get("pinned", {}).get(method, {}), **extra}
    cfg = TrainConfig(**settings, method=base, engine=engine, sparsity=sparsity, seed=seed)
    cfg.validate()  # every cell checked before any training starts
    return cfg


def check_distinct(methods: list[str], sparsities: list[float], seeds: list[int]) -> None:
    """Refuse repeated grid values before anything trains: a repeated seed would count one run
    twice (n = 2, std 0), and sparsities that print alike would share one run folder."""
    for name, values in (("--methods", methods), ("--seeds", seeds)):
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"{name} repeats {', '.join(map(str, repeated))}; give each value once")
    names = [f"{s:g}" for s in sparsities]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ValueError(f"--sparsities has values that are equal or name the same run folder ({', '.join(clash)}: "
                         f"{sparsities}); give each sparsity once")


def grid(methods: list[str], sparsities: list[float], seeds: list[int]) -> list[tuple[str, float, int]]:
    cells = []
    for m in methods:
        base, _ = method_spec(m)
        for s in [0.0] if not METHODS[base].sparse else sparsities:
            cells += [(m, s, seed) for seed in seeds]
    return cells


def run_dir(root: Path, method: str, sparsity: float, seed: int, engine: str) -> Path:
    return root / f"{method}-{engine}-s{sparsity:g}-seed{seed}"


TEST_KEYS = ("accuracy", "ece", "nll", "brier", "confidence")
VAL_KEYS = ("accuracy", "ece", "nll")
# summary columns: the test metrics, over-confidence (mean confidence − accuracy), the validation
# metrics (for choices such as keep: never the test set), and the last epoch's training NLL
SUMMARY_KEYS = (*TEST_KEYS, "overconfidence", *(f"val_{k}" for k in VAL_KEYS), "train_nll")


def rows_of(result: dict, method: str, engine: str, keep: float | None = None) -> list[dict]:
    """One row per reported predictor variant of a finished run: the method's output, and for
    rigl also its temperature-scaled output (``rigl+ts``).  Each row holds the test metrics,
    ``overconfidence`` = mean top-class confidence − accuracy (> 0: over-confident), the same
    predictor's validation metrics (``val_*``), the last epoch's mean training NLL
    (``train_nll``: how far the network fits its training data) and the keep probability of Z."""
    out = result["output_predictor"]
    variants = [(method, out)]
    if method == "rigl" and "temperature_scaled" in result["test"]:
        variants.append(("rigl+ts", "temperature_scaled"))
    history = result.get("history") or [{}]
    rows = []
    for name, pred in variants:
        test = result["test"][pred]
        row = {"method": name, "engine": engine, "sparsity": result["sparsity_target"], "seed": result["seed"],
               "predictor": pred, "keep": keep, **{k: test.get(k) for k in TEST_KEYS}}
        row["overconfidence"] = (test["confidence"] - test["accuracy"]) if "confidence" in test else None
        val = (result.get("val") or {}).get(pred, {})
        row.update({f"val_{k}": val.get(k) for k in VAL_KEYS})
        row["train_nll"] = history[-1].get("train_data_loss")
        rows.append(row)
    return rows


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


def finished_result(folder: Path, cfg: TrainConfig) -> dict | None:
    """The metrics of a run finished earlier — possibly on another machine, with only its small
    files (config.json, metrics.json) kept — or None.  A folder whose config differs is left to
    :func:`run`, which refuses it with a clear error."""
    try:
        result = json.loads((folder / "metrics.json").read_text())
        saved = TrainConfig.from_dict(json.loads((folder / "config.json").read_text()))
    except (OSError, ValueError, TypeError):
        return None
    mine = cfg.resolved(n_train=result.get("n_train"))
    same = all(getattr(saved, f) == getattr(mine, f) for f in mine.to_dict() if f not in RESUME_FREE_FIELDS)
    return result if result.get("completed") and same else None


RUN_NAME = re.compile(r"^(?P<method>.+)-(?P<engine>plain|svi)-s(?P<sparsity>[0-9.]+)-seed(?P<seed>\d+)$")


def check_precision(folder: Path, result: dict | None, dtype: str, amp: str) -> None:
    """Refuse a finished run whose matrix products ran (in any epoch, or in its evaluation) in
    another dtype than an explicit ``--amp`` asks for.  ``amp`` is resume-free (``--amp auto`` lets a
    study accumulate over machines with and without bf16), so without this check a bf16 study
    could silently count float32 runs.  ``dtype``: the parameters' dtype (what ``--amp off`` means)."""
    if result is None or amp == "auto":
        return
    wanted = "bfloat16" if amp == "bf16" else dtype
    ran = precision_of(folder, result)
    if ran != wanted:
        raise ValueError(f"run {folder.name} ran in {ran or 'a precision it did not record (--amp auto)'}, "
                         f"but --amp {amp} asks for {wanted}; give this precision its own --study, or use --amp auto")


def finished_runs(runs_root: Path, engine: str):
    """(folder, metrics) of every finished run of ``engine`` under ``runs_root``."""
    for folder in sorted(runs_root.glob("*")) if runs_root.is_dir() else []:
        match = RUN_NAME.match(folder.name)
        if not match or match["engine"] != engine:
            continue
        try:
            result = json.loads((folder / "metrics.json").read_text())
        except (OSError, ValueError):
            continue
        if result.get("completed"):
            yield folder, result


def check_one_engine(root: Path, engine: str) -> None:
    """Refuse a study that holds run folders (finished or not) of the other engine: its tables (runs.csv,
    table_*.md, paired.md, the plots) are written for one engine, so a sweep of the other would overwrite
    them with its runs alone.  Each engine gets its own ``--study``; ``experiments.compare_studies
    --engines plain svi`` pairs them by seed.  (Checked before training, outside the tables lock: two
    sweeps of different engines started at the same moment on an empty study both pass.)"""
    runs_root = root / "runs"
    folders = [(f.name, m["engine"]) for f in sorted(runs_root.iterdir() if runs_root.is_dir() else [])
               if (m := RUN_NAME.match(f.name))]
    others = [name for name, e in folders if e != engine]
    if not others:
        return
    other = next(e for name, e in folders if e != engine)
    shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
    if any(e == engine for _, e in folders):
        raise ValueError(f"study {root} mixes engines: beside its {engine}-engine runs it holds {other}-engine "
                         f"folders ({shown}); move those to a study of their own (e.g. {root}-{other})")
    raise ValueError(f"study {root} holds {other}-engine runs ({shown}) and its tables are theirs; give --engine "
                     f"{engine} its own --study ({root.name}-{engine}) and pair the two with python -m "
                     f"experiments.compare_studies {root} {root}-{engine} --engines {other} {engine}")


def study_rows(runs_root: Path, engine: str) -> list[dict]:
    """Rows of every finished run of ``engine`` under ``runs_root`` (folder names from :func:`run_dir`),
    each with the dtype its matrix products ran in (``compute_dtype``, :func:`precision_of`)."""
    rows = []
    for folder, result in finished_runs(runs_root, engine):
        method = RUN_NAME.match(folder.name)["method"]
        precision = precision_of(folder, result)
        rows += [{**row, "compute_dtype": precision} for row in rows_of(result, method, engine, keep=_keep_of(folder))]
    return rows


def mixed_precision_note(study: str, recorded: set[str | None], here: str) -> str | None:
    """A one-line note when ``--amp auto`` would train this study's new runs in another precision
    (``here``) than its finished runs recorded: bf16 moves CigL's WMA beyond seed noise in the
    precision check of docs/performance.md, so a study mixing the two needs saying so before it trains."""
    others = sorted(p for p in recorded if p and p != here)
    if not others:
        return None
    amp = {"float32": "off", "bfloat16": "bf16"}.get(others[0]) if len(others) == 1 else None
    keep = (f"; to keep the study's {others[0]}, give --amp {amp} (refused where runs predate the precision "
            f"record: then train into a --study of its own and move the finished folders in)") if amp else ""
    return (f"note: finished runs of {study} ran in {', '.join(others)}, but --amp auto trains here in {here}, "
            f"so the study will mix precisions (runs.csv → compute_dtype; paired.md marks mixed pairs){keep}")


def precision_of(folder: Path, result: dict) -> str | None:
    """The dtype(s) a finished run's matrix products ran in, joined by "+" when they changed (a run
    resumed on a machine with another precision): from each epoch's ``compute_dtype`` in
    ``history`` and metrics.json → ``runtime`` (the evaluation).  Runs from before those records
    fall back to their config.json's explicit ``amp`` ("bf16" or "off"); None where only ``auto``
    is known, whose choice depended on the machine."""
    seen = {h["compute_dtype"] for h in result.get("history") or [] if h.get("compute_dtype")}
    if (result.get("runtime") or {}).get("compute_dtype"):
        seen.add(result["runtime"]["compute_dtype"])
    if seen:
        return "+".join(sorted(seen))
    try:
        saved = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return {"bf16": "bfloat16", "off": saved.get("dtype", "float32")}.get(saved.get("amp"))


def _keep_of(folder: Path) -> float | None:
    """Keep probability of Z of the run in ``folder`` (1 for methods without Z), from its config.json."""
    try:
        return TrainConfig.from_dict(json.loads((folder / "config.json").read_text())).keep
    except (OSError, ValueError, TypeError):
        return None


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


def family_of(name: str) -> str | None:
    """The trainer method a sweep method name trains (``cigl-keep0.99`` → ``cigl``), or None for a
    name that is read from another run, such as ``rigl+ts``."""
    try:
        return method_spec(name)[0]
    except ValueError:
        return None


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
    header = f"Protocol `{protocol}`, engine `{engine}`, seeds {seeds}; mean ± std over seeds, in %."
    atomic_write_bytes(f"# Accuracy (Table 1)\n\n{header}\n\n{pivot_table(summary, 'accuracy', shown)}\n".encode(),
                       root / "table_accuracy.md")
    atomic_write_bytes(f"# ECE (Table 3)\n\n{header} Bold: ECE ≥ 15% lower than RigL's at that sparsity; "
                       f"(±x%): change versus RigL.\n\n{pivot_table(summary, 'ece', shown, True)}\n".encode(),
                       root / "table_ece.md")
    atomic_write_bytes(("# Paired differences versus RigL (same seed)\n\n" + paired_table(rows)
                        + "\n\n## Over seeds\n\nMean ± std (ddof 1) of the per-seed differences above, and the "
                        "95% interval of a paired t-test (n − 1 degrees of freedom): an interval containing 0 "
                        "does not separate the method from RigL.  The paper's bar is an ECE at least 15% "
                        "below RigL's at equal accuracy.\n\n" + paired_summary(rows) + "\n").encode(),
                       root / "paired.md")
    ablations = [m for m in ABLATIONS if any(e["method"] == m for e in summary)]
    atomic_write_bytes(("# Ablations\n\n" + header + "\n\nAccuracy\n\n" + pivot_table(summary, "accuracy", ablations)
                        + "\n\nECE\n\n" + pivot_table(summary, "ece", ablations, True) + "\n").encode(),
                       root / "ablations.md")
    baselines = [m for m in ["rigl", "rigl+ts", "rigl+mixup", "rigl+ls", "rigl-wdp", "rigl-mcdp", "cigl"]
                 if any(e["method"] == m for e in summary)]
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


@contextlib.contextmanager
def tables_lock(root: Path):
    """Hold ``root/.tables.lock`` (``flock``, blocking) while one process rebuilds a study's tables,
    so that sweeps sharing the study rebuild one after another, never interleaved.  The file stays
    (git-ignored, like every ``.lock``); where ``fcntl`` does not exist (Windows) this is a no-op."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        yield
        return
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".tables.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed
        yield


def posterior_of(folder: Path, options: list[str], progress: bool) -> Path | None:
    """``experiments.posterior_report`` of one finished run with collected samples, into
    ``folder/posterior`` (once: a finished report, the report.md it writes last, is kept).  Returns the
    report folder, or None for a run without samples (nothing to report on) or whose report another
    process is writing."""
    from . import posterior_report

    out = folder / "posterior"
    if (out / "report.md").is_file():
        return out
    if not any((folder / "samples").glob("sample_*.pt")):
        return None
    try:
        posterior_report.main([str(folder), "--out", str(out), *options, *([] if progress else ["--no-progress"])])
    except RunFolderBusy as busy:  # another sweep is writing this report
        print(f"sweep: skipped the posterior report of {folder.name}: another process "
              f"(pid {busy.owner or 'unknown'}) is writing it", file=sys.stderr)
        return None
    except (OSError, ValueError, RuntimeError) as err:  # the run itself is fine: report it and go on
        print(f"warning: posterior report of {folder} failed ({err}); the sweep goes on without it. "
              f"Retry: python -m experiments.posterior_report {folder} --out {out}", file=sys.stderr)
        return None
    return out


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


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m experiments.sweep", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="cpu-smoke")
    p.add_argument("--study", default=None, help="results/<study>/ (default: the protocol name)")
    p.add_argument("--results", default="results", help="parent folder of studies")
    p.add_argument("--methods", nargs="+", default=None,
                   help="sweep methods (default: the protocol's): the trainer's methods, rigl+mixup, rigl+ls, or "
                        "<random-mask method>-keep<k>.  cpu-study and cpu-smoke pin cigl, cigl-no-wma and "
                        "rigl-wdp at keep 0.9 (the keep of their committed runs); cigl-keep0.99 asks for the "
                        "default 0.99")
    p.add_argument("--sparsities", nargs="+", type=float, default=None)
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument("--engine", choices=["plain", "svi"], default="plain")
    p.add_argument("--epochs", type=int, default=None, help="override the protocol's epochs")
    p.add_argument("--subset", type=int, default=None, help="override the protocol's training subset")
    p.add_argument("--test-subset", type=int, default=None, help="evaluate on this many test images")
    p.add_argument("--model", default=None, help="override the protocol's model")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto",
                   help="bf16 autocast (auto: where the hardware has bf16 matrix instructions; elsewhere bf16 is "
                        "emulated and many times slower).  bf16 or off also checks that every finished run of "
                        "the study ran so; give each precision its own --study")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto")
    add_host_allocator_argument(p)
    p.add_argument("--posterior", choices=["auto", "on", "off"], default="auto",
                   help="posterior report of each finished run with samples, kept in runs/<run>/posterior "
                        "(auto: the protocol's choice; cpu-study: on)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    proto = PROTOCOLS[args.protocol]
    posterior_options = proto.get("posterior", []) if args.posterior != "off" else None
    if args.posterior == "auto" and "posterior" not in proto:
        posterior_options = None
    if posterior_options is not None and args.data_dir:
        posterior_options = [*posterior_options, "--data-dir", args.data_dir]
    methods = args.methods or proto["methods"]
    sparsities = args.sparsities or proto["sparsities"]
    seeds = args.seeds if args.seeds is not None else proto["seeds"]
    check_distinct(methods, sparsities, seeds)
    cells = grid(methods, sparsities, seeds)  # validates method names
    overrides = dict(proto["config"], device=args.device, data_dir=args.data_dir, amp=args.amp,
                     channels_last=args.channels_last)
    for name in ("epochs", "subset", "test_subset", "model"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    configs = [(method, sparsity, seed, cell_config(proto, method, sparsity, seed, args.engine, overrides))
               for method, sparsity, seed in cells]
    pinned = sorted({method for method, *_ in cells} & set(proto.get("pinned", {})))
    if pinned:
        print(f"sweep: protocol {args.protocol} pins " + "; ".join(
            f"{m}: " + ", ".join(f"{k}={v}" + (f" (keep {1 - v:g})" if k == "random_mask_rate" else "")
                                 for k, v in proto["pinned"][m].items()) for m in pinned), file=sys.stderr)

    apply_host_allocator(args)
    root = Path(args.results) / (args.study or args.protocol)
    check_one_engine(root, args.engine)
    runs_root = root / "runs"
    dtype = configs[0][3].dtype
    recorded = set()
    for folder, result in finished_runs(runs_root, args.engine):  # before any training: every run the tables read
        check_precision(folder, result, dtype, args.amp)
        recorded.add(precision_of(folder, result))
    unfinished = [cfg for method, sparsity, seed, cfg in configs
                  if finished_result(run_dir(runs_root, method, sparsity, seed, args.engine), cfg) is None]
    if args.amp == "auto" and unfinished:
        here = unfinished[0].compute_dtype(resolve_device(unfinished[0].device))
        note = mixed_precision_note(root.name, recorded, here)
        if note:
            print(note, file=sys.stderr)

    def rebuild_tables() -> None:
        """The study's tables over every finished run: earlier invocations, other machines and other
        sweeps sharing the study too (serialised, so the last rebuild reads every run finished before it)."""
        with tables_lock(root):
            rows = study_rows(runs_root, args.engine)
            if rows:
                shown = list(dict.fromkeys([*methods, *(r["method"] for r in rows if r["method"] != "rigl+ts")]))
                write_reports(root, rows, shown, sorted({r["seed"] for r in rows}), args.protocol, args.engine,
                              overrides)

    left_to_others = []
    for method, sparsity, seed, cfg in tqdm(configs, desc=f"sweep {root.name}", unit="run",
                                            disable=not args.progress):
        folder = run_dir(runs_root, method, sparsity, seed, args.engine)
        if finished_result(folder, cfg) is None:
            try:
                result = run(cfg, folder, progress=args.progress)
            except RunFolderBusy as busy:  # another sweep of this study is training it: leave the run to that one
                left_to_others.append(folder.name)
                print(f"sweep: skipped {folder.name}: another process (pid {busy.owner or 'unknown'}) is writing it",
                      file=sys.stderr)
                continue
            check_precision(folder, result, dtype, args.amp)  # a resumed run may have started in another one
        if posterior_options is not None and (cfg.method_config.wma or cfg.method_config.snapshots):
            posterior_of(folder, [*posterior_options, "--device", args.device], args.progress)
        rebuild_tables()
    if left_to_others:
        rebuild_tables()  # with what the other processes finished meanwhile
        print(f"sweep: {len(left_to_others)} run(s) of this grid were left to other processes "
              f"({', '.join(left_to_others)}); run the sweep again once they end: it takes in what they "
              "finished and resumes what they did not", file=sys.stderr)
    if not (root / "table_accuracy.md").is_file():
        print(f"sweep: no finished run in {root} yet", file=sys.stderr)
        return 0
    print((root / "table_accuracy.md").read_text())
    print((root / "table_ece.md").read_text())
    print(f"results: {root}")
    return 0


if __name__ == "__main__":
    run_cli(main)
