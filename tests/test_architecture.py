"""Imports flow one way: experiments/benchmarks → inference → cigl_bayes → models."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cigl_bayes.config import TrainConfig
from cigl_bayes.train import Trainer, make_objective

ROOT = Path(__file__).resolve().parents[1]
LAYER = {"models": 0, "cigl_bayes": 1, "inference": 2, "experiments": 3, "benchmarks": 3}


def imported_packages(path: Path) -> set[str]:
    """Top-level project packages imported anywhere in ``path`` (function-level imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out & set(LAYER)


@pytest.mark.parametrize("package", ["models", "cigl_bayes", "inference"])
def test_no_module_imports_a_package_above_its_own(package):
    upward = {str(p.relative_to(ROOT)): sorted(q for q in imported_packages(p) if LAYER[q] > LAYER[package])
              for p in sorted((ROOT / package).rglob("*.py"))}
    assert not {k: v for k, v in upward.items() if v}


def test_the_layer_check_sees_a_function_level_upward_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from inference.objective import ElboObjective\n")
    assert imported_packages(probe) == {"inference"}


def test_cigl_bayes_alone_names_the_missing_svi_objective(tmp_path):
    with pytest.raises(ValueError, match="objectives=inference.ENGINES"):
        make_objective(TrainConfig(engine="svi"), None, 10, 2)
    assert Trainer.__init__.__kwdefaults__["objectives"] is None
