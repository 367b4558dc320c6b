"""One BatchNorm forward and backward under bf16 autocast + channels-last, against float32.

    python -m benchmarks.bn_precision

The block is WRN-22-2's first residual unit in miniature: a 3×3 convolution (16 → 32 channels)
into BatchNorm2d(32) and ReLU, batch 128 of 32×32 inputs, in training mode (batch statistics, and
the running statistics updated with momentum 0.1).  It runs once in float32 (contiguous) and once
as the study's fast path would (``torch.autocast`` bf16 on this device, channels-last), from the
same weights and inputs, and reports: the dtype BatchNorm computes in under autocast, the relative
error of the block's output, of the input and weight gradients, and of the updated running mean
and variance.  A numerical check, not a timing; it prints where the bf16 rounding enters and how
large it is, so a study can decide whether the fast path may replace float32 (docs/performance.md).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cigl_bayes.device import describe_host, resolve_device
from cigl_bayes.experiments.cli import ArgumentParser, run_cli
from cigl_bayes.runs import atomic_write_json

from .common import check_options


def block(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())


def run(model: nn.Sequential, x: torch.Tensor, bf16: bool, device: torch.device) -> dict:
    model = model.to(device)
    x = x.detach().clone().to(device).requires_grad_(True)  # its own leaf: no gradient shared between runs
    bn_dtype = {}
    hook = model[1].register_forward_hook(lambda m, i, o: bn_dtype.update(input=str(i[0].dtype), output=str(o.dtype)))
    if bf16:
        model = model.to(memory_format=torch.channels_last)
        x_in = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            out = model(x_in)
    else:
        out = model(x)
    hook.remove()
    out.float().square().mean().backward()
    return {"out": out.float().detach(), "grad_x": x.grad.float().clone(),
            "grad_w": model[0].weight.grad.float().clone(), "running_mean": model[1].running_mean.float(),
            "running_var": model[1].running_var.float(),
            "bn_dtype": bn_dtype}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m benchmarks.bn_precision", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/bn_precision.json")
    args = p.parse_args(argv)
    check_options(args)
    device = resolve_device(args.device)
    rows = []
    for seed in range(args.seeds):
        x = torch.randn(128, 16, 32, 32, generator=torch.Generator().manual_seed(100 + seed))
        fp32 = run(block(seed), x, False, device)
        bf16 = run(block(seed), x, True, device)
        row = {k: relative(bf16[k], fp32[k]) for k in ("out", "grad_x", "grad_w", "running_mean", "running_var")}
        row["bn_dtype_under_autocast"] = bf16["bn_dtype"]
        rows.append(row)
        print(f"seed {seed}: BatchNorm in {bf16['bn_dtype']['input']} → {bf16['bn_dtype']['output']}; relative "
              "error " + ", ".join(f"{k} {v:.2e}" for k, v in row.items() if isinstance(v, float)), flush=True)
    result = {"rows": rows, **describe_host(device)}
    atomic_write_json(result, Path(args.out))
    print(f"bf16 matrix instructions: {result['cpu_bf16_matmul']}; written {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
