"""Grid of methods × sparsities × seeds, then the paper's tables and plots.

    python -m experiments.sweep --protocol cpu-smoke                       # minutes on 2 CPU cores
    python -m experiments.sweep --protocol gpu-short --sparsities 0.9 0.95 --seeds 0 1 2
    python -m experiments.sweep --protocol paper --methods dense rigl cigl --sparsities 0.8 0.9 0.95 0.99

Methods are the trainer's (dense static set rigl cigl cigl-no-rm cigl-no-wma rigl-wdp rigl-mcdp)
plus the baselines of paper Fig. 4 as ``rigl+mixup`` (α = 0.2) and ``rigl+ls`` (ε = 0.1); RigL
with temperature scaling is read from every rigl run (``rigl+ts``, no extra training).  Dense
runs once per seed.  Finished runs are skipped and unfinished ones resume, so an interrupted
sweep continues where it stopped.  Output in ``results/<study>/``: runs.csv (one row per run),
summary.csv/json (mean ± std over seeds), table_accuracy.md (Table 1), table_ece.md (Table 3,
marking ≥ 15% ECE reduction vs RigL), ablations.md, baselines.md, and the plots
accuracy_vs_sparsity.png, ece_vs_sparsity.png (Fig. 1c), reliability_dense_vs_sparse.png
(Fig. 1a–b) and baselines.png (Fig. 4).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cigl_bayes import metrics
from cigl_bayes.config import METHODS, RESUME_FREE_FIELDS, TrainConfig
from cigl_bayes.runs import atomic_save_figure, atomic_write_bytes, atomic_write_csv, atomic_write_json
from inference.training import run

from .cli import ArgumentParser, add_host_allocator_argument, apply_host_allocator, run_cli

CPU_STUDY_EPOCHS = 16
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
    "cpu-study": {"config": {"model": "wrn-22-2", "epochs": CPU_STUDY_EPOCHS,
                             "lr_schedule": "cosine-window"},
                  "methods": ["rigl", "cigl", "cigl-keep0.99"], "sparsities": [0.95], "seeds": [0, 1, 2]},
    "cpu-smoke": {"config": {"model": "small-cnn", "epochs": 6, "subset": 5000, "test_subset": 2000,
                             "batch_size": 64, "delta_t": 20, "log_every": 10},
                  "methods": ["dense", "rigl", "cigl"], "sparsities": [0.9, 0.95], "seeds": [0, 1]},
}
BASELINES = {"rigl+mixup": ("rigl", {"mixup": 0.2}), "rigl+ls": ("rigl", {"label_smoothing": 0.1})}
ABLATIONS = ["rigl", "cigl-no-rm", "cigl-no-wma", "cigl"]


def method_spec(name: str) -> tuple[str, dict]:
    """Sweep method name → (trainer method, extra config).

    ``<method>-keep<k>`` runs a random-mask method at keep probability k (e.g. ``cigl-keep0.99``,
    the official code's value; plain ``cigl`` uses the library default)."""
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


def rows_of(result: dict, method: str, engine: str) -> list[dict]:
    """One row per reported predictor variant of a finished run: the method's output, and for
    rigl also its temperature-scaled output (``rigl+ts``)."""
    out = result["output_predictor"]
    variants = [(method, out)]
    if method == "rigl" and "temperature_scaled" in result["test"]:
        variants.append(("rigl+ts", "temperature_scaled"))
    return [{"method": name, "engine": engine, "sparsity": result["sparsity_target"], "seed": result["seed"],
             "predictor": pred, **{k: result["test"][pred][k] for k in ("accuracy", "ece", "nll", "brier")}}
            for name, pred in variants]


def aggregate(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["method"], r["engine"], r["sparsity"])].append(r)
    summary = []
    for (method, engine, sparsity), rs in sorted(groups.items(), key=lambda kv: (kv[0][2], kv[0][0])):
        entry = {"method": method, "engine": engine, "sparsity": sparsity, "seeds": len(rs)}
        for k in ("accuracy", "ece", "nll", "brier"):
            values = np.array([r[k] for r in rs])
            entry[f"{k}_mean"] = float(values.mean())
            entry[f"{k}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        summary.append(entry)
    return summary


def _cell(entry: dict | None, key: str, scale: float = 100.0) -> str:
    if entry is None:
        return "–"
    return f"{entry[f'{key}_mean'] * scale:.2f} ± {entry[f'{key}_std'] * scale:.2f}"


def pivot_table(summary: list[dict], key: str, methods: list[str], mark_vs_rigl: bool = False) -> str:
    """Methods × sparsities, mean ± std (in %); optionally mark ECE ≥ 15% lower than RigL's."""
    sparsities = sorted({e["sparsity"] for e in summary if e["sparsity"] > 0})
    index = {(e["method"], e["sparsity"]): e for e in summary}
    lines = ["| method | " + " | ".join(f"{s:g}" for s in sparsities) + " |", "|---|" + "---|" * len(sparsities)]
    for m in methods:
        cells = []
        for s in sparsities:
            e = index.get((m, s)) or index.get((m, 0.0))
            text = _cell(e, key)
            rigl = index.get(("rigl", s))
            if mark_vs_rigl and e is not None and rigl is not None and m != "rigl" and e["sparsity"] > 0:
                cut = 1 - e[f"{key}_mean"] / rigl[f"{key}_mean"] if rigl[f"{key}_mean"] > 0 else 0.0
                text += f" **({-cut:+.0%})**" if cut >= 0.15 else f" ({-cut:+.0%})"
            cells.append(text)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_vs_sparsity(summary: list[dict], key: str, label: str, path: Path) -> None:
    """Metric versus sparsity per method (x: −log10(1 − sparsity), so 0.9, 0.99, 0.999 are evenly
    spaced as in the paper's Fig. 1c); dense as a horizontal line."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    by_method: dict[str, list[dict]] = defaultdict(list)
    for e in summary:
        by_method[e["method"]].append(e)
    for m, es in sorted(by_method.items()):
        es = sorted(es, key=lambda e: e["sparsity"])
        if all(e["sparsity"] == 0 for e in es):
            ax.axhline(es[0][f"{key}_mean"], color="grey", ls=":", label=m)
            continue
        x = [-math.log10(1 - e["sparsity"]) for e in es]
        ax.errorbar(x, [e[f"{key}_mean"] for e in es], yerr=[e[f"{key}_std"] for e in es], marker="o", capsize=3,
                    label=m)
    ticks = sorted({e["sparsity"] for e in summary if e["sparsity"] > 0})
    ax.set_xticks([-math.log10(1 - s) for s in ticks], [f"{s:g}" for s in ticks])
    ax.set_xlabel("sparsity")
    ax.set_ylabel(label)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    atomic_save_figure(fig, path)


def plot_reliability_dense_vs_sparse(root: Path, rows: list[dict], engine: str, out: Path) -> None:
    """Fig. 1a–b: reliability of dense and of the sparsest rigl and cigl runs (seed 0 or the first)."""
    chosen = {}
    sparse = sorted({r["sparsity"] for r in rows if r["sparsity"] > 0})
    sparsest = sparse[-1] if sparse else None
    for method, s in (("dense", 0.0), ("rigl", sparsest), ("cigl", sparsest)):
        seeds = sorted(r["seed"] for r in rows if r["method"] == method and r["sparsity"] == s)
        if seeds:
            folder = run_dir(root, method, s, seeds[0], engine)
            if not (folder / "predictions.npz").exists():  # finished on another machine: small files only
                continue
            result = json.loads((folder / "metrics.json").read_text())
            with np.load(folder / "predictions.npz") as z:
                probs = z[result["output_predictor"]]
                labels = z["labels"]
            chosen[f"{method} (s={s:g})"] = metrics.reliability_data(probs, labels, from_logits=False)
    if chosen:
        metrics.plot_reliability_diagram(chosen, out, title="dense vs sparse")


def plot_baselines(summary: list[dict], methods: list[str], path: Path) -> None:
    import matplotlib.pyplot as plt

    sparsities = sorted({e["sparsity"] for e in summary if e["sparsity"] > 0})
    index = {(e["method"], e["sparsity"]): e for e in summary}
    present = [m for m in methods if any((m, s) in index for s in sparsities)]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    width = 0.8 / max(1, len(present))
    for i, m in enumerate(present):
        xs = [j + i * width for j, s in enumerate(sparsities) if (m, s) in index]
        es = [index[(m, s)] for s in sparsities if (m, s) in index]
        ax.bar(xs, [e["ece_mean"] for e in es], width, yerr=[e["ece_std"] for e in es], capsize=2, label=m)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(sparsities))], [f"{s:g}" for s in sparsities])
    ax.set_xlabel("sparsity")
    ax.set_ylabel("ECE")
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


def study_rows(runs_root: Path, engine: str) -> list[dict]:
    """Rows of every finished run of ``engine`` under ``runs_root`` (folder names from :func:`run_dir`)."""
    rows = []
    for folder in sorted(runs_root.glob("*")) if runs_root.is_dir() else []:
        match = RUN_NAME.match(folder.name)
        if not match or match["engine"] != engine:
            continue
        try:
            result = json.loads((folder / "metrics.json").read_text())
        except (OSError, ValueError):
            continue
        if result.get("completed"):
            rows += rows_of(result, match["method"], engine)
    return rows


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
    atomic_write_bytes(("# Paired differences versus RigL (same seed)\n\n" + paired_table(rows) + "\n").encode(),
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
    plot_vs_sparsity(summary, "accuracy", "test accuracy", root / "accuracy_vs_sparsity.png")
    plot_vs_sparsity(summary, "ece", "ECE (15 bins)", root / "ece_vs_sparsity.png")
    plot_reliability_dense_vs_sparse(root / "runs", rows, engine, root / "reliability_dense_vs_sparse.png")
    plot_baselines(summary, baselines, root / "baselines.png")


def paired_table(rows: list[dict]) -> str:
    """Per seed and sparsity: each method's ECE and accuracy minus RigL's (percentage points)."""
    index = {(r["method"], r["sparsity"], r["seed"]): r for r in rows}
    lines = ["| method | sparsity | seed | ΔECE (pp) | ΔECE / RigL's ECE | Δaccuracy (pp) |",
             "|---|---|---|---|---|---|"]
    for (method, sparsity, seed), r in sorted(index.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
        rigl = index.get(("rigl", sparsity, seed))
        if method == "rigl" or rigl is None or sparsity == 0:
            continue
        d_ece, d_acc = r["ece"] - rigl["ece"], r["accuracy"] - rigl["accuracy"]
        rel = f"{d_ece / rigl['ece']:+.0%}" if rigl["ece"] > 0 else "–"
        lines.append(f"| {method} | {sparsity:g} | {seed} | {100 * d_ece:+.2f} | {rel} | {100 * d_acc:+.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m experiments.sweep", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="cpu-smoke")
    p.add_argument("--study", default=None, help="results/<study>/ (default: the protocol name)")
    p.add_argument("--results", default="results", help="parent folder of studies")
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--sparsities", nargs="+", type=float, default=None)
    p.add_argument("--seeds", nargs="+", type=int, default=None)
    p.add_argument("--engine", choices=["plain", "svi"], default="plain")
    p.add_argument("--epochs", type=int, default=None, help="override the protocol's epochs")
    p.add_argument("--subset", type=int, default=None, help="override the protocol's training subset")
    p.add_argument("--test-subset", type=int, default=None, help="evaluate on this many test images")
    p.add_argument("--model", default=None, help="override the protocol's model")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    add_host_allocator_argument(p)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    proto = PROTOCOLS[args.protocol]
    methods = args.methods or proto["methods"]
    sparsities = args.sparsities or proto["sparsities"]
    seeds = args.seeds if args.seeds is not None else proto["seeds"]
    check_distinct(methods, sparsities, seeds)
    cells = grid(methods, sparsities, seeds)  # validates method names
    overrides = dict(proto["config"], device=args.device, data_dir=args.data_dir)
    for name in ("epochs", "subset", "test_subset", "model"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    configs = []
    for method, sparsity, seed in cells:
        base, extra = method_spec(method)
        cfg = TrainConfig(**{**overrides, **extra}, method=base, engine=args.engine, sparsity=sparsity, seed=seed)
        cfg.validate()  # every cell checked before any training starts
        configs.append((method, sparsity, seed, cfg))

    apply_host_allocator(args)
    root = Path(args.results) / (args.study or args.protocol)
    runs_root = root / "runs"
    for method, sparsity, seed, cfg in tqdm(configs, desc=f"sweep {root.name}", unit="run",
                                            disable=not args.progress):
        folder = run_dir(runs_root, method, sparsity, seed, args.engine)
        if finished_result(folder, cfg) is None:
            run(cfg, folder, progress=args.progress)
        # after every run, over every finished run of the study (earlier invocations and machines too)
        rows = study_rows(runs_root, args.engine)
        shown = list(dict.fromkeys([*methods, *(r["method"] for r in rows if r["method"] != "rigl+ts")]))
        write_reports(root, rows, shown, sorted({r["seed"] for r in rows}), args.protocol, args.engine, overrides)
    print((root / "table_accuracy.md").read_text())
    print((root / "table_ece.md").read_text())
    print(f"results: {root}")
    return 0


if __name__ == "__main__":
    run_cli(main)
