"""A committed run folder — config.json, metrics.json and weights.safetensors, as a study commits
it, without checkpoint or model.pt — loaded in Python and re-evaluated on the command line
(the new-user trial of 2026-12-06: re-evaluating the controlled study's committed runs)."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
import torch

from cigl_bayes.config import TrainConfig
from cigl_bayes.evaluate import score_by_protocol
from cigl_bayes.experiments.cli import run_cli
from cigl_bayes.experiments.reevaluate import main as reevaluate_main
from cigl_bayes.inference import load_run
from cigl_bayes.inference.run import RunFolderError
from cigl_bayes.predict import bn_protocols_of, combine
from cigl_bayes.weights import load_run_weights

COMMITTED = ("config.json", "metrics.json", "weights.safetensors")  # what git keeps of a run


@pytest.fixture(scope="module")
def committed(tmp_path_factory, cifar_data_dir):
    """{method: a committed copy of a tiny real-CIFAR run} for rigl and cigl."""
    from cigl_bayes.inference.training import run

    root = tmp_path_factory.mktemp("committed")
    out = {}
    for method in ("rigl", "cigl"):
        cfg = TrainConfig(method=method, model="small-cnn", sparsity=0.9, epochs=2, wma_start_epoch=0, subset=400,
                          test_subset=300, batch_size=64, data_dir=str(cifar_data_dir), device="cpu", amp="off")
        run(cfg, root / "trained" / method, progress=False)
        folder = root / method
        folder.mkdir()
        for name in COMMITTED:
            shutil.copy2(root / "trained" / method / name, folder)
        out[method] = folder
    out["cigl-full"] = root / "trained" / "cigl"  # the run folder itself: checkpoint and samples
    return out


def cli(args: list[str]) -> int:
    """``python -m experiments.reevaluate ARGS``'s exit status (errors: one line on stderr, 2)."""
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: reevaluate_main(args))
    return stop.value.code


def copy_of(folder, tmp_path, name="run"):
    target = tmp_path / name
    shutil.copytree(folder, target)
    return target


def test_load_run_reads_a_committed_folder_and_scores_every_protocol_as_its_evaluation(committed):
    """load_run on the weights file alone: every predictor under every BatchNorm protocol gives the
    test scores of metrics.json → by_bn_protocol exactly (same machine, same code)."""
    for method, folder in committed.items():
        run = load_run(folder, device="cpu")
        stored = json.loads((folder / "metrics.json").read_text())["by_bn_protocol"]
        labels = {"test": run.labels("test")}
        names = ["final"] + (["wma"] if method == "cigl" else [])
        for name in names:
            for protocol in bn_protocols_of(name):
                logp = {name: {"test": combine(name, run.log_probs(name, "test", bn_protocol=protocol))}}
                scored = score_by_protocol({protocol: logp}, labels)[protocol]["test"][name]
                assert scored == stored[protocol]["test"][name], (method, name, protocol)


def test_predict_takes_a_batchnorm_protocol_and_refuses_what_the_file_cannot_give(committed):
    run = load_run(committed["cigl"], device="cpu")
    images = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8)
    clean = run.predict(images, "wma").probs
    assert torch.equal(run.predict(images, "wma", bn_protocol="recomputed-clean").probs, clean)  # the default
    assert not torch.allclose(run.predict(images, "wma", bn_protocol="recomputed-augmented").probs, clean)
    with pytest.raises(ValueError, match="tracked BatchNorm statistics exist only for the final weights"):
        run.predict(images, "wma", bn_protocol="tracked")
    with pytest.raises(ValueError, match="unknown BatchNorm protocol 'clean'"):
        run.predict(images, "wma", bn_protocol="clean")
    with pytest.raises(RunFolderError, match=r"\(weights.safetensors\) has no posterior samples \(method cigl, "
                                             r"weights.safetensors keeps only their mean\); use predictor 'wma'"):
        run.predict(images, "predictive")
    rigl = load_run(committed["rigl"], device="cpu")
    tracked = rigl.predict(images, "final").probs  # RigL's own choice: the statistics tracked in training
    assert torch.equal(rigl.predict(images, "final", bn_protocol="tracked").probs, tracked)
    assert not torch.allclose(rigl.predict(images, "final", bn_protocol="recomputed-clean").probs, tracked)


def test_a_weights_file_from_another_run_is_refused_by_load_run_and_reevaluate(committed, tmp_path):
    swapped = copy_of(committed["rigl"], tmp_path)
    shutil.copy2(committed["cigl"] / "weights.safetensors", swapped)
    with pytest.raises(RunFolderError, match=r"config.json disagrees with the run's weights.safetensors "
                                             r"\(method: 'rigl' in config.json, 'cigl' in weights.safetensors\)"):
        load_run(swapped, device="cpu")
    assert cli([str(swapped), "--no-progress", "--device", "cpu"]) == 2
    assert not (swapped / "reevaluation.json").exists()


def _rewrite(path, change):
    """Rewrite a weights file with ``change(tensors, meta)`` applied (a deliberately broken copy)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(path))
    change(tensors, meta)
    save_file(tensors, str(path), metadata=meta)


def _first_running_mean(t):
    return next(k for k in t if k.endswith("running_mean"))


BROKEN = {
    "buffer-shape": (lambda t, m: t.__setitem__(_first_running_mean(t), torch.zeros(3)), r"buffer '.*running_mean' "
                     r"has shape \(3,\), small-cnn has \(\d+,\)"),
    "short-dense": (lambda t, m: t.__setitem__("final.other", t["final.other"][:-1]),
                    r"final.other holds \d+ dense parameters, small-cnn has \d+"),
    "extra-buffer": (lambda t, m: t.__setitem__("buffer.bogus", torch.zeros(1)),
                     "holds a buffer 'bogus' that small-cnn does not have"),
    "unknown-method": (lambda t, m: m.__setitem__("config", json.dumps({**json.loads(m["config"]),
                                                                         "method": "nosuch"})),
                       "its stored config names 'nosuch', unknown to this version of cigl-bayes"),
}


@pytest.mark.parametrize("broken", sorted(BROKEN))
def test_a_malformed_weights_file_is_one_line_naming_what_is_wrong(committed, tmp_path, broken, capsys):
    change, match = BROKEN[broken]
    folder = copy_of(committed["rigl"], tmp_path)
    (folder / "config.json").unlink()  # the file alone decides (config.json would name the method first)
    _rewrite(folder / "weights.safetensors", change)
    with pytest.raises(RunFolderError, match=match) as err:
        load_run(folder, device="cpu")
    assert "\n" not in str(err.value)
    assert cli([str(folder), "--no-progress", "--device", "cpu"]) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and re.search(match, message), message
    assert not (folder / "reevaluation.json").exists()


def test_reevaluate_checks_every_input_before_any_work(committed, tmp_path, monkeypatch):
    import cigl_bayes.evaluate as evaluate

    def never(*args, **kwargs):
        raise AssertionError("scored before every input was checked")

    monkeypatch.setattr(evaluate, "evaluate_weights", never)
    good = copy_of(committed["rigl"], tmp_path, "good")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli([str(good), str(empty), "--no-progress", "--device", "cpu"]) == 2  # no weights file
    misfit = copy_of(committed["rigl"], tmp_path, "misfit")  # a second run that does not fit its network
    _rewrite(misfit / "weights.safetensors", BROKEN["buffer-shape"][0])
    assert cli([str(good), str(misfit), "--no-progress", "--device", "cpu"]) == 2
    assert cli([str(good), str(good), "--out", str(tmp_path / "out"), "--no-progress", "--device", "cpu"]) == 2
    (tmp_path / "a-file").write_text("")
    assert cli([str(good), "--out", str(tmp_path / "a-file"), "--no-progress", "--device", "cpu"]) == 2
    before = (good / "metrics.json").read_bytes()
    assert cli([str(good), "--out-name", "metrics.json", "--no-progress", "--device", "cpu"]) == 2
    assert (good / "metrics.json").read_bytes() == before
    stored = json.loads((good / "metrics.json").read_text())
    (good / "metrics.json").write_text(json.dumps({**stored, "test_fingerprint": "0" * 16}))
    assert cli([str(good), "--no-progress", "--device", "cpu"]) == 2  # another test set: before scoring
    assert not list(tmp_path.rglob("reevaluation.json")) and not (tmp_path / "out").exists()


def test_reevaluation_records_its_agreement_with_metrics_json(committed, tmp_path):
    folder = copy_of(committed["cigl"], tmp_path)
    assert cli([str(folder), "--no-progress", "--device", "cpu"]) == 0
    again = json.loads((folder / "reevaluation.json").read_text())
    agreement = again["agreement"]
    assert agreement["largest_abs_difference"] == 0.0 and agreement["at"]
    stored_runtime = json.loads((folder / "metrics.json").read_text())["runtime"]
    assert again["runtime"] == stored_runtime == agreement["evaluated_on"]  # the same host and options
    stored = json.loads((folder / "metrics.json").read_text())
    stored["by_bn_protocol"]["recomputed-augmented"]["test"]["wma"]["ece"] += 0.25
    (folder / "metrics.json").write_text(json.dumps(stored))
    assert cli([str(folder), "--no-progress", "--device", "cpu"]) == 0
    agreement = json.loads((folder / "reevaluation.json").read_text())["agreement"]
    assert agreement["largest_abs_difference"] == pytest.approx(0.25)
    assert agreement["at"] == "recomputed-augmented/test/wma/ece"


def test_the_weights_file_records_its_number_of_classes(committed):
    _, meta = load_run_weights(committed["cigl"] / "weights.safetensors")
    assert meta["num_classes"] == "10"


def test_the_shift_report_scores_a_committed_cigl_runs_wma(committed):
    """The file keeps CigL's WMA mean without its samples: the shift report's predictors include wma
    (and the temperature on top of it), not only final and mc-z."""
    from cigl_bayes.experiments.shift_report import predictions

    run = load_run(committed["cigl"], device="cpu")
    images = (torch.rand(6, 32, 32, 3) * 255).to(torch.uint8).numpy()
    out = predictions(run, images, draws=2, progress=False)
    assert list(out) == ["final", "wma", "temperature_scaled", "mc-z"]
    assert torch.equal(out["wma"][0], run.predict(images, "wma").probs)


def test_runs_of_one_name_from_two_studies_get_two_output_files(tmp_path):
    from cigl_bayes.experiments.reevaluate import output_names

    a, b = tmp_path / "bf16" / "runs" / "cigl-s0", tmp_path / "fp32" / "runs" / "cigl-s0"
    c = tmp_path / "fp32" / "runs" / "rigl-s0"
    for folder in (a, b, c):
        folder.mkdir(parents=True)
    assert output_names([c]) == ["rigl-s0.json"]
    assert output_names([a, b, c]) == ["bf16__runs__cigl-s0.json", "fp32__runs__cigl-s0.json",
                                       "fp32__runs__rigl-s0.json"]
    with pytest.raises(ValueError, match="is given twice"):
        output_names([a, a])


def test_the_thread_count_follows_the_option_then_the_run_capped_at_the_cores(monkeypatch):
    from cigl_bayes.experiments.reevaluate import thread_count

    stored = {"runtime": {"cpu_threads": 64}}
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # not followed: it would change the numbers
    assert thread_count(None, stored) == min(64, os.cpu_count())
    assert thread_count(None, {"runtime": {"cpu_threads": 1}}) == 1
    assert thread_count(3, stored) == 3
    assert thread_count(None, {}) == torch.get_num_threads()


def test_reevaluation_runs_at_the_runs_thread_count_and_puts_the_callers_back(committed, tmp_path, monkeypatch):
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs two cores to tell thread counts apart")
    folder = copy_of(committed["rigl"], tmp_path)
    mine = torch.get_num_threads()
    recorded = 1 if mine != 1 else 2
    stored = json.loads((folder / "metrics.json").read_text())
    stored["runtime"]["cpu_threads"] = recorded
    (folder / "metrics.json").write_text(json.dumps(stored))
    assert cli([str(folder), "--no-progress", "--device", "cpu"]) == 0
    assert json.loads((folder / "reevaluation.json").read_text())["runtime"]["cpu_threads"] == recorded
    assert torch.get_num_threads() == mine


def test_to_inferencedata_of_a_committed_cigl_run_is_refused_by_name(committed):
    run = load_run(committed["cigl"], device="cpu")
    with pytest.raises(RunFolderError, match=r"has no posterior samples \(method cigl, weights.safetensors keeps "
                                             r"only their mean\); InferenceData holds the samples"):
        run.to_inferencedata()


def test_a_failed_prediction_leaves_the_final_weights_in_place(committed):
    """A draw interrupted after its weights were loaded (Ctrl-C during its BatchNorm recomputation)
    must not leave them in the network: final, and mc-z built from it, are unchanged afterwards."""
    run = load_run(committed["cigl-full"], device="cpu")
    images = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    final, mcz = run.predict(images, "final").probs, run.predict(images, "mc-z", draws=2).probs
    original = run.bn_loader

    def broken(protocol="recomputed-clean"):
        raise KeyboardInterrupt("Ctrl-C during the BatchNorm recomputation")

    run.bn_loader = broken
    with pytest.raises(KeyboardInterrupt):
        run.predict(images, "predictive")  # each sample's statistics are recomputed
    run.bn_loader = original
    assert torch.equal(run.predict(images, "final").probs, final)
    assert torch.equal(run.predict(images, "mc-z", draws=2).probs, mcz)


def test_swag_statistics_are_cached_per_rank(committed):
    run = load_run(committed["cigl-full"], device="cpu")
    run.log_probs("swag", "test", draws=2, swag_rank=1)
    second = run.log_probs("swag", "test", draws=2, swag_rank=2)
    fresh = load_run(committed["cigl-full"], device="cpu").log_probs("swag", "test", draws=2, swag_rank=2)
    assert all(torch.equal(a, b) for a, b in zip(second, fresh))


def test_a_run_folder_predicts_over_a_loader_of_images_as_over_one_tensor(committed):
    """uint8 images as the data set stores them, through a DataLoader of (images, labels): each batch
    is prepared (normalised) as a tensor would be, and temperature_scaled keeps the loader's labels."""
    from torch.utils.data import DataLoader, TensorDataset

    run = load_run(committed["cigl-full"], device="cpu")
    images = torch.randint(0, 256, (10, 32, 32, 3), dtype=torch.uint8)
    labels = torch.randint(0, 10, (10,))
    loader = DataLoader(TensorDataset(images, labels), batch_size=4)
    for predictor in ("wma", "temperature_scaled"):
        whole, batched = run.predict(images, predictor), run.predict(loader, predictor)
        torch.testing.assert_close(batched.probs, whole.probs)
        assert torch.equal(batched.labels, labels)


def test_every_setting_under_every_protocol_gets_its_own_temperature_and_the_headline_one_is_the_same_fit(committed):
    """metrics.json → temperature_by_bn_protocol holds each weight setting under each protocol it
    was scored under; the entry of the output predictor under its headline protocol is the same
    fit as ``temperature`` / ``temperature_scaled``."""
    for method, output in (("rigl", "final"), ("cigl", "wma")):
        stored = json.loads((committed[method] / "metrics.json").read_text())
        by_t = stored["temperature_by_bn_protocol"]
        assert {p: set(v) for p, v in by_t.items()} == \
            {p: set(v["test"]) for p, v in stored["by_bn_protocol"].items()}
        headline = by_t[stored["bn_protocol"][output]][output]
        assert headline["temperature"] == pytest.approx(stored["temperature"], rel=1e-9)
        assert headline["test"]["ece"] == pytest.approx(stored["test"]["temperature_scaled"]["ece"], abs=1e-12)
        others = [e["temperature"] for p, v in by_t.items() for e in v.values()]
        assert len(set(others)) > 1  # not one T copied to every protocol


def test_the_per_protocol_temperature_is_fitted_on_validation_only():
    from cigl_bayes import metrics
    from cigl_bayes.evaluate import temperature_by_protocol

    gen = torch.Generator().manual_seed(0)
    val, test = 3 * torch.randn(200, 5, generator=gen), 3 * torch.randn(150, 5, generator=gen)
    labels = {"val": torch.randint(0, 5, (200,), generator=gen), "test": torch.randint(0, 5, (150,), generator=gen)}
    logp = {"recomputed-clean": {"final": {"val": val.log_softmax(-1), "test": test.log_softmax(-1)}}}
    entry = temperature_by_protocol(logp, labels)["recomputed-clean"]["final"]
    assert entry["temperature"] == pytest.approx(metrics.fit_temperature(val.log_softmax(-1), labels["val"]))
    scaled = (test.log_softmax(-1) / entry["temperature"]).log_softmax(-1)
    assert entry["test"]["nll"] == pytest.approx(metrics.calibration_metrics(scaled, labels["test"],
                                                                             from_logits=True)["nll"])
    shuffled = {**labels, "test": labels["test"].flip(0)}  # other test labels: the same T
    assert temperature_by_protocol(logp, shuffled)["recomputed-clean"]["final"]["temperature"] == entry["temperature"]
    assert temperature_by_protocol(logp, {"test": labels["test"]}) == {}


def test_a_limited_reevaluation_scores_only_the_asked_settings_as_the_evaluation_did(committed, tmp_path):
    folder = copy_of(committed["cigl"], tmp_path)
    out = tmp_path / "out"
    assert cli([str(folder), "--bn-protocols", "recomputed-augmented", "--predictors", "wma", "--out", str(out),
                "--no-progress", "--device", "cpu"]) == 0
    again = json.loads((out / "run.json").read_text())
    stored = json.loads((folder / "metrics.json").read_text())
    assert list(again["by_bn_protocol"]) == ["recomputed-augmented"]
    assert list(again["by_bn_protocol"]["recomputed-augmented"]["test"]) == ["wma"]
    assert again["agreement"]["largest_abs_difference"] == 0.0
    assert again["temperature_by_bn_protocol"] == {
        "recomputed-augmented": {"wma": stored["temperature_by_bn_protocol"]["recomputed-augmented"]["wma"]}}
    assert again["test"] == {} and again["temperature"] is None  # wma's headline protocol was left out
    # CigL's output predictor left out: final is scored, and no temperature of final is passed off as the run's
    assert cli([str(folder), "--predictors", "final", "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    again = json.loads((out / "run.json").read_text())
    assert again["output_predictor"] == "wma" and again["temperature"] is None
    assert list(again["test"]) == ["final"] and set(again["by_bn_protocol"]) == {
        "tracked", "recomputed-clean", "recomputed-augmented"}


@pytest.mark.parametrize("args, message", [
    pytest.param(["--predictors", "wma"], "holds no wma weights", id="absent-predictor"),
    pytest.param(["--predictors", "final", "--bn-protocols", "nonsense"], "invalid choice", id="unknown-protocol"),
])
def test_a_limited_reevaluation_refuses_what_the_file_cannot_give(committed, tmp_path, capsys, args, message):
    folder = copy_of(committed["rigl"], tmp_path)
    assert cli([str(folder), *args, "--no-progress", "--device", "cpu"]) == 2
    assert message in capsys.readouterr().err
    assert not (folder / "reevaluation.json").exists()


def test_a_setting_without_the_asked_protocol_is_refused(committed, tmp_path, capsys):
    folder = copy_of(committed["cigl"], tmp_path)
    assert cli([str(folder), "--predictors", "wma", "--bn-protocols", "tracked", "--no-progress",
                "--device", "cpu"]) == 2
    assert "wma has none of the BatchNorm protocols tracked" in capsys.readouterr().err
