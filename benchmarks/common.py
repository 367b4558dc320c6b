"""Shared benchmark plumbing: synthetic device-resident data, trainers per variant, timing."""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch
from cigl_bayes.inference.training import Trainer

from cigl_bayes import data as data_lib
from cigl_bayes.config import TrainConfig
from cigl_bayes.train import Data

# (label, method, engine): the variants compared side by side.
VARIANTS = [("dense", "dense", "plain"), ("rigl", "rigl", "plain"), ("cigl", "cigl", "plain"),
            ("cigl-svi", "cigl", "svi")]


def synthetic_data(n: int, batch_size: int, device: torch.device, num_classes: int = 10, seed: int = 0,
                   channels_last: bool = False) -> Data:
    """Random CIFAR-shaped uint8 images on ``device`` (timing needs shapes, not content)."""
    rng = np.random.default_rng(seed)
    ds = data_lib.ArrayDataset(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                               rng.integers(0, num_classes, n).astype(np.int64),
                               tuple(str(i) for i in range(num_classes)))
    mean, std = data_lib.NORMALIZATION["cifar10"]
    loader = data_lib.DeviceLoader(ds, batch_size=batch_size, device=device, mean=mean, std=std,
                                   shuffle=True, augment=True, seed=seed, channels_last=channels_last)
    return Data(train=loader, train_eval=loader, val=None, test=loader, num_classes=num_classes)


def make_trainer(base: TrainConfig, method: str, engine: str, data: Data) -> Trainer:
    cfg = dataclasses.replace(base, method=method, engine=engine, save_samples=False)
    return Trainer(cfg, tempfile.mkdtemp(prefix="cigl-bench-"), progress=False, data=data)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, repeats: int = 1) -> float:
    """Seconds per call of ``fn`` over ``repeats`` calls (device synchronised at both ends)."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def flops_per_step(trainer: Trainer, batch: tuple[torch.Tensor, torch.Tensor]) -> int:
    """Floating-point operations of one training step (forward + backward; 2 per multiply-add)
    as counted by ``torch.utils.flop_counter``: the dense work a masked network still executes."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        trainer.train_step(*batch)
    return int(counter.get_total_flops())


def fast_path(trainer: Trainer) -> str:
    """The speed options a trainer runs with, in words (e.g. "bf16 autocast + channels-last")."""
    net = trainer.net
    parts = ["bf16 autocast" if net.autocast_dtype is not None else "float32"]
    convs = [p for p in net.module.parameters() if p.dim() == 4]
    if convs and convs[0].is_contiguous(memory_format=torch.channels_last):
        parts.append("channels-last")
    if net._call != net._functional_call:  # bound methods: compare by equality
        parts.append("compiled")
    return " + ".join(parts)
