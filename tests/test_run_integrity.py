"""Run-folder integrity and inputs that used to be silently wrong: one writer per folder, stale
samples, short runs, broken metrics.json, non-finite or conflicting options, repeated grid values."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cigl_bayes.config import TrainConfig
from cigl_bayes.runs import RunFolderBusy, RunFolderLock, check_out_dir
from cigl_bayes.train import ShortRunWarning, run


@pytest.mark.parametrize("field, value, match", [
    ("lr", math.nan, "lr must be a finite"), ("lr", math.inf, "lr must be a finite"),
    ("sigma", math.nan, "sigma must be a finite"), ("mixup", math.nan, "mixup must be a finite"),
    ("label_smoothing", math.inf, "label_smoothing must be a finite"), ("weight_decay", math.nan, "weight_decay"),
    ("weight_decay", -1e-4, "weight decay must be ≥ 0"), ("momentum", 1.0, "momentum must be in"),
    ("bn_batches", 0, "bn_batches must be a positive"), ("bn_batches", -3, "bn_batches must be a positive"),
    ("lr_decay_every", 0, "lr_decay_every"), ("lr_decay_factor", 0.0, "lr decay factor"),
    ("warmup_steps", -1, "warmup_steps"),
])
def test_bad_numbers_are_refused_naming_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(TrainConfig(), **{field: value}).validate()


def test_nesterov_without_momentum_is_refused():
    with pytest.raises(ValueError, match="Nesterov"):
        TrainConfig(momentum=0.0).validate()
    TrainConfig(momentum=0.0, nesterov=False).validate()


def test_keep_and_random_mask_rate_must_agree():
    from cigl_bayes.experiments import svi_cifar

    with pytest.raises(ValueError, match="disagree"):
        svi_cifar.main(["--keep", "0.99", "--random-mask-rate", "0.2", "--out", "/nonexistent/never-written"])
    with pytest.raises(ValueError, match="--keep must be in"):
        svi_cifar.main(["--keep", "nan", "--out", "/nonexistent/never-written"])


def test_keep_099_gives_the_default_rate_exactly(monkeypatch):
    """--keep 0.99 must name the same config as the default (rate 0.01), not 1 − 0.99 =
    0.010000000000000009, which a resume or the sweep would treat as another run."""
    from cigl_bayes.config import TrainConfig
    from cigl_bayes.experiments import svi_cifar

    seen = []
    monkeypatch.setattr(svi_cifar, "run", lambda cfg, out, progress: seen.append(cfg))
    svi_cifar.main(["--keep", "0.99", "--device", "cpu", "--out", "/nonexistent/never-written"])
    assert seen[0].resolved(n_train=45_000).random_mask_rate == TrainConfig(method="cigl").resolved().random_mask_rate


@pytest.mark.parametrize("extra, match", [
    (["--seeds", "0", "0"], "--seeds repeats 0"),
    (["--methods", "rigl", "rigl"], "--methods repeats rigl"),
    (["--sparsities", "0.9", "0.90000001"], "--sparsities has values"),
])
def test_sweep_refuses_repeated_grid_values_before_training(tmp_path, extra, match):
    from cigl_bayes.experiments import sweep

    with pytest.raises(ValueError, match=match):
        sweep.main(["--results", str(tmp_path), "--no-progress", *extra])
    assert not any(tmp_path.iterdir())


def test_one_writer_per_run_folder(tmp_path):
    with RunFolderLock(tmp_path):
        with pytest.raises(RunFolderBusy, match="being written by another process"):
            with RunFolderLock(tmp_path):
                pass
    with RunFolderLock(tmp_path):  # released: the next writer may go on
        pass


def test_a_folder_that_cannot_be_created_is_a_one_line_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="cannot create run folder"):
        check_out_dir(tmp_path / "file" / "run")


@pytest.mark.parametrize("seed", [-3, 2**32, 99999999999999999999, 1.5, True])
def test_a_seed_outside_0_to_2_32_is_refused_naming_the_option(seed):
    with pytest.raises(ValueError, match="--seed must be an integer in"):
        TrainConfig(seed=seed).validate()


def test_seeds_at_the_ends_of_the_range_are_accepted():
    TrainConfig(seed=0).validate()
    TrainConfig(seed=2**32 - 1).resolved()


@pytest.mark.parametrize("method", ["dense", "static", "set", "rigl", "cigl-no-rm"])
def test_a_random_mask_rate_is_refused_for_methods_without_z_or_dropout(method):
    """A rate that would do nothing is refused, but the method's own default is accepted: resolved()
    records it for every method, so every finished run's config.json holds it."""
    from cigl_bayes.config import METHODS

    with pytest.raises(ValueError, match=f"--random-mask-rate 0.5 has no effect on method {method}"):
        TrainConfig(method=method, random_mask_rate=0.5).validate()
    resolved = TrainConfig(method=method).resolved()
    assert resolved.random_mask_rate == METHODS[method].random_mask_rate
    TrainConfig.from_dict(resolved.to_dict()).resolved()  # a finished run's config.json still loads
    for method in ("cigl", "cigl-no-wma", "rigl-wdp", "rigl-mcdp"):
        TrainConfig(method=method, random_mask_rate=0.5).validate()  # the methods the rate is for


def test_the_committed_run_configs_still_validate():
    """Every config.json committed under docs/results (studies of rigl, dense and cigl, random_mask_rate
    recorded for each) passes the checks of today's TrainConfig."""
    configs = sorted((Path(__file__).parent.parent / "docs" / "results").rglob("config.json"))
    assert len(configs) >= 30
    methods = set()
    for path in configs:
        cfg = TrainConfig.from_dict(json.loads(path.read_text()))
        cfg.validate()
        methods.add(cfg.method)
    assert {"rigl", "dense", "cigl"} <= methods


def test_temperature_fitted_on_few_validation_images_warns_with_the_count():
    from cigl_bayes.evaluate import SmallValidationWarning, with_temperature

    def fit(n_val: int) -> None:
        gen = torch.Generator().manual_seed(0)
        logits = {"val": torch.randn(n_val, 10, generator=gen), "test": torch.randn(20, 10, generator=gen)}
        labels = {"val": torch.arange(n_val) % 10, "test": torch.arange(20) % 10}
        assert with_temperature({"final": logits}, {"final": "tracked"}, "final", labels, True) > 0

    with pytest.warns(SmallValidationWarning, match="only 1 validation image "):
        fit(1)
    with pytest.warns(SmallValidationWarning, match="only 99 validation images"):
        fit(99)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(100)


@pytest.fixture
def tiny(cifar_data_dir, cache_dir, monkeypatch) -> TrainConfig:
    monkeypatch.setenv("CIGL_CACHE_DIR", str(cache_dir))
    return TrainConfig(method="cigl", model="mlp", data_dir=str(cifar_data_dir), sparsity=0.9, epochs=2, subset=256,
                       test_subset=128, batch_size=64, delta_t=2, device="cpu", log_every=100)


def test_fresh_start_clears_stale_samples_and_short_runs_warn(tiny, tmp_path):
    stale = tmp_path / "samples" / "sample_0007.pt"
    stale.parent.mkdir(parents=True)
    torch.save({"junk": 1}, stale)
    with pytest.warns(ShortRunWarning, match="collects 1 posterior sample"):
        result = run(tiny, tmp_path, progress=False)
    assert not stale.exists()
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["sample_0000.pt"]
    assert result["wma_samples"] == 1


def test_a_finished_run_with_broken_metrics_is_evaluated_again(tiny, tmp_path):
    cfg = dataclasses.replace(tiny, wma_start_epoch=0)
    first = run(cfg, tmp_path, progress=False)
    (tmp_path / "metrics.json").write_text('{"method": "cig')  # truncated
    with pytest.warns(UserWarning, match="unreadable; evaluating the finished run again"):
        again = run(cfg, tmp_path, progress=False)
    assert again["test"] == first["test"]
    assert json.loads((tmp_path / "metrics.json").read_text())["completed"] is True


def test_resuming_refuses_a_config_json_that_disagrees_with_the_checkpoint(tiny, tmp_path):
    """An interrupted run whose config.json was edited (or damaged) is not resumed over it: the file
    and the first differing field are named, and nothing in the folder is rewritten."""
    from cigl_bayes.runs import CheckpointError

    with pytest.warns(ShortRunWarning):
        assert run(tiny, tmp_path, progress=False, stop_after_epochs=1) is None
    path = tmp_path / "config.json"
    for text, match in ((json.dumps({**json.loads(path.read_text()), "lr": 0.5}),
                         r"config.json disagrees with the run's checkpoint.pt \(lr: 0.5 in config.json, 0.1 in"),
                        ("[1, 2]", "config.json cannot be read as a run config")):
        path.write_text(text)
        before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
        with pytest.warns(ShortRunWarning), pytest.raises(CheckpointError, match=match) as err:
            run(tiny, tmp_path, progress=False)
        assert "\n" not in str(err.value)
        assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_fingerprints_tell_data_apart():
    from cigl_bayes.data import ArrayDataset, DeviceLoader, fingerprint

    rng = np.random.default_rng(0)
    ds = ArrayDataset(rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8), rng.integers(0, 10, 20).astype(np.int64),
                      tuple("abcdefghij"))
    kw = {"batch_size": 4, "device": "cpu", "mean": (0.5,) * 3, "std": (0.25,) * 3, "shuffle": False}
    same = fingerprint(DeviceLoader(ds, **kw)), fingerprint(DeviceLoader(ds, **kw))
    assert same[0] == same[1] and len(same[0]) == 16
    other = ArrayDataset(ds.images[:19], ds.labels[:19], ds.classes)
    assert fingerprint(DeviceLoader(other, **kw)) != same[0]


def test_posterior_report_refuses_repeated_runs_and_a_file_as_out(tmp_path):
    from cigl_bayes.experiments import posterior_report

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(ValueError, match="given more than once"):
        posterior_report.main([str(run_dir), str(tmp_path / "run" / ".." / "run")])
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        posterior_report.main([str(run_dir), "--out", str(tmp_path / "file")])
    for bad in ("0", "-2"):
        with pytest.raises(ValueError, match="--bn-batches must be ≥ 1"):
            posterior_report.main([str(run_dir), "--bn-batches", bad])


def test_posterior_report_refuses_runs_scored_on_different_test_points():
    from cigl_bayes.experiments.posterior_report import RunAnalysis, check_same_test_points

    def analysis(name, labels, fp):
        return RunAnalysis(Path(name), TrainConfig(), torch.tensor(labels), {}, [], [], [], {}, fp)

    check_same_test_points([analysis("a", [1, 2], "x"), analysis("b", [1, 2], "x")])
    with pytest.raises(ValueError, match="different test points"):
        check_same_test_points([analysis("a", [1, 2], "x"), analysis("b", [1, 2], "y")])


def test_loaded_runs_refuse_other_data_than_the_runs(tiny, tmp_path):
    from cigl_bayes.inference import RunFolderError, load_run

    run(dataclasses.replace(tiny, wma_start_epoch=0), tmp_path, progress=False)
    assert load_run(tmp_path, device="cpu").labels("test").numel() == tiny.test_subset
    stored = json.loads((tmp_path / "metrics.json").read_text())
    stored["test_fingerprint"] = "0" * 16  # as if the data found now were other data
    (tmp_path / "metrics.json").write_text(json.dumps(stored))
    with pytest.raises(RunFolderError, match="the test data found now .* differ"):
        load_run(tmp_path, device="cpu").labels("test")


def test_the_lock_file_goes_with_its_writer(tmp_path):
    with RunFolderLock(tmp_path):
        assert (tmp_path / ".lock").read_text() == str(__import__("os").getpid())
    assert not (tmp_path / ".lock").exists()


def test_the_one_writer_writes_csv_npz_figures_and_named_files_atomically(tmp_path):
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cigl_bayes.runs import atomic_save_figure, atomic_write_csv, atomic_write_npz, atomic_write_via

    atomic_write_csv([{"a": 1, "b": 2.5}, {"a": 3, "c": "x"}], tmp_path / "t.csv")
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert rows == [{"a": "1", "b": "2.5", "c": ""}, {"a": "3", "b": "", "c": "x"}]
    with pytest.raises(ValueError, match="no rows"):
        atomic_write_csv([], tmp_path / "empty.csv")
    atomic_write_npz({"x": np.arange(3)}, tmp_path / "a.npz")
    assert np.load(tmp_path / "a.npz")["x"].tolist() == [0, 1, 2]
    fig = plt.figure()
    atomic_save_figure(fig, tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG" and not plt.get_fignums()

    (tmp_path / "keep.bin").write_bytes(b"old")

    def failing_writer(name):
        Path(name).write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_via(tmp_path / "keep.bin", failing_writer)
    assert (tmp_path / "keep.bin").read_bytes() == b"old"
    atomic_write_via(tmp_path / "keep.bin", lambda name: Path(name).write_bytes(b"new"))
    assert (tmp_path / "keep.bin").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "f.png", "keep.bin", "t.csv"]  # no temporaries


def test_posterior_report_warns_on_stderr_when_a_run_has_one_sample(tiny, tmp_path, capsys):
    from cigl_bayes.experiments import posterior_report

    with pytest.warns(ShortRunWarning):
        run(tiny, tmp_path / "short", progress=False)  # 2 epochs, WMA from epoch 1: one sample
    assert posterior_report.main([str(tmp_path / "short"), "--device", "cpu", "--no-progress",
                                  "--mc-samples", "2"]) == 0
    err = capsys.readouterr().err
    assert "warning: short: fewer than 2 collected samples per run" in err
    report = (tmp_path / "short" / "posterior" / "report.md").read_text()
    assert "_Note: short: fewer than 2 collected samples" in report and "\n_:" not in report
    assert not (tmp_path / "short" / "posterior" / "posterior.nc").exists()


def test_a_run_on_five_images_warns_that_its_temperature_rests_on_one(tiny, tmp_path):
    """``--subset 5 --batch-size 2``: the validation split is max(1, round(5 × 0.1)) = 1 image."""
    from cigl_bayes.evaluate import SmallValidationWarning

    cfg = dataclasses.replace(tiny, method="rigl", epochs=1, subset=5, batch_size=2, test_subset=20)
    with pytest.warns(SmallValidationWarning, match="only 1 validation image "):
        result = run(cfg, tmp_path, progress=False)
    assert result["n_val"] == 1 and result["temperature"] is not None


def _scored_run(folder: Path, fingerprint: str, **config) -> Path:
    """A finished run folder's small files only: enough for the checks that precede any analysis."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"dataset": "cifar10", "seed": 0, "test_subset": None,
                                                    "data_dir": "/data", **config}))
    (folder / "metrics.json").write_text(json.dumps({"completed": True, "test_fingerprint": fingerprint}))
    return folder


@pytest.mark.parametrize(("a_config", "b_config", "cause"), [
    ({"test_subset": 500}, {"test_subset": 1000}, "--test-subset 500 and 1000"),
    ({"test_subset": 500, "seed": 1}, {"test_subset": 500, "seed": 2},
     "the same --test-subset 500 drawn with each run's seed (1 and 2)"),
    ({}, {"data_dir": "/other"}, "data folders /data and /other"),
])
def test_posterior_report_refuses_other_test_sets_before_analysing_and_names_why(tmp_path, monkeypatch, a_config,
                                                                                 b_config, cause):
    from cigl_bayes.experiments import posterior_report

    def analysed(*args):
        raise AssertionError("the runs were analysed before the refusal")

    monkeypatch.setattr(posterior_report, "analyse", analysed)
    a = _scored_run(tmp_path / "a", "x" * 16, **a_config)
    b = _scored_run(tmp_path / "b", "y" * 16, **b_config)
    with pytest.raises(ValueError, match="different test points") as err:
        posterior_report.main([str(a), str(b), "--device", "cpu", "--no-progress"])
    assert cause in str(err.value)
    assert not (a / "posterior").exists()


def test_posterior_report_on_read_only_media_says_to_use_out(tmp_path, monkeypatch, capsys):
    import errno

    from cigl_bayes.experiments import posterior_report
    from tests.test_cli import call_cli

    run_dir = _scored_run(tmp_path / "run", "x" * 16)
    real_mkdir = Path.mkdir

    def read_only_mkdir(self, *args, **kwargs):  # root ignores permission bits, so simulate the medium
        if self.is_relative_to(run_dir):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only_mkdir)
    code, err = call_cli(posterior_report.main, [str(run_dir), "--device", "cpu", "--no-progress"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "Read-only file system" in err and "give --out FOLDER" in err
