"""The installed names are collision-free: everything lives under ``cigl_bayes`` (pyproject's package-dir).

A user's folder with its own ``models.py``, ``inference.py``, ``experiments.py`` and ``benchmarks.py``
must neither break our imports nor be shadowed by ours.
"""
from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLASHING = ("models", "inference", "experiments", "benchmarks")

# Imports the public API the docs show, then checks the user's own modules are the ones imported.
PROBE = """
import sys
from cigl_bayes import CigL, load_exported
from cigl_bayes.inference import load_run, posterior
from cigl_bayes.models import build_model
import cigl_bayes.experiments.train, cigl_bayes.benchmarks.common
import models, inference, experiments, benchmarks
assert all(m.MINE for m in (models, inference, experiments, benchmarks)), "a user's module was shadowed"
import cigl_bayes.models as ours
print(ours.__file__)
"""


def _copy_checkout(dest: Path) -> Path:
    """The files a build or an import of the checkout needs, copied to ``dest`` (no build/ leftovers)."""
    ignore = shutil.ignore_patterns("__pycache__", "results", "*.egg-info")
    for folder in ("cigl_bayes", *CLASHING):
        shutil.copytree(REPO / folder, dest / folder, ignore=ignore)
    for file in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / file, dest / file)
    return dest


def _user_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "user-project"
    folder.mkdir()
    for name in CLASHING:  # what a user's own project commonly holds
        (folder / f"{name}.py").write_text("MINE = True\ndef build_model():\n    raise RuntimeError('the user\\'s')\n")
    return folder


def _probe(folder: Path, pythonpath: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-c", PROBE], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_api_imports_from_a_folder_with_its_own_models_and_inference(tmp_path):
    proc = _probe(_user_folder(tmp_path), pythonpath=None)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "user-project" not in proc.stdout  # ours came from the installed cigl_bayes, not the user's folder


def _setuptools_is_recent() -> bool:
    try:
        return int(importlib.metadata.version("setuptools").split(".")[0]) >= 68
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.slow
def test_a_built_wheel_installs_only_the_cigl_bayes_name_and_works_beside_clashing_modules(tmp_path):
    wheels = tmp_path / "wheels"
    source = _copy_checkout(tmp_path / "source")  # a build writes build/ and *.egg-info where it runs
    build = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w", str(wheels)]
    if _setuptools_is_recent():  # offline and fast; otherwise pip fetches setuptools from the registry
        build.append("--no-build-isolation")
    subprocess.run(build, check=True, capture_output=True, timeout=600)
    (wheel,) = wheels.glob("cigl_bayes-*.whl")
    top_level = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert {name for name in top_level if not name.endswith(".dist-info")} == {"cigl_bayes"}, top_level
    names = set(zipfile.ZipFile(wheel).namelist())
    for sub in CLASHING:
        assert f"cigl_bayes/{sub}/__init__.py" in names, sub

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    proc = _probe(_user_folder(tmp_path), pythonpath=str(site))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().startswith(str(site)), proc.stdout  # the wheel's copy, not a checkout's


def test_a_checkout_imports_its_own_four_folders_and_nothing_else_of_its_root(tmp_path):
    """Run from a copy of the checkout (a worktree, the mutation check's copy), cigl_bayes.models etc. are
    the copy's folders, not the installed checkout's; other names at the root do not become subpackages."""
    copy = _copy_checkout(tmp_path / "copy")
    (copy / "tests").mkdir()
    (copy / "tests" / "__init__.py").write_text("")
    probe = ("import importlib, cigl_bayes.models as m, cigl_bayes.inference as i, cigl_bayes.experiments as e\n"
             "print(m.__file__); print(i.__file__); print(e.__file__)\n"
             "for name in ('cigl_bayes.tests', 'cigl_bayes.cigl_bayes', 'cigl_bayes.docs'):\n"
             "    try:\n        importlib.import_module(name); print('importable', name)\n"
             "    except ImportError:\n        pass\n")
    env = {**os.environ, "PYTHONPATH": str(copy)}
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.split()
    assert len(lines) == 3 and all(line.startswith(str(copy)) for line in lines), lines
