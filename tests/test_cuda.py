"""Checks that need a CUDA GPU (skipped elsewhere).  ``python -m benchmarks.gpu_suite --stage env``
runs them on a lent GPU: ``pytest -m cuda``."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cigl_bayes.benchmarks.common import synthetic_data
from cigl_bayes.config import TrainConfig
from cigl_bayes.inference.training import Trainer

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def cfg() -> TrainConfig:
    return TrainConfig(method="cigl", model="small-cnn", sparsity=0.9, epochs=1, batch_size=64, device="cuda",
                       delta_t=2, temperature_scaling=False)


def test_cuda_fast_path_is_the_default_and_trains(tmp_path):
    data = synthetic_data(256, 64, torch.device("cuda"), channels_last=True)
    trainer = Trainer(cfg(), tmp_path, progress=False, data=data)
    assert trainer.net.autocast_dtype == torch.bfloat16
    assert trainer.net.module.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    before = trainer.net.mask.flat.clone()
    trainer.fit()
    assert trainer.step == 4 and not torch.equal(before, trainer.net.mask.flat)  # mask updates ran on the GPU
    assert [int(v.sum()) for v in trainer.net.mask.flat_views()] == trainer.net.mask.nnz


def test_plain_and_svi_engines_agree_on_cuda(tmp_path):
    data = synthetic_data(128, 64, torch.device("cuda"))
    base = dataclasses.replace(cfg(), dtype="float64", amp="off", channels_last="off")
    losses = {}
    for engine in ("plain", "svi"):
        trainer = Trainer(dataclasses.replace(base, engine=engine), tmp_path / engine, progress=False, data=data)
        x, y = next(iter(trainer.data.train.epoch(0)))
        loss, _ = trainer.objective(x, y, trainer.z_source.sample(torch.float64))
        losses[engine] = float(loss)
    # −ELBO/N = plain loss + an analytic constant (the prior's normalisers), positive here
    assert losses["svi"] > losses["plain"]


def test_metrics_of_cuda_tensors_equal_cpu_ones():
    from cigl_bayes.metrics import apply_temperature, calibration_metrics

    g = torch.Generator().manual_seed(7)
    z, y = 3 * torch.randn(200, 5, generator=g), torch.randint(0, 5, (200,), generator=g)
    assert calibration_metrics(z.cuda(), y.cuda()) == calibration_metrics(z, y)
    assert apply_temperature(z.cuda(), 2.0).device.type == "cuda"


def test_a_checkpoint_mapped_to_the_gpu_restores_every_random_state(tmp_path):
    """``Trainer.maybe_resume`` loads the checkpoint onto the run's device: the CPU, CUDA, numpy and
    Python random states (tensors and plain values since format v2) must restore from there."""
    import random

    import numpy as np

    from cigl_bayes.runs import load_checkpoint, rng_state, save_checkpoint, set_rng_state

    def draw():
        return (torch.rand(2).tolist(), torch.rand(2, device="cuda").tolist(), np.random.rand(2).tolist(),
                random.random())

    save_checkpoint({"rng": rng_state()}, tmp_path / "checkpoint.pt")
    first = draw()
    state = load_checkpoint(tmp_path / "checkpoint.pt", map_location=torch.device("cuda"))
    assert state["rng"]["torch"].is_cuda  # map_location moved it, as it does on resume
    set_rng_state(state["rng"])
    assert draw() == first
