"""Post hoc comparisons of the controlled WRN-22-2 study: chosen after the registered test was
read, never registered, never a change of its verdict (``docs/preregistration.md``).

    python -m experiments.controlled_posthoc docs/results/controlled   # also run by experiments.controlled_study

Writes ``posthoc.md`` and ``posthoc.json`` into the study folder, from the same committed
``metrics.json`` files as the registered analysis (and the re-evaluations in ``reevaluated/``),
with nothing fitted here.  An independent review
(2026-12-06) asked these questions of the registered result:

* **Is the primary result robust?**  An exact two-sided sign test and Wilcoxon's signed-rank test on
  the primary ECE differences (distribution-free; at n = 5 neither can go below p = 0.0625, so the
  registered t-test's normality assumption carries the significance), and the t interval with
  each seed left out in turn.
* **Where does the remainder under one protocol come from?**  With recomputed-augmented statistics
  on both sides: CigL's and RigL's last weights (no averaging on either side), and CigL's WMA
  against CigL's own last weights (averaging within one run).  With RigL's weights held fixed:
  recomputed-augmented against tracked statistics (the BatchNorm part of the primary difference).
* **Does CigL still help after a temperature on both sides?**  ``temperature_scaled`` of both runs,
  each on its run's headline statistics (RigL: final, tracked; CigL: WMA, recomputed-clean).
* **Does CigL beat what a practitioner would do without retraining?**  RigL's last weights with
  statistics recomputed on augmented batches and a temperature fitted on the validation split under
  them (``final+T``), against CigL's primary side.  The runs' ``metrics.json`` predate the
  per-protocol temperature, so RigL's side is read from ``<study>/reevaluated/<run>.json``
  (``python -m experiments.reevaluate … --bn-protocols recomputed-augmented --predictors final
  --out docs/results/controlled/reevaluated``); a run not yet re-evaluated is left out.
* **Does CigL explore more weights?**  The ITOP rate, paired by seed.
* **How steady are the last weights?**  Validation accuracy of each run's last weights (tracked
  statistics, as ``history`` records them) over the last five epochs, and its range.

Each paired comparison is B − A by seed with a two-sided t interval at α = 0.05, as the registered
ones; with them they are many tests, uncorrected for multiplicity: read them as descriptions.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
from scipy import stats

from cigl_bayes.runs import atomic_write_bytes, atomic_write_json

from .cli import run_cli
from .controlled_study import (
    ALPHA,
    AUG,
    CIGL,
    PRIMARY,
    PRIMARY_SEEDS,
    RIGL,
    SCORES,
    Side,
    json_safe,
    load_runs,
    paired,
    study_folder,
    table,
)

COMPARISONS = {
    "RigL's own weights: recomputed-augmented − tracked statistics": (Side(RIGL, "final", "tracked"),
                                                                       Side(RIGL, "final", AUG)),
    "last weights, no averaging on either side: CigL − RigL (both recomputed-augmented)": (Side(RIGL, "final", AUG),
                                                                                          Side(CIGL, "final", AUG)),
    "averaging within CigL: its WMA − its own last weights (both recomputed-augmented)": (Side(CIGL, "final", AUG),
                                                                                         Side(CIGL, "wma", AUG)),
    "a temperature on both sides: CigL − RigL temperature_scaled (each run's headline statistics)": (
        Side(RIGL, "temperature_scaled", None), Side(CIGL, "temperature_scaled", None)),
    "RigL's strongest no-retraining baseline: CigL's WMA − RigL's last weights with a temperature (both "
    "recomputed-augmented)": (Side(RIGL, "final+T", AUG), Side(CIGL, "wma", AUG)),
}
LAST_EPOCHS = 5  # the window of the last weights' steadiness


def robustness(runs: dict) -> dict:
    """Distribution-free tests and leave-one-seed-out intervals of the primary ECE difference."""
    primary = paired("primary", runs, *PRIMARY, "ece", PRIMARY_SEEDS)
    d = np.asarray(primary.deltas, dtype=float)
    out: dict = {"n": len(d), "deltas": d.tolist(), "seeds": primary.seeds}
    if len(d) < 2:
        return out
    nonzero = d[d != 0]  # a zero difference favours neither side: both tests leave it out
    out["lower_in"], out["nonzero"] = int((d < 0).sum()), len(nonzero)
    if len(nonzero):
        out["sign_test_p"] = float(stats.binomtest(int((nonzero < 0).sum()), len(nonzero), 0.5).pvalue)
        # the exact null distribution assumes distinct |Δ|; with ties the normal approximation instead
        exact = len(np.unique(np.abs(nonzero))) == len(nonzero)
        out["wilcoxon_method"] = "exact" if exact else "normal approximation (tied |Δ|)"
        out["wilcoxon_p"] = float(stats.wilcoxon(nonzero, alternative="two-sided",
                                                 method="exact" if exact else "approx").pvalue)
    else:
        out["sign_test_p"] = out["wilcoxon_p"] = 1.0
        out["wilcoxon_method"] = "no nonzero difference"
    out["smallest_sign_test_p"] = float(min(1.0, 2 * 0.5 ** len(nonzero)))
    if len(d) >= 3:
        out["leave_one_out"] = [asdict(paired(f"without seed {s}", runs, *PRIMARY, "ece",
                                               tuple(x for x in primary.seeds if x != s))) | {"left_out": s}
                                for s in primary.seeds]
    return out


def itop_paired(runs: dict) -> dict:
    """CigL − RigL ITOP rate by seed, with a two-sided t interval."""
    seeds = [s for s in PRIMARY_SEEDS if all(_number(runs.get((m, s), {}).get("metrics", {}).get("itop_rate"))
                                              for m in (RIGL, CIGL))]
    d = np.asarray([runs[(CIGL, s)]["metrics"]["itop_rate"] - runs[(RIGL, s)]["metrics"]["itop_rate"]
                    for s in seeds], dtype=float)
    out = {"seeds": seeds, "deltas": d.tolist(), "n": len(d), "mean": float(d.mean()) if len(d) else math.nan}
    if len(d) > 1:
        half = float(stats.t.ppf(1 - ALPHA / 2, len(d) - 1)) * float(d.std(ddof=1)) / math.sqrt(len(d))
        out.update(ci_low=out["mean"] - half, ci_high=out["mean"] + half)
    return out


def last_epochs(runs: dict) -> list[dict]:
    """Per run of RigL and CigL: validation accuracy of the last weights in the last epochs."""
    rows = []
    for (method, seed), r in sorted(runs.items()):
        if method not in (RIGL, CIGL):
            continue
        points = [(h["epoch"], h["val_accuracy"]) for h in r["metrics"].get("history", [])
                  if _number(h.get("val_accuracy")) and "epoch" in h]
        points = points[-LAST_EPOCHS:]
        if points:
            accs = [a for _, a in points]
            rows.append({"method": method, "seed": seed, "epochs": [e for e, _ in points], "val_accuracy": accs,
                         "range": max(accs) - min(accs)})
    return rows


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def analyse_post_hoc(runs: dict) -> dict:
    return {"alpha": ALPHA, "robustness": robustness(runs),
            "comparisons": {name: {s: asdict(paired(name, runs, *sides, s, PRIMARY_SEEDS)) for s in SCORES}
                            for name, sides in COMPARISONS.items()},
            "itop": itop_paired(runs), "last_epochs": last_epochs(runs)}


def _pp(x: float) -> str:
    return f"{100 * x:+.2f}"


def report_post_hoc(result: dict) -> str:
    rob = result["robustness"]
    lines = ["# Controlled study: post hoc comparisons (not registered)", "",
             "Generated by `python -m experiments.controlled_posthoc docs/results/controlled` (also run by "
             "`experiments.controlled_study`) from the committed `metrics.json` files and, for RigL's last weights "
             "with a temperature under augmented statistics, the re-evaluations in `reevaluated/`.  Chosen after "
             "the registered test was read, prompted by an independent review (2026-12-06): none is registered, "
             "none changes the verdict in `registered.md`, and with the registered comparisons they are many "
             "tests at α = 0.05, uncorrected for multiplicity: read them as descriptions.", "",
             "## Robustness of the primary ECE difference", ""]
    if rob["n"] < 2:
        lines += ["Fewer than two pairs.", ""]
    else:
        lines += [f"- CigL's ECE is lower in {rob['lower_in']} of {rob['n']} pairs.",
                  f"- Exact sign test, two-sided: p = {rob['sign_test_p']:.4f}; Wilcoxon signed-rank "
                  f"({rob['wilcoxon_method']}): p = {rob['wilcoxon_p']:.4f}.  With {rob['nonzero']} nonzero "
                  f"differences the sign test cannot go below {rob['smallest_sign_test_p']:.4f}: where that is "
                  "above α, the registered t-test's significance rests on its normality assumption.", ""]
        if rob.get("leave_one_out"):
            lines += ["| seed left out | n | mean ΔECE (pp) | 95% interval | p |", "|---|---|---|---|---|"]
            lines += [f"| {p['left_out']} | {p['n']} | {_pp(p['mean'])} | [{_pp(p['ci_low'])}, {_pp(p['ci_high'])}] "
                      f"| {p['p']:.3f} |" for p in rob["leave_one_out"]]
            lines.append("")
    lines += ["## Paired comparisons (B − A by seed)", ""]
    for name, block in result["comparisons"].items():
        first = block["ece"]
        lines += [f"### {name}", "", f"A = {first['a']}, B = {first['b']}.", "", *table(block, "post hoc"), ""]
    it = result["itop"]
    lines += ["## ITOP rate, paired: CigL − RigL", ""]
    if it["n"] > 1:
        lines += [f"n = {it['n']}: mean {it['mean']:+.4f}, 95% interval [{it['ci_low']:+.4f}, {it['ci_high']:+.4f}] "
                  f"({'no detectable difference' if it['ci_low'] <= 0 <= it['ci_high'] else 'a difference'}).", ""]
    else:
        lines += ["Fewer than two pairs.", ""]
    lines += [f"## Validation accuracy of the last weights over the last {LAST_EPOCHS} epochs (tracked statistics)",
              "", "| run | epochs | validation accuracy (%) | range (pp) |", "|---|---|---|---|"]
    lines += [f"| {r['method']} seed {r['seed']} | {r['epochs'][0]}–{r['epochs'][-1]} | "
              f"{', '.join(f'{100 * a:.1f}' for a in r['val_accuracy'])} | {100 * r['range']:.1f} |"
              for r in result["last_epochs"]]
    ranges = {m: [r["range"] for r in result["last_epochs"] if r["method"] == m] for m in (RIGL, CIGL)}
    if all(ranges.values()):
        lines += ["", "Mean range: " + ", ".join(f"{m} {100 * np.mean(v):.1f} pp" for m, v in ranges.items()) + "."]
    return "\n".join(lines) + "\n"


def write_post_hoc(study: Path, runs: dict) -> str:
    """Write ``posthoc.md`` and ``posthoc.json`` into ``study``; returns the report."""
    result = analyse_post_hoc(runs)
    text = report_post_hoc(result)
    atomic_write_json(json_safe(result), study / "posthoc.json")
    atomic_write_bytes(text.encode(), study / "posthoc.md")
    return text


def main(argv: list[str] | None = None) -> int:
    study = study_folder(argv, "python -m experiments.controlled_posthoc", __doc__)
    print(write_post_hoc(study, load_runs(study)))
    return 0


if __name__ == "__main__":
    run_cli(main)
