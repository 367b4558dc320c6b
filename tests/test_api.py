"""The Python API: ``inference.load_run`` reproduces the trainer's own evaluation, checks the run
folder, and the example of docs/api.md runs as written."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch

from cigl_bayes import data as data_lib
from cigl_bayes.config import TrainConfig
from cigl_bayes.inference import RunFolderError, load_run
from cigl_bayes.train import run
from tests.conftest import REPO


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cifar_data_dir, cache_dir):
    import os

    os.environ["CIGL_CACHE_DIR"] = str(cache_dir)
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(method="cigl", model="small-cnn", data_dir=str(cifar_data_dir), sparsity=0.9, epochs=3,
                      wma_start_epoch=0, subset=512, test_subset=200, batch_size=64, delta_t=4, device="cpu",
                      log_every=100)
    metrics = run(cfg, out, progress=False)
    _, test = data_lib.load_dataset("cifar10", cifar_data_dir)
    test = data_lib.take_subset(test, 200, seed=cfg.seed)
    return out, cfg, metrics, test


def test_load_run_reproduces_the_trainers_predictions(finished, cifar_data_dir):
    out, cfg, metrics, test = finished
    trained = load_run(out, data_dir=str(cifar_data_dir))
    assert not trained.net.module.training and len(trained.samples) == 3 == metrics["wma_samples"]
    saved = np.load(out / "predictions.npz")
    assert np.array_equal(saved["labels"], test.labels)
    for predictor in ("final", "wma", "temperature_scaled"):
        pred = trained.predict(test.images, predictor)  # uint8 (N, H, W, C), as the data set stores them
        np.testing.assert_allclose(pred.probs.numpy(), saved[predictor], rtol=1e-4, atol=1e-5)
        assert pred.draws is None and torch.all(pred.mutual_information() == 0)
    # float images in [0, 1], channels first: the same predictions
    chw = torch.from_numpy(test.images[:16]).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(trained.predict(chw, "wma").probs, trained.predict(test.images[:16], "wma").probs)
    assert trained.metrics["test"]["wma"]["accuracy"] == metrics["test"]["wma"]["accuracy"]


def test_load_run_evaluates_in_the_precision_asked_for(finished, cifar_data_dir):
    """``amp`` overrides the run's own precision for every forward pass: None keeps what training
    used (recorded in metrics.json), "off" is float32, "bf16" autocasts (and changes the numbers)."""
    out, _, metrics, test = finished
    as_trained = load_run(out, data_dir=str(cifar_data_dir))
    assert as_trained.compute_dtype == metrics["runtime"]["compute_dtype"]
    fp32 = load_run(out, data_dir=str(cifar_data_dir), amp="off")
    bf16 = load_run(out, data_dir=str(cifar_data_dir), amp="bf16")
    assert (fp32.compute_dtype, bf16.compute_dtype) == ("float32", "bfloat16")
    assert fp32.net.autocast_dtype is None and bf16.net.autocast_dtype is torch.bfloat16
    p32, p16 = (r.predict(test.images[:16], "wma").probs for r in (fp32, bf16))
    assert p16.dtype == torch.float32 and not torch.equal(p32, p16)
    torch.testing.assert_close(p16, p32, atol=0.05, rtol=0)  # same weights, rounded products
    with pytest.raises(ValueError, match="amp must be"):
        load_run(out, data_dir=str(cifar_data_dir), amp="fp16")


def test_predictive_draws_and_uncertainty(finished, cifar_data_dir):
    out, _, _, test = finished
    trained = load_run(out, data_dir=str(cifar_data_dir))
    pred = trained.predict(test.images[:8], "predictive")
    assert pred.draws.shape == (3, 8, 10)
    torch.testing.assert_close(pred.probs, pred.draws.mean(0))
    # MI = H[mean] − mean H ≥ 0, and H ≤ log C
    h_mean = -(pred.probs * pred.probs.log()).sum(-1)
    mean_h = -(pred.draws * pred.draws.log()).sum(-1).mean(0)
    torch.testing.assert_close(pred.mutual_information(), (h_mean - mean_h).clamp_min(0), rtol=1e-5, atol=1e-6)
    assert (pred.entropy() <= np.log(10) + 1e-6).all()
    mcz = trained.predict(test.images[:8], "mc-z", draws=2, seed=3)
    again = trained.predict(test.images[:8], "mc-z", draws=2, seed=3)  # seeded and cached
    torch.testing.assert_close(mcz.draws, again.draws)
    assert trained.predict(test.images[:8], "swag", draws=2).draws.shape == (2, 8, 10)
    for bad, match in ((np.zeros((2, 5, 5)), "images must be"), (np.full((2, 32, 32, 3), 2.0), r"\[0, 1\]")):
        with pytest.raises(ValueError, match=match):
            trained.predict(bad, "wma")
    with pytest.raises(ValueError, match="unknown predictor"):
        trained.predict(test.images[:2], "magic")


def test_predict_refuses_what_it_used_to_get_silently_wrong(finished, cifar_data_dir):
    out, _, _, test = finished
    trained = load_run(out, data_dir=str(cifar_data_dir))
    images = test.images[:4]
    with pytest.raises(ValueError, match="images must be 32×32, the size the network was trained on, got 64×64"):
        trained.predict(np.zeros((2, 64, 64, 3), np.uint8), "wma")
    with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\], got values in \[0, 255\]"):
        trained.predict(test.images[:2].astype(np.float32), "final")
    for draws in (0, -1):  # mc-z used to take 0 for "the default", 10 draws
        with pytest.raises(ValueError, match=f"draws must be a positive integer .*got {draws}"):
            trained.predict(images, "mc-z", draws=draws)
    with pytest.raises(ValueError, match="draws=100 but predictive averages over the samples and run .* collected 3"):
        trained.predict(images, "predictive", draws=100)  # used to be capped at 3 without a word
    assert trained.predict(images, "predictive", draws=2).draws.shape == (2, 4, 10)
    with pytest.raises(ValueError, match="SWAG rank 20 is more than the 3 samples"):
        trained.swag(rank=20)  # used to return rank 3
    default = trained.swag()  # up to 20 columns, as many as there are samples
    assert default.rank == 3 and default.max_rank == 20


def test_posterior_objects(finished, cifar_data_dir):
    trained = load_run(finished[0], data_dir=str(cifar_data_dir))
    idata = trained.to_inferencedata()
    assert idata.posterior.sizes["draw"] == 3
    losses = idata.sample_stats["train_loss"].values  # a run folder keeps each draw's training loss
    assert losses.shape == (1, 3) and bool((losses > 0).all())
    assert list(idata.posterior["layer"].values) == trained.net.sparse_names
    swag = trained.swag(rank=2)
    assert swag.rank == 2 and swag.sample(torch.Generator().manual_seed(0)).sparse.shape == trained.wma.sparse.shape


def test_a_damaged_run_folder_is_named(finished, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(finished[0], out)
    (out / "samples" / "sample_0001.pt").unlink()
    with pytest.raises(RunFolderError, match="missing sample_0001.pt"):
        load_run(out)
    shutil.copy(out / "samples" / "sample_0000.pt", out / "samples" / "sample_0001.pt")
    with pytest.raises(RunFolderError, match="sample_0001.pt is from epoch 0, expected 1"):
        load_run(out)
    shutil.copy(out / "samples" / "sample_0002.pt", out / "samples" / "sample_0001.pt")
    shutil.copy(out / "samples" / "sample_0002.pt", out / "samples" / "sample_0005.pt")
    with pytest.raises(RunFolderError, match="stray sample_0005.pt"):
        load_run(out)
    (out / "samples" / "sample_0005.pt").unlink()
    (out / "samples" / "sample_0001.pt").write_bytes(b"truncated")
    with pytest.raises(RunFolderError, match="sample_0001.pt is unreadable"):
        load_run(out)
    with pytest.raises(RunFolderError, match="does not exist"):
        load_run(tmp_path / "nowhere")


def test_a_file_given_as_the_run_folder_is_named_a_file(finished):
    with pytest.raises(RunFolderError, match="metrics.json is a file, expected a run folder"):
        load_run(finished[0] / "metrics.json")  # used to be "does not exist"


def test_temperature_scaled_without_metrics_json_names_the_missing_file(finished, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(finished[0], out)
    (out / "metrics.json").unlink()
    trained = load_run(out)
    with pytest.raises(RunFolderError, match="has no metrics.json, which holds the fitted temperature"):
        trained.predict(finished[3].images[:2], "temperature_scaled")  # used to blame --no-temperature-scaling


def test_a_config_json_that_disagrees_with_the_checkpoint_is_refused_by_name(finished, tmp_path):
    """config.json is what the sweep and the reports read; load_run goes by the checkpoint, so a file
    edited by hand or damaged is named (and left as it is) rather than silently disagreeing."""
    out = tmp_path / "copy"
    shutil.copytree(finished[0], out)
    path = out / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "device": "cuda", "data_dir": "/elsewhere"}))
    load_run(out)  # fields a resumption may change are not compared
    edited = json.dumps({**config, "sparsity": 0.8})
    path.write_text(edited)
    with pytest.raises(RunFolderError, match=r"config.json disagrees with the run's checkpoint.pt \(sparsity: 0.8 in "
                                             r"config.json, 0.9 in checkpoint.pt\)") as err:
        load_run(out)
    assert "\n" not in str(err.value) and path.read_text() == edited
    path.write_text('{"method": "cig')  # truncated
    with pytest.raises(RunFolderError, match="config.json cannot be read as a run config"):
        load_run(out)
    path.unlink()  # a run copied without it: the checkpoint's config, as before
    assert load_run(out).config.sparsity == 0.9


def test_the_api_doc_example_runs(cifar_data_dir, cache_dir, monkeypatch, capsys):
    monkeypatch.setenv("CIGL_DATA_DIR", str(cifar_data_dir))
    monkeypatch.setenv("CIGL_CACHE_DIR", str(cache_dir))
    text = (REPO / "docs" / "api.md").read_text()
    text = text[text.index("## Runs and run folders"):]
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2  # the run API, then the export, in one namespace
    namespace = {"__name__": "api_doc"}
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "mutual information" in printed and "SWAG rank" in printed
    assert "exported model agrees with the run: True" in printed


def test_a_run_records_the_data_folder_it_found_through_the_environment(cifar_data_dir, cache_dir, monkeypatch,
                                                                       tmp_path):
    """CIGL_DATA_DIR at training time is written into config.json, so the run loads from elsewhere."""
    import json

    from cigl_bayes.config import TrainConfig
    from cigl_bayes.inference import run as train_run

    monkeypatch.setenv("CIGL_DATA_DIR", str(cifar_data_dir))
    monkeypatch.setenv("CIGL_CACHE_DIR", str(cache_dir))
    cfg = TrainConfig(method="rigl", model="small-cnn", sparsity=0.9, epochs=1, subset=200, test_subset=100,
                      batch_size=50, device="cpu")
    train_run(cfg, tmp_path / "run", progress=False)
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["data_dir"]
    assert recorded == str(cifar_data_dir.resolve())
    monkeypatch.delenv("CIGL_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    pred = load_run(tmp_path / "run").predict(np.zeros((2, 32, 32, 3), dtype=np.uint8), "final")
    assert pred.probs.shape == (2, 10)


def test_temperature_scaled_is_the_output_predictor_at_the_fitted_temperature(finished, cifar_data_dir):
    out, _, metrics, test = finished
    trained = load_run(out, data_dir=str(cifar_data_dir))
    assert metrics["output_predictor"] == "wma" and metrics["temperature"] != 1.0
    wma = trained.predict(test.images[:32], "wma").probs
    scaled = trained.predict(test.images[:32], "temperature_scaled")
    expected = torch.softmax(wma.log() / metrics["temperature"], -1)
    torch.testing.assert_close(scaled.probs, expected)
    assert scaled.draws is None and not torch.allclose(scaled.probs, wma)
    with pytest.raises(ValueError, match="no activation dropout"):
        trained.predict(test.images[:2], "mc-dropout")


def test_mc_dropout_is_predicted_as_the_run_scored_it(cifar_data_dir, cache_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("CIGL_CACHE_DIR", str(cache_dir))
    cfg = TrainConfig(method="rigl-mcdp", model="small-cnn", data_dir=str(cifar_data_dir), sparsity=0.9, epochs=1,
                      seed=5,
                      subset=256, test_subset=100, batch_size=64, mc_samples=4, device="cpu", log_every=100)
    metrics = run(cfg, tmp_path / "run", progress=False)
    trained = load_run(tmp_path / "run", data_dir=str(cifar_data_dir))
    _, test = data_lib.load_dataset("cifar10", cifar_data_dir)
    test = data_lib.take_subset(test, 100, seed=0)  # every run's test subset is drawn with seed 0
    saved = np.load(tmp_path / "run" / "predictions.npz")
    pred = trained.predict(test.images, "mc-dropout")  # by default, exactly the passes of the run's evaluation
    np.testing.assert_allclose(pred.probs.numpy(), saved["mc-dropout"], rtol=1e-4, atol=1e-5)
    assert pred.draws.shape == (4, 100, 10) and float(pred.mutual_information().mean()) > 0
    nll = float(-pred.probs[torch.arange(100), torch.from_numpy(test.labels)].clamp_min(1e-12).log().mean())
    assert nll == pytest.approx(metrics["test"]["mc-dropout"]["nll"], rel=1e-4)
    assert not torch.equal(trained.predict(test.images, "mc-dropout", draws=2, seed=1).probs, pred.probs)
    assert not trained.net.module.training  # dropout is off again after the passes


def test_the_output_model_predicts_without_data_from_the_statistics_model_pt_stores(finished, cifar_data_dir,
                                                                                     tmp_path, monkeypatch):
    out, _, _, test = finished
    monkeypatch.delenv("CIGL_DATA_DIR", raising=False)
    empty = tmp_path / "no-data-here"
    empty.mkdir()
    trained = load_run(out, data_dir=str(empty))  # the data folder is gone (e.g. another machine)
    saved = np.load(out / "predictions.npz")
    np.testing.assert_allclose(trained.predict(test.images, "wma").probs.numpy(), saved["wma"], rtol=1e-4, atol=1e-5)
    assert trained._data is None  # no data were asked for
    with pytest.raises(Exception, match="CIFAR|data"):  # a fresh Z needs its BatchNorm recomputed: data are asked
        trained.predict(test.images[:2], "mc-z", draws=1)

    with_data = load_run(out, data_dir=str(cifar_data_dir))
    with_data.bn_batches = 1  # another recomputation than the stored one: recomputed, not taken from model.pt
    assert not torch.allclose(with_data.predict(test.images[:32], "wma").probs,
                              trained.predict(test.images[:32], "wma").probs)
    assert with_data._data is not None


def test_stored_statistics_stand_in_only_where_a_recomputation_would_equal_them(finished, tmp_path, monkeypatch):
    out, _, metrics, test = finished
    monkeypatch.delenv("CIGL_DATA_DIR", raising=False)
    empty = tmp_path / "no-data-here"
    empty.mkdir()
    assert set(load_run(out, data_dir=str(empty))._stored_bn) == {"wma"}
    # another precision than the evaluation's: model.pt's statistics would differ from a recomputation
    other_precision = "off" if metrics["runtime"]["compute_dtype"] == "bfloat16" else "bf16"
    assert load_run(out, data_dir=str(empty), amp=other_precision)._stored_bn == {}

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "model.pt").write_bytes(b"")  # damaged: load_run still works, the statistics are recomputed
    damaged = load_run(copy, data_dir=str(empty))
    assert damaged._stored_bn == {}
    with pytest.raises(Exception, match="CIFAR|data"):
        damaged.predict(test.images[:2], "wma")

    state = torch.load(out / "model.pt", weights_only=True)
    theta = next(k for k in state if k.endswith(".bias") or k.endswith("bn1.weight"))
    state[theta] = state[theta] + 0.5  # another model's θ under the same mask: not this run's output model
    torch.save(state, copy / "model.pt")
    assert load_run(copy, data_dir=str(empty))._stored_bn == {}
