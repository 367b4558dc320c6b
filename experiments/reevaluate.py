"""Evaluate committed runs again from their weights file, without retraining.

    python -m experiments.reevaluate docs/results/controlled/runs/rigl-plain-s0.95-seed3
    python -m experiments.reevaluate RUN [RUN ...] --out-name reevaluation.json --device cpu

Each RUN is a run folder holding ``weights.safetensors`` (every study run from the controlled
study on commits one; ``cigl_bayes/weights.py``) or the file itself.  The network is rebuilt from
the config stored in the file and every predictor is scored under every BatchNorm protocol
(``tracked``, ``recomputed-clean``, ``recomputed-augmented``) by the code that evaluated the run
after training, so on the machine that trained it the result equals ``metrics.json``'s
``by_bn_protocol``.  The result goes to ``<run>/reevaluation.json`` (``--out-name``), or, for a
folder that cannot be written (read-only media), to ``--out DIR/<run name>.json``.  A run whose
test set differs from the one it was first scored on (its ``test_fingerprint``) is refused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm.auto import tqdm

from cigl_bayes.evaluate import reevaluate
from cigl_bayes.runs import RunFolderLock, atomic_write_json
from cigl_bayes.weights import WEIGHTS_FILE

from .cli import ArgumentParser, run_cli


def weights_path(run: Path) -> Path:
    """The weights file of a run folder (or the file itself)."""
    if run.is_dir():
        return run / WEIGHTS_FILE
    if run.is_file():
        return run
    raise FileNotFoundError(f"no run folder or weights file at {run}")


def check_same_test_set(run: Path, result: dict) -> None:
    """Refuse a re-evaluation scored on other test images than the run's metrics.json."""
    stored = run / "metrics.json" if run.is_dir() else None
    if stored is None or not stored.is_file():
        return
    try:
        before = json.loads(stored.read_text()).get("test_fingerprint")
    except ValueError:
        return
    if before and before != result["test_fingerprint"]:
        raise ValueError(f"{run}: the test set found here differs from the one the run was scored on "
                         f"(fingerprint {result['test_fingerprint']} vs {before}); give the run's --data-dir")


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m experiments.reevaluate", description=__doc__.split("\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("runs", nargs="+", type=Path, help="run folders (or weights.safetensors files)")
    p.add_argument("--out-name", default="reevaluation.json", help="file name written inside each run folder")
    p.add_argument("--out", type=Path, default=None, help="write <run name>.json here instead of into the runs")
    p.add_argument("--data-dir", default=None, help="data folder (default: the run's, then $CIGL_DATA_DIR)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    if "/" in args.out_name or not args.out_name.endswith(".json"):
        raise ValueError(f"--out-name must be a plain .json file name, got {args.out_name!r}")
    paths = [weights_path(r) for r in args.runs]  # every input checked before any work
    for run, path in tqdm(list(zip(args.runs, paths)), desc="reevaluate", unit="run", disable=not args.progress):
        result = reevaluate(path, data_dir=args.data_dir, device=args.device)
        check_same_test_set(run, result)
        result["weights_file"] = str(path)
        if args.out is not None:
            target = args.out / f"{(run if run.is_dir() else run.parent).resolve().name}.json"
            atomic_write_json(result, target)
        else:
            folder = run if run.is_dir() else run.parent
            with RunFolderLock(folder):
                target = atomic_write_json(result, folder / args.out_name)
        head = result["bn_protocol"]
        print(f"{run}: " + ", ".join(f"{name} [{head[name]}] acc {m['accuracy']:.4f} ECE {m['ece']:.4f}"
                                     for name, m in result["test"].items()) + f" → {target}")
    return 0


if __name__ == "__main__":
    run_cli(main)
