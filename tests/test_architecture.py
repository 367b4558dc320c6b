"""Imports flow one way: experiments/benchmarks → inference → cigl_bayes → models."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cigl_bayes.config import TrainConfig
from cigl_bayes.train import Trainer, make_objective

ROOT = Path(__file__).resolve().parents[1]
LAYER = {"models": 0, "cigl_bayes": 1, "inference": 2, "experiments": 3, "benchmarks": 3}


def _layer_of(module: str) -> str:
    """The project layer a module belongs to: the repository folders install as ``cigl_bayes.<folder>``."""
    parts = module.split(".")
    if parts[0] == "cigl_bayes" and len(parts) > 1 and parts[1] in LAYER:
        return parts[1]
    return parts[0]


def imported_packages(path: Path, package: str | None = None) -> set[str]:
    """Project layers imported anywhere in ``path`` (function-level and relative imports included).

    ``package`` is the repository folder ``path`` lives in, which resolves relative imports
    (``inference/`` is installed as ``cigl_bayes.inference``).
    """
    home = ["cigl_bayes"] if package in (None, "cigl_bayes") else ["cigl_bayes", package]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(_layer_of(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                out.add(_layer_of(node.module or ""))
                continue
            base = home[: len(home) - (node.level - 1)]
            modules = [node.module] if node.module else [a.name for a in node.names]
            out.update(_layer_of(".".join([*base, m])) for m in modules)
    return out & set(LAYER)


@pytest.mark.parametrize("package", ["models", "cigl_bayes", "inference"])
def test_no_module_imports_a_package_above_its_own(package):
    upward = {str(p.relative_to(ROOT)): sorted(q for q in imported_packages(p, package) if LAYER[q] > LAYER[package])
              for p in sorted((ROOT / package).rglob("*.py"))}
    assert not {k: v for k, v in upward.items() if v}


def test_the_layer_check_sees_a_function_level_upward_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from cigl_bayes.inference.objective import ElboObjective\n")
    assert imported_packages(probe) == {"inference"}
    probe.write_text("from cigl_bayes.config import TrainConfig\nimport cigl_bayes.experiments.train\n")
    assert imported_packages(probe) == {"cigl_bayes", "experiments"}


def test_the_layer_check_resolves_relative_imports_to_the_installed_names(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from .inference import load_run\nfrom . import models\nfrom .config import TrainConfig\n")
    assert imported_packages(probe, "cigl_bayes") == {"inference", "models", "cigl_bayes"}
    probe.write_text("from .guide import HierarchicalGuide\nfrom ..experiments import cli\n")
    assert imported_packages(probe, "inference") == {"inference", "experiments"}


def test_cigl_bayes_alone_names_the_missing_svi_objective(tmp_path):
    with pytest.raises(ValueError, match="objectives=cigl_bayes.inference.ENGINES"):
        make_objective(TrainConfig(engine="svi"), None, 10, 2)
    assert Trainer.__init__.__kwdefaults__["objectives"] is None


def _old_top_level_imports(path: Path) -> list[str]:
    """Absolute imports of models, inference, experiments or benchmarks as top-level names: they work in a
    checkout's root folder only, and break in an installed package (everything lives under cigl_bayes)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
        found += [n for n in names if n.split(".")[0] in LAYER and n.split(".")[0] != "cigl_bayes"]
    return found


def test_no_code_imports_the_repository_folders_by_their_old_top_level_names(tmp_path):
    offenders = {str(p.relative_to(ROOT)): _old_top_level_imports(p)
                 for folder in ("cigl_bayes", "models", "inference", "experiments", "benchmarks", "tests")
                 for p in sorted((ROOT / folder).rglob("*.py"))}
    assert not {k: v for k, v in offenders.items() if v}
    probe = tmp_path / "probe.py"
    probe.write_text("import models\nfrom inference.run import load_run\nfrom cigl_bayes.models import build_model\n")
    assert _old_top_level_imports(probe) == ["models", "inference.run"]


def test_load_run_keeps_its_old_import_path_after_the_move_to_inference_loading():
    from cigl_bayes.inference import load_run
    from cigl_bayes.inference.run import load_run as old_path

    assert old_path is load_run
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        from cigl_bayes.inference import run

        run.no_such_name  # noqa: B018
