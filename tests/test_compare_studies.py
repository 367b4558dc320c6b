"""experiments.compare_studies: runs of two studies paired by seed, judged against study A's seed noise."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from cigl_bayes.experiments import compare_studies
from cigl_bayes.experiments.cli import USER_ERRORS


def _study(root, accuracies: dict[int, float], compute_dtype: str, ece: float = 0.03, nll: float = 0.6,
           engine: str = "plain", fingerprint: str = "test-set-1"):
    """A sweep study with one finished rigl run per seed (only the small files a study keeps)."""
    for seed, accuracy in accuracies.items():
        folder = root / "runs" / f"rigl-{engine}-s0.95-seed{seed}"
        folder.mkdir(parents=True)
        test = {"accuracy": accuracy, "ece": ece + 0.01 * seed, "nll": nll + 0.1 * seed, "brier": 0.3,
                "confidence": accuracy + 0.02}
        (folder / "metrics.json").write_text(json.dumps({
            "completed": True, "output_predictor": "final", "sparsity_target": 0.95, "seed": seed,
            "test": {"final": test}, "history": [{"train_data_loss": 0.5}], "test_fingerprint": fingerprint,
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
    assert "| rigl | plain | 0.95 | final | 3 | +0.30 ± 0.20 | 2.00 |" in table and "**within** |" in table
    # Δ accuracy 0.1, 0.5, 0.3 pp: mean 0.3, sd 0.2, t(2) = 4.303 → ± 0.497 pp; p by scipy's paired t-test
    assert "| rigl | plain | 0.95 | final | 3 | [-0.20, +0.80] | 0.12 |" in table
    assert table.rstrip().endswith("| no detectable difference |")
    assert "ran in float32 (3 runs)" in table and "ran in bfloat16 (4 runs)" in table
    assert "Runs of B without a partner, left out: rigl-plain-s0.95-seed7." in table
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


def test_engines_stay_apart_and_a_diverged_run_is_not_judged(tmp_path):
    a = _study(tmp_path / "a", {0: 0.70, 1: 0.72}, "float32")
    _study(tmp_path / "a", {0: 0.60, 1: 0.64}, "float32", engine="svi")
    b = _study(tmp_path / "b", {0: 0.70, 1: 0.72}, "float32")
    _study(tmp_path / "b", {0: 0.70, 1: 0.74}, "float32", engine="svi")  # svi moved by +10 points
    summary = compare_studies.noise_summary(compare_studies.pair_runs(compare_studies.study_runs(a),
                                                                       compare_studies.study_runs(b)),
                                            compare_studies.study_runs(a))
    table = compare_studies.comparison_table(summary, "a", "b")
    assert "| rigl | plain | 0.95 | final | 2 | +0.00 ± 0.00 |" in table
    assert "| rigl | svi | 0.95 | final | 2 | +10.00 ± 0.00 |" in table
    metrics = tmp_path / "b" / "runs" / "rigl-plain-s0.95-seed1" / "metrics.json"
    stored = json.loads(metrics.read_text())
    stored["test"]["final"]["nll"] = float("nan")
    metrics.write_text(json.dumps(stored))
    summary = compare_studies.noise_summary(compare_studies.pair_runs(compare_studies.study_runs(a),
                                                                       compare_studies.study_runs(b)),
                                            compare_studies.study_runs(a))
    plain = next(e for e in summary if e["engine"] == "plain")
    assert plain["within_noise_nll"] is None and plain["within_noise_accuracy"] is True
    assert "– (a metric is not finite: NLL)" in compare_studies.comparison_table(summary, "a", "b")


@pytest.mark.parametrize("case", ["itself", "other-test-set", "missing-metric", "out-is-a-file"])
def test_bad_comparisons_are_refused_before_anything_is_written(tmp_path, case):
    a = _study(tmp_path / "a", {0: 0.7, 1: 0.72}, "float32")
    b = _study(tmp_path / "b", {0: 0.7, 1: 0.72}, "float32", fingerprint="test-set-2" if case == "other-test-set"
               else "test-set-1")
    args, expected = [str(a), str(b)], {"itself": "compared with itself", "other-test-set": "different test images",
                                        "missing-metric": "rigl-plain-s0.95-seed1/metrics.json has no usable",
                                        "out-is-a-file": "is a file"}[case]
    if case == "itself":
        args = [str(a), str(tmp_path / "a" / ".." / "a")]
    if case == "missing-metric":
        metrics = b / "runs" / "rigl-plain-s0.95-seed1" / "metrics.json"
        stored = json.loads(metrics.read_text())
        del stored["test"]["final"]["nll"]
        metrics.write_text(json.dumps(stored))
    if case == "out-is-a-file":
        (tmp_path / "file").write_text("x")
        args += ["--out", str(tmp_path / "file")]
    with pytest.raises(USER_ERRORS, match=expected):  # the CLI reports these in one line, exit status 2
        compare_studies.main(args)
    assert not (b / "vs-a").exists()


def test_engines_can_be_the_compared_setting(tmp_path):
    """--engines plain svi pairs A's plain-engine runs with B's SVI-engine runs of the same seed (a sweep keeps
    one engine per study); without it, those studies have no pair."""
    a = _study(tmp_path / "cpu-study", {0: 0.70, 1: 0.72, 2: 0.74}, "float32")
    b = _study(tmp_path / "cpu-study-svi", {0: 0.71, 1: 0.74}, "float32", engine="svi")
    with pytest.raises(USER_ERRORS, match="has a partner"):
        compare_studies.main([str(a), str(b)])
    with pytest.raises(USER_ERRORS, match="cpu-study-svi has no finished plain-engine run; check the order"):
        compare_studies.main([str(b), str(a), "--engines", "plain", "svi"])
    assert compare_studies.main([str(a), str(b), "--engines", "plain", "svi"]) == 0
    out = b / "vs-cpu-study-plain-to-svi"
    with open(out / "paired.csv") as f:
        pairs = {int(r["seed"]): r for r in csv.DictReader(f)}
    assert sorted(pairs) == [0, 1] and {r["engine"] for r in pairs.values()} == {"plain→svi"}
    assert [round(float(pairs[k]["delta_accuracy"]), 6) for k in (0, 1)] == [0.01, 0.02]
    table = (out / "comparison.md").read_text()
    assert "| rigl | plain→svi | 0.95 | final | 2 | +1.50 ± 0.71 | 2.00 |" in table
    assert "# cpu-study-svi (svi) against cpu-study (plain)" in table
    assert "A's plain-engine runs paired with B's svi-engine runs (same method, sparsity, seed" in table
    # one study holding both engines compares with itself across them, and the engines must be known ones
    both = _study(_study(tmp_path / "both", {0: 0.70, 1: 0.72}, "float32"), {0: 0.60, 1: 0.64}, "float32",
                  engine="svi")
    assert compare_studies.main([str(both), str(both), "--engines", "plain", "svi", "--out", str(tmp_path / "o")]) == 0
    assert "| rigl | plain→svi | 0.95 | final | 2 | -9.00 ± 1.41 |" in (tmp_path / "o" / "comparison.md").read_text()
    with pytest.raises(SystemExit):
        compare_studies.main([str(a), str(b), "--engines", "plain", "laplace"])


def _configure(study, **settings):
    """Give every run of ``study`` a config.json: the cpu-smoke settings, overridden by ``settings``."""
    for folder in (study / "runs").iterdir():
        seed = int(folder.name.rsplit("seed", 1)[1])
        config = {"method": "rigl", "model": "small-cnn", "epochs": 6, "batch_size": 64, "amp": "off",
                  "dtype": "float32", "data_dir": str(study), "seed": seed, **settings}
        (folder / "config.json").write_text(json.dumps(config))


def test_studies_that_also_differ_in_epochs_are_warned_about(tmp_path, capsys):
    a = _study(tmp_path / "a", {0: 0.70, 1: 0.72}, "float32")
    c = _study(tmp_path / "c", {0: 0.71, 1: 0.73}, "bfloat16")
    _configure(a)
    _configure(c, epochs=8, amp="bf16")  # precision is the setting under study; epochs changed too
    assert compare_studies.main([str(a), str(c)]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "epochs (A 6, B 8)" in err
    assert "amp" not in err and "data_dir" not in err and "seed" not in err  # precision is reported on its own
    assert "**Warning:** the paired runs also differ in epochs (A 6, B 8)" in (c / "vs-a" / "comparison.md").read_text()

    same = _study(tmp_path / "same", {0: 0.71, 1: 0.73}, "bfloat16")
    _configure(same, amp="bf16", val_curves=True, curve_bn_batches=10)  # fields a newer version records
    assert compare_studies.main([str(a), str(same)]) == 0
    assert "warning" not in capsys.readouterr().err
    assert "Warning" not in (same / "vs-a" / "comparison.md").read_text()
