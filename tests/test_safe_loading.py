"""Safe to open: a checkpoint or a CIFAR batch file someone handed you runs no code.

Every loading path gets a crafted file whose unpickling would create a marker file (an object
whose ``__reduce__`` calls ``open(marker, "w")``): the marker must not appear, and the error must
be one line (CLIs: exit status 2 and one ``error: …`` line on stderr).  Also: checkpoints are
tensors and plain values (format v2, read with ``weights_only=True``), v1 checkpoints are refused
saying what to do, and the deliberate conversion of a trusted v1 file."""

from __future__ import annotations

import dataclasses
import io
import pickle
import random
import shutil
import tarfile

import numpy as np
import pytest
import torch

from cigl_bayes import data as data_lib
from cigl_bayes import data_sources
from cigl_bayes.config import TrainConfig
from cigl_bayes.runs import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from tests.conftest import REPO
from tests.test_cli import call_cli, run_module
from tests.test_data import write_cifar10_pickle


class Marker:
    """Unpickling this creates ``path``: it stands for any code a crafted pickle could run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def one_line(message) -> bool:
    return "\n" not in str(message).strip()


def assert_cli_refused(code: int, stderr: str, *words: str) -> None:
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert code == 2, stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr[-2000:]
    for word in words:
        assert word in lines[0], stderr


def test_the_marker_really_runs_code_when_unpickled_in_full(tmp_path):
    """The crafted object is live: full unpickling creates the marker, so the tests below, which
    assert that it is absent, fail on a loader that unpickles in full."""
    marker = tmp_path / "ran"
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "x": Marker(marker)}, buf)
    torch.load(io.BytesIO(buf.getvalue()), weights_only=False)
    assert marker.exists()


# --------------------------------------------------------------------------------------------------
# Checkpoints: format v2, weights_only
# --------------------------------------------------------------------------------------------------


def test_rng_state_is_plain_and_restores_every_generator():
    def draw():
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.randn(), random.random()

    np.random.randn()  # numpy caches the second Gaussian of a pair: has_gauss = 1 must survive too
    buf = io.BytesIO()
    torch.save(rng_state(), buf)
    loaded = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)  # no numpy objects inside
    first = draw()
    set_rng_state(loaded)
    assert draw() == first


def test_a_crafted_checkpoint_runs_no_code_and_is_refused_in_one_line(tmp_path):
    marker, path = tmp_path / "ran", tmp_path / "checkpoint.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "history": [Marker(marker)]}, path)
    with pytest.raises(CheckpointError, match="cannot be loaded safely") as err:
        load_checkpoint(path)
    assert not marker.exists() and one_line(err.value) and "open" in str(err.value)


def v1_state() -> dict:
    """What a v1 checkpoint held besides tensors: numpy's RNG state as numpy objects."""
    return {"format": "cigl-bayes-checkpoint-v1", "epoch": 1, "module": {"w": torch.ones(2)},
            "rng": {"torch": torch.get_rng_state(), "cuda": [], "numpy": np.random.get_state(),
                    "python": random.getstate()}}


def test_a_v1_checkpoint_is_refused_saying_what_to_do(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save(v1_state(), path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert one_line(message) and "cannot be loaded safely" in message and "v1" in message
    assert "fresh --out folder" in message and "experiments.convert_checkpoint" in message


def test_garbage_and_truncated_checkpoints_are_named_corrupt_in_one_line(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or truncated") as err:
        load_checkpoint(path)
    assert one_line(err.value)
    save_checkpoint({"epoch": 1, "rng": rng_state()}, path)
    assert load_checkpoint(path)["format"] == CHECKPOINT_FORMAT == "cigl-bayes-checkpoint-v2"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as err:
        load_checkpoint(path)
    assert one_line(err.value)


def test_convert_checkpoint_needs_trusted_keeps_the_original_and_gives_v2(tmp_path, capsys):
    from cigl_bayes.experiments import convert_checkpoint

    path = tmp_path / "checkpoint.pt"
    old = v1_state()
    torch.save(old, path)
    original = path.read_bytes()
    code, stderr = call_cli(convert_checkpoint.main, [str(path)], capsys)
    assert_cli_refused(code, stderr, "--trusted")
    assert path.read_bytes() == original and not (tmp_path / "checkpoint.pt.v1").exists()

    code, stderr = call_cli(convert_checkpoint.main, [str(path), "--trusted"], capsys)
    assert code == 0, stderr
    assert (tmp_path / "checkpoint.pt.v1").read_bytes() == original  # nothing already written is lost
    new = load_checkpoint(path)
    assert new["format"] == CHECKPOINT_FORMAT and new["epoch"] == 1 and torch.equal(new["module"]["w"], torch.ones(2))
    set_rng_state(new["rng"])
    got, want = np.random.get_state(), old["rng"]["numpy"]
    assert got[0] == want[0] and np.array_equal(got[1], want[1]) and got[2:] == want[2:]
    assert random.getstate() == old["rng"]["python"] and torch.equal(torch.get_rng_state(), old["rng"]["torch"])

    code, stderr = call_cli(convert_checkpoint.main, [str(path), "--trusted"], capsys)  # already v2: left alone
    assert code == 0 and (tmp_path / "checkpoint.pt.v1").read_bytes() == original


def test_convert_checkpoint_writes_nothing_that_would_still_need_unpickling(tmp_path, capsys):
    from cigl_bayes.experiments import convert_checkpoint

    path = tmp_path / "checkpoint.pt"
    torch.save({**v1_state(), "extra": np.zeros(2)}, path)
    original = path.read_bytes()
    code, stderr = call_cli(convert_checkpoint.main, [str(path), "--trusted"], capsys)
    assert_cli_refused(code, stderr, "not converted")
    assert path.read_bytes() == original and not (tmp_path / "checkpoint.pt.v1").exists()


def torch_load_calls(text: str) -> list[str]:
    """The text of every ``torch.load(...)`` call in ``text``, up to its closing parenthesis."""
    calls, start = [], 0
    while (i := text.find("torch.load(", start)) >= 0:
        depth, j = 0, i + len("torch.load")
        while j < len(text):
            depth += {"(": 1, ")": -1}.get(text[j], 0)
            j += 1
            if depth == 0:
                break
        calls.append(text[i:j])
        start = j
    return calls


def test_every_torch_load_in_the_code_is_weights_only():
    packages = ("cigl_bayes", "inference", "experiments", "benchmarks", "models")
    calls = [(path.relative_to(REPO), call) for package in packages
             for path in sorted((REPO / package).rglob("*.py")) for call in torch_load_calls(path.read_text())]
    assert len(calls) >= 3, calls  # the checkpoint, the sample store, the sample records
    deliberate = [(p, c) for p, c in calls if p.name == "convert_checkpoint.py" and "weights_only=False" in c]
    assert len(deliberate) == 1  # the one full unpickling, behind --trusted
    unsafe = [f"{p}: {c}" for p, c in calls if "weights_only=True" not in c and (p, c) not in deliberate]
    assert not unsafe, unsafe


# --------------------------------------------------------------------------------------------------
# CIFAR pickle batches: the restricted unpickler
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_cifar_batches_of_every_pickle_protocol_still_load(tmp_path, protocol):
    """The real files are protocol 2 from Python 2 (arrays by ``_reconstruct``); numpy 2 writes
    ``numpy._core`` names, protocol 2 writes bytes through ``_codecs.encode``, protocol 5 arrays by
    ``_frombuffer``: all of them are admitted, numpy-array labels included."""
    folder = tmp_path / "cifar-10-batches-py"
    want_train, want_test = write_cifar10_pickle(folder)
    for f in folder.iterdir():
        with open(f, "rb") as fh:
            obj = pickle.load(fh, encoding="bytes")
        if b"labels" in obj:
            obj[b"labels"] = np.asarray(obj[b"labels"], dtype=np.int64)
        f.write_bytes(pickle.dumps(obj, protocol=protocol))
    train, test = data_lib.load_dataset("cifar10", tmp_path, cache_dir=tmp_path / "cache")
    assert np.array_equal(train.images, want_train.images) and np.array_equal(train.labels, want_train.labels)
    assert np.array_equal(test.images, want_test.images) and np.array_equal(test.labels, want_test.labels)


def crafted_batch(folder, marker) -> None:
    """A cifar-10-batches-py folder whose data_batch_1 also holds a Marker."""
    write_cifar10_pickle(folder)
    with open(folder / "data_batch_1", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    batch[b"batch_label"] = Marker(marker)
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))


def test_a_crafted_cifar_batch_runs_no_code(tmp_path):
    marker = tmp_path / "ran"
    crafted_batch(tmp_path / "data" / "cifar-10-batches-py", marker)
    with pytest.raises(data_lib.DataFormatError, match="data_batch_1 is not a CIFAR batch") as err:
        data_lib.load_dataset("cifar10", tmp_path / "data", cache_dir=tmp_path / "cache")
    assert not marker.exists() and one_line(err.value) and "open" in str(err.value)


def test_a_crafted_cifar_batch_in_the_archive_runs_no_code(tmp_path):
    marker = tmp_path / "ran"
    crafted_batch(tmp_path / "src" / "cifar-10-batches-py", marker)
    (tmp_path / "data").mkdir()
    with tarfile.open(tmp_path / "data" / "cifar-10-python.tar.gz", "w:gz") as tf:
        tf.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    with pytest.raises(data_lib.DataFormatError, match="is not a CIFAR batch") as err:
        data_lib.load_dataset("cifar10", tmp_path / "data", cache_dir=tmp_path / "cache")
    assert not marker.exists() and one_line(err.value)


def test_a_crafted_cifar_batch_through_the_training_cli(tmp_path, capsys, monkeypatch):
    from cigl_bayes.experiments import train

    monkeypatch.setenv("CIGL_CACHE_DIR", str(tmp_path / "cache"))
    marker = tmp_path / "ran"
    crafted_batch(tmp_path / "data" / "cifar-10-batches-py", marker)
    code, stderr = call_cli(train.main, ["--model", "small-cnn", "--epochs", "1", "--batch-size", "2", "--device",
                                         "cpu", "--no-progress", "--data-dir", str(tmp_path / "data"),
                                         "--out", str(tmp_path / "run")], capsys)
    assert_cli_refused(code, stderr, "not a CIFAR batch")
    assert not marker.exists()


def test_the_codecs_global_admits_only_the_bytes_encoding_of_protocol_2():
    import codecs

    class Rot13:
        def __reduce__(self):
            return codecs.encode, ("text", "rot13")

    with pytest.raises(data_lib.DataFormatError, match="cannot unpickle crafted") as err:
        data_sources._unpickle(io.BytesIO(pickle.dumps({b"x": Rot13()}, protocol=2)), "crafted")
    assert one_line(err.value)


# --------------------------------------------------------------------------------------------------
# Run folders: load_run, resuming, and the CLIs that open a run
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cifar_data_dir, cache_dir):
    """Two finished tiny CigL runs, the same but for the seed (3 samples each): (root, config)."""
    import os

    from cigl_bayes.inference import run

    os.environ["CIGL_CACHE_DIR"] = str(cache_dir)
    root = tmp_path_factory.mktemp("runs")
    cfg = TrainConfig(method="cigl", model="small-cnn", data_dir=str(cifar_data_dir), sparsity=0.9, epochs=3,
                      wma_start_epoch=0, subset=256, test_subset=100, batch_size=64, delta_t=4, device="cpu",
                      log_every=100)
    for seed in (0, 1):
        run(dataclasses.replace(cfg, seed=seed), root / f"seed{seed}", progress=False)
    return root, cfg


def test_a_finished_run_has_a_v2_checkpoint_that_loads_weights_only(runs):
    root, _ = runs
    state = torch.load(root / "seed0" / "checkpoint.pt", weights_only=True)
    assert state["format"] == "cigl-bayes-checkpoint-v2" and isinstance(state["rng"]["numpy"][1], torch.Tensor)


@pytest.fixture()
def crafted(runs, tmp_path):
    """A copy of a finished run whose checkpoint also holds a Marker: (run folder, marker)."""
    root, _ = runs
    out, marker = tmp_path / "crafted", tmp_path / "ran"
    shutil.copytree(root / "seed0", out)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["history"].append({"note": Marker(marker)})
    torch.save(state, out / "checkpoint.pt")
    return out, marker


def test_load_run_refuses_a_crafted_checkpoint(crafted):
    from cigl_bayes.inference import RunFolderError, load_run

    out, marker = crafted
    with pytest.raises(RunFolderError, match="cannot be loaded safely") as err:
        load_run(out, device="cpu")
    assert not marker.exists() and one_line(err.value)


def test_resuming_refuses_a_crafted_checkpoint(crafted, runs):
    from cigl_bayes.train import run

    out, marker = crafted
    before = (out / "checkpoint.pt").read_bytes()
    with pytest.raises(CheckpointError, match="cannot be loaded safely") as err:
        run(runs[1], out, progress=False)
    assert not marker.exists() and one_line(err.value)
    assert (out / "checkpoint.pt").read_bytes() == before  # nothing overwritten


def test_the_training_cli_refuses_a_crafted_checkpoint(crafted, runs, cache_dir):
    """The real entry point, in a subprocess: ``python -m experiments.train`` on the crafted folder."""
    out, marker = crafted
    proc = run_module("experiments.train", "--method", "cigl", "--model", "small-cnn", "--sparsity", "0.9",
                      "--epochs", "3", "--wma-start-epoch", "0", "--subset", "256", "--test-subset", "100",
                      "--batch-size", "64", "--delta-t", "4", "--device", "cpu", "--no-progress",
                      "--data-dir", str(runs[1].data_dir), "--out", str(out),
                      env_extra={"CIGL_CACHE_DIR": str(cache_dir)})
    assert_cli_refused(proc.returncode, proc.stderr, "cannot be loaded safely", "checkpoint.pt")
    assert not marker.exists()


@pytest.mark.parametrize("module", ["posterior_report", "export", "shift_report"])
def test_the_report_clis_refuse_a_crafted_checkpoint(module, crafted, tmp_path, capsys):
    import importlib

    out, marker = crafted
    main = importlib.import_module(f"cigl_bayes.experiments.{module}").main
    argv = {"posterior_report": [str(out), "--device", "cpu", "--no-progress"],
            "export": [str(out), "--out", str(tmp_path / "m.safetensors"), "--device", "cpu"],
            "shift_report": [str(out), "--images", "10", "--ood-size", "10", "--corruptions", "gaussian_noise",
                             "--ood", "uniform-noise", "--device", "cpu", "--no-progress"]}[module]
    code, stderr = call_cli(main, argv, capsys)
    assert_cli_refused(code, stderr, "cannot be loaded safely")
    assert not marker.exists() and not (tmp_path / "m.safetensors").exists()


def test_a_sample_copied_in_from_another_run_is_refused_by_name(runs, tmp_path):
    """sample_0001.pt of the seed-1 run has the right name and epoch, so only its values give it
    away: the samples no longer average to the checkpoint's WMA."""
    from cigl_bayes.inference import RunFolderError, load_run

    root, _ = runs
    out = tmp_path / "mixed"
    shutil.copytree(root / "seed0", out)
    load_run(out, device="cpu")  # the run's own samples average to its WMA
    shutil.copy(root / "seed1" / "samples" / "sample_0001.pt", out / "samples" / "sample_0001.pt")
    with pytest.raises(RunFolderError, match="do not average to the checkpoint's WMA") as err:
        load_run(out, device="cpu")
    assert one_line(err.value) and "sample_0001.pt" in str(err.value)
