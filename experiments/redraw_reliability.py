"""Redraw finished runs' ``reliability.png`` from the bins kept in their ``metrics.json``.

    python -m experiments.redraw_reliability docs/results/cpu-study/runs
    python -m experiments.redraw_reliability docs/results/cpu-study/runs/rigl-plain-s0.95-seed0

A run's ``reliability.png`` is drawn at evaluation from its predictions, which stay on the machine
that trained it (``predictions.npz`` is git-ignored).  ``metrics.json`` keeps the 15 test bins of
every predictor (``reliability`` → ``test`` → ``{predictor: {bin_edges, counts, accuracy,
confidence}}``), and a diagram is a function of those bins alone (ECE = Σ_b |B_b|/N · |acc_b −
conf_b|), so the figure can be drawn again anywhere — after a change to the drawing, such as the
legend fix of 2026-12-05 (a predictor never under-confident showed a blue "under-confident"
swatch).  Same panels, bars and ECE as at evaluation; only the drawing code is today's.

Each given path is a run folder or a folder searched for run folders.  A run without bins
(evaluated before ``metrics.json`` kept them) is named and left alone.  Each run folder is locked
while its figure is replaced (one writer per folder), and the figure is written atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm.auto import tqdm

from cigl_bayes.evaluate import reliability_title
from cigl_bayes.metrics import plot_reliability_diagram, pooled_reliability
from cigl_bayes.runs import RunFolderLock

from .cli import ArgumentParser, run_cli


def run_folders(paths: list[Path]) -> list[Path]:
    """The run folders (folders holding a ``metrics.json``) at or under ``paths``, sorted; a path
    that does not exist is an error, named."""
    found: set[Path] = set()
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        if not path.is_dir():
            raise NotADirectoryError(f"{path} is not a folder (give a run folder or a folder of runs)")
        found.update(m.parent for m in path.rglob("metrics.json"))
    return sorted(found)


class UnreadableRun(ValueError):
    """A run folder whose metrics.json cannot be read or lacks what the figure needs."""


def redraw(folder: Path) -> bool:
    """Replace ``folder/reliability.png`` with the diagram of the bins in ``folder/metrics.json``,
    one panel per predictor in the order evaluation wrote them.  False (nothing written) when the
    run kept no bins."""
    path = folder / "metrics.json"
    try:
        result = json.loads(path.read_text())
        bins = (result.get("reliability") or {}).get("test")
        title = reliability_title(result["method"], result["model"], result["sparsity_target"])
        diagrams = {name: pooled_reliability([b]) for name, b in (bins or {}).items()}
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise UnreadableRun(f"{path} is unreadable ({type(err).__name__}: {err})") from None
    if not bins:  # (a pool of one part is that part's diagram: the inverse of metrics.reliability_to_dict)
        return False
    with RunFolderLock(folder):
        plot_reliability_diagram(diagrams, folder / "reliability.png", title=title)
    return True


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m experiments.redraw_reliability", description=__doc__.split("\n")[0],
                       epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", type=Path, help="run folders, or folders searched for run folders")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    args = p.parse_args(argv)
    folders = run_folders(args.paths)
    if not folders:
        raise FileNotFoundError(f"no run folder (a folder with metrics.json) under {', '.join(map(str, args.paths))}")
    redrawn, without_bins, unreadable = [], [], []
    for folder in tqdm(folders, desc="reliability.png", disable=not args.progress):
        try:  # one bad folder is named at the end; the others are still redrawn
            (redrawn if redraw(folder) else without_bins).append(folder)
        except UnreadableRun as err:
            unreadable.append(str(err))
    for folder in without_bins:
        print(f"note: {folder} keeps no reliability bins in metrics.json; its figure is left as it was",
              file=sys.stderr)
    print(f"redrew {len(redrawn)} reliability.png of {len(folders)} run folders")
    if unreadable:
        raise UnreadableRun(f"{len(unreadable)} run folder(s) left as they were: " + "; ".join(unreadable))
    return 0


if __name__ == "__main__":
    run_cli(main)
