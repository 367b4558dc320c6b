"""Speed options (bf16 autocast, channels-last, torch.compile) keep both engines' results."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cigl_bayes.config import TrainConfig
from cigl_bayes.inference.training import Trainer


@pytest.fixture(scope="module")
def cfg(cifar_data_dir, cache_dir) -> TrainConfig:
    import os

    os.environ["CIGL_CACHE_DIR"] = str(cache_dir)
    return TrainConfig(method="cigl", model="small-cnn", data_dir=str(cifar_data_dir), sparsity=0.9, epochs=1,
                       subset=256, test_subset=64, batch_size=64, device="cpu", amp="off", channels_last="off")


def first_loss_and_grad(cfg: TrainConfig, tmp_path, name: str):
    trainer = Trainer(cfg, tmp_path / name, progress=False)
    x, y = next(trainer.data.train.epoch(0))
    loss, w = trainer.objective(x, y, trainer.z_source.sample())
    w.retain_grad()
    loss.backward()
    return trainer, loss.detach(), w.grad.detach()


def test_auto_options_follow_the_device(cfg, monkeypatch):
    from cigl_bayes import device as device_lib

    auto = dataclasses.replace(cfg, amp="auto", channels_last="auto")
    for name, probe in (("amx-bf16", "_is_amx_tile_supported"), ("avx512-bf16", "_is_avx512_bf16_supported")):
        with monkeypatch.context() as m:  # a CPU with bf16 matrix instructions: the fast path
            m.setattr(torch.cpu, "_is_amx_tile_supported", lambda p=probe: p == "_is_amx_tile_supported",
                      raising=False)
            m.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda p=probe: p == "_is_avx512_bf16_supported",
                      raising=False)
            assert device_lib.cpu_bf16_matmul() == name
            assert auto.speed_options(torch.device("cpu")) == {"autocast_dtype": torch.bfloat16,
                                                                "channels_last": True, "compile": False}
            assert dataclasses.replace(auto, dtype="float64").speed_options(torch.device("cpu"))[
                "autocast_dtype"] is None
    with monkeypatch.context() as m:  # one without (e.g. AVX2 only): float32, contiguous
        m.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
        m.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
        assert device_lib.cpu_bf16_matmul() is None
        assert auto.speed_options(torch.device("cpu")) == {"autocast_dtype": None, "channels_last": True,
                                                            "compile": False}  # channels-last: float32 always
        assert dataclasses.replace(auto, dtype="float64").speed_options(torch.device("cpu"))["channels_last"] is False
    with monkeypatch.context() as m:  # a torch without the probes counts as without
        m.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
        m.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
        assert device_lib.cpu_bf16_matmul() is None
    cuda = auto.speed_options(torch.device("cuda"))
    assert cuda["autocast_dtype"] == torch.bfloat16 and cuda["channels_last"]
    # float64 numerical checks never autocast
    assert dataclasses.replace(auto, dtype="float64").speed_options(torch.device("cuda"))["autocast_dtype"] is None
    with pytest.raises(ValueError, match="amp"):
        dataclasses.replace(cfg, amp="fp8").validate()


@pytest.mark.parametrize("engine", ["plain", "svi"])
def test_bf16_and_channels_last_match_float32(cfg, tmp_path, engine):
    base = dataclasses.replace(cfg, engine=engine)
    _, loss32, grad32 = first_loss_and_grad(base, tmp_path, "fp32")
    fast, loss16, grad16 = first_loss_and_grad(dataclasses.replace(base, amp="bf16", channels_last="on"),
                                               tmp_path, "bf16")
    assert fast.net.module.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    x, _ = next(fast.data.train.epoch(0))
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert loss16.dtype == torch.float32 and torch.isfinite(loss16)
    assert abs(loss16 - loss32) < 0.02 * abs(loss32)  # bf16 has ~3 significant digits
    cos = torch.nn.functional.cosine_similarity(grad16, grad32, dim=0)
    assert cos > 0.98


def test_compiled_forward_equals_eager(cfg, tmp_path):
    base = dataclasses.replace(cfg, model="mlp", sparsity=0.8)
    _, loss_e, grad_e = first_loss_and_grad(base, tmp_path, "eager")
    compiled, loss_c, grad_c = first_loss_and_grad(dataclasses.replace(base, compile=True), tmp_path, "compiled")
    assert compiled.net._call is not compiled.net._functional_call
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_c, grad_e, rtol=1e-4, atol=1e-6)


def test_runs_record_the_precision_their_products_ran_in(cfg, tmp_path):
    """metrics.json → runtime.compute_dtype is what the forward pass used, so a study can tell a bf16
    run from a float32 one whatever --amp auto chose on the machine that ran it."""
    from cigl_bayes.evaluate import runtime_of

    for amp, dtype, expected in (("bf16", "float32", "bfloat16"), ("off", "float32", "float32"),
                                 ("off", "float64", "float64")):
        trainer = Trainer(dataclasses.replace(cfg, amp=amp, dtype=dtype), tmp_path / f"{amp}-{dtype}", progress=False)
        runtime = runtime_of(trainer)
        assert runtime["compute_dtype"] == expected, (amp, dtype)
        assert runtime["device"] == "cpu" and runtime["cpu"] and runtime["channels_last"] is False
