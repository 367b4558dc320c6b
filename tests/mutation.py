"""Mutation check: break CigL on purpose, one deviation at a time, and see the tests fail.

    python -m tests.mutation                 # every mutant, a kill table in Markdown
    python -m tests.mutation --only no-z-in-forward wd-twice
    python -m tests.mutation --list

The mutants are listed in ``tests/mutants.py``.  Each replaces one exact snippet of one source file
(the snippet must occur exactly once, so a refactor that moves the code makes the check fail
loudly instead of testing nothing).  The
whole repository is copied once to a temporary folder; each mutant is applied there, the tests
that should notice it run with ``pytest -x``, and the file is restored.  A mutant is *killed*
when those tests fail; the command exits 1 if any mutant survives or cannot be applied.
The unmutated copy must pass the same tests first.  Documented in docs/testing.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm.auto import tqdm

from tests.mutants import MUTANTS, Mutant  # noqa: F401  (Mutant: re-exported for scripts)

REPO = Path(__file__).resolve().parents[1]



def copy_repo(dest: Path) -> None:
    ignore = shutil.ignore_patterns(".git", "runs", "results", "__pycache__", "*.egg-info", ".pytest_cache",
                                    ".hypothesis", ".ruff_cache", ".venv", ".carry", ".whl", "data", ".cache")
    shutil.copytree(REPO, dest, ignore=ignore)
    smalls = [*(REPO / "docs" / "results").rglob("*.json"), *(REPO / "docs" / "results").rglob("*.md")]
    for small in smalls:  # the committed studies' records and reports, read by tests
        target = dest / small.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(small, target)


def run_tests(root: Path, tests: tuple[str, ...], timeout: float) -> tuple[int, float]:
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1")
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                              cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        code = -1
    return code, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutants only")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per mutant before it counts as killed")
    args = parser.parse_args(argv)
    chosen = MUTANTS
    if args.only:
        unknown = sorted(set(args.only) - {m.name for m in MUTANTS})
        if unknown:
            parser.error(f"unknown mutant(s): {', '.join(unknown)}")
        chosen = [m for m in MUTANTS if m.name in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.name:26s} {m.path:28s} {m.what}")
        return 0

    with tempfile.TemporaryDirectory(prefix="cigl-mutation-") as tmp:
        root = Path(tmp) / "repo"
        copy_repo(root)
        all_tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        code, seconds = run_tests(root, all_tests, args.timeout * 4)
        if code != 0:
            print(f"the unmutated tests fail (pytest exit {code}); fix them before checking mutants", file=sys.stderr)
            return 2
        rows, start = [], time.perf_counter()
        for m in tqdm(chosen, desc="mutants", unit="mutant"):
            path = root / m.path
            original = path.read_text()
            count = original.count(m.old)
            if count != 1:
                rows.append((m, f"NOT APPLIED (snippet found {count}×)", 0.0))
                continue
            path.write_text(original.replace(m.old, m.new))
            try:
                code, seconds = run_tests(root, m.tests, args.timeout)
            finally:
                path.write_text(original)
            # only failing tests kill a mutant; a crash, a collection error or a timeout is reported as
            # an ERROR (the mutant broke something the tests never reached), and counts as not killed
            verdict = {0: "SURVIVED", 1: "killed"}.get(code, f"ERROR (pytest exit {code})" if code != -1 else
                                                       "ERROR (timeout)")
            rows.append((m, verdict, seconds))
    total = time.perf_counter() - start
    print("| # | mutant | deviation | file | tests run | result | s |")
    print("|---|---|---|---|---|---|---|")
    for i, (m, verdict, seconds) in enumerate(rows, start=1):
        names = ", ".join(sorted({t.split("::")[-1] if "::" in t else t for t in m.tests}))
        print(f"| {i} | `{m.name}` | {m.what} | `{m.path}` | {names} | {verdict} | {seconds:.0f} |")
    killed = sum(v == "killed" for _, v, _ in rows)
    print(f"\n{killed} of {len(rows)} mutants killed in {total / 60:.1f} min")
    return 0 if killed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
