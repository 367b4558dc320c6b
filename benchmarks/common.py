"""Shared benchmark plumbing: synthetic device-resident data, trainers per variant, timing."""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch

from cigl_bayes import data as data_lib
from cigl_bayes.config import TrainConfig
from cigl_bayes.inference.training import Trainer
from cigl_bayes.train import Data

# (label, method, engine): the variants compared side by side.
VARIANTS = [("dense", "dense", "plain"), ("rigl", "rigl", "plain"), ("cigl", "cigl", "plain"),
            ("cigl-svi", "cigl", "svi")]


def given_options(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The ``dest`` of every option written on the command line ``argv`` (abbreviations included)."""
    saved = [(action, action.default) for action in parser._actions]  # per option: two may share a dest
    saved_defaults = dict(parser._defaults)  # set_defaults() values are not written on the command line
    try:
        for action in parser._actions:
            action.default = argparse.SUPPRESS
        parser._defaults.clear()
        return set(vars(parser.parse_args(argv)))
    finally:
        for action, default in saved:
            action.default = default
        parser._defaults.update(saved_defaults)


def apply_preset(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str] | None,
                 **preset) -> None:
    """A preset's sizes (``--quick``, ``--dry-run``) for every option the user did *not* give: an
    explicit ``--model`` or ``--batch-size`` wins over the preset instead of being silently replaced."""
    given = given_options(parser, argv)
    for dest, value in preset.items():
        if dest not in given:
            setattr(args, dest, value)


# the benchmarks' shared size options: each must be an integer ≥ 1 (warm-up steps ≥ 0)
_POSITIVE_INTS = ("batch_size", "steps", "rounds", "epochs", "subset", "jobs", "repeats", "seeds")
_NON_NEGATIVE_INTS = ("warmup",)


def check_options(args: argparse.Namespace) -> None:
    """Raise ValueError naming the first bad option among those ``args`` has (model names, method,
    engine, sizes, sparsities), so a benchmark refuses bad input before it builds or times anything."""
    from cigl_bayes.config import METHODS
    from cigl_bayes.models import check_model_name
    from cigl_bayes.sparsity import check_sparsity

    def flag(dest: str) -> str:
        return "--" + dest.replace("_", "-")

    for dest in ("model", "models"):
        value = getattr(args, dest, None)
        for name in value if isinstance(value, list) else ([] if value is None else [value]):
            try:
                check_model_name(name)
            except ValueError as err:
                raise ValueError(f"{flag(dest)}: {err}") from None
    if getattr(args, "method", None) is not None and args.method not in METHODS:
        raise ValueError(f"--method: unknown method {args.method!r}; known: {', '.join(METHODS)}")
    for dest in _POSITIVE_INTS + _NON_NEGATIVE_INTS:
        value = getattr(args, dest, None)
        if value is None:
            continue
        low = 1 if dest in _POSITIVE_INTS else 0
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{flag(dest)} must be an integer ≥ {low}, got {value!r}")
    for value in getattr(args, "batches", None) or []:
        if value < 1:
            raise ValueError(f"--batches must be integers ≥ 1, got {value!r}")
    for value in getattr(args, "sparsities", None) or []:
        try:
            check_sparsity(value)
        except ValueError as err:
            raise ValueError(f"--sparsities: {err}") from None
    for dest in ("seconds", "timeout", "budget_s"):
        value = getattr(args, dest, None)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{flag(dest)} must be a number > 0, got {value!r}")


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
