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
resumed = (run / "checkpoint.pt").read_text() if (run / "checkpoint.pt").exists() else "fresh"
(run / "metrics.json").write_text(json.dumps({"completed": True, "resumed_from": resumed}))
(run / "checkpoint.pt").write_text("final")
finished = sorted(r.name for r in (study / "runs").iterdir() if (r / "metrics.json").exists())
(study / "runs.csv").write_text("\\n".join(finished) + "\\n")
import os  # meanwhile, someone reruns the registered analysis on the checkout
if os.environ.get("MAIN_REGISTERED"):
    pathlib.Path(os.environ["MAIN_REGISTERED"]).write_text("registered analysis v2\\n")
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
    (target / ".gitignore").write_text("*.pt\n")
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
    messages = _git(target, "log", "--format=%s").splitlines()
    assert messages[-1] == "run 1" and messages[-2] == f"controlled: {unfinished} (float32)" and len(messages) == 16
    tracked = _git(target, "ls-files").split()
    assert not [f for f in tracked if f.endswith(".pt")]  # weights stay out (.gitignore)
    assert (study / "runs.csv").read_text().count("seed") == 16  # the rebuilt table counts every run
    assert (study / "registered.md").read_text() == "registered analysis v2\n"  # the work copy never comes back

    again = _run_queue(code, target, work)  # the next session: nothing left to do
    assert again.returncode == 0 and " start " not in again.stdout and "queue done" in again.stdout


def test_without_a_work_folder_the_queue_trains_in_the_checkout(queue):
    code, target, study = queue
    proc = _run_queue(code, target, None)
    assert proc.returncode == 0, proc.stderr
    assert (study / "runs" / "cigl-keep0.99-plain-s0.95-seed7" / "metrics.json").exists()
    assert len(_git(target, "log", "--format=%s").splitlines()) == 16
