"""Per-step training time of dense, RigL, CigL (plain) and CigL (SVI) at the default fast path,
and of CigL in plain float32, side by side.

    python -m benchmarks.step_time --model wrn-22-2 --batch-size 128
    python -m benchmarks.step_time --quick          # small-cnn, < 60 s on a CPU

All variants live in one process and are timed interleaved (warm-up first, then the median
over rounds of a few steps each), so their ratios share the machine's state; each ratio is the
median over rounds of the per-round ratio. Also timed: one
mask update (amortised over ΔT steps), one WMA collection and one SWAG moment update
(amortised over an epoch of 45,000 / batch steps).  ``fp32_over_fast`` is CigL's float32-contiguous
step time over its fast-path time (bf16 autocast and channels-last where ``--amp/--channels-last
auto`` turn them on); achieved GFLOP/s divide the step's counted FLOPs (forward + backward of the
dense network, ``torch.utils.flop_counter``) by its time.  Prints a table and writes JSON.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from cigl_bayes.averaging import Snapshot
from cigl_bayes.config import TrainConfig
from cigl_bayes.device import describe_host, resolve_device
from cigl_bayes.experiments.cli import ArgumentParser, add_host_allocator_argument, apply_host_allocator, run_cli
from cigl_bayes.inference.swag import SparseSWAG
from cigl_bayes.runs import atomic_write_json

from .common import (
    VARIANTS,
    apply_preset,
    check_options,
    fast_path,
    flops_per_step,
    make_trainer,
    median,
    synthetic_data,
    timed,
)


class DropInStep:
    """One training step the way a user writes it with :class:`cigl_bayes.CigL`: ``model(x)`` (the
    attached forward computes with M⊙Z⊙W), cross-entropy + (wd/2)·``cigl.l2()``, backward,
    ``cigl.step()``, the lr scheduler; bf16 autocast and channels-last where the Trainer's fast path has them."""

    def __init__(self, cfg: TrainConfig, device: torch.device, num_classes: int):
        from cigl_bayes import CigL
        from cigl_bayes.models import build_model

        cfg = cfg.resolved(n_train=45_000)
        speed = cfg.speed_options(device)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg.model, num_classes=num_classes).to(device)
        if speed["channels_last"]:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: 1.0)
        self.cigl = CigL(self.model, self.optimizer, method="cigl", sparsity=cfg.sparsity, total_steps=10**6,
                         delta_t=cfg.delta_t, keep=cfg.keep, keep_samples=False)
        self.autocast, self.wd = speed["autocast_dtype"], cfg.weight_decay

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=x.device.type, dtype=self.autocast or torch.bfloat16,
                            enabled=self.autocast is not None):
            logits = self.model.train()(x)
        loss = F.cross_entropy(logits.float(), y) + 0.5 * self.wd * self.cigl.l2()
        loss.backward()
        self.cigl.step()
        self.scheduler.step()


def measure(model: str, batch_size: int, device: torch.device, rounds: int, steps: int, warmup: int,
            delta_t: int = 100, compile: bool = False) -> dict:
    base = TrainConfig(model=model, batch_size=batch_size, device=str(device), sparsity=0.95, delta_t=delta_t,
                       compile=compile)
    fast_cl = base.speed_options(device)["channels_last"]
    data = synthetic_data(batch_size * 4, batch_size, device, channels_last=fast_cl)
    trainers = {label: make_trainer(base, method, engine, data) for label, method, engine in VARIANTS}
    # the same CigL step without the fast path: float32, contiguous (NCHW) weights and images
    plain = dataclasses.replace(base, amp="off", channels_last="off", compile=False)
    data32 = synthetic_data(batch_size * 4, batch_size, device)
    trainers["cigl-fp32"] = make_trainer(plain, "cigl", "plain", data32)
    if compile:  # the same fast-path CigL step without torch.compile, timed beside the compiled one
        trainers["cigl-eager"] = make_trainer(dataclasses.replace(base, compile=False), "cigl", "plain", data)
    batches = list(data.train.epoch(0))
    batches32 = list(data32.train.epoch(0))
    flops = flops_per_step(make_trainer(base, "dense", "plain", data), batches[0])
    # CigL as a user drops it into their own loop (cigl_bayes.CigL attached to a module), at the same fast path
    trainers["cigl-drop-in"] = DropInStep(base, device, data.num_classes)
    for t in trainers.values():  # never hit a mask update or an epoch end inside the timed steps
        t.cigl.schedule = dataclasses.replace(t.cigl.schedule, delta_t=10**12)

    def run_steps(trainer, n):
        source = batches32 if trainer is trainers["cigl-fp32"] else batches
        for i in range(n):
            trainer.train_step(*source[i % len(source)])

    for t in trainers.values():
        run_steps(t, warmup)
    per_step = {label: [] for label in trainers}
    for _ in range(rounds):
        for label, trainer in trainers.items():  # interleaved
            per_step[label].append(timed(lambda tr=trainer: run_steps(tr, steps), device) / steps)
    step = {label: median(v) for label, v in per_step.items()}

    def paired(a: str, b: str) -> float:
        """Median over rounds of the per-round ratio a/b (both timed back to back in that round)."""
        return median([x / y for x, y in zip(per_step[a], per_step[b])])

    cigl = trainers["cigl"]
    x, y = batches[0]
    loss, _ = cigl.objective(x, y, cigl.z_source.sample(), track_score=True)
    loss.backward()
    grad = cigl.objective.regrowth_score().detach()
    mask_update = median([timed(lambda: cigl.cigl.update_mask(grad, 0.3), device) for _ in range(max(3, rounds))])
    collect = median([timed(cigl.cigl.collect, device) for _ in range(max(3, rounds))])
    swag = SparseSWAG(cigl.net.mask.flat, max_rank=20)
    snap = Snapshot(cigl.net.effective_flat(cigl.z_source.sample()).detach(), cigl.net.other_flat().detach())
    swag_update = median([timed(lambda: swag.update(snap), device) for _ in range(max(3, rounds))])
    steps_per_epoch = math.ceil(45_000 / batch_size)
    return {
        "model": model, "batch_size": batch_size, "rounds": rounds, "steps_per_round": steps,
        "delta_t": delta_t, "steps_per_epoch": steps_per_epoch,
        "seconds_per_step": step,
        "seconds_mask_update": mask_update,
        "seconds_collect": collect,
        "seconds_swag_update": swag_update,
        "fast_path": fast_path(trainers["cigl"]),
        "fp32_over_fast": paired("cigl-fp32", "cigl"),
        "gflop_per_step": flops / 1e9,
        "achieved_gflops": {label: flops / 1e9 / s for label, s in step.items()},
        "cigl_over_dense": paired("cigl", "dense"),
        "rigl_over_dense": paired("rigl", "dense"),
        "svi_over_cigl": paired("cigl-svi", "cigl"),
        "drop_in_over_trainer": paired("cigl-drop-in", "cigl"),
        "eager_over_compiled": paired("cigl-eager", "cigl") if compile else None,
        "mask_update_fraction": mask_update / (delta_t * step["cigl"]),
        "collect_fraction": collect / (steps_per_epoch * step["cigl"]),
        "swag_fraction": swag_update / (steps_per_epoch * step["cigl"]),
        **describe_host(device),
    }


def print_table(r: dict) -> None:
    print(f"\nstep time · {r['model']} · batch {r['batch_size']} · {r.get('gpu', r['device'])} · torch {r['torch']}"
          f" · host allocator {r.get('host_allocator', 'system')}")
    print(f"  fast path: {r['fast_path']}; {r['gflop_per_step']:.2f} GFLOP per step (counted, dense)")
    for label, s in r["seconds_per_step"].items():
        print(f"  {label:<10} {s * 1e3:9.2f} ms/step  {r['achieved_gflops'][label]:8.1f} GFLOP/s")
    print(f"  mask update {r['seconds_mask_update'] * 1e3:8.2f} ms   collect {r['seconds_collect'] * 1e3:8.2f} ms"
          f"   SWAG update {r['seconds_swag_update'] * 1e3:8.2f} ms")
    for k in ("fp32_over_fast", "cigl_over_dense", "rigl_over_dense", "svi_over_cigl", "drop_in_over_trainer",
              "eager_over_compiled",
              "mask_update_fraction", "collect_fraction", "swag_fraction"):
        if r.get(k) is not None:
            print(f"  {k:<22} {r[k]:.4f}")


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m benchmarks.step_time", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="small-cnn")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=5, help="steps per timed round")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="torch.compile the network forward (fast-path variants)")
    add_host_allocator_argument(p)  # "system" measures glibc's default behaviour
    p.add_argument("--quick", action="store_true", help="small-cnn, batch 64, few rounds (< 60 s on CPU)")
    p.add_argument("--out", default="benchmarks/results/step_time.json")
    args = p.parse_args(argv)
    if args.quick:  # an option given explicitly wins over the preset
        apply_preset(p, args, argv, model="small-cnn", batch_size=64, rounds=5, steps=3, warmup=2)
    check_options(args)
    device = resolve_device(args.device)
    apply_host_allocator(args)
    result = measure(args.model, args.batch_size, device, args.rounds, args.steps, args.warmup, compile=args.compile)
    result["host_allocator"] = args.host_allocator
    print_table(result)
    atomic_write_json(result, Path(args.out))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
