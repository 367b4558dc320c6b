"""experiments.compare_studies: runs of two studies paired by seed, judged against study A's seed noise."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from experiments import compare_studies


def _study(root, accuracies: dict[int, float], compute_dtype: str, ece: float = 0.03, nll: float = 0.6):
    """A sweep study with one finished rigl run per seed (only the small files a study keeps)."""
    for seed, accuracy in accuracies.items():
        folder = root / "runs" / f"rigl-plain-s0.95-seed{seed}"
        folder.mkdir(parents=True)
        test = {"accuracy": accuracy, "ece": ece + 0.01 * seed, "nll": nll + 0.1 * seed, "brier": 0.3,
                "confidence": accuracy + 0.02}
        (folder / "metrics.json").write_text(json.dumps({
            "completed": True, "output_predictor": "final", "sparsity_target": 0.95, "seed": seed,
            "test": {"final": test}, "history": [{"train_data_loss": 0.5}],
            "runtime": {"compute_dtype": compute_dtype}}))
    return root


def test_runs_are_paired_by_seed_and_judged_against_the_seed_noise_of_a(tmp_path):
    a = _study(tmp_path / "fp32", {0: 0.70, 1: 0.72, 2: 0.74}, "float32")  # seed std: 2 points
    # each seed moved by its own amount: a pairing across seeds would give other differences
    b = _study(tmp_path / "bf16", {0: 0.701, 1: 0.725, 2: 0.743, 7: 0.9}, "bfloat16")
    assert compare_studies.main([str(a), str(b)]) == 0
    out = b / "vs-fp32"
    with open(out / "paired.csv") as f:
        pairs = {int(r["seed"]): r for r in csv.DictReader(f)}
    assert sorted(pairs) == [0, 1, 2]  # seed 7 has no partner
    assert [round(float(pairs[k]["delta_accuracy"]), 6) for k in (0, 1, 2)] == [0.001, 0.005, 0.003]
    assert {pairs[k]["a_compute_dtype"] for k in pairs} == {"float32"}
    assert {pairs[k]["b_compute_dtype"] for k in pairs} == {"bfloat16"}
    table = (out / "comparison.md").read_text()
    assert "| rigl | 0.95 | final | 3 | +0.30 ± 0.20 | 2.00 |" in table and "**within** |" in table
    assert (out / "comparison.png").stat().st_size > 0


def test_a_shift_larger_than_the_seed_noise_is_named(tmp_path):
    a = _study(tmp_path / "a", {0: 0.70, 1: 0.72, 2: 0.74}, "float32")
    b = _study(tmp_path / "b", {0: 0.73, 1: 0.75, 2: 0.77}, "float32")  # +3 points > 2 points of seed noise
    summary = compare_studies.noise_summary(compare_studies.pair_runs(compare_studies.study_runs(a),
                                                                       compare_studies.study_runs(b)),
                                            compare_studies.study_runs(a))
    rigl = next(e for e in summary if e["method"] == "rigl")
    assert rigl["delta_accuracy_mean"] == pytest.approx(0.03)
    assert rigl["seed_std_accuracy"] == pytest.approx(0.02)
    assert rigl["within_noise_accuracy"] is False and rigl["within_noise_ece"] is True
    assert "outside: accuracy |" in compare_studies.comparison_table(summary, "a", "b")
    one_seed = compare_studies.noise_summary(compare_studies.pair_runs(compare_studies.study_runs(a),
                                                                        compare_studies.study_runs(b))[:1],
                                             compare_studies.study_runs(a)[:1])
    assert one_seed[0]["within_noise_accuracy"] is None


def test_studies_without_common_runs_are_refused_in_one_line(tmp_path):
    a = _study(tmp_path / "a", {0: 0.7}, "float32")
    b = _study(tmp_path / "b", {1: 0.7}, "float32")
    proc = subprocess.run([sys.executable, "-m", "experiments.compare_studies", str(a), str(b)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "has a partner" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (b / "vs-a").exists()
    proc = subprocess.run([sys.executable, "-m", "experiments.compare_studies", str(a), str(tmp_path / "nowhere")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "no runs/ folder" in proc.stderr
