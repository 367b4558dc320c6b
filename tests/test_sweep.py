"""experiments.sweep with the cpu-smoke protocol on a tiny grid: runs, resumes, tables and plots."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from cigl_bayes.device import fast_path_available
from cigl_bayes.experiments import study_plots, study_runs, study_tables, sweep


def test_cpu_smoke_sweep_end_to_end(cifar_data_dir, cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CIGL_CACHE_DIR", str(cache_dir))
    args = ["--protocol", "cpu-smoke", "--methods", "dense", "rigl", "cigl", "rigl+ls", "--sparsities", "0.9",
            "--seeds", "0", "1", "--epochs", "2", "--subset", "640", "--data-dir", str(cifar_data_dir),
            "--results", str(tmp_path), "--study", "tiny", "--device", "cpu", "--no-progress", "--posterior", "on"]
    assert sweep.main(args) == 0
    root = tmp_path / "tiny"
    runs = sorted(p.name for p in (root / "runs").iterdir())
    assert runs == sorted(f"{m}-plain-s{s}-seed{k}" for m, s in
                          [("dense", "0"), ("rigl", "0.9"), ("cigl", "0.9"), ("rigl+ls", "0.9")] for k in (0, 1))
    with open(root / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["method"] for r in rows} == {"dense", "rigl", "rigl+ts", "cigl", "rigl+ls"}
    # each row says in which dtype its run's matrix products ran: what --amp auto chose on this CPU
    chosen = "bfloat16" if fast_path_available(torch.device("cpu")) else "float32"
    assert {r["compute_dtype"] for r in rows} == {chosen}
    summary = json.loads((root / "summary.json").read_text())["summary"]
    cigl = next(e for e in summary if e["method"] == "cigl")
    values = [float(r["ece"]) for r in rows if r["method"] == "cigl"]
    assert cigl["seeds"] == 2 and cigl["ece_mean"] == pytest.approx(sum(values) / 2)
    # the label-smoothing baseline really trained with ε = 0.1
    cfg = json.loads((root / "runs" / "rigl+ls-plain-s0.9-seed0" / "config.json").read_text())
    assert cfg["method"] == "rigl" and cfg["label_smoothing"] == 0.1
    ece_table = (root / "table_ece.md").read_text()
    assert "| cigl |" in ece_table and "| rigl+ts |" in ece_table and "±" in ece_table
    for name in ("accuracy_vs_sparsity.png", "ece_vs_sparsity.png", "reliability_dense_vs_sparse.png",
                 "baselines.png", "ablations.md", "baselines.md", "summary.csv", "regime.md", "keep.md",
                 "reliability_rigl_vs_cigl_s0.9.png"):
        assert (root / name).stat().st_size > 0, name
    # each CigL run's posterior report sits beside it, and the study's posterior.md summarises them
    for seed in (0, 1):
        assert (root / "runs" / f"cigl-plain-s0.9-seed{seed}" / "posterior" / "predictors.json").is_file()
    assert not (root / "runs" / "rigl-plain-s0.9-seed0" / "posterior").exists()
    posterior = (root / "posterior.md").read_text()
    assert "| cigl | plain | 0.9 | wma | 0, 1 |" in posterior and "| cigl | plain | 0.9 | mc-z | 0, 1 |" in posterior
    # a second call finds every run finished: same tables, no training
    before = {p: (root / "runs" / p / "metrics.json").stat().st_mtime_ns for p in runs}
    assert sweep.main(args) == 0
    assert before == {p: (root / "runs" / p / "metrics.json").stat().st_mtime_ns for p in runs}


def test_two_sweeps_of_one_study_split_its_grid(cifar_data_dir, cache_dir, tmp_path, monkeypatch, capsys):
    """A run, or a posterior report, that another process is writing is skipped (not trained twice,
    not an error), so two sweeps of one grid share it.  The other process is stood in for by locks
    this test holds, as RunFolderLock would hold them for another sweep."""
    import os

    from cigl_bayes.runs import RunFolderLock

    monkeypatch.setenv("CIGL_CACHE_DIR", str(cache_dir))
    args = ["--protocol", "cpu-smoke", "--methods", "rigl", "cigl", "--sparsities", "0.9", "--seeds", "0",
            "--epochs", "2", "--subset", "640", "--data-dir", str(cifar_data_dir), "--results", str(tmp_path),
            "--study", "shared", "--device", "cpu", "--no-progress", "--posterior", "on"]
    runs = tmp_path / "shared" / "runs"
    rigl, cigl = runs / "rigl-plain-s0.9-seed0", runs / "cigl-plain-s0.9-seed0"
    (cigl / "posterior").mkdir(parents=True)
    (cigl / "posterior" / "predictors.json").write_text("{}")  # as a report killed after its first file leaves it
    rigl.mkdir()
    with RunFolderLock(rigl), RunFolderLock(cigl / "posterior"):
        assert sweep.main(args) == 0
        err = capsys.readouterr().err
        assert f"skipped {rigl.name}: another process (pid {os.getpid()}) is writing it" in err
        assert f"1 run(s) of this grid were left to other processes ({rigl.name}); run the sweep again" in err
        assert f"skipped the posterior report of {cigl.name}: another process (pid {os.getpid()})" in err
        assert not (rigl / "metrics.json").exists() and (cigl / "metrics.json").is_file()
        assert not (cigl / "posterior" / "report.md").exists()
        with open(tmp_path / "shared" / "runs.csv") as f:
            assert {r["method"] for r in csv.DictReader(f)} == {"cigl"}  # the tables hold what is finished
    assert sweep.main(args) == 0  # the other writer is gone: this sweep takes what it left
    assert (rigl / "metrics.json").is_file() and (cigl / "posterior" / "report.md").is_file()
    assert json.loads((cigl / "posterior" / "predictors.json").read_text())["predictors"]  # the partial one redone
    with open(tmp_path / "shared" / "runs.csv") as f:
        assert {r["method"] for r in csv.DictReader(f)} == {"rigl", "rigl+ts", "cigl"}


def test_table_rebuilds_of_one_study_wait_for_each_other(tmp_path):
    """Sweeps sharing a study rebuild its tables one at a time: a second rebuild waits for the first."""
    import threading

    order = []

    def other_sweep():
        with sweep.tables_lock(tmp_path):
            order.append("other")

    with sweep.tables_lock(tmp_path):
        other = threading.Thread(target=other_sweep)
        other.start()
        other.join(0.5)
        assert other.is_alive() and order == []  # it waits while this one holds the lock
        order.append("first")
    other.join(10)
    assert order == ["first", "other"]


def test_a_sweep_whose_every_run_is_busy_ends_cleanly(tmp_path, capsys):
    from cigl_bayes.runs import RunFolderLock

    rigl = tmp_path / "shared" / "runs" / "rigl-plain-s0.9-seed0"
    rigl.mkdir(parents=True)
    with RunFolderLock(rigl):
        assert sweep.main(["--protocol", "cpu-smoke", "--methods", "rigl", "--sparsities", "0.9", "--seeds", "0",
                           "--results", str(tmp_path), "--study", "shared", "--device", "cpu", "--no-progress"]) == 0
    assert "no finished run in" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == [".tables.lock", "runs"]  # no tables


def test_a_sweep_says_which_settings_its_protocol_pins(tmp_path, capsys):
    """cpu-smoke trains its plain ``cigl`` at keep 0.9, not the library default: the sweep says so."""
    from cigl_bayes.runs import RunFolderLock

    cigl, cigl_099 = (tmp_path / "s" / "runs" / f"{m}-plain-s0.9-seed0" for m in ["cigl", "cigl-keep0.99"])
    cigl.mkdir(parents=True)
    cigl_099.mkdir()
    argv = ["--protocol", "cpu-smoke", "--sparsities", "0.9", "--seeds", "0", "--results", str(tmp_path),
            "--study", "s", "--device", "cpu", "--no-progress", "--methods"]
    with RunFolderLock(cigl), RunFolderLock(cigl_099):  # busy: nothing trains
        assert sweep.main([*argv, "cigl"]) == 0
        assert "pins cigl: random_mask_rate=0.1 (keep 0.9)" in capsys.readouterr().err
        assert sweep.main([*argv, "cigl-keep0.99"]) == 0  # nothing pinned behind this name
        assert "pins" not in capsys.readouterr().err


def test_sweep_rejects_unknown_method_before_training(tmp_path):
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        sweep.main(["--methods", "rigl", "magic", "--results", str(tmp_path), "--no-progress"])
    assert not (tmp_path / "cpu-smoke").exists()


def test_keep_variants_of_random_mask_methods():
    assert study_runs.method_spec("cigl-keep0.99") == ("cigl", {"random_mask_rate": 0.01})
    assert study_runs.method_spec("cigl-no-wma-keep0.9") == ("cigl-no-wma", {"random_mask_rate": 0.1})
    for bad in ("rigl-keep0.9", "cigl-keep1.5", "cigl-keepx", "cigl-keep0"):
        with pytest.raises(ValueError, match="keep|unknown method"):
            study_runs.method_spec(bad)
    assert sweep.grid(["cigl-keep0.99"], [0.95], [0, 1]) == [("cigl-keep0.99", 0.95, 0), ("cigl-keep0.99", 0.95, 1)]


def test_the_ablation_and_baseline_tables_list_the_keep_variants_a_study_trained():
    """The controlled study trains cigl-keep0.99 and cigl-no-wma-keep0.99: its ablation and baseline
    tables must hold them, each after its base method's place, and nothing else of another family."""
    present = {"rigl", "rigl+ts", "cigl-keep0.99", "cigl-no-rm", "cigl-no-wma-keep0.99"}
    assert study_tables.with_keep_variants(study_runs.ABLATIONS, present) == [
        "rigl", "cigl-no-rm", "cigl-no-wma-keep0.99", "cigl-keep0.99"]
    assert study_tables.with_keep_variants(["rigl", "rigl+ts", "cigl"], present) == ["rigl", "rigl+ts",
                                                                                   "cigl-keep0.99"]
    assert study_tables.with_keep_variants(["cigl"], {"cigl", "cigl-keep0.9", "cigl-keep0.99"}) == [
        "cigl", "cigl-keep0.9", "cigl-keep0.99"]


def test_a_run_finished_elsewhere_is_read_from_its_small_files(tmp_path):
    """A study accumulates across machines: a folder with only config.json and metrics.json (as
    committed under docs/results/) counts as finished for the same config, and only for it."""
    from cigl_bayes.config import TrainConfig

    cfg = TrainConfig(model="small-cnn", epochs=4, sparsity=0.9, device="cpu")
    resolved = cfg.resolved(n_train=5000)
    (tmp_path / "config.json").write_text(json.dumps(resolved.to_dict()))
    (tmp_path / "metrics.json").write_text(json.dumps({"completed": True, "n_train": 5000, "seed": 0}))
    assert study_runs.finished_result(tmp_path, cfg)["seed"] == 0
    assert study_runs.finished_result(tmp_path, TrainConfig(model="small-cnn", epochs=5, sparsity=0.9)) is None
    (tmp_path / "metrics.json").write_text('{"completed": tr')  # truncated: train again
    assert study_runs.finished_result(tmp_path, cfg) is None


RESULTS = Path(__file__).parent.parent / "docs" / "results"
# Every committed sweep study with runs: a folder with the summary.json a sweep writes (its protocol and
# overrides) and runs/ (docs/results/cpu-smoke keeps its tables only), and docs/results/shift-small, the
# two runs of the shift report's example, made by the cpu-smoke sweep command in docs/reproduction.md
# (its study folder was not kept, so neither was a summary.json).
COMMITTED_STUDIES = [*sorted(p.parent.name for p in RESULTS.glob("*/summary.json") if (p.parent / "runs").is_dir()),
                     "shift-small"]
SHIFT_SMALL = {"protocol": "cpu-smoke", "overrides": {**sweep.PROTOCOLS["cpu-smoke"]["config"], "subset": 45000,
                                                      "test_subset": 10000, "epochs": 12}}


def test_the_committed_studies_are_found():
    assert {"cpu-study", "cpu-study-bf16", "precision-fp32", "precision-bf16"} <= set(COMMITTED_STUDIES)


@pytest.mark.parametrize("study", COMMITTED_STUDIES)
def test_the_committed_study_runs_still_count_as_finished_under_the_protocol(study, monkeypatch):
    """Every run committed under docs/results/<study>/runs is what its protocol (with the overrides
    its summary.json records) builds today for its folder name, so a sweep reads it instead of
    refusing or retraining it; and the protocol's plain ``cigl`` stays keep 0.9 (the runs' setting)
    though the library's default is keep 0.99, and would stay so under any other default."""
    from cigl_bayes.config import METHODS, TrainConfig

    root = RESULTS / study
    if study == "shift-small":
        summary, runs = SHIFT_SMALL, sorted(root.glob("*-seed*"))
    else:
        summary, runs = json.loads((root / "summary.json").read_text()), sorted((root / "runs").glob("*-seed*"))
    proto, overrides = sweep.PROTOCOLS[summary["protocol"]], summary["overrides"]
    assert runs, f"no committed runs of {study}"
    for key, value in proto["config"].items():  # the protocol's own settings, as today (the command line
        if key not in ("epochs", "subset", "test_subset", "model"):  # may override only these)
            assert overrides.get(key) == value, f"{study}: the protocol's {key} changed from {overrides.get(key)!r}"
    for folder in runs:
        match = study_runs.RUN_NAME.match(folder.name)
        cfg = sweep.cell_config(proto, match["method"], float(match["sparsity"]), int(match["seed"]),
                                match["engine"], overrides)
        assert study_runs.finished_result(folder, cfg) is not None, f"{folder.name} no longer matches its cell"
    # the library's default (keep 0.99 for cigl) must not change what the study's ``cigl`` cells mean ...
    assert TrainConfig(method="cigl").keep == pytest.approx(0.99)
    for default_rate in [None, 0.3]:  # ... today's default, or any later one
        if default_rate is not None:
            for name in ["cigl", "cigl-no-wma", "rigl-wdp"]:
                monkeypatch.setitem(METHODS, name, dataclasses.replace(METHODS[name], random_mask_rate=default_rate))
        assert sweep.cell_config(proto, "cigl-keep0.99", 0.95, 0, "plain", overrides).keep == pytest.approx(0.99)
        if "pinned" not in proto:  # the controlled study names every keep in its method names (cigl-keep0.99)
            continue
        pinned = sweep.cell_config(proto, "cigl", 0.95, 0, "plain", overrides)
        assert pinned.random_mask_rate == pytest.approx(0.1) and pinned.keep == pytest.approx(0.9)
        # and the ablation and baseline that draw Z stay at the keep of the ``cigl`` they are compared with
        for method in ["cigl-no-wma", "rigl-wdp"]:
            assert sweep.cell_config(proto, method, 0.95, 0, "plain", overrides).keep == pytest.approx(0.9), method


def _finished_run(folder, amp: str, epochs_in: list[str], evaluated_in: str | None, method: str = "rigl"):
    """A run folder as a finished cpu-smoke sweep cell (``method``, 0.9, seed 0) leaves it: config.json
    as the sweep builds it with ``--amp amp``; metrics.json saying in which dtype each epoch's and
    the evaluation's matrix products ran (an empty list / None: a run from before those records)."""
    from cigl_bayes.config import TrainConfig

    cfg = TrainConfig(**dict(sweep.PROTOCOLS["cpu-smoke"]["config"], device="cpu", data_dir=None, amp=amp,
                             channels_last="auto"), method=method, engine="plain", sparsity=0.9, seed=0)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(cfg.resolved(n_train=4500).to_dict()))
    result = {"completed": True, "n_train": 4500, "seed": 0,
              "history": [{"epoch": k + 1, **({"compute_dtype": d} if d else {})} for k, d in enumerate(epochs_in)]}
    if evaluated_in:
        result["runtime"] = {"compute_dtype": evaluated_in}
    (folder / "metrics.json").write_text(json.dumps(result))
    return cfg, result


def test_an_explicit_amp_refuses_finished_runs_of_another_precision(tmp_path):
    """--amp is resume-free (a study accumulates over machines with and without bf16), so a bf16
    study must not silently count a float32 run: asked explicitly, the precision is checked, over
    every epoch (a run resumed on another machine) and the evaluation."""
    fp32 = tmp_path / "fp32"
    _, result = _finished_run(fp32, "auto", ["float32"] * 2, "float32")
    study_runs.check_precision(fp32, result, "float32", "auto")
    study_runs.check_precision(fp32, result, "float32", "off")
    with pytest.raises(ValueError, match="run fp32 ran in float32, but --amp bf16 asks for bfloat16"):
        study_runs.check_precision(fp32, result, "float32", "bf16")
    mixed = tmp_path / "mixed"  # started in float32, resumed under bf16
    _, result = _finished_run(mixed, "bf16", ["float32", "bfloat16"], "bfloat16")
    assert study_runs.precision_of(mixed, result) == "bfloat16+float32"
    with pytest.raises(ValueError, match="ran in bfloat16\\+float32"):
        study_runs.check_precision(mixed, result, "float32", "bf16")
    old = tmp_path / "old"  # from before the records: an explicit amp in config.json settles it, auto does not
    _, result = _finished_run(old, "off", [None], None)
    study_runs.check_precision(old, result, "float32", "off")
    old_auto = tmp_path / "old-auto"
    _, result = _finished_run(old_auto, "auto", [None], None)
    with pytest.raises(ValueError, match="did not record"):
        study_runs.check_precision(old_auto, result, "float32", "off")
    # through the CLI: refused before anything trains, for every run the tables would read (here a
    # cigl run the invocation does not ask for), and nothing of it touched
    runs = tmp_path / "study" / "runs"
    _finished_run(runs / "rigl-plain-s0.9-seed0", "bf16", ["bfloat16"], "bfloat16")
    _finished_run(runs / "cigl-plain-s0.9-seed0", "auto", ["float32"], "float32", method="cigl")
    before = {p: p.read_bytes() for p in runs.rglob("*.json")}
    with pytest.raises(ValueError, match="run cigl-plain-s0.9-seed0 ran in float32.*its own --study"):
        sweep.main(["--protocol", "cpu-smoke", "--methods", "rigl", "--sparsities", "0.9", "--seeds", "0", "1",
                    "--amp", "bf16", "--device", "cpu", "--results", str(tmp_path), "--study", "study",
                    "--no-progress"])
    assert {p: p.read_bytes() for p in runs.rglob("*") if p.is_file()} == before


def test_a_sweep_says_when_amp_auto_would_mix_precisions_into_a_study(tmp_path, monkeypatch, capsys):
    note = study_runs.mixed_precision_note("cpu-study", {"float32", None}, "bfloat16")
    assert note.startswith("note: finished runs of cpu-study ran in float32, but --amp auto trains here in bfloat16")
    assert "to keep the study's float32, give --amp off" in note
    assert "give --amp bf16" in study_runs.mixed_precision_note("s", {"bfloat16"}, "float32")
    assert "give --amp" not in study_runs.mixed_precision_note("s", {"bfloat16", "float32"}, "float64")
    assert study_runs.mixed_precision_note("s", {"float32", None}, "float32") is None  # unrecorded is not "other"
    assert study_runs.mixed_precision_note("s", set(), "bfloat16") is None  # a new study
    # through the CLI, on a machine whose --amp auto means bf16, before anything trains
    runs = tmp_path / "study" / "runs"
    _finished_run(runs / "rigl-plain-s0.9-seed0", "auto", ["float32"], "float32")

    class WouldTrain(Exception):
        pass

    def no_training(*args, **kwargs):
        raise WouldTrain

    monkeypatch.setattr(sweep, "run", no_training)
    monkeypatch.setattr(sweep, "study_rows", lambda *args, **kwargs: [])  # the stub run has no test metrics
    monkeypatch.setattr("cigl_bayes.config.fast_path_available", lambda device: True)
    argv = ["--protocol", "cpu-smoke", "--methods", "rigl", "--sparsities", "0.9", "--device", "cpu",
            "--results", str(tmp_path), "--study", "study", "--no-progress"]
    with pytest.raises(WouldTrain):
        sweep.main([*argv, "--seeds", "0", "1"])  # seed 1 would train, in bf16
    err = capsys.readouterr().err
    assert "note: finished runs of study ran in float32, but --amp auto trains here in bfloat16" in err
    assert sweep.main([*argv, "--seeds", "0"]) == 0  # nothing left to train: nothing to say
    assert "note:" not in capsys.readouterr().err
    monkeypatch.setattr("cigl_bayes.config.fast_path_available", lambda device: False)  # float32 here
    with pytest.raises(WouldTrain):
        sweep.main([*argv, "--seeds", "0", "1"])
    assert "note:" not in capsys.readouterr().err


def test_paired_summary_counts_the_pairs_of_two_precisions():
    rows = [{"method": m, "sparsity": 0.95, "seed": k, "ece": 0.04, "accuracy": 0.8, "compute_dtype": d}
            for m, k, d in [("rigl", 0, "float32"), ("cigl", 0, "float32"), ("rigl", 1, "bfloat16"),
                            ("cigl", 1, "float32"), ("rigl", 2, None), ("cigl", 2, "float32"),
                            ("cigl-keep0.99", 0, "float32")]]
    table = study_tables.paired_summary(rows)
    assert "| cigl | 0.95 | 3 |" in table and table.splitlines()[2].endswith("| 1 † |")
    assert table.splitlines()[3].startswith("| cigl-keep0.99 | 0.95 | 1 |") and table.endswith("| 0 |")


def test_paired_differences_are_per_seed_against_rigl():
    rows = [{"method": m, "sparsity": 0.95, "seed": k, "ece": e, "accuracy": a}
            for m, k, e, a in [("rigl", 0, 0.04, 0.80), ("cigl", 0, 0.03, 0.81), ("rigl", 1, 0.05, 0.79),
                               ("cigl", 1, 0.06, 0.78)]]
    table = study_tables.paired_table(rows)
    assert "| cigl | 0.95 | 0 | -1.00 | -25% | +1.00 | unrecorded |" in table
    assert "| cigl | 0.95 | 1 | +1.00 | +20% | -1.00 | unrecorded |" in table
    assert "†" not in table


def test_paired_differences_mark_a_pair_trained_in_two_precisions():
    rows = [{"method": m, "sparsity": 0.95, "seed": k, "ece": 0.04, "accuracy": 0.8, "compute_dtype": d}
            for m, k, d in [("rigl", 0, "float32"), ("cigl", 0, "float32"), ("rigl", 1, "bfloat16"),
                            ("cigl", 1, "float32"), ("rigl", 2, None), ("cigl", 2, "float32")]]
    table = study_tables.paired_table(rows)
    assert "| cigl | 0.95 | 0 | +0.00 | +0% | +0.00 | float32 |" in table
    assert "| cigl | 0.95 | 1 | +0.00 | +0% | +0.00 | float32 vs rigl's bfloat16 † |" in table
    assert "| cigl | 0.95 | 2 | +0.00 | +0% | +0.00 | float32, rigl's unrecorded |" in table  # not known to differ
    assert "†: the two runs of this pair recorded different precisions" in table


def test_paired_summary_gives_mean_std_and_the_paired_t_interval_over_seeds():
    # RigL differs from seed to seed, so only a summary of *same-seed* differences gives these numbers
    rigl = [(0.04, 0.80), (0.05, 0.78), (0.02, 0.81)]
    cigl = [(0.03, 0.81), (0.045, 0.80), (0.019, 0.84)]  # ΔECE −1.0, −0.5, −0.1; −25%, −10%, −5%; Δacc +1, +2, +3
    rows = [{"method": m, "sparsity": 0.95, "seed": k, "ece": e, "accuracy": a}
            for m, runs in (("rigl", rigl), ("cigl", cigl)) for k, (e, a) in enumerate(runs)]
    rows += [{"method": "cigl-keep0.99", "sparsity": 0.95, "seed": 0, "ece": 0.02, "accuracy": 0.79},
             {"method": "cigl-keep0.99", "sparsity": 0.95, "seed": 5, "ece": 0.01, "accuracy": 0.70},  # no RigL 5
             {"method": "dense", "sparsity": 0.0, "seed": 0, "ece": 0.05, "accuracy": 0.9}]
    table = study_tables.paired_summary(rows)
    # Δacc: mean +2, std 1, half-width t(0.975, 2) · 1/√3 = 4.3027 / 1.7321 = 2.484.  Relative ΔECE: the mean of
    # the ratios is −13% (the ratio of the means would be −15%); one seed passes the −15% bar.
    assert ("| cigl | 0.95 | 3 | -0.53 ± 0.45 | [-1.65, +0.59] | -13% | 1 of 3 | +2.00 ± 1.00 | [-0.48, +4.48] |"
            in table)
    assert "| cigl-keep0.99 | 0.95 | 1 | -2.00 | – | -50% | 1 of 1 | -1.00 | – |" in table
    assert "| rigl |" not in table and "dense" not in table


def test_paired_summary_leaves_a_zero_rigl_ece_out_of_the_ratios():
    ece = {"rigl": (0.0, 0.04), "cigl": (0.01, 0.02)}  # seed 0 has no ratio; seed 1 is −50%
    rows = [{"method": m, "sparsity": 0.9, "seed": k, "ece": e, "accuracy": 0.8}
            for m, values in ece.items() for k, e in enumerate(values)]
    # ΔECE +1, −2: mean −0.5, std 3/√2 = 2.12, half-width t(0.975, 1) · 2.12/√2 = 19.06
    assert "| cigl | 0.9 | 2 | -0.50 ± 2.12 | [-19.56, +18.56] | -50% | 1 of 1 |" in study_tables.paired_summary(rows)


def _row(method, seed, keep, val_nll, accuracy=0.8, confidence=0.85, sparsity=0.95):
    return {"method": method, "engine": "plain", "sparsity": sparsity, "seed": seed, "predictor": "wma",
            "keep": keep, "accuracy": accuracy, "ece": 0.03, "nll": 0.6, "brier": 0.3, "confidence": confidence,
            "overconfidence": confidence - accuracy, "val_accuracy": accuracy, "val_ece": 0.02, "val_nll": val_nll,
            "train_nll": 0.4}


def test_keep_is_chosen_by_validation_nll_never_by_the_test_set():
    rows = [_row("cigl", k, 0.9, 0.70, accuracy=0.90) for k in (0, 1)]  # better on test, worse on validation
    rows += [_row("cigl-keep0.99", k, 0.99, 0.65, accuracy=0.70) for k in (0, 1)]
    rows += [_row("rigl", 0, 1.0, 0.50), _row("rigl+ts", 0, 1.0, 0.40)]  # other families: not candidates
    best, text = study_tables.keep_choice(rows)
    assert best == 0.99 and "Chosen: keep 0.99" in text and "keep 0.99: 0.6500, keep 0.9: 0.7000" in text
    # only the sparsities every keep has count: a lone 0.9 run at 0.9 sparsity does not sway the choice
    best, _ = study_tables.keep_choice(rows + [_row("cigl", 0, 0.9, 0.10, sparsity=0.9)])
    assert best == 0.99
    best, text = study_tables.keep_choice([r for r in rows if r["keep"] == 0.9])
    assert best is None and "No choice yet" in text


def test_regime_table_reports_overconfidence_as_confidence_minus_accuracy():
    rows = [_row("rigl", 0, 1.0, 0.6, accuracy=0.80, confidence=0.86), _row("rigl", 1, 1.0, 0.6, accuracy=0.78,
                                                                          confidence=0.86)]
    summary = study_tables.aggregate(rows)
    assert summary[0]["overconfidence_mean"] == pytest.approx(0.07)
    table = study_tables.regime_table(summary)
    assert "| rigl | 0.95 | 2 | 79.00 ± 1.41 | 86.00 ± 0.00 | 7.00 ± 1.41 | 0.400 ± 0.000 |" in table


def test_rigl_vs_cigl_reliability_is_pooled_from_the_committed_small_files(tmp_path):
    """The plot needs only metrics.json (no predictions.npz), pooled over the seeds of each method."""
    import torch

    from cigl_bayes import metrics

    rows = []
    for method, seed in (("rigl", 0), ("rigl", 1), ("cigl", 0)):
        z = torch.randn(200, 10, generator=torch.Generator().manual_seed(seed)) * 3
        y = torch.randint(0, 10, (200,), generator=torch.Generator().manual_seed(seed + 7))
        result = {"completed": True, "output_predictor": "final" if method == "rigl" else "wma",
                  "reliability": {"test": {("final" if method == "rigl" else "wma"):
                                           metrics.reliability_to_dict(metrics.reliability_data(z, y))}}}
        folder = study_runs.run_dir(tmp_path, method, 0.95, seed, "plain")
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps(result))
        rows.append(_row(method, seed, 1.0, 0.6) | {"predictor": result["output_predictor"]})
    rows.append(_row("rigl+ts", 0, 1.0, 0.6))  # read from the rigl runs: not a panel of its own
    out = tmp_path / "rel.png"
    assert study_plots.plot_reliability_rigl_vs_cigl(tmp_path, rows, "plain", 0.95, out)
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert not study_plots.plot_reliability_rigl_vs_cigl(tmp_path, [r for r in rows if r["method"] == "rigl"], "plain",
                                                   0.95, tmp_path / "none.png")


def test_dense_vs_sparse_reliability_is_pooled_from_the_committed_small_files(tmp_path, monkeypatch):
    """Fig. 1a–b is drawn from metrics.json alone (a run finished on another machine has no
    predictions.npz), with dense and the sparsest RigL and CigL, each pooled over its seeds."""
    import torch

    from cigl_bayes import metrics

    def bins(seed, scale):
        z = torch.randn(300, 10, generator=torch.Generator().manual_seed(seed)) * scale
        y = torch.randint(0, 10, (300,), generator=torch.Generator().manual_seed(seed + 11))
        return metrics.reliability_to_dict(metrics.reliability_data(z, y))

    rows, stored = [], {}
    for method, sparsity, seed in (("dense", 0.0, 0), ("dense", 0.0, 1), ("rigl", 0.9, 0), ("rigl", 0.95, 0),
                                   ("rigl", 0.95, 1), ("cigl", 0.95, 2)):
        predictor = "wma" if method == "cigl" else "final"
        stored[(method, sparsity, seed)] = bins(seed, 1.0 + sparsity)
        folder = study_runs.run_dir(tmp_path, method, sparsity, seed, "plain")
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps(
            {"completed": True, "output_predictor": predictor,
             "reliability": {"test": {predictor: stored[(method, sparsity, seed)]}}}))
        rows.append(_row(method, seed, 1.0, 0.6, sparsity=sparsity) | {"predictor": predictor})
    drawn = {}
    monkeypatch.setattr(metrics, "plot_reliability_diagram",
                        lambda panels, path, title="": drawn.update(panels=panels, title=title))
    assert study_plots.plot_reliability_dense_vs_sparse(tmp_path, rows, "plain", tmp_path / "rel.png")
    assert list(drawn["panels"]) == ["dense (final), seeds 0, 1", "rigl at 0.95 (final), seeds 0, 1",
                                     "cigl at 0.95 (wma), seed 2"]
    dense = drawn["panels"]["dense (final), seeds 0, 1"]
    expected = metrics.pooled_reliability([stored[("dense", 0.0, 0)], stored[("dense", 0.0, 1)]])
    assert dense.counts.sum() == 600 and dense.ece == pytest.approx(expected.ece)
    assert "dense vs sparse" in drawn["title"] and "pooled over seeds" in drawn["title"]
    # without a dense run, or with dense alone, there is no dense-vs-sparse figure
    assert not study_plots.plot_reliability_dense_vs_sparse(tmp_path, [r for r in rows if r["method"] != "dense"],
                                                      "plain", tmp_path / "none.png")
    assert not study_plots.plot_reliability_dense_vs_sparse(tmp_path, [r for r in rows if r["method"] == "dense"],
                                                      "plain", tmp_path / "none.png")


def test_runs_evaluated_before_the_new_fields_still_make_the_reports(tmp_path):
    """An older metrics.json (no confidence, val split, training NLL or reliability bins) gives rows
    with None there: the tables leave those columns out instead of failing, and the reliability bins
    are computed from predictions.npz when it is there."""
    import numpy as np

    old = {"completed": True, "output_predictor": "final", "sparsity_target": 0.95, "seed": 0,
           "test": {"final": {"accuracy": 0.8, "ece": 0.03, "nll": 0.6, "brier": 0.3}}, "history": [{}]}
    rows = study_runs.rows_of(old, "rigl", "plain", keep=1.0)
    assert rows[0]["overconfidence"] is None and rows[0]["val_nll"] is None and rows[0]["train_nll"] is None
    summary = study_tables.aggregate(rows)
    assert summary[0]["accuracy_mean"] == 0.8 and "overconfidence_mean" not in summary[0]
    assert "| rigl |" not in study_tables.regime_table(summary)
    assert study_tables.keep_choice(rows)[0] is None
    folder = tmp_path / "rigl-plain-s0.95-seed0"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps(old))
    assert study_plots.reliability_bins(folder) is None
    probs = np.full((4, 10), 0.02, dtype=np.float32)
    probs[:, 0] = 0.82
    np.savez(folder / "predictions.npz", labels=np.array([0, 0, 0, 1]), final=probs)
    bins = study_plots.reliability_bins(folder)
    assert sum(bins["counts"]) == 4 and bins["accuracy"][12] == pytest.approx(0.75)  # 0.82 falls in bin 13 of 15


def test_posterior_table_credits_each_run_with_its_own_rows_only(tmp_path):
    """A report made over two runs lists both in the first run's predictors.json; only the run's own
    rows count for it."""
    for seed in (0, 1):
        folder = tmp_path / f"cigl-plain-s0.95-seed{seed}" / "posterior"
        folder.mkdir(parents=True)
        rows = [{"run": f"cigl-plain-s0.95-seed{k}", "predictor": "wma", "accuracy": 0.8 + k / 10, "ece": 0.02,
                 "nll": 0.5, "forward_passes": 1} for k in ((0, 1) if seed == 0 else (1,))]
        (folder / "predictors.json").write_text(json.dumps({"predictors": rows}))
    table = study_tables.posterior_table(tmp_path)
    assert "| cigl | plain | 0.95 | wma | 0, 1 | 1 | 85.00 ± 7.07 |" in table


def test_posterior_chains_pool_each_runs_own_draws_into_arviz_rhat(tmp_path):
    """Seeds become chains from their committed draws.json alone; R-hat and ESS are arviz's on the
    stacked per-draw values, and a report over several runs credits each run with its own chain."""
    import arviz as az
    import numpy as np

    rng = np.random.default_rng(0)
    chains = {seed: {"layers": ["conv", "fc"], "theta_norm": list(rng.normal(10 + seed, 0.1, 6)),
                     "test_nll": list(rng.normal(0.6, 0.01, 6)), "test_accuracy": list(rng.uniform(0.7, 0.8, 6)),
                     "layer_norm": rng.normal(3, 0.1, (6, 2)).tolist(), "density": [[0.05, 0.1]] * 6,
                     "train_loss": list(rng.random(6))} for seed in (0, 1, 2)}
    for seed in (0, 1, 2):
        folder = tmp_path / "runs" / f"cigl-keep0.99-plain-s0.95-seed{seed}" / "posterior"
        folder.mkdir(parents=True)
        own = [{"run": folder.parent.name, **chains[seed]}]
        other = [{"run": "cigl-keep0.99-plain-s0.95-seed7", **chains[0]}] if seed == 2 else []
        (folder / "draws.json").write_text(json.dumps({"chains": other + own}))
    table = study_tables.posterior_chains_table(tmp_path / "runs", tmp_path)
    row = next(line for line in table.splitlines() if "| theta_norm |" in line)
    assert row.startswith("| cigl-keep0.99 | plain | 0.95 | 3 (0, 1, 2) | 6 |")
    want = float(az.rhat(np.array([chains[s]["theta_norm"] for s in (0, 1, 2)])))
    assert want > 1.5 and row.split("|")[-2].strip() == f"{want:.3f}"  # seeds 1 apart: different modes
    nll = next(line for line in table.splitlines() if "| test_nll |" in line)
    assert nll.split("|")[7].strip() == f"{np.mean([chains[s]['test_nll'] for s in (0, 1, 2)]):.4f}"
    assert "layer_norm (2 layers)" in table
    assert (tmp_path / "posterior_chains_cigl-keep0.99_plain_s0.95.png").stat().st_size > 0
    assert "No per-draw summaries" in study_tables.posterior_chains_table(tmp_path / "none", tmp_path)


def test_training_curves_pair_each_method_with_rigl_of_the_same_seed(tmp_path):
    """Per-epoch training NLL comes from each run's own metrics.json history, and the paired
    difference subtracts the RigL run of the same seed and sparsity (a seed without one is left out)."""
    histories = {("rigl", 0): [1.5, 1.0], ("rigl", 1): [1.7, 1.2], ("cigl", 0): [1.6, 1.3],
                 ("cigl", 2): [9.0, 9.0]}  # cigl seed 2 has no RigL partner
    rows = []
    for (method, seed), nll in histories.items():
        folder = study_runs.run_dir(tmp_path, method, 0.95, seed, "plain")
        folder.mkdir(parents=True)
        history = [{"epoch": e + 1, "train_data_loss": v} for e, v in enumerate(nll)]
        (folder / "metrics.json").write_text(json.dumps({"completed": True, "history": history}))
        rows.append(_row(method, seed, 1.0, 0.6))
    rows.append(_row("rigl+ts", 0, 1.0, 0.6))  # derived from the rigl run: no folder, no curve
    curves = study_tables.training_curves(tmp_path, rows, "plain")
    assert len(curves) == 8 and {c["method"] for c in curves} == {"rigl", "cigl"}
    assert {(c["seed"], c["epoch"], c["train_nll"]) for c in curves if c["method"] == "cigl"} == {
        (0, 1, 1.6), (0, 2, 1.3), (2, 1, 9.0), (2, 2, 9.0)}
    paired = study_plots.paired_curve(curves, "cigl", 0.95)
    assert paired[1] == (pytest.approx(0.1), 1) and paired[2] == (pytest.approx(0.3), 1)
    out = tmp_path / "curves.png"
    assert study_plots.plot_training_curves(curves, 0.95, out) and out.read_bytes()[:4] == b"\x89PNG"
    assert not study_plots.plot_training_curves(curves, 0.9, tmp_path / "none.png")


def test_tables_show_no_spread_for_one_seed_and_flag_unequal_seed_sets():
    """A single seed has no seed noise to show (not "± 0.00"), and a method with fewer seeds than
    RigL is marked, since its change versus RigL then compares unequal seed sets."""
    summary = [{"method": "rigl", "sparsity": 0.95, "seeds": 2, "ece_mean": 0.0433, "ece_std": 0.0119},
               {"method": "cigl", "sparsity": 0.95, "seeds": 1, "ece_mean": 0.0225, "ece_std": 0.0}]
    table = study_tables.pivot_table(summary, "ece", ["rigl", "cigl"], mark_vs_rigl=True)
    assert "| rigl | 4.33 ± 1.19 |" in table and "| cigl | 2.25 (n = 1) **(-48%)** |" in table
    assert "k of the 2 seeds so far" in table
    assert study_tables.mean_pm([0.5]) == "0.50" and study_tables.mean_pm([0.5, 0.7]) == "0.60 ± 0.14"
    even = study_tables.pivot_table([{**summary[1], "seeds": 2}, summary[0]], "ece", ["rigl", "cigl"])
    assert "(n = " not in even and "seeds so far" not in even


def test_the_summary_plots_say_what_they_show(tmp_path, monkeypatch):
    """A stranger reading the study's ece_vs_sparsity.png, accuracy_vs_sparsity.png or baselines.png learns the
    study and protocol, that points are means ± std over seeds, how many seeds each method has and which
    predictor its numbers come from (through write_reports, as a sweep writes them)."""
    import matplotlib.pyplot as plt

    def row(method, predictor, seed, sparsity):
        return {**_row(method, seed, None, 0.6, accuracy=0.7 + 0.01 * seed, sparsity=sparsity), "predictor": predictor}

    rows = [row("rigl", "final", k, s) for s in (0.9, 0.95) for k in (0, 1, 2)]
    rows += [row("cigl", "wma", k, 0.9) for k in (0, 1)] + [row("cigl", "wma", 0, 0.95)]  # 2 seeds, then 1
    rows += [row("dense", "final", 0, 0.0)]
    figures = {}
    monkeypatch.setattr(study_plots, "atomic_save_figure", lambda fig, path: figures.__setitem__(Path(path).name, fig))
    (tmp_path / "my-study" / "runs").mkdir(parents=True)
    try:
        study_tables.write_reports(tmp_path / "my-study", rows, ["dense", "rigl", "cigl"], [0, 1, 2], "cpu-study",
                                   "plain", {})
        for name in ("ece_vs_sparsity.png", "accuracy_vs_sparsity.png", "baselines.png"):
            ax = figures[name].axes[0]
            title = ax.get_title()
            assert "my-study" in title and "protocol cpu-study" in title and "mean ± std over seeds" in title, name
            legend = [t.get_text() for t in ax.get_legend().get_texts()]
            assert "rigl (final, 3 seeds)" in legend and "cigl (wma, 1–2 seeds)" in legend, (name, legend)
        legend = [t.get_text() for t in figures["ece_vs_sparsity.png"].axes[0].get_legend().get_texts()]
        assert "dense (final, 1 seed), dense reference" in legend
    finally:
        plt.close("all")


def test_a_study_keeps_one_engine_so_a_sweep_of_the_other_cannot_overwrite_its_tables(tmp_path):
    """The tables of a study are those of one engine: a sweep with the other engine is refused in one line before
    it trains or writes anything, naming the way out (its own --study, compare_studies --engines)."""
    from cigl_bayes.experiments.cli import USER_ERRORS

    root = tmp_path / "cpu-study"
    (root / "runs" / "rigl-plain-s0.95-seed0").mkdir(parents=True)
    (root / "table_ece.md").write_text("the plain engine's table")
    args = ["--protocol", "cpu-study", "--methods", "cigl", "--sparsities", "0.95", "--seeds", "0", "--engine", "svi",
            "--results", str(tmp_path), "--study", "cpu-study", "--device", "cpu", "--no-progress",
            "--data-dir", str(tmp_path / "no-data")]  # without the check it fails fast on the data, not by training
    with pytest.raises(USER_ERRORS, match=r"holds plain-engine runs \(rigl-plain-s0.95-seed0\).*--study "
                                          r"\(cpu-study-svi\).*compare_studies \S+cpu-study \S+cpu-study-svi "
                                          r"--engines plain svi"):
        sweep.main(args)
    assert (root / "table_ece.md").read_text() == "the plain engine's table"
    assert sorted(p.name for p in (root / "runs").iterdir()) == ["rigl-plain-s0.95-seed0"]
    # a study that already mixes them (an svi folder copied in by hand) is told to move the strays out
    (root / "runs" / "cigl-svi-s0.95-seed0").mkdir()
    with pytest.raises(USER_ERRORS, match=r"mixes engines.*svi-engine folders \(cigl-svi-s0.95-seed0\); move those"):
        sweep.main([*args[:args.index("--engine")], "--engine", "plain", *args[args.index("--engine") + 2:]])


def test_the_tables_name_each_methods_predictor_and_batchnorm_statistics(tmp_path):
    """A study's paired.md and tables say which statistics each headline used, so a comparison of RigL's
    tracked statistics against CigL's recomputed ones is visible as such (issue #39's confound);
    rows_of reads the protocol from metrics.json → bn_protocol."""
    result = {"output_predictor": "wma", "sparsity_target": 0.95, "seed": 0,
              "test": {"wma": {"accuracy": 0.8, "ece": 0.02, "nll": 0.6, "brier": 0.3, "confidence": 0.82}},
              "bn_protocol": {"wma": "recomputed-clean"}}
    (row,) = study_runs.rows_of(result, "cigl", "plain")
    assert row["bn_protocol"] == "recomputed-clean"
    rigl = {**_row("rigl", 0, 1.0, 0.6), "predictor": "final", "bn_protocol": "tracked"}
    rows = [rigl, {**_row("cigl", 0, 0.99, 0.6), "bn_protocol": "recomputed-clean"}]
    (tmp_path / "s" / "runs").mkdir(parents=True)
    study_tables.write_reports(tmp_path / "s", rows, ["rigl", "cigl"], [0], "cpu-study", "plain", {})
    line = "Predictor [BatchNorm statistics] per method: rigl: final [tracked]; cigl: wma [recomputed-clean]."
    for name in ("paired.md", "table_ece.md", "table_accuracy.md"):
        assert line in (tmp_path / "s" / name).read_text(), name
    del rows[1]["bn_protocol"]  # a run from before the record
    assert "cigl: wma [unrecorded]" in study_tables.scored_as(rows)


def test_tables_only_rebuilds_a_studys_tables_from_its_committed_runs_without_training(tmp_path, monkeypatch):
    """--tables-only trains nothing and rebuilds every table from the finished runs' small files with
    the current code: here the controlled study's committed runs, whose tables then name each
    method's predictor and BatchNorm statistics (RigL tracked, CigL recomputed on clean images)."""
    import shutil

    def no_training(*args, **kwargs):
        raise AssertionError("--tables-only must not train")

    monkeypatch.setattr(sweep, "run", no_training)
    source = RESULTS / "controlled" / "runs"
    for folder in sorted(source.glob("*-seed*")):
        if (folder / "metrics.json").is_file():
            (tmp_path / "controlled" / "runs" / folder.name).mkdir(parents=True)
            for name in ("config.json", "metrics.json"):
                shutil.copy2(folder / name, tmp_path / "controlled" / "runs" / folder.name / name)
    assert sweep.main(["--protocol", "controlled", "--results", str(tmp_path), "--study", "controlled",
                       "--amp", "off", "--tables-only", "--no-progress"]) == 0
    paired = (tmp_path / "controlled" / "paired.md").read_text()
    assert "rigl: final [tracked]" in paired and "cigl-keep0.99: wma [recomputed-clean]" in paired
    header = (tmp_path / "controlled" / "runs.csv").read_text().splitlines()[0].split(",")
    assert "bn_protocol" in header
    with pytest.raises(FileNotFoundError, match="no runs/ folder"):
        sweep.main(["--protocol", "controlled", "--results", str(tmp_path), "--study", "empty", "--tables-only"])
