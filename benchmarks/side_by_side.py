"""Training throughput of one process on all CPU cores against N processes side by side, each on
cores / N threads: whether N sweeps sharing one study (``experiments.sweep``) finish more runs per
hour than one.

    python -m benchmarks.side_by_side --model wrn-22-2 --jobs 2
    python -m benchmarks.side_by_side --quick          # small-cnn, batch 64, < 60 s

Every worker is a fresh process (``OMP_NUM_THREADS`` and torch's thread count set before any
work) that builds a trainer of ``--method`` on synthetic data at the default fast path, warms up,
waits until every worker of its group is ready, and then trains for ``--seconds`` of wall-clock
time: all workers of a group start together and stop together (to within one step), so their
steps overlap.  A group's throughput is its workers' completed steps per second, summed;
``side_by_side_over_one`` is the N-worker group's throughput over the one-worker group's (> 1:
side by side gets more done).  The groups alternate for ``--rounds`` rounds and the ratio is the
median of the per-round ratios, so it carries little of the machine's drift; still, time it only
on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import tempfile
from pathlib import Path

import cigl_bayes
from cigl_bayes.experiments.cli import ArgumentParser, run_cli

from .common import apply_preset, check_options

PACKAGE_ROOT = Path(cigl_bayes.__file__).resolve().parents[1]  # the folder cigl_bayes is imported from


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def worker(args) -> int:
    """One worker: build, warm up, say "ready", wait for "go" on stdin, time, print JSON."""
    import dataclasses
    import time

    import torch

    torch.set_num_threads(args.threads)
    from cigl_bayes.config import TrainConfig

    from .common import fast_path, make_trainer, synthetic_data

    device = torch.device("cpu")
    base = TrainConfig(model=args.model, batch_size=args.batch_size, device="cpu", sparsity=0.95)
    data = synthetic_data(args.batch_size * 4, args.batch_size, device,
                          channels_last=base.speed_options(device)["channels_last"])
    trainer = make_trainer(base, args.method, "plain", data)
    trainer.cigl.schedule = dataclasses.replace(trainer.schedule, delta_t=10**12)  # no mask update in the timed steps
    batches = list(data.train.epoch(0))
    for i in range(args.warmup):
        trainer.train_step(*batches[i % len(batches)])
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":  # the parent is gone or gave up: do not train on unasked
        return 1
    start_wall, start, steps = time.time(), time.perf_counter(), 0
    while time.perf_counter() - start < args.seconds:  # a fixed window, the same for every worker of the group
        trainer.train_step(*batches[steps % len(batches)])
        steps += 1
    elapsed = time.perf_counter() - start
    print(json.dumps({"steps": steps, "seconds": elapsed, "seconds_per_step": elapsed / steps,
                      "start": start_wall, "end": start_wall + elapsed, "threads": torch.get_num_threads(),
                      "fast_path": fast_path(trainer)}), flush=True)
    return 0


def _line(proc: subprocess.Popen, timeout: float) -> str:
    """The next line ``proc`` prints, or "" if it prints none within ``timeout`` seconds or ends."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline() if ready else ""


def run_group(workers: int, threads: int, args) -> list[dict]:
    """Start ``workers`` processes on ``threads`` threads each, release them together, collect their windows."""
    # the workers import the same cigl_bayes as this process: a checkout's or an installed one
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "cigl_bayes.benchmarks.side_by_side", "--worker", "--threads", str(threads),
               "--model", args.model, "--batch-size", str(args.batch_size), "--method", args.method,
               "--seconds", str(args.seconds), "--warmup", str(args.warmup)]
    errors = [tempfile.TemporaryFile(mode="w+") for _ in range(workers)]  # a file: a chatty worker never blocks
    procs = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                              env=env) for err in errors]

    def failed(i: int, what: str) -> RuntimeError:
        procs[i].kill()
        procs[i].wait()
        errors[i].seek(0)
        last = (errors[i].read().strip().splitlines() or ["no output"])[-1]
        return RuntimeError(f"a benchmark worker {what}: {last}")

    try:
        for i, p in enumerate(procs):
            if _line(p, args.timeout).strip() != "ready":
                raise failed(i, f"failed before its steps (or took over {args.timeout:g} s)")
        for p in procs:  # released together: the timed windows overlap
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for i, p in enumerate(procs):
            line = _line(p, args.seconds + args.timeout)
            if not line.strip():
                raise failed(i, "failed during its steps")
            results.append(json.loads(line))
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for err in errors:
            err.close()


def measure(args) -> dict:
    import statistics

    from cigl_bayes.device import describe_host, resolve_device

    cores = cpu_cores()
    threads = max(1, cores // args.jobs)
    one, side = [], []
    ratios = []
    for _ in range(args.rounds):
        a = run_group(1, cores, args)
        b = run_group(args.jobs, threads, args)
        one.append(a)
        side.append(b)
        ratios.append(sum(w["steps"] / w["seconds"] for w in b) / (a[0]["steps"] / a[0]["seconds"]))
    return {
        "model": args.model, "method": args.method, "batch_size": args.batch_size, "seconds": args.seconds,
        "rounds": args.rounds, "cores": cores, "jobs": args.jobs, "threads_per_job": threads,
        "fast_path": one[0][0]["fast_path"],
        "one_process_seconds_per_step": statistics.median(r[0]["seconds_per_step"] for r in one),
        "side_by_side_seconds_per_step": statistics.median(w["seconds_per_step"] for r in side for w in r),
        "side_by_side_over_one": statistics.median(ratios),
        "per_round": [{"one_process": a[0], "side_by_side": b, "ratio": ratio}
                      for a, b, ratio in zip(one, side, ratios)],
        **describe_host(resolve_device("cpu")),
    }


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m benchmarks.side_by_side", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="wrn-22-2")
    p.add_argument("--method", default="cigl")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--jobs", type=int, default=2, help="processes side by side (each on cores / jobs threads)")
    p.add_argument("--seconds", type=float, default=20.0, help="timed window per round (wall clock)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before the window")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a worker may take to get ready")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="small-cnn, batch 64, few steps (< 60 s)")
    p.add_argument("--out", default="benchmarks/results/side_by_side.json")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.quick:  # an option given explicitly wins over the preset
        apply_preset(p, args, argv, model="small-cnn", batch_size=64, seconds=2.0, warmup=1, rounds=1)
    check_options(args)
    from cigl_bayes.runs import atomic_write_json

    r = measure(args)
    print(f"\nside by side · {r['model']} ({r['method']}) · batch {r['batch_size']} · {r.get('cpu', 'cpu')} · "
          f"{r['fast_path']}")
    print(f"  1 process × {r['cores']} threads   {r['one_process_seconds_per_step'] * 1e3:9.1f} ms/step")
    print(f"  {r['jobs']} processes × {r['threads_per_job']} thread(s) {r['side_by_side_seconds_per_step'] * 1e3:9.1f}"
          " ms/step each")
    print(f"  side_by_side_over_one  {r['side_by_side_over_one']:.3f}  (throughput ratio; > 1: side by side does more)")
    atomic_write_json(r, Path(args.out))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
