"""The command-line entry points: a real short run, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def run_module(module: str, *args: str, env_extra: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MPLBACKEND": "Agg", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or REPO, env=env, capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)


QUICK = ["--model", "small-cnn", "--epochs", "1", "--subset", "1000", "--test-subset", "500", "--batch-size", "50",
         "--device", "cpu", "--no-progress"]


def test_svi_cifar_one_epoch_writes_a_run_folder(cifar_data_dir, cache_dir, tmp_path):
    out = tmp_path / "run"
    proc = run_module("experiments.svi_cifar", "--sparsity", "0.95", *QUICK, "--data-dir", str(cifar_data_dir),
                      "--out", str(out), env_extra={"CIGL_CACHE_DIR": str(cache_dir)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "metrics.json").read_text())
    assert result["engine"] == "svi" and result["method"] == "cigl"
    assert {"final", "wma"} <= set(result["test"])
    assert result["sparsity_actual"] >= 0.94
    for name in ("reliability.png", "predictions.npz", "model.pt", "checkpoint.pt", "config.json"):
        assert (out / name).is_file()
    assert list((out / "samples").glob("sample_*.pt"))
    assert "wma" in proc.stdout and "accuracy" in proc.stdout  # the printed results table
    # re-running a finished run does not train again and leaves the results untouched
    before = (out / "metrics.json").read_bytes()
    again = run_module("experiments.svi_cifar", "--sparsity", "0.95", *QUICK, "--data-dir", str(cifar_data_dir),
                       "--out", str(out), env_extra={"CIGL_CACHE_DIR": str(cache_dir)})
    assert again.returncode == 0 and (out / "metrics.json").read_bytes() == before


def call_cli(main, argv: list[str], capsys) -> tuple[int, str]:
    """Run a CLI's ``main`` in this process the way ``python -m`` does: (exit status, stderr)."""
    from cigl_bayes.experiments.cli import run_cli

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main(argv))
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sparsity", "1.0"], "sparsity"),
        (["--sparsity", "-0.1"], "sparsity"),
        (["--keep", "0"], "keep"),
        (["--keep", "1.5"], "keep"),
        (["--delta-t", "0"], "delta_t"),
        (["--wma-start-epoch", "5"], "beyond the last epoch"),
        (["--model", "vgg-99"], "unknown model"),
        (["--method", "magic"], "unknown method"),
        (["--dataset", "mnist"], "mnist"),
        (["--batch-size", "5000"], "larger than the training set"),
        (["--distribution", "normal"], "distribution"),
        (["--random-mask-rate", "1.0"], "random-mask rate"),
        (["--epochs", "0"], "epochs"),
        (["--lr", "-0.1"], "learning rate"),
        (["--subset", "0"], "subset"),
        (["--val-fraction", "1.0"], "validation fraction"),
        (["--sigma", "-1"], "sigma"),
        (["--mixup", "-1"], "mixup"),
        (["--update-end", "1.5"], "update"),
        (["--bn-batches", "0"], "bn_batches"),
        (["--bn-batches", "-3"], "bn_batches"),
        (["--mixup", "nan"], "mixup must be a finite number"),
        (["--lr", "nan"], "lr must be a finite number"),
        (["--sigma", "inf"], "sigma must be a finite number"),
        (["--keep", "0.9", "--random-mask-rate", "0.01"], "disagree"),
        (["--keep", "0.5", "--random-mask-rate", "0.1"], "disagree"),  # a rate equal to the default is given too
        (["--keep", "0.5", "--random-mask-rate", "0.01"], "disagree"),
        (["--epochs", "abc"], "invalid int value"),
        (["--no-such-option"], "unrecognized arguments"),
        (["--lr-schedule", "linear"], "unknown lr schedule"),
        (["--amp", "fp8"], "amp must be"),
        (["--seed", "-3"], "--seed"),
        (["--seed", "99999999999999999999"], "--seed"),
        (["--method", "rigl", "--random-mask-rate", "0.5"], "--random-mask-rate 0.5 has no effect on method rigl"),
        (["--method", "rigl", "--keep", "0.5"], "has no effect on method rigl"),
        (["--subset", "60000"], "--subset 60000 is more than the 45000 training images available"),
        (["--test-subset", "20000"], "--test-subset 20000 is more than the 10000 test images available"),
    ],
)
def test_bad_input_gives_one_line_error_and_exit_2(args, message, cifar_data_dir, cache_dir, tmp_path, capsys,
                                                  monkeypatch):
    """In process (the table is long); test_bad_input_smoke_in_a_subprocess checks the real entry point."""
    from cigl_bayes.experiments import svi_cifar

    monkeypatch.setenv("CIGL_CACHE_DIR", str(cache_dir))
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("earlier results")  # whatever is already there must survive
    code, stderr = call_cli(svi_cifar.main, [*QUICK, "--data-dir", str(cifar_data_dir), "--out", str(out), *args],
                            capsys)
    assert code == 2, stderr[-1500:]
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], stderr
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "earlier results"


def test_bad_input_smoke_in_a_subprocess(cifar_data_dir, cache_dir, tmp_path):
    out = tmp_path / "run"
    proc = run_module("experiments.svi_cifar", *QUICK, "--data-dir", str(cifar_data_dir), "--out", str(out),
                      "--sparsity", "1.0", env_extra={"CIGL_CACHE_DIR": str(cache_dir)})
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and "sparsity" in lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_every_config_field_is_an_option_and_the_cli_defaults_are_the_configs():
    """One source of truth: the training options are generated from TrainConfig's fields."""
    import argparse
    import dataclasses

    from cigl_bayes.config import TrainConfig
    from cigl_bayes.experiments.cli import add_train_arguments, config_from_args

    p = argparse.ArgumentParser()
    add_train_arguments(p)
    dests = {a.dest for a in p._actions}
    fields = [f for f in dataclasses.fields(TrainConfig) if f.metadata.get("cli", True)]
    assert {f.name for f in fields} <= dests and all(f.metadata["help"] for f in fields)
    assert config_from_args(p.parse_args([])) == TrainConfig()
    imagenet = config_from_args(p.parse_args(["--dataset", "imagenet"]))
    assert imagenet == TrainConfig(dataset="imagenet")
    assert (imagenet.model, imagenet.epochs, imagenet.batch_size) == ("resnet50-imagenet", 100, 64)
    assert config_from_args(p.parse_args(["--dataset", "imagenet", "--epochs", "3"])).epochs == 3
    flags = config_from_args(p.parse_args(["--no-samples", "--no-nesterov", "--compile", "--no-augment"]))
    assert (flags.save_samples, flags.nesterov, flags.compile, flags.augment) == (False, False, True, False)


def test_every_no_flag_says_what_it_turns_off():
    """A generated --no-… flag (a TrainConfig bool that is on by default) does not reuse the help of
    the setting itself, which says the opposite of what the flag does."""
    import dataclasses

    from cigl_bayes.config import TrainConfig
    from cigl_bayes.experiments.cli import ArgumentParser, add_train_arguments

    p = ArgumentParser()
    add_train_arguments(p)
    by_dest = {a.dest: a for a in p._actions}
    negative = [f for f in dataclasses.fields(TrainConfig)
                if f.type == "bool" and f.default is True and f.metadata.get("cli", True)]
    assert {f.name for f in negative} >= {"temperature_scaling", "save_samples", "val_curves", "augment", "nesterov"}
    for field in negative:
        action = by_dest[field.name]
        assert action.option_strings[0].startswith("--no-")
        assert action.help == f"turn off (on by default): {field.metadata['help']}"
    assert by_dest["compile"].help == "torch.compile the network's functional forward"  # a positive flag as it is


def test_argparse_errors_name_the_module_as_it_was_launched():
    """The installed name ``cigl_bayes.experiments.train`` is quoted as such; the short name as before."""
    proc = run_module("cigl_bayes.experiments.train", "--bogus")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: python -m cigl_bayes.experiments.train: unrecognized arguments: --bogus")
    proc = run_module("experiments.train", "--bogus")
    assert proc.returncode == 2 and proc.stderr.startswith("error: python -m experiments.train: unrecognized")


def test_a_file_given_as_a_run_folder_is_named_a_file(tmp_path):
    from cigl_bayes.experiments.cli import check_run_folders

    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(NotADirectoryError, match="metrics.json is a file, expected a run folder"):
        check_run_folders([tmp_path / "metrics.json"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_run_folders([tmp_path / "nowhere"])


def test_missing_data_directory_says_where_it_looked(tmp_path):
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    proc = run_module("experiments.train", *QUICK, "--data-dir", str(empty), "--out", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert "error:" in proc.stderr and str(empty) in proc.stderr and "CIGL_DATA_DIR" in proc.stderr


def test_out_pointing_at_a_file_is_refused_and_kept(cifar_data_dir, tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("precious")
    proc = run_module("experiments.train", *QUICK, "--data-dir", str(cifar_data_dir), "--out", str(target))
    assert proc.returncode == 2 and "is a file" in proc.stderr
    assert target.read_text() == "precious"


def test_resume_with_other_options_and_corrupt_checkpoint_via_cli(cifar_data_dir, cache_dir, tmp_path):
    out = tmp_path / "run"
    env = {"CIGL_CACHE_DIR": str(cache_dir)}
    first = run_module("experiments.train", *QUICK, "--data-dir", str(cifar_data_dir), "--out", str(out), env_extra=env)
    assert first.returncode == 0, first.stderr[-1500:]
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    other = run_module("experiments.train", *QUICK, "--sparsity", "0.5", "--data-dir", str(cifar_data_dir), "--out",
                       str(out), env_extra=env)
    assert other.returncode == 2 and "different config" in other.stderr and "sparsity" in other.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    bad = run_module("experiments.train", *QUICK, "--data-dir", str(cifar_data_dir), "--out", str(out), env_extra=env)
    assert bad.returncode == 2 and "corrupt or truncated" in bad.stderr
    assert (out / "checkpoint.pt").read_bytes() == b"not a checkpoint"


def test_the_results_table_keeps_its_columns_apart_for_huge_values(capsys):
    from cigl_bayes.experiments.cli import print_results

    row = {"accuracy": 0.875, "ece": 0.02043043676, "ece10": 0.02, "nll": 2.0e9, "brier": 6.1669}
    print_results({"method": "cigl", "engine": "svi", "model": "small-cnn", "sparsity_target": 0.95,
                   "sparsity_actual": 0.95, "output_predictor": "wma", "test": {"wma": row}})
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.split() == ["wma", "0.8750", "0.0204", "0.0200", "2e+09", "6.1669"]
