"""Smoke tests of the benchmarks in quick mode: they run and write their JSON (no timing assertions)."""

from __future__ import annotations

import argparse
import json

import pytest

from cigl_bayes.benchmarks import epoch_time, step_time


def test_step_time_quick(tmp_path):
    out = tmp_path / "step.json"
    assert step_time.main(["--quick", "--device", "cpu", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["seconds_per_step"]) == {"dense", "rigl", "cigl", "cigl-svi", "cigl-fp32", "cigl-drop-in"}
    for key in ("fp32_over_fast", "cigl_over_dense", "svi_over_cigl", "drop_in_over_trainer", "mask_update_fraction",
                "collect_fraction",
                "swag_fraction"):
        assert r[key] > 0
    # counted FLOPs of one small-cnn step at batch 64, by hand: forward multiply-adds per image
    # conv1 16·32²·27 + conv2 32·16²·144 + conv3 64·8²·288 + fc 64·10; backward twice the forward,
    # except conv1, whose input needs no gradient; 2 FLOPs per multiply-add.
    conv1, rest = 16 * 32**2 * 27, 32 * 16**2 * 144 + 64 * 8**2 * 288 + 64 * 10
    expected = 64 * 2 * (2 * conv1 + 3 * rest)
    assert r["gflop_per_step"] * 1e9 == pytest.approx(expected, rel=1e-12)
    assert r["achieved_gflops"]["cigl"] == pytest.approx(r["gflop_per_step"] / r["seconds_per_step"]["cigl"])
    assert r["device"] == "cpu" and r["torch"]


def test_epoch_time_quick(tmp_path):
    out = tmp_path / "epoch.json"
    assert epoch_time.main(["--quick", "--device", "cpu", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["images_per_epoch"] == 2000 and r["images_per_second"] > 0 and r["gpu_busy_fraction"] is None
    assert r["achieved_gflops"] > 0 and r["fast_path"].startswith(("float32", "bf16"))


def test_precision_benchmark_runs_all_four_settings(tmp_path):
    from cigl_bayes.benchmarks import precision

    out = tmp_path / "precision.json"
    assert precision.main(["--model", "mlp", "--batch-size", "16", "--steps", "1", "--device", "cpu",
                           "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["seconds_per_step"]) == {"fp32", "fp32+channels-last", "bf16", "bf16+channels-last"}
    assert r["fastest"] in r["seconds_per_step"]


@pytest.mark.slow
def test_gpu_suite_dry_run_runs_every_stage(tmp_path, cifar_data_dir, cache_dir, monkeypatch):
    """Every stage of the GPU suite, tiny and on the CPU, so none is first executed on a lent GPU."""
    from cigl_bayes.benchmarks import gpu_suite

    monkeypatch.setenv("CIGL_DATA_DIR", str(cifar_data_dir))
    monkeypatch.setenv("CIGL_CACHE_DIR", str(cache_dir))
    assert gpu_suite.main(["--out", str(tmp_path), "--dry-run"]) == 0
    for stage in gpu_suite.STAGES:
        r = json.loads((tmp_path / f"{stage}.json").read_text())
        assert r["_dry_run"] is True, stage
    env = json.loads((tmp_path / "env.json").read_text())
    assert env["cuda_tests"]["exit_code"] in (0, 5) and "skipped" in env["cuda_tests"]["summary"]
    step = json.loads((tmp_path / "step.json").read_text())
    assert set(step) >= {"small-cnn", "small-cnn compiled"}
    assert "compiled" in step["small-cnn compiled"]["fast_path"]
    pair = json.loads((tmp_path / "pair.json").read_text())
    assert {r["method"] for r in pair["runs"]} >= {"rigl", "cigl"}
    summary = (tmp_path / "summary.md").read_text()
    for heading in ("Step time", "Whole epochs", "ImageNet path", "gpu-short pair"):
        assert heading in summary
    with pytest.raises(SystemExit):  # without CUDA and without --dry-run: a clear refusal
        if not __import__("torch").cuda.is_available():
            gpu_suite.main(["--out", str(tmp_path / "real")])
        else:
            raise SystemExit(2)


def test_inference_quick(tmp_path):
    from cigl_bayes.benchmarks import inference

    assert inference.main(["--quick", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "inference.json").read_text())
    (row,) = r["rows"]
    assert row["model"] == "small-cnn" and row["export_bytes"] < row["model_pt_bytes"]
    for b in ("1", "8"):
        m = row["batches"][b]
        assert set(m["ms"]) == {"dense-fp32", "dense-fast", "sparse"} and m["max_abs_logit_gap"] < 1e-3
        assert m["speedup_over_dense_fp32"]["dense-fp32"] == 1.0
    assert "| small-cnn | 0.95 |" in (tmp_path / "inference.md").read_text()


def test_side_by_side_quick(tmp_path):
    """One process on every core against two side by side: every worker ran on the threads asked,
    the two side-by-side windows overlapped, and the ratio is their summed throughput over the one's."""
    from cigl_bayes.benchmarks import side_by_side

    out = tmp_path / "side.json"
    assert side_by_side.main(["--quick", "--jobs", "2", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    cores = side_by_side.cpu_cores()
    assert r["cores"] == cores and r["threads_per_job"] == max(1, cores // 2)
    (only,) = r["per_round"]  # --quick: one round, so the median ratio is that round's
    one, side = only["one_process"], only["side_by_side"]
    assert one["threads"] == cores and [w["threads"] for w in side] == [r["threads_per_job"]] * 2
    assert max(w["start"] for w in side) < min(w["end"] for w in side)  # released together: they overlap
    assert all(w["steps"] >= 1 and w["seconds"] >= r["seconds"] for w in [one, *side])
    throughput = sum(w["steps"] / w["seconds"] for w in side)
    assert r["side_by_side_over_one"] == only["ratio"] == pytest.approx(throughput * one["seconds"] / one["steps"])


def test_side_by_side_names_a_failing_worker(tmp_path, monkeypatch):
    from cigl_bayes.benchmarks import side_by_side

    monkeypatch.setattr(side_by_side, "check_options", lambda args: None)  # let the bad model reach a worker
    with pytest.raises(RuntimeError, match="a benchmark worker failed before its steps.*no-such-model"):
        side_by_side.main(["--model", "no-such-model", "--seconds", "1", "--warmup", "0", "--rounds", "1",
                           "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


def test_quick_keeps_the_options_given_explicitly(tmp_path):
    out = tmp_path / "epoch.json"
    assert epoch_time.main(["--quick", "--subset", "300", "--batch-size", "100", "--device", "cpu",
                            "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["images_per_epoch"] == 300 and r["model"] == "small-cnn"  # --subset kept; the preset's model filled in


def test_given_options_sees_abbreviations_and_equals_forms():
    from cigl_bayes.benchmarks.common import apply_preset, given_options

    p = argparse.ArgumentParser()
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--model", default="wrn-22-2")
    p.add_argument("--quick", action="store_true")
    assert given_options(p, ["--quick", "--batch=32"]) == {"quick", "batch_size"}
    argv = ["--quick", "--batch-size", "128"]  # explicit, though equal to the default
    args = p.parse_args(argv)
    apply_preset(p, args, argv, batch_size=64, model="small-cnn")
    assert (args.batch_size, args.model) == (128, "small-cnn")
    assert p.parse_args([]).batch_size == 128  # the parser's defaults are restored

    shared = argparse.ArgumentParser()  # two options of one dest, and a set_defaults value
    shared.add_argument("--amp", dest="amp", action="store_true", default=None)
    shared.add_argument("--no-amp", dest="amp", action="store_false", default=True)
    shared.set_defaults(mode="fast")
    assert given_options(shared, ["--no-amp"]) == {"amp"} and given_options(shared, []) == set()
    assert vars(shared.parse_args([])) == {"amp": None, "mode": "fast"}  # as before the call (first option wins)
    assert [a.default for a in shared._actions[1:]] == [None, True]


BAD_BENCHMARK_INPUT = [
    ("step_time", ["--model", "bogus"], "--model: unknown model 'bogus'"),
    ("step_time", ["--quick", "--batch-size", "0"], "--batch-size must be an integer ≥ 1"),
    ("step_time", ["--rounds", "0"], "--rounds must be an integer ≥ 1"),
    ("epoch_time", ["--method", "bogus"], "--method: unknown method 'bogus'"),
    ("epoch_time", ["--synthetic", "--subset", "0"], "--subset must be an integer ≥ 1"),
    ("epoch_time", ["--batch-size", "0"], "--batch-size must be an integer ≥ 1"),
    ("inference", ["--models", "small-cnn", "nope"], "--models: unknown model 'nope'"),
    ("inference", ["--batches", "0"], "--batches must be integers ≥ 1"),
    ("inference", ["--sparsities", "1.5"], "--sparsities: sparsity must be in [0, 1)"),
    ("side_by_side", ["--model", "bogus"], "--model: unknown model 'bogus'"),
    ("precision", ["--steps", "0"], "--steps must be an integer ≥ 1"),
    ("precision", ["--model", "wrn-23-2"], "--model"),
    ("bn_precision", ["--seeds", "0"], "--seeds must be an integer ≥ 1"),
    ("data_load", ["--repeats", "0"], "--repeats must be an integer ≥ 1"),
    ("gpu_suite", ["--out", "OUT", "--dry-run", "--budget-s", "5"], "--budget-s has no effect with --dry-run"),
]


@pytest.mark.parametrize(("module", "argv", "message"), BAD_BENCHMARK_INPUT,
                         ids=[f"{m}:{' '.join(a)}" for m, a, _ in BAD_BENCHMARK_INPUT])
def test_bad_benchmark_input_is_a_one_line_error_before_anything_runs(module, argv, message, tmp_path, capsys):
    import importlib

    from tests.test_cli import call_cli

    main = importlib.import_module(f"cigl_bayes.benchmarks.{module}").main
    out = tmp_path / "out.json"
    argv = [str(tmp_path / "suite") if a == "OUT" else a for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(out)]
    code, err = call_cli(main, argv, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not (tmp_path / "suite").exists()  # refused before anything was written
