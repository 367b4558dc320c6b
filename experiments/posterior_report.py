"""A trained run read as a Bayesian object: predictors, SWAG, arviz diagnostics, Z–W study.

    python -m experiments.posterior_report runs/svi_cifar-wrn-22-2-s0.95-seed0
    python -m experiments.posterior_report runs/cigl-seed0 runs/cigl-seed1 runs/cigl-seed2 --out report/

For every run (a finished run folder with collected samples, see docs/run-folder.md) it
evaluates the predictors of ``cigl_bayes.predict`` (final, wma, predictive, mc-z, swag), through
``inference.load_run``, on
the test split with their costs, and the Z–W study of paper App. C.1 (accuracy of M⊙W versus
the mean accuracy of M⊙Zᵢ⊙W).  Runs that differ only by seed become the chains of one arviz
``InferenceData`` (draw = collected sample).  Writes into ``--out`` (default: RUN_DIR/posterior
of the first run): report.md, predictors.json/.csv, zw.csv, reliability.png, zw.png,
posterior.nc, draws.json (per-draw summaries of each chain, for pooling seeds across machines),
trace.png, forest.png; report.md is written last, so it marks a finished report.  One process
writes a report folder at a time (``.lock`` while it runs); a second is refused (exit 2), and a
refused or failed report leaves no folder of its own behind.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cigl_bayes import data as data_lib
from cigl_bayes import metrics
from cigl_bayes.averaging import Snapshot
from cigl_bayes.config import TrainConfig
from cigl_bayes.inference import diagnostics, elpd, load_run
from cigl_bayes.predict import combine
from cigl_bayes.runs import RunFolderLock, atomic_save_figure, atomic_write_bytes, atomic_write_csv, atomic_write_json

from .cli import ArgumentParser, check_run_folders, run_cli


@dataclasses.dataclass
class PredictorResult:
    """Test log-probabilities of one predictor, per draw and combined, and what it costs."""

    name: str
    draws: list[torch.Tensor]  # per weight setting: (N, C) log-probabilities
    forward_passes: int  # forward passes per test batch
    parameters_stored: int  # numbers kept to make the prediction
    metrics: dict = dataclasses.field(default_factory=dict)

    @property
    def log_probs(self) -> torch.Tensor:
        return combine(self.name, self.draws)

    def per_draw_log_likelihood(self, labels: torch.Tensor) -> torch.Tensor:
        """(draws, N): log p(y_i | draw) for the true labels."""
        idx = labels.view(1, -1, 1).expand(len(self.draws), -1, 1)
        return torch.stack(self.draws).gather(2, idx).squeeze(2)

    def evaluate(self, labels: torch.Tensor) -> dict:
        self.metrics = metrics.calibration_metrics(self.log_probs, labels, from_logits=True)
        return self.metrics


@dataclasses.dataclass
class RunAnalysis:
    run_dir: Path
    cfg: TrainConfig
    labels: torch.Tensor
    predictors: dict[str, PredictorResult]
    samples: list[Snapshot]
    layers: list[tuple[str, int]]
    train_loss: list[float]  # at the epochs the samples were collected
    zw: dict
    test_fingerprint: str | None = None
    compute_dtype: str = "float32"  # precision of the evaluation (``--amp``)


def analyse(run_dir: Path, args) -> RunAnalysis:
    """Every predictor of the run on its test split (weights from ``inference.load_run``), and the Z–W study."""
    run = load_run(run_dir, data_dir=args.data_dir, device=args.device, amp=args.amp)
    if args.bn_batches is not None:
        run.bn_batches = args.bn_batches
    cfg = run.config
    labels = run.labels("test")
    # draws and seeds per predictor (None: every collected sample)
    plan = {"final": (None, 0), "mc-z": (args.mc_samples, cfg.seed + 100)}
    if run.samples:
        plan.update({"wma": (None, 0), "predictive": (None, 0)})
    if len(run.samples) >= 2:  # SWAG's moments need two samples
        plan["swag"] = (args.swag_samples, cfg.seed + 200)
    preds: dict[str, PredictorResult] = {}
    with tqdm(plan.items(), desc=f"predictors {run_dir.name}", disable=not args.progress) as bar:
        for name, (draws, seed) in bar:
            weights = run.weight_draws(name, draws, seed, args.swag_rank)
            per_draw = run.log_probs(name, "test", draws, seed=seed, swag_rank=args.swag_rank)
            preds[name] = PredictorResult(name, per_draw, len(per_draw),
                                          run.parameters_stored(name, weights, args.swag_rank))
    for p in preds.values():
        p.evaluate(labels)
    per_draw_acc = [float((d.argmax(-1) == labels).float().mean()) for d in preds["mc-z"].draws]
    zw = {"run": run_dir.name, "method": cfg.method, "sparsity": cfg.sparsity, "keep": run.keep,
          "accuracy_w": preds["final"].metrics["accuracy"], "accuracy_zw_mean": float(np.mean(per_draw_acc)),
          "accuracy_zw_std": float(np.std(per_draw_acc)), "z_draws": len(per_draw_acc)}
    layers = list(zip(run.net.sparse_names, run.net.mask.numels))
    by_epoch = {h["epoch"]: h["train_loss"] for h in run.history}
    # sample i is collected at the end of epoch T* + i (0-based), i.e. history epoch T* + i + 1
    train_loss = [by_epoch.get(e + 1, float("nan")) for e in run.sample_epochs]
    return RunAnalysis(run_dir, cfg, labels, preds, run.samples, layers, train_loss, zw,
                       data_lib.fingerprint(run.data().test), run.compute_dtype)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def why_test_sets_differ(a_dir: Path, b_dir: Path) -> str:
    """The reason two runs' test points differ, read from their config.json."""
    a, b = _read_json(a_dir / "config.json"), _read_json(b_dir / "config.json")
    if a.get("dataset") != b.get("dataset"):
        return f"datasets {a.get('dataset')} and {b.get('dataset')}"
    if a.get("test_subset") != b.get("test_subset"):
        return f"--test-subset {a.get('test_subset')} and {b.get('test_subset')}"
    if a.get("data_dir") and b.get("data_dir") and a["data_dir"] != b["data_dir"]:
        return f"data folders {a['data_dir']} and {b['data_dir']}"
    if a.get("test_subset") is not None and a.get("seed") != b.get("seed"):
        return (f"the same --test-subset {a['test_subset']} drawn with each run's seed ({a.get('seed')} and "
                f"{b.get('seed')}), as ImageNet runs and CIFAR runs trained before it was drawn with seed 0 do")
    return "their test images differ, though their configs name the same test set (another copy of the data?)"


def check_same_test_set_before_analysis(run_dirs: list[Path]) -> None:
    """Refuse at once, from the runs' metrics.json ``test_fingerprint``, runs that were scored on
    different test points, naming why (different --test-subset, a seeded subset, other data):
    arviz pools a report's chains per test point, and analysing them first takes minutes."""
    prints = [(r, _read_json(r / "metrics.json").get("test_fingerprint")) for r in run_dirs]
    known = [(r, f) for r, f in prints if f]
    for r, f in known[1:]:
        if f != known[0][1]:
            raise ValueError(f"runs {known[0][0]} and {r} were scored on different test points "
                             f"({why_test_sets_differ(known[0][0], r)}); report them separately")


def check_same_test_points(analyses: list[RunAnalysis]) -> None:
    """Runs pooled into one report must be scored on the same test points (arviz pools them per
    test point): refuse runs whose test sets differ.  (Runs whose metrics.json records a
    fingerprint are refused before the analysis, by :func:`check_same_test_set_before_analysis`.)"""
    first = analyses[0]
    for a in analyses[1:]:
        if a.test_fingerprint != first.test_fingerprint or not torch.equal(a.labels, first.labels):
            raise ValueError(f"runs {first.run_dir} and {a.run_dir} were scored on different test points "
                             f"({why_test_sets_differ(first.run_dir, a.run_dir)}); report them separately")


def chain_groups(analyses: list[RunAnalysis]) -> list[list[RunAnalysis]]:
    """Runs whose configs differ only by seed (and device/data location) are chains of one posterior."""
    groups: dict[str, list[RunAnalysis]] = {}
    for a in analyses:
        key = json.dumps({k: v for k, v in a.cfg.to_dict().items() if k not in ("seed", "device", "data_dir")},
                         sort_keys=True)
        groups.setdefault(key, []).append(a)
    return list(groups.values())


def _table(rows: list[dict], cols: list[str]) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def plot_zw(rows: list[dict], path: Path) -> None:
    """One column of points per run (runs at the same sparsity side by side, no connecting lines):
    accuracy of M⊙W, and the mean ± sd over the fresh masks Zᵢ of M⊙Zᵢ⊙W; the legend sits below."""
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: (r["sparsity"], r["run"]))
    fig, ax = plt.subplots(figsize=(5.5, 4))
    xs = np.arange(len(rows))
    ax.scatter(xs - 0.08, [r["accuracy_w"] for r in rows], marker="o", color="tab:blue", zorder=3,
               label="M⊙W (final weights, the final predictor)")
    ax.errorbar(xs + 0.08, [r["accuracy_zw_mean"] for r in rows], yerr=[r["accuracy_zw_std"] for r in rows],
                fmt="s", color="tab:orange", capsize=4, label="M⊙Zᵢ⊙W: mean ± sd over fresh masks Zᵢ")
    ax.set_xticks(xs, [f"{r['run']}\ns={r['sparsity']:g}" for r in rows], fontsize=7)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_xlabel("run")
    ax.set_ylabel("test accuracy")
    ax.set_title("Z–W correlation (paper App. C.1)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=1, fontsize=8, frameon=False)
    atomic_save_figure(fig, path)


def group_report(group: list[RunAnalysis], out: Path, tag: str, args) -> list[str]:
    """arviz InferenceData for one group of chains; returns Markdown lines."""
    lines = []
    with_samples = [a for a in group if len(a.samples) >= 2]
    if not with_samples:
        runs = ", ".join(a.run_dir.name for a in group)
        note = (f"{runs}: fewer than 2 collected samples per run, so no arviz posterior (train longer or "
                "start WMA earlier with --wma-start-epoch)")
        print(f"warning: {note}", file=sys.stderr)
        return [f"_Note: {note}._", ""]
    n_draws = min(len(a.samples) for a in with_samples)
    chains = [a.samples[:n_draws] for a in with_samples]
    labels = with_samples[0].labels
    loglik = np.stack([a.predictors["predictive"].per_draw_log_likelihood(a.labels)[:n_draws].numpy()
                       for a in with_samples])
    ppc = np.stack([torch.stack(a.predictors["predictive"].draws[:n_draws]).argmax(-1).numpy() for a in with_samples])
    loss = np.array([a.train_loss[:n_draws] for a in with_samples], dtype=float)
    idata = diagnostics.posterior_inference_data(
        chains, with_samples[0].layers, n_weights=args.weights, seed=0, log_likelihood=loglik,
        posterior_predictive=ppc, observed=labels.numpy(), train_loss=loss)
    nc = out / f"posterior{tag}.nc"
    diagnostics.save_netcdf(idata, nc)
    # small enough for git: the sweep pools runs from different machines into chains (posterior.md)
    chains_json = out / f"draws{tag}.json"
    atomic_write_json({"chains": [{"run": a.run_dir.name, **summary} for a, summary in
                                  zip(with_samples, diagnostics.chain_summaries(idata))]}, chains_json)
    summary = diagnostics.summary_table(idata, var_names=["layer_norm", "theta_norm"])
    diagnostics.plot_trace(idata, out / f"trace{tag}.png", var_names=["layer_norm", "theta_norm"])
    diagnostics.plot_forest(idata, out / f"forest{tag}.png", var_names=["layer_norm"])
    log_liks = {}
    for name in ("predictive", "swag", "mc-z"):  # multi-draw predictors: chains × draws
        ll = [a.predictors[name].per_draw_log_likelihood(a.labels).numpy() for a in with_samples]
        draws = min(x.shape[0] for x in ll)
        log_liks[name] = np.stack([x[:draws] for x in ll])
    for a in with_samples:  # point predictors, one per run
        for name in ("wma", "final"):
            log_liks[f"{name}/{a.run_dir.name}"] = a.predictors[name].per_draw_log_likelihood(a.labels)[0].numpy()
    comparison = elpd.compare_predictors(log_liks)
    ic_rows = []
    for name in ("predictive", "swag", "mc-z"):
        e = elpd.predictor_elpd(log_liks[name])
        ic_rows.append({"predictor": name, "draws": e["n_samples"], "test_lppd": e["test_lppd"],
                        "elpd_loo": e["loo"]["elpd"], "p_loo": e["loo"]["p"],
                        "max_pareto_k": e["loo"]["pareto_k"]["max"],
                        "elpd_waic": e["waic"]["elpd"], "p_waic": e["waic"]["p"]})
    runs = ", ".join(a.run_dir.name for a in with_samples)
    lines += [f"## Posterior{' ' + tag.strip('-') if tag else ''}: {len(chains)} chain(s) × {n_draws} draws "
              f"({runs})", "",
              f"InferenceData: `{nc.name}` (groups: {', '.join(idata.groups())}); per-draw summaries of each "
              f"chain, small enough to commit: `{chains_json.name}`; plots `trace{tag}.png`, `forest{tag}.png`.", "",
              "### az.summary (layer weight norms)", "",
              summary.to_markdown() if hasattr(summary, "to_markdown") and _has_tabulate() else "```\n"
              + summary.to_string() + "\n```", "",
              "R-hat compares chains, i.e. runs from different seeds.  A network posterior is multimodal: "
              "independent runs settle in different modes (different masks and permutations of units), so "
              "R-hat ≫ 1 across seeds is expected and says the chains explore different modes, not that one "
              "run is broken.  Within one chain the draws are consecutive epoch-end samples of one SGD "
              "trajectory, so ESS measures their autocorrelation.", "",
              "### Test-set predictive comparison (az.compare / elpd on held-out points)", "",
              "```\n" + comparison.to_string() + "\n```", "",
              "The log-likelihoods are of *held-out test* points, so predictors are ranked by the test-set "
              "log predictive density lppd = Σᵢ log (1/S) Σₛ p(yᵢ | drawₛ) (az.compare on precomputed "
              "pointwise values, with its standard errors and stacking weights).  loo/waic are not used for "
              "the ranking: on points the posterior never saw, loo is pessimistic by p_loo for multi-draw "
              "predictors while point predictors (wma, final: one draw, one entry per run) pay nothing.  "
              "Multi-draw predictors pool the draws of all chains.", "",
              "### az.loo / az.waic of the multi-draw predictors (test points)", "",
              _table(ic_rows, list(ic_rows[0])), "",
              "With few draws PSIS is unreliable (Pareto k > 0.7 flags it); these numbers describe how much the "
              "draws disagree on each test point (p_loo, p_waic), not an estimate of generalisation.", ""]
    return lines


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def write_report(args, out: Path) -> list[str]:
    """Analyse every run of ``args.runs`` and write the report files into ``out``; returns report.md's lines."""
    analyses = [analyse(r, args) for r in args.runs]
    check_same_test_points(analyses)
    rows, zw_rows = [], []
    for a in analyses:
        for name, pr in a.predictors.items():
            rows.append({"run": a.run_dir.name, "method": a.cfg.method, "sparsity": a.cfg.sparsity, "predictor": name,
                         **pr.metrics, "forward_passes": pr.forward_passes, "parameters_stored": pr.parameters_stored,
                         "compute_dtype": a.compute_dtype})
        zw_rows.append(a.zw)
    atomic_write_json({"predictors": rows, "zw": zw_rows}, out / "predictors.json")
    atomic_write_csv(rows, out / "predictors.csv")
    atomic_write_csv(zw_rows, out / "zw.csv")
    diagrams = {name: metrics.reliability_data(pr.log_probs, analyses[0].labels, from_logits=True)
                for name, pr in analyses[0].predictors.items()}
    metrics.plot_reliability_diagram(diagrams, out / "reliability.png", title=analyses[0].run_dir.name)
    plot_zw(zw_rows, out / "zw.png")

    md = ["# Posterior report", "", f"Runs: {', '.join(str(a.run_dir) for a in analyses)}", "",
          "## Predictors on the test split", "",
          _table(rows, ["run", "predictor", "accuracy", "ece", "nll", "brier", "forward_passes", "parameters_stored",
                       "compute_dtype"]),
          "", "forward_passes: forward passes per test batch; parameters_stored: numbers kept to predict "
          "(non-zeros of every weight setting kept; SWAG: mean, second moment and K deviations on the support).",
          "Reliability diagrams of the first run: `reliability.png`.", "",
          "## Z–W correlation (paper App. C.1)", "",
          _table(zw_rows, ["run", "sparsity", "keep", "accuracy_w", "accuracy_zw_mean", "accuracy_zw_std"]), "",
          "accuracy_w: M⊙W, the final predictor (CigL: BatchNorm recomputed for it); "
          "accuracy_zw_mean: mean over fresh Zᵢ ~ Bernoulli(keep) of M⊙Zᵢ⊙W "
          "(BatchNorm recomputed for each).  Plot: `zw.png`.", ""]
    for i, group in enumerate(chain_groups(analyses)):
        md += group_report(group, out, "" if i == 0 else f"-{i}", args)
    atomic_write_bytes("\n".join(md).encode(), out / "report.md")
    return md


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m experiments.posterior_report", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("runs", nargs="+", type=Path, help="finished run folders")
    p.add_argument("--out", type=Path, default=None, help="report folder (default: FIRST_RUN/posterior)")
    p.add_argument("--swag-rank", type=int, default=None,
                   help="K: deviation columns kept by SWAG (default: up to 20, as many as the run has samples; "
                        "more than the samples is refused)")
    p.add_argument("--swag-samples", type=int, default=10, help="S: SWAG draws averaged")
    p.add_argument("--mc-samples", type=int, default=10, help="S: fresh random masks Z for mc-z")
    p.add_argument("--bn-batches", type=int, default=None, help="training batches for BN recomputation (all)")
    p.add_argument("--weights", type=int, default=32, help="active weights traced individually in arviz")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=("auto", "bf16", "off"), default=None,
                   help="precision of every forward pass, BatchNorm recomputation included (default: "
                        "the run's own --amp; off: float32).  Recorded as compute_dtype in predictors.json")
    p.add_argument("--data-dir", default=None, help="data folder if it moved since training")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    for name in ("swag_rank", "swag_samples", "mc_samples", "weights"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(args, name)}")
    if args.bn_batches is not None and args.bn_batches < 1:
        raise ValueError(f"--bn-batches must be ≥ 1, got {args.bn_batches}")
    check_run_folders(args.runs)  # every folder, before anything is created
    check_same_test_set_before_analysis(args.runs)
    out = args.out or args.runs[0] / "posterior"
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file, not a folder")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=out, prefix=".write-check-")  # its own name: reports may run at once
        os.close(handle)
        os.unlink(probe)
    except OSError as err:  # e.g. a run folder on read-only media: the runs themselves load read-only
        where = "give --out FOLDER somewhere writable" if args.out is None else "give --out a writable folder"
        raise ValueError(f"cannot write the report into {out} ({err.strerror or err}); {where}") from None
    try:
        with RunFolderLock(out):  # one writer per report folder: a second report of it is refused at once
            md = write_report(args, out)
    except BaseException:
        if created:  # refused or failed before writing: leave no empty folder (rmdir keeps a non-empty one)
            with contextlib.suppress(OSError):
                out.rmdir()
        raise
    print("\n".join(md[:12]))
    print(f"report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    run_cli(main)
