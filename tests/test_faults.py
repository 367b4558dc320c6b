"""Faults: SIGKILL mid-epoch, SIGINT, leftovers of an interrupted checkpoint write, NaN loss."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cigl_bayes.config import TrainConfig
from cigl_bayes.inference.training import Trainer, run
from cigl_bayes.runs import CheckpointError, load_checkpoint
from cigl_bayes.train import TrainingDiverged
from tests.conftest import REPO

ARGS = ["--method", "cigl", "--model", "small-cnn", "--sparsity", "0.9", "--epochs", "3", "--subset", "1500",
        "--test-subset", "500", "--batch-size", "50", "--delta-t", "10", "--device", "cpu", "--no-progress"]


def start(out, data_dir, cache_dir) -> subprocess.Popen:
    env = {**os.environ, "MPLBACKEND": "Agg", "CIGL_CACHE_DIR": str(cache_dir)}
    return subprocess.Popen([sys.executable, "-m", "experiments.train", *ARGS, "--data-dir", str(data_dir),
                             "--out", str(out)], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_epoch(out, epoch: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        ckpt = out / "checkpoint.pt"
        if ckpt.exists():
            try:
                if load_checkpoint(ckpt)["epoch"] >= epoch:
                    return
            except CheckpointError:
                pass  # being replaced right now
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError("no checkpoint in time")


def final_state(out) -> dict:
    return load_checkpoint(out / "checkpoint.pt")["module"]


def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(cifar_data_dir, cache_dir, tmp_path):
    straight = start(tmp_path / "straight", cifar_data_dir, cache_dir)
    assert straight.wait(timeout=600) == 0, straight.stderr.read()[-2000:]

    killed = tmp_path / "killed"
    proc = start(killed, cifar_data_dir, cache_dir)
    wait_for_epoch(killed, 1, proc)
    time.sleep(0.3)  # well inside epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(killed / "checkpoint.pt")["epoch"] >= 1 and not (killed / "metrics.json").exists()
    again = start(killed, cifar_data_dir, cache_dir)
    assert again.wait(timeout=600) == 0, again.stderr.read()[-2000:]

    a, b = final_state(tmp_path / "straight"), final_state(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma = json.loads((tmp_path / "straight" / "metrics.json").read_text())["test"]
    mb = json.loads((killed / "metrics.json").read_text())["test"]
    assert ma == mb


def test_sigint_saves_a_checkpoint_and_exits_cleanly(cifar_data_dir, cache_dir, tmp_path):
    out = tmp_path / "run"
    proc = start(out, cifar_data_dir, cache_dir)
    wait_for_epoch(out, 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "checkpoint saved" in err
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] >= 2  # the epoch in progress was finished and saved


@pytest.fixture()
def cfg(cifar_data_dir, cache_dir, monkeypatch) -> TrainConfig:
    monkeypatch.setenv("CIGL_CACHE_DIR", str(cache_dir))
    return TrainConfig(method="cigl", model="small-cnn", data_dir=str(cifar_data_dir), sparsity=0.9, epochs=2,
                       subset=500, test_subset=200, batch_size=50, device="cpu", log_every=1)


def test_leftover_temp_file_of_an_interrupted_write_is_harmless(cfg, tmp_path):
    out = tmp_path / "run"
    run(cfg, out, progress=False, stop_after_epochs=1)
    (out / ".checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")  # as a kill mid-write leaves it
    result = run(cfg, out, progress=False)
    assert result["epochs"] == 2


def test_truncated_or_foreign_checkpoint_is_refused_and_kept(cfg, tmp_path):
    out = tmp_path / "run"
    run(cfg, out, progress=False, stop_after_epochs=1)
    data = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        run(cfg, out, progress=False)
    assert (out / "checkpoint.pt").read_bytes() == data[: len(data) // 2]  # nothing overwritten
    torch.save({"model": {}}, out / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="not a cigl-bayes checkpoint"):
        run(cfg, out, progress=False)


def test_nan_loss_stops_with_the_last_good_checkpoint_untouched(cfg, tmp_path):
    out = tmp_path / "run"
    run(cfg, out, progress=False, stop_after_epochs=1)
    good = (out / "checkpoint.pt").read_bytes()
    trainer = Trainer(dataclasses.replace(cfg), out, progress=False)
    trainer.maybe_resume()
    with torch.no_grad():
        trainer.net.sparse_params[0].fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        trainer.fit()
    assert (out / "checkpoint.pt").read_bytes() == good
