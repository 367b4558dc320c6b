"""Evaluate committed runs again from their weights file, without retraining.

    python -m experiments.reevaluate docs/results/controlled/runs/rigl-plain-s0.95-seed3 --out /tmp/reeval
    python -m experiments.reevaluate RUN [RUN ...] --out-name reevaluation.json --device cpu

Each RUN is a run folder holding ``weights.safetensors`` (every study run from the controlled
study on commits one; ``cigl_bayes/weights.py``) or the file itself.  The network is rebuilt from
the config stored in the file and every predictor is scored under every BatchNorm protocol
(``tracked``, ``recomputed-clean``, ``recomputed-augmented``) by the code that evaluated the run
after training.  The result goes to ``--out DIR/<run name>.json``, or, without ``--out``, to
``<run>/reevaluation.json`` (``--out-name``; git ignores it inside ``docs/results``).
``--bn-protocols`` and ``--predictors`` limit the work (each recomputed protocol is a pass over the
training images per weight setting).  Every evaluated setting also gets its own temperature,
fitted on the validation split under the same statistics (``temperature_by_bn_protocol``; none
where the run has no validation split or was trained without temperature scaling):

    python -m experiments.reevaluate docs/results/controlled/runs/rigl-plain-s0.95-seed* \
        --bn-protocols recomputed-augmented --predictors final --out docs/results/controlled/reevaluated

Every input is checked before any work: the weights file must fit the folder's ``config.json``
(a file copied in from another run is refused) and the network; two runs may not write to one
file; a test set whose fingerprint differs from the run's ``metrics.json`` is refused before
scoring.  The result records how far it is from ``metrics.json`` → ``by_bn_protocol``
(``agreement``: the largest absolute difference of any score); it is 0 on the CPU model, torch
version and thread count that evaluated the run (``--threads`` defaults to the run's recorded
count).  A WRN-22-2 run takes minutes to tens of minutes on a 2-core CPU: its BatchNorm
statistics are recomputed over the 45,000 training images for each weight setting and protocol.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from cigl_bayes.evaluate import (
    classes_of_weights,
    config_of_weights,
    network_of_weights,
    reevaluate,
    weight_predictors,
)
from cigl_bayes.predict import BN_PROTOCOLS, bn_protocols_of
from cigl_bayes.runs import RunFolderLock, atomic_write_json
from cigl_bayes.train import config_file_problem
from cigl_bayes.weights import WEIGHTS_FILE, load_run_weights

from .cli import ArgumentParser, run_cli

SPLITS = ("test", "val")
RUN_FILES = ("config.json", "metrics.json", "laplace.json", "diverged.json")  # a run's own: never overwritten


def weights_path(run: Path) -> Path:
    """The weights file of a run folder (or the file itself)."""
    if run.is_dir():
        return run / WEIGHTS_FILE
    if run.is_file():
        return run
    raise FileNotFoundError(f"no run folder or weights file at {run}")


def folder_of(run: Path) -> Path:
    return run if run.is_dir() else run.parent


def stored_metrics(run: Path) -> dict:
    """The run folder's metrics.json ({} when there is none or it cannot be read)."""
    path = folder_of(run) / "metrics.json"
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return stored if isinstance(stored, dict) else {}


def output_names(runs: list[Path]) -> list[str]:
    """One file name per run for ``--out``: the run folder's name, or, where two runs share it, as
    many of their parent folders as tell them apart (``precision-native-bf16__runs__cigl-….json``)."""
    parts = [folder_of(r).resolve().parts for r in runs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["__".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return [f"{n}.json" for n in names]
    same = next(r for i, r in enumerate(runs) if names.count(names[i]) > 1)
    raise ValueError(f"the run {same} is given twice")


def check_weights_file(run: Path, path: Path, predictors: list[str] | None = None,
                       protocols: list[str] | None = None) -> None:
    """Everything about one input that can be checked without its data: the file reads, its config
    is a valid run config that agrees with the folder's config.json, it fits the network, and it
    holds every asked predictor under at least one asked protocol."""
    weights, meta = load_run_weights(path)
    cfg = config_of_weights(path, meta)
    problem = config_file_problem(folder_of(run), meta["config"], source=path.name)
    if problem:
        raise ValueError(problem)
    network_of_weights(path, weights, meta, cfg, torch.device("cpu"), classes_of_weights(meta, cfg))
    for name in predictors or ():
        if name not in weight_predictors(weights):
            raise ValueError(f"{path} holds no {name} weights (it holds {', '.join(weight_predictors(weights))})")
        if protocols is not None and not set(bn_protocols_of(name)) & set(protocols):
            raise ValueError(f"{name} has none of the BatchNorm protocols {', '.join(protocols)} "
                             f"(it has {', '.join(bn_protocols_of(name))})")


def largest_difference(before: dict, after: dict) -> tuple[float | None, str | None]:
    """(largest |difference|, where) over every score both ``by_bn_protocol`` tables hold
    (protocol / split / predictor / metric); (None, None) when they share none."""
    worst, where = None, None
    for protocol, splits in after.items():
        for split in SPLITS:
            for name, scores in (splits.get(split) or {}).items():
                old = (((before.get(protocol) or {}).get(split) or {}).get(name)) or {}
                for metric, value in scores.items():
                    if isinstance(old.get(metric), (int, float)) and isinstance(value, (int, float)):
                        diff = abs(float(value) - float(old[metric]))
                        if worst is None or diff > worst:
                            worst, where = diff, f"{protocol}/{split}/{name}/{metric}"
    return worst, where


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m experiments.reevaluate", description=__doc__.split("\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("runs", nargs="+", type=Path, help="run folders (or weights.safetensors files)")
    p.add_argument("--out-name", default="reevaluation.json", help="file name written inside each run folder")
    p.add_argument("--out", type=Path, default=None, help="write <run name>.json here instead of into the runs")
    p.add_argument("--data-dir", default=None, help="data folder (default: the run's, then $CIGL_DATA_DIR)")
    p.add_argument("--device", default="auto")
    p.add_argument("--bn-protocols", nargs="+", choices=BN_PROTOCOLS, default=None, metavar="PROTOCOL",
                   help=f"evaluate under these BatchNorm protocols only ({', '.join(BN_PROTOCOLS)}; default: all); "
                        "each recomputed one is a pass over the training images")
    p.add_argument("--predictors", nargs="+", choices=("final", "wma", "predictive"), default=None,
                   help="evaluate these weight settings only (default: every one the file holds)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: the count the run was evaluated with, from its metrics.json, at most "
                        "this machine's cores; OMP_NUM_THREADS is not followed: another count sums in another order)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    if "/" in args.out_name or not args.out_name.endswith(".json"):
        raise ValueError(f"--out-name must be a plain .json file name, got {args.out_name!r}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be a positive integer, got {args.threads}")
    if args.out is None and args.out_name in RUN_FILES:
        raise ValueError(f"--out-name {args.out_name} is a file of the run folder itself; choose another name")
    # every input checked before any work
    paths = [weights_path(r) for r in args.runs]
    if args.out is not None:
        if args.out.exists() and not args.out.is_dir():
            raise ValueError(f"--out {args.out} is a file, not a folder")
        targets = [args.out / name for name in output_names(args.runs)]
    else:
        targets = [folder_of(r) / args.out_name for r in args.runs]
        seen: dict[Path, Path] = {}
        for run, target in zip(args.runs, targets):
            if target.resolve() in seen:
                raise ValueError(f"the run {run} is given twice")
            seen[target.resolve()] = run
    for run, path in zip(args.runs, paths):
        check_weights_file(run, path, args.predictors, args.bn_protocols)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        if not os.access(args.out, os.W_OK):
            raise ValueError(f"--out {args.out} cannot be written")
    threads_before = torch.get_num_threads()
    try:
        for run, path, target in tqdm(list(zip(args.runs, paths, targets)), desc="reevaluate", unit="run",
                                      disable=not args.progress):
            torch.set_num_threads(thread_count(args.threads, stored_metrics(run)))
            reevaluate_one(run, path, target, args)
    finally:
        torch.set_num_threads(threads_before)
    return 0


def thread_count(asked: int | None, stored: dict) -> int:
    """CPU threads for one run: ``--threads``; else the count the run was evaluated with (the same
    summation order, so the same numbers; ``OMP_NUM_THREADS`` is not followed, as it would change
    them), at most this machine's cores; else this process's count."""
    if asked is not None:
        return asked
    recorded = (stored.get("runtime") or {}).get("cpu_threads")
    if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded >= 1:
        return min(recorded, os.cpu_count() or recorded)
    return torch.get_num_threads()


def reevaluate_one(run: Path, path: Path, target: Path, args) -> None:
    """Score one run's weights file and write its result (with its agreement with metrics.json)."""
    stored = stored_metrics(run)
    result = reevaluate(path, data_dir=args.data_dir, device=args.device,
                        test_fingerprint=stored.get("test_fingerprint"),
                        predictors=args.predictors, protocols=args.bn_protocols)
    result["weights_file"] = str(path)
    worst, where = largest_difference(stored.get("by_bn_protocol") or {}, result["by_bn_protocol"])
    result["agreement"] = {"compared_with": "metrics.json by_bn_protocol" if worst is not None else None,
                           "largest_abs_difference": worst, "at": where,
                           "evaluated_on": stored.get("runtime")}
    if args.out is None:
        with RunFolderLock(folder_of(run)):
            atomic_write_json(result, target)
    else:
        atomic_write_json(result, target)
    head = result["bn_protocol"]
    print(f"{run}: " + ", ".join(f"{name} [{head[name]}] acc {m['accuracy']:.4f} ECE {m['ece']:.4f}"
                                 for name, m in result["test"].items()) + f" → {target}")
    if not result["temperature_by_bn_protocol"]:
        print("  no temperature: the run has no validation split, or was trained without temperature scaling")
    for protocol, by_name in result["temperature_by_bn_protocol"].items():
        for name, entry in by_name.items():
            print(f"  {name} [{protocol}] with T = {entry['temperature']:.3f}: acc {entry['test']['accuracy']:.4f} "
                  f"ECE {entry['test']['ece']:.4f}")
    if worst is not None:
        print(f"  largest difference from metrics.json: {worst:.3g} ({where})")


if __name__ == "__main__":
    run_cli(main)
