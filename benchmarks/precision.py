"""CigL training-step time in four precision / memory-format settings, side by side.

    python -m benchmarks.precision --model wrn-22-2
    python -m benchmarks.precision --model small-cnn

float32, float32 + channels-last, bf16 autocast, bf16 autocast + channels-last, each forced
(not "auto"), batch 128, random images, one warm-up step and then the mean of ``--steps`` steps.
It shows what ``--amp auto`` / ``--channels-last auto`` should pick on this CPU: bf16 pays only
with bf16 matrix instructions (AMX-BF16, AVX512-BF16); without them it is emulated and slower.
"""

from __future__ import annotations

import time
from pathlib import Path

from cigl_bayes.config import TrainConfig
from cigl_bayes.device import describe_host, resolve_device
from cigl_bayes.experiments.cli import ArgumentParser, run_cli
from cigl_bayes.runs import atomic_write_json

from .common import check_options, make_trainer, synchronize, synthetic_data

SETTINGS = [("fp32", "off", "off"), ("fp32+channels-last", "off", "on"), ("bf16", "bf16", "off"),
            ("bf16+channels-last", "bf16", "on")]


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m benchmarks.precision", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="wrn-22-2")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="benchmarks/results/precision.json")
    args = p.parse_args(argv)
    check_options(args)
    device = resolve_device(args.device)
    seconds = {}
    for label, amp, channels_last in SETTINGS:
        cfg = TrainConfig(model=args.model, sparsity=0.95, batch_size=args.batch_size, device=str(device),
                          amp=amp, channels_last=channels_last)
        data = synthetic_data(args.batch_size * (args.steps + 1), args.batch_size, device,
                              channels_last=channels_last == "on")
        trainer = make_trainer(cfg, "cigl", "plain", data)
        batches = list(data.train.epoch(0))
        trainer.train_step(*batches[0])  # warm-up
        synchronize(device)
        start = time.perf_counter()
        for batch in batches[1:args.steps + 1]:
            trainer.train_step(*batch)
        synchronize(device)
        seconds[label] = (time.perf_counter() - start) / args.steps
        print(f"  {label:<20} {seconds[label] * 1e3:9.1f} ms/step", flush=True)
    fastest = min(seconds, key=seconds.get)
    result = {"model": args.model, "batch_size": args.batch_size, "seconds_per_step": seconds, "fastest": fastest,
              **describe_host(device)}
    print(f"fastest: {fastest}; bf16 matrix instructions: {result['cpu_bf16_matmul']}")
    atomic_write_json(result, Path(args.out))
    return 0


if __name__ == "__main__":
    run_cli(main)
