"""Smoke tests of the benchmarks in quick mode: they run and write their JSON (no timing assertions)."""

from __future__ import annotations

import json

import pytest

from benchmarks import epoch_time, step_time


def test_step_time_quick(tmp_path):
    out = tmp_path / "step.json"
    assert step_time.main(["--quick", "--device", "cpu", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["seconds_per_step"]) == {"dense", "rigl", "cigl", "cigl-svi", "cigl-fp32"}
    for key in ("fp32_over_fast", "cigl_over_dense", "svi_over_cigl", "mask_update_fraction", "collect_fraction",
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
