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


def test_keep_variants_of_random_mask_methods():
    assert sweep.method_spec("cigl-keep0.99") == ("cigl", {"random_mask_rate": 0.01})
    assert sweep.method_spec("cigl-no-wma-keep0.9") == ("cigl-no-wma", {"random_mask_rate": 0.1})
    for bad in ("rigl-keep0.9", "cigl-keep1.5", "cigl-keepx", "cigl-keep0"):
        with pytest.raises(ValueError, match="keep|unknown method"):
            sweep.method_spec(bad)
    assert sweep.grid(["cigl-keep0.99"], [0.95], [0, 1]) == [("cigl-keep0.99", 0.95, 0), ("cigl-keep0.99", 0.95, 1)]


def test_a_run_finished_elsewhere_is_read_from_its_small_files(tmp_path):
    """A study accumulates across machines: a folder with only config.json and metrics.json (as
    committed under docs/results/) counts as finished for the same config, and only for it."""
    from cigl_bayes.config import TrainConfig

    cfg = TrainConfig(model="small-cnn", epochs=4, sparsity=0.9, device="cpu")
    resolved = cfg.resolved(n_train=5000)
    (tmp_path / "config.json").write_text(json.dumps(resolved.to_dict()))
    (tmp_path / "metrics.json").write_text(json.dumps({"completed": True, "n_train": 5000, "seed": 0}))
    assert sweep.finished_result(tmp_path, cfg)["seed"] == 0
    assert sweep.finished_result(tmp_path, TrainConfig(model="small-cnn", epochs=5, sparsity=0.9)) is None
    (tmp_path / "metrics.json").write_text('{"completed": tr')  # truncated: train again
    assert sweep.finished_result(tmp_path, cfg) is None


def test_paired_differences_are_per_seed_against_rigl():
    rows = [{"method": m, "sparsity": 0.95, "seed": k, "ece": e, "accuracy": a}
            for m, k, e, a in [("rigl", 0, 0.04, 0.80), ("cigl", 0, 0.03, 0.81), ("rigl", 1, 0.05, 0.79),
                               ("cigl", 1, 0.06, 0.78)]]
    table = sweep.paired_table(rows)
    assert "| cigl | 0.95 | 0 | -1.00 | -25% | +1.00 |" in table
    assert "| cigl | 0.95 | 1 | +1.00 | +20% | -1.00 |" in table
