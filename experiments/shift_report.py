"""Calibration under dataset shift and out-of-distribution detection, for every predictor of a run.

    python -m experiments.shift_report runs/rigl runs/cigl                  # → each RUN_DIR/shift/
    python -m experiments.shift_report runs/rigl runs/cigl --out docs/results/shift   # + a comparison

For each finished run it builds (once, then from the cache) the CIFAR-10-C corruptions at
severities 1–5 of a seeded test subset and the offline OOD sets (``cigl_bayes.corruptions``,
``cigl_bayes.ood``; ``docs/shift.md``), then scores every predictor — final, wma,
temperature_scaled, predictive, mc-z, swag (those the run has) — as Ovadia et al. (NeurIPS 2019) do:

  shift.csv     accuracy, ECE, NLL, Brier per predictor, corruption (family) and severity (0 = clean)
  ood.csv       AUROC, AUPR, FPR@95%TPR per predictor, OOD set and score (max-probability,
                predictive entropy, and mutual information for predictors with draws), with the
                score's mean on the clean test subset (mean_in) and on the OOD set (mean_out)
  shift.json    all of it, with timings and the sets' sizes
  ece_vs_severity.png, accuracy_vs_severity.png   box plots over the corruptions per severity
  ood_scores.png   histograms of predictive entropy, in-distribution against each OOD set
  examples.png     one test image under every corruption at severity 3, and the OOD sets

With several runs and ``--out``, comparison.md/.csv put the runs side by side.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cigl_bayes import corruptions as corruption_lib
from cigl_bayes import metrics
from cigl_bayes import ood as ood_lib
from cigl_bayes.data import load_dataset
from cigl_bayes.inference import load_run
from cigl_bayes.runs import (
    RunFolderLock,
    atomic_save_figure,
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    check_out_dir,
)
from cigl_bayes.shift import ShiftSets, build_shift_sets

from .cli import ArgumentParser, check_run_folders, run_cli

FAMILY_OF = {name: family for family, names in corruption_lib.FAMILIES.items() for name in names}
PREDICTOR_ORDER = ("final", "wma", "temperature_scaled", "predictive", "mc-z", "swag")


def score_names(draws: torch.Tensor | None) -> tuple[str, ...]:
    """Mutual information needs at least two weight draws (with one it is 0 everywhere)."""
    has_draws = draws is not None and draws.shape[0] >= 2
    return ("max_prob", "entropy", "mutual_information") if has_draws else ("max_prob", "entropy")


def uncertainty(probs: torch.Tensor, draws: torch.Tensor | None, score: str) -> torch.Tensor:
    """Per-input OOD score, higher = more uncertain: 1 − max p, H[p̄], or I(y; w) = H[p̄] − mean H[p_k]."""
    def entropy(p):
        return -(p * p.clamp_min(1e-12).log()).sum(-1)

    if score == "max_prob":
        return 1.0 - probs.max(-1).values
    if score == "entropy":
        return entropy(probs)
    return (entropy(probs) - entropy(draws).mean(0)).clamp_min(0.0)


def predictions(run, images: np.ndarray, draws: int,
                progress: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """{predictor: (probs (N, C), per-draw probs (K, N, C) or None)} for every predictor the run has."""
    names = ["final", "mc-z"] + (["wma"] if run.wma is not None or run.samples else []) + \
        (["predictive"] if run.samples else []) + (["swag"] if len(run.samples) >= 2 else [])
    names = [n for n in PREDICTOR_ORDER if n in names]
    seeds = {"mc-z": run.config.seed + 100, "swag": run.config.seed + 200}
    out = {}
    for name in tqdm(names, desc=f"predictors {run.run_dir.name}", disable=not progress):
        k = None if name == "predictive" else draws
        pred = run.predict(images, name, k if name in ("mc-z", "swag", "predictive") else None,
                           seed=seeds.get(name, 0))
        out[name] = (pred.probs, pred.draws)
    temperature = (run.metrics or {}).get("temperature")
    base = (run.metrics or {}).get("output_predictor", "wma" if "wma" in out else "final")
    # T was fitted on the validation split for the run's output predictor; it is reused only where
    # that predictor is one network (final, wma), whose outputs here are the ones T was fitted on
    if temperature and base in ("final", "wma") and base in out:
        logits = out[base][0].clamp_min(1e-12).log()
        out["temperature_scaled"] = (torch.softmax(logits / temperature, -1), None)
    return {n: out[n] for n in PREDICTOR_ORDER if n in out}


def analyse(run_dir: Path, args, built: dict[str, ShiftSets]) -> tuple[dict, ShiftSets]:
    """Every predictor of one run on the clean, corrupted and OOD sets (``built``: sets per data set)."""
    run = load_run(run_dir, data_dir=args.data_dir, device=args.device, amp=args.amp)
    if args.bn_batches is not None:
        run.bn_batches = args.bn_batches
    if run.config.dataset not in built:
        _, test = load_dataset(run.config.dataset, run.data_dir or run.config.data_dir)
        built[run.config.dataset] = build_shift_sets(test, images=args.images, ood_size=args.ood_size,
                                                     corruption_names=tuple(args.corruptions),
                                                     ood_names=tuple(args.ood), progress=args.progress)
    sets = built[run.config.dataset]
    blocks = [("clean", 0, sets.clean)] + [(n, s, x) for (n, s), x in sets.corrupted.items()] + \
        [(f"ood:{n}", -1, x) for n, x in sets.ood.items()]
    offsets = np.cumsum([0] + [len(x) for _, _, x in blocks])
    start = time.perf_counter()
    preds = predictions(run, np.concatenate([x for _, _, x in blocks]), args.draws, args.progress)
    score_seconds = time.perf_counter() - start
    labels = torch.as_tensor(sets.labels, dtype=torch.long)
    shift_rows, ood_rows = [], []
    for name, (probs, draws) in preds.items():
        def part(i, tensor):
            return None if tensor is None else tensor[..., offsets[i]:offsets[i + 1], :]

        clean_in = {}
        for i, (corruption, severity, _) in enumerate(blocks):
            p = part(i, probs)
            if severity >= 0:
                m = metrics.calibration_metrics(p.clamp_min(1e-12).log(), labels, from_logits=True)
                shift_rows.append({"run": run_dir.name, "method": run.config.method, "predictor": name,
                                   "corruption": corruption, "family": FAMILY_OF.get(corruption, "clean"),
                                   "severity": severity, **{k: m[k] for k in ("accuracy", "ece", "nll", "brier")}})
                if severity == 0:
                    clean_in = {s: uncertainty(p, part(i, draws), s) for s in score_names(draws)}
                continue
            for score, in_scores in clean_in.items():
                out_scores = uncertainty(p, part(i, draws), score)
                ood_rows.append({"run": run_dir.name, "method": run.config.method, "predictor": name,
                                 "ood_set": corruption.split(":", 1)[1], "score": score,
                                 **metrics.ood_detection(in_scores, out_scores),
                                 "mean_in": float(in_scores.mean()), "mean_out": float(out_scores.mean())})
    report = {"run": str(run_dir), "method": run.config.method, "sparsity": run.config.sparsity,
              "compute_dtype": run.compute_dtype, "mc_z_keep": run.keep,
              "images_per_set": len(sets.clean), "ood_images_per_set": args.ood_size,
              "corruptions": list(args.corruptions), "ood_sets": list(args.ood),
              "forward_passes": {n: 1 if d is None else int(d.shape[0]) for n, (_, d) in preds.items()},
              "build_seconds": sets.build_seconds, "sets_from_cache": sets.from_cache,
              "score_seconds": score_seconds, "shift": shift_rows, "ood": ood_rows,
              "_entropy": {n: {b[0]: uncertainty(part_of(p, offsets, i), None, "entropy").numpy()
                               for i, b in enumerate(blocks) if b[1] <= 0}
                           for n, (p, _) in preds.items()}}
    return report, sets


def part_of(tensor: torch.Tensor, offsets, i: int) -> torch.Tensor:
    return tensor[offsets[i]:offsets[i + 1]]


def severity_table(rows: list[dict], key: str) -> list[dict]:
    """Mean of ``key`` over the corruptions, per predictor and severity (0 = clean)."""
    out = []
    for predictor in dict.fromkeys(r["predictor"] for r in rows):
        row = {"predictor": predictor}
        for s in (0, *corruption_lib.SEVERITIES):
            vals = [r[key] for r in rows if r["predictor"] == predictor and r["severity"] == s]
            row[f"s{s}"] = float(np.mean(vals))
        out.append(row)
    return out


def plot_vs_severity(rows: list[dict], key: str, label: str, path: Path, title: str) -> None:
    """Ovadia et al.'s plot: per severity, a box over the corruptions for each predictor."""
    import matplotlib.pyplot as plt

    predictors = list(dict.fromkeys(r["predictor"] for r in rows))
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(predictors)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, predictor in enumerate(predictors):
        color = colors[j % len(colors)]
        offset = (j - (len(predictors) - 1) / 2) * width
        clean = [r[key] for r in rows if r["predictor"] == predictor and r["severity"] == 0]
        ax.plot([offset] * len(clean), clean, "o", color=color, label=predictor)  # one value: a dot
        data = [[r[key] for r in rows if r["predictor"] == predictor and r["severity"] == s]
                for s in corruption_lib.SEVERITIES]
        box = ax.boxplot(data, positions=np.arange(1, 6) + offset, widths=width * 0.9, patch_artist=True,
                         showfliers=False, medianprops={"color": "black"})
        for patch in box["boxes"]:
            patch.set_facecolor(color)
            patch.set_alpha(0.7)
    ax.set_xticks(np.arange(6), ["clean"] + [str(s) for s in corruption_lib.SEVERITIES])
    ax.set_xlabel("corruption severity (boxes: quartiles over the corruptions, black line the median; "
                  "clean: one dot)")
    ax.set_ylabel(label)
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=3, loc="upper left")
    atomic_save_figure(fig, path)


def plot_ood_scores(entropy: dict, path: Path, title: str) -> None:
    """Histograms of predictive entropy: the clean test subset against each OOD set, per predictor."""
    import matplotlib.pyplot as plt

    predictors = [p for p in ("wma", "final", "predictive", "swag") if p in entropy][:2]
    sets = [k for k in next(iter(entropy.values())) if k.startswith("ood:")]
    fig, axes = plt.subplots(len(predictors), len(sets), figsize=(3.2 * len(sets), 2.6 * len(predictors)),
                             squeeze=False, sharex=True)
    for i, predictor in enumerate(predictors):
        for j, name in enumerate(sets):
            ax = axes[i, j]
            bins = np.linspace(0, np.log(10), 30)
            ax.hist(entropy[predictor]["clean"], bins=bins, alpha=0.6, density=True, label="CIFAR-10 test")
            ax.hist(entropy[predictor][name], bins=bins, alpha=0.6, density=True, label=name[4:])
            ax.set_title(f"{predictor} · {name[4:]}", fontsize=9)
            if i == len(predictors) - 1:
                ax.set_xlabel("predictive entropy (nats)")
            if j == 0:
                ax.set_ylabel("density")
            ax.legend(fontsize=7)
    fig.suptitle(title)
    atomic_save_figure(fig, path)


def plot_examples(sets: ShiftSets, path: Path) -> None:
    import matplotlib.pyplot as plt

    panels = [("clean", sets.clean[0])] + [(n.replace("_", " "), sets.corrupted[(n, 3)][0])
                                           for n in dict.fromkeys(n for n, _ in sets.corrupted)]
    panels += [(f"OOD: {n}", x[0]) for n, x in sets.ood.items()]
    cols = 8
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, img) in zip(axes.flat, panels):
        ax.imshow(img)
        ax.set_title(name, fontsize=7)
    fig.suptitle("The first test image under each corruption at severity 3, and the OOD sets")
    atomic_save_figure(fig, path)


def _md_table(rows: list[dict], cols: list[str]) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
                     + ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows])


def write_run(report: dict, sets: ShiftSets, out: Path) -> None:
    entropy = report.pop("_entropy")
    name = Path(report["run"]).name
    atomic_write_json(report, out / "shift.json")
    atomic_write_csv(report["shift"], out / "shift.csv")
    atomic_write_csv(report["ood"], out / "ood.csv")
    title = f"{name}: {report['method']}, sparsity {report['sparsity']}, {report['images_per_set']} images per set"
    plot_vs_severity(report["shift"], "ece", "ECE (15 bins)", out / "ece_vs_severity.png", f"ECE under shift · {title}")
    plot_vs_severity(report["shift"], "accuracy", "accuracy", out / "accuracy_vs_severity.png",
                     f"Accuracy under shift · {title}")
    plot_ood_scores(entropy, out / "ood_scores.png", f"OOD scores · {title}")
    plot_examples(sets, out / "examples.png")


def comparison(reports: list[dict]) -> tuple[list[dict], str]:
    """One row per run and predictor: mean ECE/accuracy per severity, and mean OOD AUROC by entropy."""
    rows = []
    for rep in reports:
        by_ece = {r["predictor"]: r for r in severity_table(rep["shift"], "ece")}
        by_acc = {r["predictor"]: r for r in severity_table(rep["shift"], "accuracy")}
        for predictor in by_ece:
            auroc = [r["auroc"] for r in rep["ood"] if r["predictor"] == predictor and r["score"] == "entropy"]
            rows.append({"run": Path(rep["run"]).name, "method": rep["method"], "predictor": predictor,
                         "passes": rep["forward_passes"].get(predictor, 1),
                         # mc-z draws Z at the run's keep (a run without Z: 1 − its method's default rate)
                         "keep": rep.get("mc_z_keep", "") if predictor == "mc-z" else "",
                         **{f"ece_{k}": v for k, v in by_ece[predictor].items() if k != "predictor"},
                         **{f"acc_{k}": v for k, v in by_acc[predictor].items() if k != "predictor"},
                         "ood_auroc_entropy": float(np.mean(auroc)) if auroc else float("nan")})
    cols = ["run", "predictor", "passes", "keep", *(f"ece_s{s}" for s in range(6)), "acc_s0", "acc_s5",
            "ood_auroc_entropy"]
    return rows, _md_table(rows, cols)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m experiments.shift_report", description=__doc__.split("\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("runs", nargs="+", type=Path, help="finished run folders (each gets RUN_DIR/shift/)")
    p.add_argument("--out", type=Path, default=None, help="folder for the comparison of several runs")
    p.add_argument("--images", type=int, default=500, help="test images per corrupted set (seeded subset)")
    p.add_argument("--ood-size", type=int, default=1000, help="images per OOD set")
    p.add_argument("--corruptions", nargs="+", default=list(corruption_lib.CORRUPTIONS),
                   help="CIFAR-10-C corruptions (default: all 15)")
    p.add_argument("--ood", nargs="+", default=list(ood_lib.OOD_SETS), help="OOD sets (default: all)")
    p.add_argument("--draws", type=int, default=4, help="draws of mc-z and swag (predictive: every sample)")
    p.add_argument("--bn-batches", type=int, default=None, help="training batches for BatchNorm (default: the run's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=("auto", "bf16", "off"), default=None,
                   help="precision of every forward pass, BatchNorm recomputation included (default: "
                        "the run's own --amp; off: float32).  Recorded as compute_dtype in shift.json")
    p.add_argument("--data-dir", default=None, help="data folder if it moved since training")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    for name in ("images", "ood_size", "draws"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(args, name)}")
    if args.bn_batches is not None and args.bn_batches < 1:
        raise ValueError(f"--bn-batches must be ≥ 1, got {args.bn_batches}")
    for given, known, what in ((args.corruptions, corruption_lib.CORRUPTIONS, "corruption"),
                               (args.ood, ood_lib.OOD_SETS, "OOD set")):
        unknown = [n for n in given if n not in known]
        if unknown:
            raise ValueError(f"unknown {what} {unknown[0]!r}; known: {', '.join(known)}")
        if len(set(given)) < len(given):
            raise ValueError(f"a {what} is given more than once")
    check_run_folders(args.runs)
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise NotADirectoryError(f"--out {args.out} is a file, not a folder")
    reports, built = [], {}
    for run_dir in args.runs:
        with RunFolderLock(check_out_dir(run_dir / "shift")):
            report, sets = analyse(run_dir, args, built)
            write_run(report, sets, run_dir / "shift")
        reports.append(report)
        print(f"{run_dir.name}: sets built in {report['build_seconds']:.0f} s"
              f"{' (cached)' if report['sets_from_cache'] else ''}, scored in {report['score_seconds']:.0f} s; "
              f"written to {run_dir / 'shift'}", file=sys.stderr)
    rows, table = comparison(reports)
    print(table)
    if args.out is not None:
        atomic_write_csv(rows, args.out / "comparison.csv")
        atomic_write_bytes((f"# Shift and OOD: {', '.join(r.name for r in args.runs)}\n\n{table}\n\n"
                            "ece_sK: mean ECE over the corruptions at severity K (s0: clean); acc_s0/acc_s5: "
                            "accuracy clean and at severity 5; ood_auroc_entropy: mean AUROC over the OOD sets, "
                            "scored by predictive entropy; passes: forward passes per input; keep: the keep "
                            "probability of mc-z's Z draws (mc-z rows only).\n").encode(),
                           args.out / "comparison.md")
        atomic_write_json([{k: v for k, v in r.items()} for r in reports], args.out / "shift.json")
    return 0


if __name__ == "__main__":
    run_cli(main)
