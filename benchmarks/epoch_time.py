"""Whole training epochs, data pipeline included: images/s and how busy the GPU is.

    python -m benchmarks.epoch_time --model wrn-22-2 --method cigl            # real CIFAR-10 if found
    python -m benchmarks.epoch_time --quick                                   # small-cnn, synthetic, CPU

Times ``Trainer.train_epoch`` (the loop the trainers run: device-resident batches, augmentation,
Z, forward/backward, SGD, mask updates) after one warm-up epoch.  On CUDA the busy fraction is
the summed kernel time seen by ``torch.profiler`` over the epoch's wall time; on a CPU it is not
defined and reported as null.  Achieved GFLOP/s: the counted FLOPs of a dense training step
(``torch.utils.flop_counter``) × steps / seconds.  ``--amp/--channels-last off`` time plain float32.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from cigl_bayes.config import TrainConfig
from cigl_bayes.device import describe_host, resolve_device
from cigl_bayes.experiments.cli import ArgumentParser, add_host_allocator_argument, apply_host_allocator, run_cli
from cigl_bayes.runs import atomic_write_json

from .common import apply_preset, check_options, fast_path, flops_per_step, make_trainer, synchronize, synthetic_data


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **_) -> None:
        pass


def gpu_busy_fraction(trainer, device: torch.device) -> float | None:
    """Kernel time / wall time over one profiled epoch (CUDA only)."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    synchronize(device)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        trainer.train_epoch(_NoBar())
        synchronize(device)
    wall = time.perf_counter() - start
    kernel_us = sum(e.device_time_total for e in prof.key_averages() if e.device_type.name == "CUDA")
    return min(1.0, kernel_us * 1e-6 / wall)


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m benchmarks.epoch_time", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="wrn-22-2")
    p.add_argument("--method", default="cigl")
    p.add_argument("--engine", default="plain", choices=["plain", "svi"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs (after one warm-up epoch)")
    p.add_argument("--subset", type=int, default=None, help="training images (default: 45,000 = CIFAR-10 minus val)")
    p.add_argument("--synthetic", action="store_true", help="random images instead of CIFAR-10")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"], help="as in experiments.train")
    p.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"], help="as in experiments.train")
    p.add_argument("--compile", action="store_true", help="torch.compile the network forward")
    add_host_allocator_argument(p)  # "system" measures glibc's default behaviour
    p.add_argument("--quick", action="store_true", help="small-cnn, 2,000 synthetic images, 1 epoch")
    p.add_argument("--out", default="benchmarks/results/epoch_time.json")
    args = p.parse_args(argv)
    if args.quick:  # an option given explicitly wins over the preset
        apply_preset(p, args, argv, model="small-cnn", subset=2000, epochs=1, synthetic=True)
    check_options(args)
    device = resolve_device(args.device)
    apply_host_allocator(args)
    base = TrainConfig(model=args.model, batch_size=args.batch_size, device=str(device), sparsity=0.95,
                       subset=args.subset, epochs=10, save_samples=False, amp=args.amp,
                       channels_last=args.channels_last, compile=args.compile)
    if args.synthetic:
        data = synthetic_data(args.subset or 45_000, args.batch_size, device,
                              channels_last=base.speed_options(device)["channels_last"])
    else:
        from cigl_bayes.train import build_data

        data = build_data(base, device)
    trainer = make_trainer(base, args.method, args.engine, data)
    first = next(iter(data.train.epoch(0)))
    flops = flops_per_step(make_trainer(base, "dense", "plain", data), first)
    trainer.net.module.train()
    trainer.train_epoch(_NoBar())  # warm-up (allocations, cuDNN autotuning)
    times = []
    for _ in range(args.epochs):
        synchronize(device)
        start = time.perf_counter()
        trainer.train_epoch(_NoBar())
        synchronize(device)
        times.append(time.perf_counter() - start)
    images = data.train.num_samples
    result = {"model": args.model, "method": args.method, "engine": args.engine, "batch_size": args.batch_size,
              "host_allocator": args.host_allocator,
              "images_per_epoch": images, "synthetic": args.synthetic, "seconds_per_epoch": min(times),
              "images_per_second": images / min(times), "gpu_busy_fraction": gpu_busy_fraction(trainer, device),
              "fast_path": fast_path(trainer),
              "achieved_gflops": flops * len(data.train) / min(times) / 1e9,
              **describe_host(device)}
    busy = result["gpu_busy_fraction"]
    print(f"epoch time · {args.method} ({args.engine}) · {args.model} · batch {args.batch_size} · "
          f"{result.get('gpu', result['device'])}")
    print(f"  {result['seconds_per_epoch']:.2f} s/epoch   {result['images_per_second']:.0f} images/s   "
          f"{result['achieved_gflops']:.1f} GFLOP/s   GPU busy {'n/a' if busy is None else f'{busy:.1%}'}   "
          f"({result['fast_path']})")
    atomic_write_json(result, Path(args.out))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
