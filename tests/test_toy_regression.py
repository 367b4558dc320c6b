"""The 1-D regression view: Gaussian likelihood through the same trainer, three predictive bands."""

from __future__ import annotations

import json
import math

import pytest

from cigl_bayes.experiments import toy_regression


@pytest.mark.parametrize("engine", ["svi", "plain"])
def test_toy_regression_writes_bands_and_metrics(engine, tmp_path):
    out = tmp_path / engine
    args = ["--engine", engine, "--epochs", "30", "--wma-start-epoch", "10", "--n-train", "64", "--swag-samples", "16",
            "--device", "cpu", "--no-progress", "--out", str(out)]
    assert toy_regression.main(args) == 0
    result = json.loads((out / "metrics.json").read_text())
    rows = {r["predictor"]: r for r in result["predictors"]}
    # the resolved config, as config.json: numbers, so a later library default cannot change its meaning
    assert result["config"] == json.loads((out / "config.json").read_text())
    assert result["config"]["random_mask_rate"] == pytest.approx(0.01)  # filled by resolved(), as
    assert result["config"]["lr_decay_every"] is not None                # is the rescaled lr schedule
    assert set(rows) == {"wma", "predictive", "swag"}
    assert rows["wma"]["draws"] == 1 and rows["predictive"]["draws"] == result["samples"] == 20
    noise = 0.2  # default --noise-std: a point estimate carries only the aleatoric band
    assert rows["wma"]["std_gap"] == pytest.approx(noise) and rows["wma"]["std_data"] == pytest.approx(noise)
    for name in ("predictive", "swag"):  # mixtures add the spread of f across draws
        assert rows[name]["std_gap"] > noise and rows[name]["std_data"] > noise
        assert all(math.isfinite(rows[name][k]) for k in ("nll_data", "nll_gap", "rmse_data", "rmse_gap"))
    assert (out / "toy_regression.png").stat().st_size > 10_000
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("nll_data")


def test_toy_regression_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="n-train"):
        toy_regression.main(["--n-train", "2", "--out", str(tmp_path / "x")])
