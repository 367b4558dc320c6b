"""The registered analysis of the controlled WRN-22-2 study (``docs/preregistration.md``).

    python -m experiments.controlled_study docs/results/controlled

Reads every finished run's ``metrics.json`` under ``<study>/runs/`` (and ``laplace.json`` where the
Laplace baseline ran, ``experiments.laplace_baseline``) and writes ``registered.md``,
``registered.json``, ``registered_paired.png`` (each comparison's per-seed differences and interval)
and ``validation_curves.png`` into the study folder, then the post hoc comparisons beside them
(``posthoc.md``/``.json``, :mod:`experiments.controlled_posthoc`: never registered).  Nothing is fitted here:
every number is a paired difference of scores the runs already hold, by seed.

Registered (in the order the pre-registration states them):
  primary      CigL ``wma`` [recomputed-augmented] − RigL ``final`` [tracked], test ECE, seeds 3–7,
               two-sided paired t-test, α = 0.05, with the accuracy condition
  controlled   the same sides under one protocol: recomputed-augmented, then recomputed-clean
  decomposition  cigl-no-rm / cigl-no-wma against RigL and CigL, seeds 3–5, recomputed-augmented
  baselines    RigL + temperature scaling, RigL + last-layer Laplace, against CigL's primary side
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from cigl_bayes.runs import atomic_save_figure, atomic_write_bytes, atomic_write_json

from .cli import ArgumentParser, run_cli

ALPHA = 0.05
PRIMARY_SEEDS = (3, 4, 5, 6, 7)
DECOMPOSITION_SEEDS = (3, 4, 5)
CIGL, RIGL, NO_RM, NO_WMA = "cigl-keep0.99", "rigl", "cigl-no-rm", "cigl-no-wma-keep0.99"
SCORES = ("ece", "nll", "brier", "ece10", "accuracy", "overconfidence")
RUN = "{method}-plain-s0.95-seed{seed}"


@dataclass(frozen=True)
class Side:
    """One side of a comparison: a method's predictor under a BatchNorm protocol (or a baseline)."""

    method: str
    predictor: str
    protocol: str | None  # None: the run's headline entry (temperature_scaled) or a baseline file

    def label(self) -> str:
        where = f" [{self.protocol}]" if self.protocol else ""
        return f"{self.method} {self.predictor}{where}"


@dataclass
class Paired:
    """A paired comparison B − A over seeds."""

    name: str
    a: str
    b: str
    score: str
    seeds: list[int]
    deltas: list[float]
    relative: list[float]
    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float
    p: float

    def reads(self) -> str:
        if self.n < 2:
            return "too few pairs"
        if self.ci_low > 0:
            return "higher"
        if self.ci_high < 0:
            return "lower"
        return "no detectable difference"


def test_scores(run: dict, side: Side) -> dict | None:
    """The test metrics of ``side`` in one run's records, or None where the run has no such entry.
    A predictor ``<setting>+T`` is that weight setting under ``side.protocol`` with its own
    temperature (``temperature_by_bn_protocol``: of metrics.json, else of the run's re-evaluation)."""
    if side.method == RIGL and side.predictor == "laplace":
        return run.get("laplace", {}).get("test")
    if side.predictor.endswith("+T"):
        setting = side.predictor[:-2]
        for source in (run["metrics"], run.get("reevaluated", {})):
            entry = (source.get("temperature_by_bn_protocol") or {}).get(side.protocol, {}).get(setting)
            if entry:
                return entry["test"]
        return None
    if side.protocol is None:
        return run["metrics"]["test"].get(side.predictor)
    return run["metrics"].get("by_bn_protocol", {}).get(side.protocol, {}).get("test", {}).get(side.predictor)


def value(scores: dict, score: str) -> float:
    if score == "overconfidence":
        return scores["confidence"] - scores["accuracy"]
    return scores[score]


def paired(name: str, runs: dict, a: Side, b: Side, score: str, seeds: tuple[int, ...]) -> Paired:
    """B − A for every seed in ``seeds`` where both sides exist; paired t interval and test."""
    used, deltas, relative = [], [], []
    for seed in seeds:
        ra, rb = runs.get((a.method, seed)), runs.get((b.method, seed))
        sa = test_scores(ra, a) if ra else None
        sb = test_scores(rb, b) if rb else None
        if sa is None or sb is None:
            continue
        va, vb = value(sa, score), value(sb, score)
        used.append(seed)
        deltas.append(vb - va)
        relative.append((vb - va) / va if va else math.nan)
    d = np.asarray(deltas, dtype=float)
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    if n > 1 and sd > 0:
        half = float(stats.t.ppf(1 - ALPHA / 2, n - 1)) * sd / math.sqrt(n)
        p = float(stats.ttest_1samp(d, 0.0).pvalue)  # = ttest_rel of the two sides
    elif n > 1:
        half, p = 0.0, (0.0 if mean else 1.0)
    else:
        half, p = math.nan, math.nan
    return Paired(name, a.label(), b.label(), score, used, deltas, relative, n, mean, sd, mean - half, mean + half, p)


RUN_FOLDER = re.compile(r"^(?P<method>.+)-plain-s0\.95-seed(?P<seed>\d+)$")


def study_folders(study: Path) -> list[tuple[str, int, Path]]:
    """(method, seed, folder) of every folder under ``<study>/runs`` named as the queue names a run
    (``<method>-plain-s0.95-seed<k>``).  Any other folder (a copy such as ``…-seed3-retry``) is not a
    run of the study: it is named on stderr and left out, never read in a registered run's place."""
    out = []
    root = study / "runs"
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not folder.is_dir():
            continue
        match = RUN_FOLDER.match(folder.name)
        if match is None:
            print(f"note: {folder} is not named <method>-plain-s0.95-seed<k>; left out of the analysis",
                  file=sys.stderr)
            continue
        out.append((match["method"], int(match["seed"]), folder))
    return out


def _completed(folder: Path) -> dict | None:
    path = folder / "metrics.json"
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None
    return metrics if metrics.get("completed") else None


def diverged_runs(study: Path) -> list[str]:
    """"<method> seed <s>" of every run that stopped on a non-finite loss (its ``diverged.json``,
    written by the trainer).  A folder holding both that marker and a completed metrics.json is
    refused: one of the two is stale, and the run cannot count both as a failure and as scored."""
    out = []
    for method, seed, folder in study_folders(study):
        if (folder / "diverged.json").is_file():
            if _completed(folder) is not None:
                raise ValueError(f"{folder} holds both diverged.json and a completed metrics.json; one is stale: "
                                 "remove it (a diverged run counts as a failure, a completed one is scored)")
            out.append(f"{method} seed {seed}")
    return out


REEVALUATED = "reevaluated"  # <study>/reevaluated/<run folder>.json: python -m experiments.reevaluate --out


def _reevaluation(path: Path, run: str, seed: int, metrics: dict) -> dict | None:
    """The re-evaluation of ``run`` at ``path`` (None where there is none).  One that cannot be
    read, or that is of another seed or test set, is named on stderr and left out: it feeds post hoc
    comparisons only, so it never stops the registered analysis."""
    if not path.is_file():
        return None
    try:
        again = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        print(f"note: {path} cannot be read ({err}); left out of the post hoc comparisons", file=sys.stderr)
        return None
    if not isinstance(again, dict) or (again.get("seed"), again.get("test_fingerprint")) != \
            (seed, metrics.get("test_fingerprint")):
        print(f"note: {path} is not a re-evaluation of {run} (another seed or test set); left out of the post hoc "
              "comparisons", file=sys.stderr)
        return None
    return again


def load_runs(study: Path) -> dict[tuple[str, int], dict]:
    """{(method, seed): {"metrics": ..., "laplace": ..., "reevaluated": ...}} of the finished runs
    of the study; a metrics.json whose seed is not its folder's is refused, and a re-evaluation
    (``<study>/reevaluated/<run folder>.json``) of another seed or test set is left out, named."""
    runs = {}
    for method, seed, folder in study_folders(study):
        metrics = _completed(folder)
        if metrics is None:
            continue
        if int(metrics.get("seed", -1)) != seed:
            raise ValueError(f"{folder}/metrics.json is of seed {metrics.get('seed')}, not the folder's seed {seed}")
        entry = {"metrics": metrics}
        laplace = folder / "laplace.json"
        if laplace.is_file():
            entry["laplace"] = json.loads(laplace.read_text())
        reevaluated = _reevaluation(study / REEVALUATED / f"{folder.name}.json", folder.name, seed, metrics)
        if reevaluated is not None:
            entry["reevaluated"] = reevaluated
        runs[(method, seed)] = entry
    return runs


def _method_seed(entry: str) -> tuple[str, int]:
    method, _, seed = entry.rpartition(" seed ")
    return method, int(seed)


def finished_pairs(runs: dict, diverged: list[str]) -> list[int]:
    """The primary seeds whose pair is finished: each side's run either completed or diverged (a
    diverged run is finished as a failure, docs/preregistration.md, Exclusions and amendment 2)."""
    done = set(runs) | {_method_seed(d) for d in diverged}
    return [s for s in PRIMARY_SEEDS if (RIGL, s) in done and (CIGL, s) in done]


def failed_seeds(diverged: list[str], method: str) -> list[int]:
    """The registered seeds (3–7) at which ``method`` diverged; other seeds are not the study's."""
    return sorted(s for m, s in map(_method_seed, diverged) if m == method and s in PRIMARY_SEEDS)


def _seeds(seeds: list[int]) -> str:
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def verdict(primary: Paired, accuracy: Paired, diverged: list[str] = (), pairs_done: list[int] | None = None) -> str:
    """The pre-registered reading of the primary test (docs/preregistration.md, amendment 2 for
    diverged runs).  No verdict before all five pairs are finished.  A diverged run is a failure of
    its method for that seed: a seed where CigL diverged and RigL did not makes the claim not hold; a
    seed where RigL diverged (alone or with CigL) leaves its pair out of the t-test, and the verdict
    names it, as it names a finished pair that lacks a registered score on one side."""
    done = list(primary.seeds) if pairs_done is None else list(pairs_done)
    cigl_failed, rigl_failed = failed_seeds(diverged, CIGL), failed_seeds(diverged, RIGL)
    cigl_only = [s for s in cigl_failed if s not in rigl_failed]
    rigl_only = [s for s in rigl_failed if s not in cigl_failed]
    both = [s for s in rigl_failed if s in cigl_failed]
    named = "".join(f"; {who} diverged at {_seeds(seeds)}"
                    for who, seeds in (("CigL", cigl_failed), ("RigL", rigl_failed)) if seeds)
    if len(done) < len(PRIMARY_SEEDS):
        return (f"interim: {len(done)} of {len(PRIMARY_SEEDS)} pairs finished; the registered test is read only "
                f"at n = 5{named}")
    if cigl_only:
        return f"the claim does not hold: CigL failed (diverged) at {_seeds(cigl_only)}, where RigL did not"
    notes = []
    if rigl_only:
        notes.append(f"RigL diverged at {_seeds(rigl_only)}: RigL's failure, that pair left out of the test")
    if both:
        notes.append(f"both diverged at {_seeds(both)}: that pair left out of the test")
    unscored = [s for s in done if s not in primary.seeds and s not in rigl_failed and s not in cigl_failed]
    if unscored:
        notes.append(f"{_seeds(unscored)}: a side lacks the registered score, that pair left out of the test")
    left_out = f" ({'; '.join(notes)})" if notes else ""
    if primary.n < 2:
        return f"no test: fewer than two pairs with scores on both sides{left_out}"
    if accuracy.ci_high < 0:
        return f"the claim does not hold: CigL loses accuracy (the accuracy interval lies below 0){left_out}"
    if primary.ci_high < 0:
        at = ("with higher accuracy (its interval above 0, so the two models compared are not of equal accuracy)"
              if accuracy.ci_low > 0 else "at no detectable loss of accuracy")
        return f"the claim holds: CigL's ECE is lower (interval below 0) {at}{left_out}"
    if primary.ci_low > 0:
        return f"the claim does not hold: CigL's ECE is higher (interval above 0){left_out}"
    return f"the claim does not hold at this n: no detectable difference in ECE (the interval includes 0){left_out}"


PRIMARY = (Side(RIGL, "final", "tracked"), Side(CIGL, "wma", "recomputed-augmented"))
CONTROLLED = {p: (Side(RIGL, "final", p), Side(CIGL, "wma", p)) for p in ("recomputed-augmented", "recomputed-clean")}
AUG = "recomputed-augmented"
DECOMPOSITION = {
    "averaging without Z (cigl-no-rm − rigl)": (Side(RIGL, "final", AUG), Side(NO_RM, "wma", AUG)),
    "Z on top of averaging (cigl − cigl-no-rm)": (Side(NO_RM, "wma", AUG), Side(CIGL, "wma", AUG)),
    "Z without averaging (cigl-no-wma − rigl)": (Side(RIGL, "final", AUG), Side(NO_WMA, "predictive", AUG)),
}
BASELINES = {
    "CigL − RigL + temperature scaling": (Side(RIGL, "temperature_scaled", None), PRIMARY[1]),
    "CigL − RigL + last-layer Laplace": (Side(RIGL, "laplace", None), PRIMARY[1]),
}


def attribution(primary: Paired, controlled: Paired, pairs_done: int) -> str | None:
    """The controlled comparison beside the primary, read at n = 5 (None before).  Only one reading is
    registered (docs/preregistration.md): a primary interval below 0 with a controlled interval
    (recomputed-augmented on both sides) that includes 0 attributes the gain to the BatchNorm
    statistics.  Every other outcome is stated as the two intervals, marked not registered."""
    if pairs_done < len(PRIMARY_SEEDS):
        return None
    if primary.n >= 2 and controlled.n >= 2 and primary.ci_high < 0 and controlled.ci_low <= 0 <= controlled.ci_high:
        return ("registered: the gain in the paper's protocol is not detectably CigL's own: with recomputed-augmented "
                "statistics on both sides there is no detectable difference in ECE, so it is attributed to the "
                "BatchNorm statistics")

    def where(p: Paired) -> str:
        if p.n < 2:
            return "not testable (fewer than two pairs)"
        side = "below 0" if p.ci_high < 0 else "above 0" if p.ci_low > 0 else "includes 0"
        return f"[{100 * p.ci_low:+.2f}, {100 * p.ci_high:+.2f}] pp, {side}"

    return (f"the registered attribution does not apply (it needs the primary interval below 0 and the controlled "
            f"one including 0); descriptive, not registered: primary ΔECE {where(primary)}, controlled "
            f"(recomputed-augmented on both sides) {where(controlled)}")


def analyse(runs: dict, diverged: list[str] = ()) -> dict:
    out: dict = {"alpha": ALPHA, "runs": sorted(f"{m} seed {s}" for m, s in runs), "diverged": list(diverged)}
    primary = {s: paired("primary", runs, *PRIMARY, s, PRIMARY_SEEDS) for s in SCORES}
    out["primary"] = {s: asdict(p) for s, p in primary.items()}
    pairs_done = finished_pairs(runs, list(diverged))
    out["pairs_finished"] = pairs_done
    out["verdict"] = verdict(primary["ece"], primary["accuracy"], diverged, pairs_done)
    controlled = {proto: {s: paired(f"controlled {proto}", runs, *sides, s, PRIMARY_SEEDS) for s in SCORES}
                  for proto, sides in CONTROLLED.items()}
    out["controlled"] = {proto: {s: asdict(p) for s, p in block.items()} for proto, block in controlled.items()}
    out["attribution"] = attribution(primary["ece"], controlled["recomputed-augmented"]["ece"], len(pairs_done))
    out["decomposition"] = {name: {s: asdict(paired(name, runs, *sides, s, DECOMPOSITION_SEEDS)) for s in SCORES}
                            for name, sides in DECOMPOSITION.items()}
    out["baselines"] = {name: {s: asdict(paired(name, runs, *sides, s, PRIMARY_SEEDS)) for s in SCORES}
                        for name, sides in BASELINES.items()}
    itop = {}
    for method in (RIGL, CIGL, NO_RM, NO_WMA):
        rates = [r["metrics"]["itop_rate"] for (m, _), r in runs.items()
                 if m == method and isinstance(r["metrics"].get("itop_rate"), (int, float))]
        if rates:
            itop[method] = {"n": len(rates), "mean": float(np.mean(rates)),
                            "sd": float(np.std(rates, ddof=1)) if len(rates) > 1 else math.nan}
    out["itop"] = itop
    return out


def fmt(x: float, score: str) -> str:
    if math.isnan(x):
        return "–"
    return f"{100 * x:+.2f}" if score in ("ece", "ece10", "accuracy", "overconfidence") else f"{x:+.4f}"


UNIT = {"ece": "pp", "ece10": "pp", "accuracy": "pp", "overconfidence": "pp", "nll": "nats", "brier": ""}


def table(block: dict[str, dict], descriptive: str | None) -> list[str]:
    """A Markdown table of paired comparisons.  ``descriptive``: the mark every read of an interval
    gets (None: the registered reading, once five pairs are finished; their n may still be below 5
    where a diverged pair is left out)."""
    lines = ["| score | n | mean Δ (B − A) | 95% interval | p | per seed | reads |", "|---|---|---|---|---|---|---|"]
    for score, p in block.items():
        per_seed = ", ".join(f"s{s}: {fmt(d, score)}" for s, d in zip(p["seeds"], p["deltas"]))
        reads = Paired(**p).reads()
        if p["n"] >= 2 and descriptive:
            reads += f" ({descriptive})"
        pval = "–" if math.isnan(p["p"]) else f"{p['p']:.3f}"
        lines.append(f"| {score}{f' ({UNIT[score]})' if UNIT[score] else ''} | {p['n']} | {fmt(p['mean'], score)} | "
                     f"[{fmt(p['ci_low'], score)}, {fmt(p['ci_high'], score)}] | {pval} | {per_seed} | {reads} |")
    return lines


def report(result: dict) -> str:
    first = result["primary"]["ece"]
    n_done = len(result.get("pairs_finished") or [])
    interim = f"descriptive: {n_done} of {len(PRIMARY_SEEDS)} pairs" if n_done < len(PRIMARY_SEEDS) else None
    rel = [r for r in first["relative"] if not math.isnan(r)]
    lines = ["# Controlled study: the registered analysis", "",
             "Generated by `python -m experiments.controlled_study docs/results/controlled` from the committed "
             "`metrics.json` files; the test and its reading are those of `docs/preregistration.md`.", "",
             f"Finished runs: {len(result['runs'])} ({'; '.join(result['runs']) or 'none'}).", "",
             "## Primary (the paper's protocol)", "",
             f"A = {first['a']}, B = {first['b']}; paired by seed, two-sided t, α = {result['alpha']}.", "",
             *table(result["primary"], interim), "",
             f"Mean relative ECE change (B − A) / A: {100 * np.mean(rel):+.1f}%." if rel else "", "",
             f"**Verdict:** {result['verdict']}.", "",
             *(["Until all five pairs are finished every interval and p-value here is descriptive: the registered "
                "test is read once, at n = 5.", ""] if interim else []),
             f"Diverged runs (each a failure of its method for that seed): {', '.join(result['diverged']) or 'none'}.",
             "", "## Controlled (one protocol on both sides)", "",
             f"**Attribution:** {result['attribution'] or 'read at n = 5'}.", ""]
    for proto, block in result["controlled"].items():
        lines += [f"### Both {proto}", "", *table(block, interim), ""]
    lines += ["## Decomposition (seeds 3–5, recomputed-augmented; descriptive at n = 3)", ""]
    for name, block in result["decomposition"].items():
        lines += [f"### {name}", "", *table(block, "descriptive"), ""]
    lines += ["## Baselines a practitioner would pick instead (A = the baseline, B = CigL's primary side)", ""]
    for name, block in result["baselines"].items():
        lines += [f"### {name}", "", *table(block, interim), ""]
    lines += ["## ITOP rate (fraction of sparse-layer weights ever active)", "", "| method | n | mean | sd |",
              "|---|---|---|---|"]
    lines += [f"| {m} | {v['n']} | {v['mean']:.4f} | {v['sd']:.4f} |" for m, v in result["itop"].items()]
    return "\n".join(lines) + "\n"


def plot_curves(runs: dict, path: Path) -> Path | None:
    """Validation NLL and ECE per epoch, last weights and WMA, one line per run."""
    import matplotlib.pyplot as plt

    with_curves = {k: r for k, r in runs.items() if any("val_nll" in h for h in r["metrics"].get("history", []))}
    if not with_curves:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colours = {RIGL: "tab:red", CIGL: "tab:blue", NO_RM: "tab:green", NO_WMA: "tab:purple"}
    for (method, seed), r in sorted(with_curves.items()):
        hist = r["metrics"]["history"]
        for ax, key in zip(axes, ("accuracy", "nll", "ece")):
            ep = [h["epoch"] for h in hist if f"val_{key}" in h]
            ax.plot(ep, [h[f"val_{key}"] for h in hist if f"val_{key}" in h], color=colours.get(method, "grey"),
                    alpha=0.6, lw=1, label=f"{method} last weights" if seed == min(
                        s for m, s in with_curves if m == method) else None)
            ep_w = [h["epoch"] for h in hist if f"val_wma_{key}" in h]
            if ep_w:
                ax.plot(ep_w, [h[f"val_wma_{key}"] for h in hist if f"val_wma_{key}" in h], ls="--", marker="o",
                        ms=3, color=colours.get(method, "grey"), alpha=0.9,
                        label=f"{method} WMA" if seed == min(s for m, s in with_curves if m == method) else None)
    for ax, key in zip(axes, ("accuracy", "NLL", "ECE (15 bins)")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"validation {key}")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="x-small")
    fig.suptitle("Controlled study: validation curves per run (last weights: tracked BatchNorm; "
                 "WMA: recomputed on 10 clean batches)", fontsize=10)
    return atomic_save_figure(fig, path)


def paired_rows(result: dict) -> list[tuple[str, dict]]:
    """(label, {score: paired comparison}) of every comparison against CigL's primary side, in the
    order the pre-registration states them: primary, the two controlled ones, the two baselines."""
    aug = "CigL [recomputed-augmented]"
    rows = [(f"primary: {aug} vs RigL [tracked]", result["primary"])]
    rows += [(f"controlled: both [{proto}]", block) for proto, block in result["controlled"].items()]
    rows += [(f"{aug} vs {name.replace('CigL − RigL + ', 'RigL + ')}", block)
             for name, block in result["baselines"].items()]
    return rows


def plot_paired(result: dict, path: Path) -> Path | None:
    """Forest plot of the paired differences CigL − comparator, ECE (pp) and NLL: each seed's Δ as a
    dot, the mean with its 95% t interval as a bar (none below two pairs).  Titled with n and, until
    five pairs are finished, "descriptive"."""
    import matplotlib.pyplot as plt

    rows = [(label, block) for label, block in paired_rows(result) if block["ece"]["n"] > 0]
    if not rows:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.6 * len(rows) + 1.8), sharey=True)
    for ax, score, scale, unit in ((axes[0], "ece", 100.0, "pp"), (axes[1], "nll", 1.0, "nats")):
        for y, (_, block) in enumerate(rows):
            p = block[score]
            ax.scatter([scale * d for d in p["deltas"]], [y] * len(p["deltas"]), s=18, color="grey", zorder=3,
                       label="one seed" if y == 0 else None)
            if p["n"] >= 2:
                ax.errorbar([scale * p["mean"]], [y], xerr=[[scale * (p["mean"] - p["ci_low"])],
                                                            [scale * (p["ci_high"] - p["mean"])]],
                            fmt="D", color="tab:blue", capsize=4, zorder=4,
                            label="mean, 95% t interval" if y == 0 else None)
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set_xlabel(f"CigL WMA − RigL (as each row says), test {score.upper()} ({unit})")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(rows)), [label for label, _ in rows])
    axes[0].invert_yaxis()
    axes[0].legend(fontsize="x-small", loc="best")
    n = len(result.get("pairs_finished") or [])
    state = "the registered reading" if n >= len(PRIMARY_SEEDS) else "descriptive: the test is read at 5"
    fig.suptitle(f"Controlled study, paired by seed: {n} of {len(PRIMARY_SEEDS)} pairs finished ({state}); "
                 "< 0: CigL lower", fontsize=10)
    return atomic_save_figure(fig, path)


def json_safe(value):
    """``value`` with every non-finite float as None (JSON null): strict JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def study_folder(argv: list[str] | None, prog: str, doc: str) -> Path:
    """The study folder named on the command line of ``prog`` (its help: ``doc``), which must hold runs/."""
    p = ArgumentParser(prog=prog, description=doc.split("\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    p.add_argument("study", type=Path, help="the study folder (docs/results/controlled)")
    study = p.parse_args(argv).study
    if not (study / "runs").is_dir():
        raise FileNotFoundError(f"{study} holds no runs/ folder")
    return study


def main(argv: list[str] | None = None) -> int:
    study = study_folder(argv, "python -m experiments.controlled_study", __doc__)
    runs = load_runs(study)
    result = analyse(runs, diverged_runs(study))
    atomic_write_json(json_safe(result), study / "registered.json")
    atomic_write_bytes(report(result).encode(), study / "registered.md")
    plot_curves(runs, study / "validation_curves.png")
    plot_paired(result, study / "registered_paired.png")
    print(report(result))
    from .controlled_posthoc import write_post_hoc  # here: that module builds on this one's comparisons

    write_post_hoc(study, runs)  # posthoc.md/.json: never registered, kept beside the registered reading
    return 0


if __name__ == "__main__":
    run_cli(main)
