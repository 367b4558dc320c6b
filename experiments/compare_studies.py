"""Pair the runs of two sweep studies that differ in one setting, and ask whether it moved them.

    python -m experiments.compare_studies results/precision-fp32 results/precision-bf16
    python -m experiments.compare_studies docs/results/cpu-smoke /tmp/cpu-smoke-other-machine --out /tmp/cmp

Two studies of ``experiments.sweep`` (same protocol, one setting changed: ``--amp bf16`` against
``--amp off``, another machine, another torch) hold runs of the same method, engine, sparsity and
seed.  Each such pair is two trainings from the same seed, so its difference B − A is the effect
of the changed setting plus the chaos that any change of floating-point summation order sets off.
The yardstick is the **seed noise** of study A: the standard deviation (ddof 1) of a metric over
A's seeds for that method, sparsity and predictor.  A setting leaves a metric *within seed
noise* when the mean paired difference is no larger than that standard deviation, i.e. changing
the setting moves the metric less than changing the seed does.

Output in ``--out`` (default ``B/vs-<A's name>``):

  paired.csv      one row per pair: both runs' accuracy, ECE, NLL, their difference, compute dtypes
  comparison.md   per method, sparsity and predictor: mean ± std of the paired differences against
                  A's seed noise, and the verdict
  comparison.png  B against A for accuracy, ECE and NLL, one point per pair, with the diagonal
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from cigl_bayes.runs import atomic_save_figure, atomic_write_bytes, atomic_write_csv

from .cli import ArgumentParser, run_cli
from .sweep import study_rows

METRICS = ("accuracy", "ece", "nll")
PAIR_KEY = ("method", "engine", "sparsity", "seed", "predictor")
# accuracy and ECE are shown in percentage points, NLL in nats
SCALE = {"accuracy": 100.0, "ece": 100.0, "nll": 1.0}
UNIT = {"accuracy": "pp", "ece": "pp", "nll": "nats"}


def study_runs(study: Path) -> list[dict]:
    """Rows of every finished run of ``study`` (both engines), as :func:`experiments.sweep.study_rows`."""
    if not (study / "runs").is_dir():
        raise FileNotFoundError(f"{study} is not a sweep study: it has no runs/ folder")
    return [*study_rows(study / "runs", "plain"), *study_rows(study / "runs", "svi")]


def pair_runs(a_rows: list[dict], b_rows: list[dict]) -> list[dict]:
    """One row per (method, engine, sparsity, seed, predictor) present in both studies: A's and B's
    metrics and their difference ``delta_<metric>`` = B − A."""
    b_index = {tuple(r[k] for k in PAIR_KEY): r for r in b_rows}
    pairs = []
    for a in a_rows:
        b = b_index.get(tuple(a[k] for k in PAIR_KEY))
        if b is None:
            continue
        row = {k: a[k] for k in PAIR_KEY}
        row.update({"a_compute_dtype": a.get("compute_dtype"), "b_compute_dtype": b.get("compute_dtype")})
        for m in METRICS:
            row.update({f"a_{m}": a[m], f"b_{m}": b[m], f"delta_{m}": b[m] - a[m]})
        pairs.append(row)
    return pairs


def _std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def noise_summary(pairs: list[dict], a_rows: list[dict]) -> list[dict]:
    """Per (method, engine, sparsity, predictor): the paired differences' mean and std, study A's
    seed standard deviation of each metric (over all of A's seeds of that group, paired or not),
    and ``within_noise_<metric>``: |mean difference| ≤ A's seed std (None with fewer than 2 seeds)."""
    group = ("method", "engine", "sparsity", "predictor")
    seeds_of_a: dict[tuple, list[dict]] = defaultdict(list)
    for r in a_rows:
        seeds_of_a[tuple(r[k] for k in group)].append(r)
    by_group: dict[tuple, list[dict]] = defaultdict(list)
    for p in pairs:
        by_group[tuple(p[k] for k in group)].append(p)
    summary = []
    for key, ps in sorted(by_group.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][3])):
        entry = dict(zip(group, key, strict=True))
        entry.update({"pairs": len(ps), "seeds_a": len(seeds_of_a[key])})
        for m in METRICS:
            deltas = [p[f"delta_{m}"] for p in ps]
            noise = _std([r[m] for r in seeds_of_a[key]])
            mean = float(np.mean(deltas))
            entry.update({f"delta_{m}_mean": mean, f"delta_{m}_std": _std(deltas), f"seed_std_{m}": noise,
                          f"within_noise_{m}": None if math.isnan(noise) else bool(abs(mean) <= noise)})
        summary.append(entry)
    return summary


def _pm(mean: float, std: float, scale: float, digits: int) -> str:
    text = f"{mean * scale:+.{digits}f}"
    return text if math.isnan(std) else f"{text} ± {std * scale:.{digits}f}"


def comparison_table(summary: list[dict], a_name: str, b_name: str) -> str:
    digits = {"accuracy": 2, "ece": 2, "nll": 3}
    head = " | ".join(f"Δ {m} ({UNIT[m]}) | seed std of A" for m in METRICS)
    lines = [f"# {b_name} against {a_name}", "",
             f"Paired runs (same method, engine, sparsity, seed, predictor); Δ = {b_name} − {a_name}, mean ± std "
             f"over the pairs.  *Seed std of A*: the standard deviation over {a_name}'s seeds.  Verdict: "
             "**within** when |mean Δ| ≤ that std for accuracy, ECE and NLL alike, else the metrics outside it.",
             "", f"| method | sparsity | predictor | pairs | {head} | verdict |",
             "|---|---|---|---|" + "---|---|" * len(METRICS) + "---|"]
    for e in summary:
        cells = []
        for m in METRICS:
            cells += [_pm(e[f"delta_{m}_mean"], e[f"delta_{m}_std"], SCALE[m], digits[m]),
                      "–" if math.isnan(e[f"seed_std_{m}"]) else f"{e[f'seed_std_{m}'] * SCALE[m]:.{digits[m]}f}"]
        verdicts = [e[f"within_noise_{m}"] for m in METRICS]
        if any(v is None for v in verdicts):
            verdict = f"– ({e['seeds_a']} seed of A: no noise estimate)"
        elif all(verdicts):
            verdict = "**within**"
        else:
            verdict = "outside: " + ", ".join(m for m, v in zip(METRICS, verdicts, strict=True) if not v)
        lines.append(f"| {e['method']} | {e['sparsity']:g} | {e['predictor']} | {e['pairs']} | "
                     + " | ".join(cells) + f" | {verdict} |")
    return "\n".join(lines) + "\n"


def plot_pairs(pairs: list[dict], a_name: str, b_name: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 4))
    series = sorted({(p["method"], p["sparsity"], p["predictor"]) for p in pairs})
    for ax, m in zip(axes, METRICS, strict=True):
        for method, sparsity, predictor in series:
            ps = [p for p in pairs if (p["method"], p["sparsity"], p["predictor"]) == (method, sparsity, predictor)]
            ax.scatter([p[f"a_{m}"] * SCALE[m] for p in ps], [p[f"b_{m}"] * SCALE[m] for p in ps], s=25,
                       label=f"{method} s={sparsity:g} ({predictor})")
        values = [p[f"{side}_{m}"] * SCALE[m] for p in pairs for side in "ab"]
        lo, hi = min(values), max(values)
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=0.8, label="B = A")
        unit = {"pp": "%", "nats": "nats"}[UNIT[m]]
        ax.set_xlabel(f"{m} of {a_name} ({unit})")
        ax.set_ylabel(f"{m} of {b_name} ({unit})")
        ax.set_title(f"test {m}: one point per seed")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Same seeds, one setting changed: {b_name} against {a_name}")
    atomic_save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m experiments.compare_studies", description=__doc__.split("\n")[0],
                       epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study_a", help="the reference study (its seeds give the noise yardstick)")
    p.add_argument("study_b", help="the study with the changed setting")
    p.add_argument("--out", default=None, help="output folder (default: STUDY_B/vs-<STUDY_A's name>)")
    args = p.parse_args(argv)
    a_dir, b_dir = Path(args.study_a), Path(args.study_b)
    a_rows, b_rows = study_runs(a_dir), study_runs(b_dir)
    pairs = pair_runs(a_rows, b_rows)
    if not pairs:
        raise ValueError(f"no finished run of {a_dir} has a partner (same method, engine, sparsity, seed) in {b_dir}")
    out = Path(args.out) if args.out else b_dir / f"vs-{a_dir.name}"
    out.mkdir(parents=True, exist_ok=True)
    summary = noise_summary(pairs, a_rows)
    table = comparison_table(summary, a_dir.name, b_dir.name)
    atomic_write_csv(pairs, out / "paired.csv")
    atomic_write_bytes(table.encode(), out / "comparison.md")
    plot_pairs(pairs, a_dir.name, b_dir.name, out / "comparison.png")
    print(table)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
