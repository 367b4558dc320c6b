"""Pair the runs of two sweep studies that differ in one setting, and ask whether it moved them.

    python -m experiments.compare_studies results/precision-fp32 results/precision-bf16
    python -m experiments.compare_studies docs/results/cpu-smoke /tmp/cpu-smoke-other-machine --out /tmp/cmp

Two studies of ``experiments.sweep`` (same protocol, one setting changed: ``--amp bf16`` against
``--amp off``, another machine, another torch) hold runs of the same method, engine, sparsity and
seed.  Each such pair is two trainings from the same seed, so its difference B − A is the effect
of the changed setting plus the chaos that any change of floating-point summation order sets off.
The yardstick is the **seed noise** of study A: the standard deviation (ddof 1) of a metric over
A's seeds for that method, sparsity and predictor.  A setting leaves a metric *within seed
noise* when the mean paired difference is no larger than that standard deviation: a threshold on
the size of the shift (at most one seed SD), not a significance test.

The changed setting may be the engine: ``--engines plain svi`` pairs A's plain-engine runs with
B's SVI-engine runs of the same method, sparsity and seed (a sweep keeps one engine per study):

    python -m experiments.compare_studies docs/results/cpu-study docs/results/cpu-study-svi --engines plain svi

Output in ``--out`` (default ``B/vs-<A's name>``, with ``--engines`` ``B/vs-<A's name>-<engine A>-to-<engine B>``):

  paired.csv      one row per pair: both runs' accuracy, ECE, NLL, their difference, compute dtypes
  comparison.md   per method, sparsity and predictor: mean ± std of the paired differences against
                  A's seed noise, and the verdict
  comparison.png  each pair's Δ for accuracy, ECE and NLL, the mean Δ and the band ±1 seed SD of A
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

from cigl_bayes.runs import atomic_save_figure, atomic_write_bytes, atomic_write_csv

from .cli import ArgumentParser, run_cli
from .study_runs import RUN_NAME, finished_runs, precision_of, rows_of

METRICS = ("accuracy", "ece", "nll")
PAIR_KEY = ("method", "engine", "sparsity", "seed", "predictor")
GROUP_KEY = ("method", "engine", "sparsity", "predictor")
# accuracy and ECE are shown in percentage points, NLL in nats
SCALE = {"accuracy": 100.0, "ece": 100.0, "nll": 1.0}
UNIT = {"accuracy": "pp", "ece": "pp", "nll": "nats"}
DIGITS = {"accuracy": 2, "ece": 2, "nll": 3}
NAME = {"accuracy": "accuracy", "ece": "ECE", "nll": "NLL"}


def study_runs(study: Path) -> list[dict]:
    """One row per predictor variant of every finished run of ``study`` (both engines; the rows of
    :func:`experiments.study_runs.rows_of`, with ``compute_dtype``, the run's ``folder`` and its
    ``test_fingerprint``).  A run whose metrics.json lacks a metric is named in the error."""
    if not study.is_dir() or not (study / "runs").is_dir():
        raise FileNotFoundError(f"{study} is not a sweep study: it has no runs/ folder")
    rows = []
    for engine in ("plain", "svi"):
        for folder, result in finished_runs(study / "runs", engine):
            try:
                variants = rows_of(result, RUN_NAME.match(folder.name)["method"], engine)
                for row in variants:
                    for m in METRICS:
                        row[m] = float(row[m])
            except (KeyError, TypeError) as err:
                raise ValueError(f"{folder}/metrics.json has no usable {err} for its predictors") from None
            extra = {"compute_dtype": precision_of(folder, result), "folder": folder.name,
                     "test_fingerprint": result.get("test_fingerprint")}
            rows += [{**row, **extra} for row in variants]
    return rows


def across_engines(a_rows: list[dict], b_rows: list[dict], a_engine: str, b_engine: str) -> tuple[list, list]:
    """Keep A's runs of ``a_engine`` and B's of ``b_engine``, both labelled ``"<a_engine>→<b_engine>"``, so
    that they pair by method, sparsity, seed and predictor: the engine is then the setting compared."""
    label = f"{a_engine}→{b_engine}"
    return ([{**r, "engine": label} for r in a_rows if r["engine"] == a_engine],
            [{**r, "engine": label} for r in b_rows if r["engine"] == b_engine])


def pair_runs(a_rows: list[dict], b_rows: list[dict]) -> list[dict]:
    """One row per (method, engine, sparsity, seed, predictor) present in both studies: A's and B's
    metrics and their difference ``delta_<metric>`` = B − A.  Runs scored on different test
    images (their ``test_fingerprint`` differs) cannot be paired and are refused."""
    b_index = {tuple(r[k] for k in PAIR_KEY): r for r in b_rows}
    pairs = []
    for a in a_rows:
        b = b_index.get(tuple(a[k] for k in PAIR_KEY))
        if b is None:
            continue
        if a.get("test_fingerprint") and b.get("test_fingerprint") and a["test_fingerprint"] != b["test_fingerprint"]:
            raise ValueError(f"runs {a.get('folder')} of the two studies were scored on different test images "
                             "(test_fingerprint differs): compare studies of the same protocol and test set")
        row = {k: a[k] for k in PAIR_KEY}
        row.update({"a_compute_dtype": a.get("compute_dtype"), "b_compute_dtype": b.get("compute_dtype"),
                    "a_folder": a.get("folder"), "b_folder": b.get("folder")})
        for m in METRICS:
            row.update({f"a_{m}": a[m], f"b_{m}": b[m], f"delta_{m}": b[m] - a[m]})
        pairs.append(row)
    return pairs


def _std(values: list[float]) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def noise_summary(pairs: list[dict], a_rows: list[dict]) -> list[dict]:
    """Per (method, engine, sparsity, predictor): the paired differences' mean and std, study A's
    seed standard deviation of each metric (over all of A's seeds of that group, paired or not),
    and ``within_noise_<metric>``: |mean difference| ≤ A's seed std.  It is None where that cannot
    be judged: fewer than 2 seeds of A, or a non-finite metric (a diverged run) in the group."""
    seeds_of_a: dict[tuple, list[dict]] = defaultdict(list)
    for r in a_rows:
        seeds_of_a[tuple(r[k] for k in GROUP_KEY)].append(r)
    by_group: dict[tuple, list[dict]] = defaultdict(list)
    for p in pairs:
        by_group[tuple(p[k] for k in GROUP_KEY)].append(p)
    summary = []
    for key, ps in sorted(by_group.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1], kv[0][3])):
        entry = dict(zip(GROUP_KEY, key, strict=True))
        entry.update({"pairs": len(ps), "seeds_a": len(seeds_of_a[key])})
        for m in METRICS:
            deltas = [p[f"delta_{m}"] for p in ps]
            seed_values = [r[m] for r in seeds_of_a[key]]
            noise = _std(seed_values)
            mean = float(np.mean(deltas))
            finite = all(math.isfinite(v) for v in [*deltas, *seed_values])
            low, high, p_value = _t_interval(deltas) if finite else (math.nan, math.nan, math.nan)
            entry.update({f"delta_{m}_mean": mean, f"delta_{m}_std": _std(deltas), f"seed_std_{m}": noise,
                          f"delta_{m}_ci_low": low, f"delta_{m}_ci_high": high, f"delta_{m}_p": p_value,
                          f"finite_{m}": finite,
                          f"within_noise_{m}": bool(abs(mean) <= noise) if finite and len(seed_values) > 1 else None})
        summary.append(entry)
    return summary


def _t_interval(deltas: list[float]) -> tuple[float, float, float]:
    """The paired differences' 95% Student-t interval (n − 1 degrees of freedom) and the two-sided
    p-value of mean 0; nan for fewer than 2 pairs (and p nan when the differences do not vary)."""
    n = len(deltas)
    if n < 2:
        return math.nan, math.nan, math.nan
    mean, sd = float(np.mean(deltas)), float(np.std(deltas, ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    p_value = float(stats.ttest_1samp(deltas, 0.0).pvalue) if sd > 0 else math.nan
    return mean - half, mean + half, p_value


def _interval_reading(e: dict) -> str:
    if any(math.isnan(e[f"delta_{m}_ci_low"]) for m in METRICS):
        return "– (fewer than 2 pairs, or a metric not finite)"
    moved = [NAME[m] for m in METRICS if e[f"delta_{m}_ci_low"] > 0 or e[f"delta_{m}_ci_high"] < 0]
    return "no detectable difference" if not moved else "differs: " + ", ".join(moved)


def _pm(mean: float, std: float, scale: float, digits: int) -> str:
    text = f"{mean * scale:+.{digits}f}"
    return text if math.isnan(std) else f"{text} ± {std * scale:.{digits}f}"


def _verdict(e: dict) -> str:
    if not all(e[f"finite_{m}"] for m in METRICS):
        return "– (a metric is not finite: " + ", ".join(NAME[m] for m in METRICS if not e[f"finite_{m}"]) + ")"
    if e["seeds_a"] < 2:
        return "– (1 seed of A: no seed SD)"
    outside = [m for m in METRICS if not e[f"within_noise_{m}"]]
    return "**within**" if not outside else "outside: " + ", ".join(NAME[m] for m in outside)


def comparison_table(summary: list[dict], a_name: str, b_name: str, notes: list[str] = (),
                     engines: tuple[str, str] | None = None) -> str:
    head = " | ".join(f"Δ {NAME[m]} ({UNIT[m]}) | seed SD of A, {NAME[m]}" for m in METRICS)
    paired = ("Paired runs (same method, engine, sparsity, seed, predictor)" if engines is None else
              f"A's {engines[0]}-engine runs paired with B's {engines[1]}-engine runs (same method, sparsity, "
              "seed, predictor)")
    lines = [f"# {b_name} against {a_name}", "",
             f"{paired}; Δ = {b_name} − {a_name}, mean ± std "
             f"over the pairs (for ECE and NLL, Δ < 0 means {b_name} is better).  *Seed SD of A*: the standard "
             f"deviation over {a_name}'s seeds.  Verdict: **within** when |mean Δ| ≤ one seed SD for accuracy, ECE "
             "and NLL alike — the setting shifts the metric less than one seed SD — else the metrics outside it.  "
             "A threshold on the size of the shift, not a significance test: with 2–3 seeds the SD itself is "
             "uncertain by about ±50%.", ""]
    lines += [f"* {n}" for n in notes]
    lines += ["", f"| method | engine | sparsity | predictor | pairs | {head} | verdict |",
              "|---|---|---|---|---|" + "---|---|" * len(METRICS) + "---|"]
    for e in summary:
        cells = []
        for m in METRICS:
            noise = e[f"seed_std_{m}"]
            cells += [_pm(e[f"delta_{m}_mean"], e[f"delta_{m}_std"], SCALE[m], DIGITS[m]),
                      "–" if math.isnan(noise) else f"{noise * SCALE[m]:.{DIGITS[m]}f}"]
        lines.append(f"| {e['method']} | {e['engine']} | {e['sparsity']:g} | {e['predictor']} | {e['pairs']} | "
                     + " | ".join(cells) + f" | {_verdict(e)} |")
    head = " | ".join(f"Δ {NAME[m]} ({UNIT[m]}), 95% interval | p" for m in METRICS)
    lines += ["", "Paired t-test of each mean Δ (95% Student-t interval, n − 1 degrees of freedom, two-sided p; "
              "uncorrected for the several metrics and groups): *no detectable difference* where every "
              "interval includes 0.", "",
              f"| method | engine | sparsity | predictor | pairs | {head} | reads |",
              "|---|---|---|---|---|" + "---|---|" * len(METRICS) + "---|"]
    for e in summary:
        cells = []
        for m in METRICS:
            low, high, p_value = (e[f"delta_{m}_{k}"] for k in ("ci_low", "ci_high", "p"))
            cells += ["–" if math.isnan(low) else
                      f"[{low * SCALE[m]:+.{DIGITS[m]}f}, {high * SCALE[m]:+.{DIGITS[m]}f}]",
                      "–" if math.isnan(p_value) else f"{p_value:.2f}"]
        lines.append(f"| {e['method']} | {e['engine']} | {e['sparsity']:g} | {e['predictor']} | {e['pairs']} | "
                     + " | ".join(cells) + f" | {_interval_reading(e)} |")
    return "\n".join(lines) + "\n"


def plot_pairs(pairs: list[dict], summary: list[dict], a_name: str, b_name: str, path: Path) -> None:
    """Each pair's Δ = B − A per group, the mean Δ, and the band ±1 seed SD of A: a mean inside the
    band is the verdict *within*."""
    import matplotlib.pyplot as plt

    labels = [f"{e['method']} ({e['engine']}, s={e['sparsity']:g})\n{e['predictor']}" for e in summary]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(1.2 + 1.6 * len(summary) * len(METRICS), 4.2), squeeze=False)
    for ax, m in zip(axes[0], METRICS, strict=True):
        for i, e in enumerate(summary):
            noise = e[f"seed_std_{m}"] * SCALE[m]
            if math.isfinite(noise):
                ax.add_patch(plt.Rectangle((i - 0.3, -noise), 0.6, 2 * noise, color="tab:green", alpha=0.2,
                                           label="±1 seed SD of A" if i == 0 else None))
            ds = [p[f"delta_{m}"] * SCALE[m] for p in pairs if all(p[k] == e[k] for k in GROUP_KEY)]
            ax.scatter([i] * len(ds), ds, s=18, color="tab:blue", label="one pair (same seed)" if i == 0 else None)
            ax.scatter([i], [e[f"delta_{m}_mean"] * SCALE[m]], marker="_", s=400, color="black",
                       label="mean Δ" if i == 0 else None)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(summary)), labels, fontsize=7)
        ax.set_xlim(-0.6, len(summary) - 0.4)
        ax.set_ylabel(f"Δ test {NAME[m]} = B − A ({UNIT[m]})")
        ax.set_title(f"test {NAME[m]}")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Same seeds, one setting changed: B = {b_name}, A = {a_name}", fontsize=10)
    fig.tight_layout()
    atomic_save_figure(fig, path)


def _display_names(a_dir: Path, b_dir: Path) -> tuple[str, str]:
    a, b = a_dir.resolve(), b_dir.resolve()
    if a.name != b.name:
        return a.name, b.name
    return f"{a.parent.name}/{a.name}", f"{b.parent.name}/{b.name}"


# config.json fields that are not a training setting (diagnostics, paths, logging), or that are reported
# on their own (precision, engine)
NOT_SETTINGS = frozenset({"seed", "data_dir", "download", "device", "amp", "dtype", "channels_last", "compile",
                          "log_every", "engine", "save_samples", "val_curves", "curve_bn_batches"})


def setting_differences(pairs: list[dict], a_dir: Path, b_dir: Path) -> dict[str, set[tuple]]:
    """Training settings (config.json) in which paired runs differ, besides precision and engine:
    ``{field: {(A's value, B's value), ...}}``.  A pair that differs in, say, ``epochs`` as well as in
    the setting under study mixes both effects; the comparison names every such field.  A field only
    one of the two configs records (written by another version) is not a difference it can see."""
    differing: dict[str, set[tuple]] = defaultdict(set)
    for pair in {(p["a_folder"], p["b_folder"]) for p in pairs}:
        configs = []
        for study, folder in zip((a_dir, b_dir), pair):
            try:
                configs.append(json.loads((study / "runs" / folder / "config.json").read_text()))
            except (OSError, ValueError):
                configs.append(None)
        if None in configs:
            continue
        a_cfg, b_cfg = configs
        for key in sorted((set(a_cfg) & set(b_cfg)) - NOT_SETTINGS):
            if a_cfg[key] != b_cfg[key]:
                differing[key].add((json.dumps(a_cfg.get(key)), json.dumps(b_cfg.get(key))))
    return dict(differing)


def _precisions(rows: list[dict]) -> str:
    counts: dict[str, int] = defaultdict(int)
    for r in {r["folder"]: r for r in rows}.values():
        counts[r.get("compute_dtype") or "not recorded"] += 1
    return ", ".join(f"{dtype} ({n} run{'' if n == 1 else 's'})" for dtype, n in sorted(counts.items()))


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m experiments.compare_studies", description=__doc__.split("\n")[0],
                       epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study_a", help="the reference study (its seeds give the noise yardstick)")
    p.add_argument("study_b", help="the study with the changed setting")
    p.add_argument("--out", default=None, help="output folder (default: STUDY_B/vs-<STUDY_A's name>, with --engines "
                                               "STUDY_B/vs-<STUDY_A's name>-<ENGINE_A>-to-<ENGINE_B>)")
    p.add_argument("--engines", nargs=2, choices=["plain", "svi"], metavar=("ENGINE_A", "ENGINE_B"), default=None,
                   help="pair A's runs of ENGINE_A with B's runs of ENGINE_B (the engine is the changed setting); "
                        "default: pair runs of the same engine")
    args = p.parse_args(argv)
    a_dir, b_dir = Path(args.study_a), Path(args.study_b)
    same_engines = args.engines is None or args.engines[0] == args.engines[1]
    if a_dir.resolve() == b_dir.resolve() and same_engines:
        raise ValueError(f"{a_dir} is compared with itself; give two different studies")
    a_rows, b_rows = study_runs(a_dir), study_runs(b_dir)
    if args.engines is not None:
        a_rows, b_rows = across_engines(a_rows, b_rows, *args.engines)
        for study, rows, engine in ((a_dir, a_rows, args.engines[0]), (b_dir, b_rows, args.engines[1])):
            if not rows:
                raise ValueError(f"{study} has no finished {engine}-engine run; check the order of the two studies "
                                 "and of --engines (ENGINE_A goes with the first study)")
    pairs = pair_runs(a_rows, b_rows)
    if not pairs:
        raise ValueError(f"no finished run of {a_dir} has a partner (same method, "
                         + ("engine" if args.engines is None else f"{args.engines[1]} engine for its {args.engines[0]}")
                         + f", sparsity, seed) in {b_dir}")
    a_name, b_name = _display_names(a_dir, b_dir)
    out_name = f"vs-{a_dir.resolve().name}"
    if args.engines is not None:
        a_name, b_name = f"{a_name} ({args.engines[0]})", f"{b_name} ({args.engines[1]})"
        out_name += f"-{args.engines[0]}-to-{args.engines[1]}"
    out = Path(args.out) if args.out else b_dir / out_name
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file, not a folder")
    keys = {tuple(p[k] for k in PAIR_KEY) for p in pairs}
    unpaired = {side: sorted({r["folder"] for r in rows if tuple(r[k] for k in PAIR_KEY) not in keys})
                for side, rows in (("A", a_rows), ("B", b_rows))}
    notes = [f"A = {a_dir} ran in {_precisions(a_rows)}; B = {b_dir} ran in {_precisions(b_rows)}."]
    differing = setting_differences(pairs, a_dir, b_dir)
    if differing:
        listed = "; ".join(f"{key} ({', '.join(f'A {va}, B {vb}' for va, vb in sorted(values))})"
                           for key, values in sorted(differing.items()))
        warning = (f"the paired runs also differ in {listed}: each difference mixes that change with the one "
                   "under study")
        print(f"compare_studies: warning: {warning}", file=sys.stderr)
        notes.append(f"**Warning:** {warning}.")
    notes += [f"Runs of {side} without a partner, left out: {', '.join(names)}."
              for side, names in unpaired.items() if names]
    out.mkdir(parents=True, exist_ok=True)
    summary = noise_summary(pairs, a_rows)
    table = comparison_table(summary, a_name, b_name, notes, args.engines)
    atomic_write_csv(pairs, out / "paired.csv")
    atomic_write_bytes(table.encode(), out / "comparison.md")
    plot_pairs(pairs, summary, a_name, b_name, out / "comparison.png")
    print(table)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
