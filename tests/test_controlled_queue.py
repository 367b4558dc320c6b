"""experiments/controlled_queue.sh with a stand-in sweep: the registered order, one commit per run,
training outside the checkout without overwriting anything newer on either side."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

# Stands in for experiments.sweep: "finishes" the asked-for run in --results/controlled and rebuilds
# a study table from every finished run there, as the real sweep does.
STUB_SWEEP = '''
import argparse, json, pathlib
p = argparse.ArgumentParser()
for flag in ("--protocol", "--results", "--study", "--amp", "--methods", "--seeds"):
    p.add_argument(flag)
p.add_argument("--no-progress", action="store_true")
a = p.parse_args()
study = pathlib.Path(a.results) / a.study
run = study / "runs" / f"{a.methods}-plain-s0.95-seed{a.seeds}"
run.mkdir(parents=True, exist_ok=True)
import os, sys
if os.environ.get("STUB_DIVERGES") == run.name:  # a non-finite loss: the trainer's marker, no metrics.json
    (run / "config.json").write_text("{}")
    (run / "diverged.json").write_text(json.dumps({"loss": "nan"}))
    sys.exit(1)
if os.environ.get("STUB_CRASHES") == run.name:
    sys.exit(1)
resumed = (run / "checkpoint.pt").read_text() if (run / "checkpoint.pt").exists() else "fresh"
(run / "metrics.json").write_text(json.dumps({"completed": True, "resumed_from": resumed}))
(run / "checkpoint.pt").write_text("final")
finished = sorted(r.name for r in (study / "runs").iterdir() if (r / "metrics.json").exists())
(study / "runs.csv").write_text("\\n".join(finished) + "\\n")
import os  # meanwhile, someone reruns the registered analysis on the checkout
if os.environ.get("MAIN_REGISTERED"):
    pathlib.Path(os.environ["MAIN_REGISTERED"]).write_text("registered analysis v2\\n")
'''

# Stand in for the evaluations the queue runs with the checkout's code after each run: the Laplace
# baseline writes <run>/laplace.json (or fails, when STUB_LAPLACE_FAILS names the run), the
# registered analysis lists every finished run and every Laplace file.
STUB_LAPLACE = '''
import json, os, pathlib, sys
run = pathlib.Path(sys.argv[1])
if os.environ.get("STUB_LAPLACE_FAILS") == run.name:
    sys.exit("laplace failed")
(run / "laplace.json").write_text(json.dumps({"method": "rigl"}))
'''
# Stands in for the re-evaluation (experiments.reevaluate RUN ... --out FOLDER): writes FOLDER/<run>.json,
# or fails when STUB_REEVALUATION_FAILS names the run.
STUB_REEVALUATE = '''
import json, os, pathlib, sys
run = pathlib.Path(sys.argv[1])
assert sys.argv[2:6] == ["--bn-protocols", "recomputed-augmented", "--predictors", "final"], sys.argv
out = pathlib.Path(sys.argv[sys.argv.index("--out") + 1])
if os.environ.get("STUB_REEVALUATION_FAILS") == run.name:
    sys.exit("re-evaluation failed")
out.mkdir(parents=True, exist_ok=True)
(out / f"{run.name}.json").write_text(json.dumps({"seed": 0}))
'''
# Stand in for the checkout's sweep called with --tables-only: the tables rebuilt by the checkout's code.
STUB_TABLES = '''
import pathlib, sys
assert "--tables-only" in sys.argv
study = pathlib.Path("docs/results/controlled")
finished = sorted(r.name for r in (study / "runs").iterdir() if (r / "metrics.json").exists())
(study / "runs.csv").write_text("rebuilt on the checkout\\n" + "\\n".join(finished) + "\\n")
'''
STUB_ANALYSIS = '''
import pathlib, sys
study = pathlib.Path(sys.argv[1])
runs = sorted(r.name for r in (study / "runs").iterdir() if (r / "metrics.json").exists())
laplace = sorted(r.name for r in (study / "runs").iterdir() if (r / "laplace.json").exists())
(study / "registered.md").write_text(f"runs {runs}\\nlaplace {laplace}\\n")
'''


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture()
def queue(tmp_path):
    code = tmp_path / "code"
    (code / "experiments").mkdir(parents=True)
    shutil.copy(REPO / "experiments" / "controlled_queue.sh", code / "experiments")
    (code / "experiments" / "__init__.py").write_text("")
    (code / "experiments" / "sweep.py").write_text(STUB_SWEEP)
    target = tmp_path / "main"
    study = target / "docs" / "results" / "controlled"
    (study / "runs" / "rigl-plain-s0.95-seed3").mkdir(parents=True)
    (study / "runs" / "rigl-plain-s0.95-seed3" / "metrics.json").write_text(json.dumps({"completed": True}))
    (study / "registered.md").write_text("registered analysis v1\n")
    (target / ".gitignore").write_text("*.pt\n__pycache__/\n")
    (target / "experiments").mkdir()
    (target / "experiments" / "__init__.py").write_text("")
    (target / "experiments" / "laplace_baseline.py").write_text(STUB_LAPLACE)
    (target / "experiments" / "controlled_study.py").write_text(STUB_ANALYSIS)
    (target / "experiments" / "reevaluate.py").write_text(STUB_REEVALUATE)
    (target / "experiments" / "sweep.py").write_text(STUB_TABLES)
    _git(target, "init", "-q", "-b", "main")
    _git(target, "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    _git(target, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run 1")
    _git(target, "config", "user.name", "t")
    _git(target, "config", "user.email", "t@t")
    return code, target, study


def _run_queue(code: Path, target: Path, work: Path | None, env: dict | None = None) -> subprocess.CompletedProcess:
    args = ["bash", str(code / "experiments" / "controlled_queue.sh"), str(target)] + ([str(work)] if work else [])
    return subprocess.run(args, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})


def test_the_queue_trains_outside_the_checkout_and_commits_each_run_in_the_registered_order(queue, tmp_path):
    code, target, study = queue
    work = tmp_path / "work"
    # an unfinished run of an earlier session: its newer checkpoint in the work folder must survive,
    # although the checkout still holds a stale, untracked one
    unfinished = "cigl-keep0.99-plain-s0.95-seed3"
    (work / "controlled" / "runs" / unfinished).mkdir(parents=True)
    (work / "controlled" / "runs" / unfinished / "checkpoint.pt").write_text("epoch 9")
    (study / "runs" / unfinished).mkdir()
    (study / "runs" / unfinished / "checkpoint.pt").write_text("epoch 2")
    (work / "controlled" / "registered.md").write_text("stale registered analysis\n")

    proc = _run_queue(code, target, work, env={"MAIN_REGISTERED": str(study / "registered.md")})
    assert proc.returncode == 0, proc.stderr
    started = [line.split()[2] for line in proc.stdout.splitlines() if " start " in line]
    assert started[:3] == [unfinished, "rigl-plain-s0.95-seed4", "cigl-keep0.99-plain-s0.95-seed4"]
    assert started[-1] == "cigl-no-wma-keep0.99-plain-s0.95-seed5" and len(started) == 15  # 16 cells, 1 done
    resumed = json.loads((study / "runs" / unfinished / "metrics.json").read_text())["resumed_from"]
    assert resumed == "epoch 9"  # trained on from the work folder's checkpoint, not the checkout's
    messages = _git(target, "log", "--reverse", "--format=%s").splitlines()
    runs = [m for m in messages if m.endswith("(float32)")]
    assert messages[0] == "run 1" and runs[0] == f"controlled: {unfinished} (float32)" and len(runs) == 15
    # the committed rigl seed 3 gets its Laplace baseline first; each run is followed by its evaluations
    assert messages[1] == ("controlled: after rigl-plain-s0.95-seed3, last-layer Laplace, re-evaluation, "
                           "study tables, registered analysis")
    for i, message in enumerate(messages[2:], start=2):
        if message.endswith("(float32)"):
            run = message.split()[1]
            what = ("last-layer Laplace, re-evaluation, study tables, registered analysis" if run.startswith("rigl-")
                    else "study tables, registered analysis")
            assert messages[i + 1] == f"controlled: after {run}, {what}"
    tracked = _git(target, "ls-files").split()
    assert not [f for f in tracked if f.endswith(".pt")]  # weights stay out (.gitignore)
    laplace = sorted(Path(f).parent.name for f in tracked if f.endswith("laplace.json"))
    assert laplace == [f"rigl-plain-s0.95-seed{s}" for s in range(3, 8)]  # every rigl run, no other
    reevaluated = sorted(Path(f).name for f in tracked if "/reevaluated/" in f)
    assert reevaluated == [f"rigl-plain-s0.95-seed{s}.json" for s in range(3, 8)]
    runs_csv = (study / "runs.csv").read_text()  # rebuilt by the checkout's code, counting every run
    assert runs_csv.startswith("rebuilt on the checkout") and runs_csv.count("seed") == 16
    registered = (study / "registered.md").read_text()  # rebuilt on the checkout after the last run,
    assert registered.count("seed") == 16 + 5
    # the work folder's copy (seeded from the first commit) never comes back, in no later commit
    commits = _git(target, "log", "--reverse", "--format=%H").split()
    contents = [_git(target, "show", f"{c}:docs/results/controlled/registered.md") for c in commits]
    assert contents[0] == "registered analysis v1\n" and "registered analysis v1\n" not in contents[1:]
    assert _git(target, "status", "--porcelain", "--", "docs") == ""  # everything committed

    again = _run_queue(code, target, work)  # the next session: nothing left to do
    assert again.returncode == 0 and " start " not in again.stdout and "queue done" in again.stdout


def test_without_a_work_folder_the_queue_trains_in_the_checkout(queue):
    code, target, study = queue
    proc = _run_queue(code, target, None)
    assert proc.returncode == 0, proc.stderr
    assert (study / "runs" / "cigl-keep0.99-plain-s0.95-seed7" / "metrics.json").exists()
    assert len([m for m in _git(target, "log", "--format=%s").splitlines() if m.endswith("(float32)")]) == 15


def test_a_failed_laplace_baseline_is_logged_never_stops_training_and_is_retried(queue, tmp_path):
    code, target, study = queue
    work = tmp_path / "work"
    failing = "rigl-plain-s0.95-seed4"
    proc = _run_queue(code, target, work, env={"STUB_LAPLACE_FAILS": failing})
    assert proc.returncode == 0, proc.stderr
    assert f"error: the Laplace baseline of {failing} failed" in proc.stderr
    assert "queue done" in proc.stdout  # every later run still trained
    assert not (study / "runs" / failing / "laplace.json").exists()
    assert (study / "runs" / "rigl-plain-s0.95-seed5" / "laplace.json").exists()
    again = _run_queue(code, target, work)  # the next start: no training, only the missing baseline
    assert again.returncode == 0, again.stderr
    assert " start " not in again.stdout
    assert _git(target, "ls-files", "--", f"docs/results/controlled/runs/{failing}/laplace.json").strip()
    assert _git(target, "log", "-1", "--format=%s").strip() == \
        f"controlled: after {failing}, last-layer Laplace, study tables, registered analysis"


def test_a_failed_reevaluation_is_logged_never_stops_training_and_is_retried(queue, tmp_path):
    """A run committed before the queue re-evaluated (or whose re-evaluation failed) gets it at the
    next start, before any training; its Laplace baseline is not fitted again."""
    code, target, study = queue
    work = tmp_path / "work"
    failing = "rigl-plain-s0.95-seed5"
    proc = _run_queue(code, target, work, env={"STUB_REEVALUATION_FAILS": failing})
    assert proc.returncode == 0, proc.stderr
    assert f"error: the re-evaluation of {failing} failed" in proc.stderr and "queue done" in proc.stdout
    assert not (study / "reevaluated" / f"{failing}.json").exists()
    again = _run_queue(code, target, work)
    assert again.returncode == 0, again.stderr
    assert " start " not in again.stdout
    assert _git(target, "ls-files", "--", f"docs/results/controlled/reevaluated/{failing}.json").strip()
    assert _git(target, "log", "-1", "--format=%s").strip() == \
        f"controlled: after {failing}, re-evaluation, study tables, registered analysis"


@pytest.mark.parametrize("with_work_folder", [True, False])
def test_a_diverged_run_is_committed_as_a_failure_and_never_retried(queue, tmp_path, with_work_folder):
    """A run that diverges (docs/preregistration.md, amendment 2: a failure of its method for that
    seed) is committed with its diverged.json, gets no Laplace fit, and the queue goes on; no later
    start trains it again.  A run that crashes otherwise stops the queue, to be resumed."""
    code, target, study = queue
    work = tmp_path / "work" if with_work_folder else None
    diverging = "rigl-plain-s0.95-seed4"
    proc = _run_queue(code, target, work, env={"STUB_DIVERGES": diverging})
    assert proc.returncode == 0, proc.stderr
    assert f"{diverging} diverged: committed as a failure of rigl at seed 4" in proc.stdout
    assert "queue done" in proc.stdout
    tracked = _git(target, "ls-files").split()
    assert f"docs/results/controlled/runs/{diverging}/diverged.json" in tracked
    assert f"docs/results/controlled/runs/{diverging}/laplace.json" not in tracked
    assert f"docs/results/controlled/reevaluated/{diverging}.json" not in tracked
    messages = _git(target, "log", "--format=%s").splitlines()
    assert f"controlled: {diverging} diverged (float32)" in messages
    assert "error" not in proc.stderr
    again = _run_queue(code, target, work)
    assert again.returncode == 0 and " start " not in again.stdout, again.stdout


def test_a_run_that_stops_without_diverging_stops_the_queue(queue, tmp_path):
    code, target, study = queue
    proc = _run_queue(code, target, tmp_path / "work", env={"STUB_CRASHES": "rigl-plain-s0.95-seed4"})
    assert proc.returncode == 1 and "error: rigl-plain-s0.95-seed4 stopped (exit 1)" in proc.stderr
    assert "queue done" not in proc.stdout
