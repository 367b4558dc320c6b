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
machines.  This module trains the grid; ``experiments.study_runs`` names and reads the runs,
``experiments.study_tables`` and ``experiments.study_plots`` report them.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from tqdm.auto import tqdm

from cigl_bayes.config import METHODS, TrainConfig
from cigl_bayes.device import resolve_device
from cigl_bayes.inference.training import run
from cigl_bayes.runs import RunFolderBusy

from .cli import ArgumentParser, add_host_allocator_argument, apply_host_allocator, run_cli
from .study_runs import (
    check_one_engine,
    check_precision,
    finished_result,
    finished_runs,
    method_spec,
    mixed_precision_note,
    precision_of,
    run_dir,
    study_rows,
)
from .study_tables import write_reports

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
    p.add_argument("--tables-only", action="store_true",
                   help="train nothing: rebuild the study's tables and plots from its finished runs with this "
                        "code (e.g. after a change to the reports, or for runs committed from other machines)")
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
    if args.tables_only:
        if not runs_root.is_dir():
            raise FileNotFoundError(f"{root} holds no runs/ folder: no study to rebuild tables for")
        rebuild_tables()
        configs = []  # nothing trains
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
