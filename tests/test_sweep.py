"""experiments.sweep with the cpu-smoke protocol on a tiny grid: runs, resumes, tables and plots."""

from __future__ import annotations

import csv
import json

import pytest

from experiments import sweep


def test_cpu_smoke_sweep_end_to_end(cifar_data_dir, cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CIGL_CACHE_DIR", str(cache_dir))
    args = ["--protocol", "cpu-smoke", "--methods", "dense", "rigl", "cigl", "rigl+ls", "--sparsities", "0.9",
            "--seeds", "0", "1", "--epochs", "2", "--subset", "640", "--data-dir", str(cifar_data_dir),
            "--results", str(tmp_path), "--study", "tiny", "--device", "cpu", "--no-progress"]
    assert sweep.main(args) == 0
    root = tmp_path / "tiny"
    runs = sorted(p.name for p in (root / "runs").iterdir())
    assert runs == sorted(f"{m}-plain-s{s}-seed{k}" for m, s in
                          [("dense", "0"), ("rigl", "0.9"), ("cigl", "0.9"), ("rigl+ls", "0.9")] for k in (0, 1))
    with open(root / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["method"] for r in rows} == {"dense", "rigl", "rigl+ts", "cigl", "rigl+ls"}
    summary = json.loads((root / "summary.json").read_text())["summary"]
    cigl = next(e for e in summary if e["method"] == "cigl")
    values = [float(r["ece"]) for r in rows if r["method"] == "cigl"]
    assert cigl["seeds"] == 2 and cigl["ece_mean"] == pytest.approx(sum(values) / 2)
    # the label-smoothing baseline really trained with ε = 0.1
    cfg = json.loads((root / "runs" / "rigl+ls-plain-s0.9-seed0" / "config.json").read_text())
    assert cfg["method"] == "rigl" and cfg["label_smoothing"] == 0.1
    ece_table = (root / "table_ece.md").read_text()
    assert "| cigl |" in ece_table and "| rigl+ts |" in ece_table and "±" in ece_table
    for name in ("accuracy_vs_sparsity.png", "ece_vs_sparsity.png", "reliability_dense_vs_sparse.png",
                 "baselines.png", "ablations.md", "baselines.md", "summary.csv"):
        assert (root / name).stat().st_size > 0, name
    # a second call finds every run finished: same tables, no training
    before = {p: (root / "runs" / p / "metrics.json").stat().st_mtime_ns for p in runs}
    assert sweep.main(args) == 0
    assert before == {p: (root / "runs" / p / "metrics.json").stat().st_mtime_ns for p in runs}


def test_sweep_rejects_unknown_method_before_training(tmp_path):
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        sweep.main(["--methods", "rigl", "magic", "--results", str(tmp_path), "--no-progress"])
    assert not (tmp_path / "cpu-smoke").exists()
