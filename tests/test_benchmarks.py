"""Smoke tests of the benchmarks in quick mode: they run and write their JSON (no timing assertions)."""

from __future__ import annotations

import json

from benchmarks import epoch_time, step_time


def test_step_time_quick(tmp_path):
    out = tmp_path / "step.json"
    assert step_time.main(["--quick", "--device", "cpu", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert set(r["seconds_per_step"]) == {"dense", "rigl", "cigl", "cigl-svi"}
    for key in ("cigl_over_dense", "svi_over_cigl", "mask_update_fraction", "collect_fraction", "swag_fraction"):
        assert r[key] > 0
    assert r["device"] == "cpu" and r["torch"]


def test_epoch_time_quick(tmp_path):
    out = tmp_path / "epoch.json"
    assert epoch_time.main(["--quick", "--device", "cpu", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["images_per_epoch"] == 2000 and r["images_per_second"] > 0 and r["gpu_busy_fraction"] is None
