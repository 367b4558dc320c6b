"""Inference speed and file size of sparse networks: dense fp32, the dense fast path, the sparse path.

    python -m benchmarks.inference                      # WRN-22-2 and small-cnn at 0.9, 0.95, 0.99
    python -m benchmarks.inference --quick              # a seconds-long check of the machinery

For each model and sparsity it builds the network with an ERK mask (random weights: speed and
size depend on the sparsity pattern, not on trained values), folds BatchNorm, and exports it
(``cigl_bayes.export``).  Then, side by side in one process, at batch 1 (latency) and batch 256
(throughput), forward passes of:

  dense-fp32      the folded network, torch's dense kernels, contiguous float32
  dense-fast      the dense fast path of this machine: channels-last, plus bf16 autocast where the
                  CPU has bf16 matrix instructions (``cigl_bayes.device.fast_path_available``)
  sparse          ``load_exported(kernels="auto", example=batch)``: each layer timed dense against
                  sparse (im2col + CSR matmul) on its real input and the faster kept

The paths are interleaved round by round (``--repeats`` rounds after a warm-up); each ratio is the
median over rounds of dense-fp32's time over the path's in the same round (> 1: faster than dense
fp32), and the per-layer dense and sparse times behind the sparse path's choice are kept in the
JSON.  glibc is told to keep freed memory (``--host-allocator``, as for training), so the large
batch-256 buffers are not page-faulted in again on every call.  Sizes: the export
against ``model.pt`` (the dense state dict as the run folder stores it).  Writes JSON and a
Markdown table (``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from cigl_bayes.device import HOST_ALLOCATOR_MODES, configure_host_allocator, describe_host, fast_path_available
from cigl_bayes.experiments.cli import ArgumentParser, run_cli
from cigl_bayes.export import export_network, fold_batchnorm, load_exported
from cigl_bayes.models import build_model
from cigl_bayes.runs import atomic_write_bytes, atomic_write_json
from cigl_bayes.sparsity import densities_for, layer_nnz, sparse_parameter_names

from .common import apply_preset, check_options


def masked_network(model: str, sparsity: float, seed: int = 0) -> nn.Module:
    """``model`` with an ERK mask at ``sparsity`` (random weights, eval mode)."""
    torch.manual_seed(seed)
    module = build_model(model, num_classes=10).eval()
    names = sparse_parameter_names(module)
    params = dict(module.named_parameters())
    shapes = [params[n].shape for n in names]
    with torch.no_grad():
        for name, k in zip(names, layer_nnz(shapes, densities_for(shapes, sparsity, "erk"))):
            keep = torch.zeros(params[name].numel(), dtype=torch.bool)
            keep[torch.randperm(params[name].numel())[:k]] = True
            params[name].mul_(keep.view_as(params[name]))
    return module


def interleaved_ms(paths: dict, rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """Each path called once per round, in turn, after one warm-up call each: (median ms per path,
    median over rounds of dense-fp32's time over the path's in the same round)."""
    with torch.no_grad():
        for fn in paths.values():
            fn()
        per_round = []
        for _ in range(rounds):
            times = {}
            for name, fn in paths.items():
                start = time.perf_counter()
                fn()
                times[name] = time.perf_counter() - start
            per_round.append(times)
    def median(xs):
        return sorted(xs)[len(xs) // 2]

    ms = {k: median([r[k] for r in per_round]) * 1e3 for k in paths}
    ratio = {k: median([r["dense-fp32"] / r[k] for r in per_round]) for k in paths}
    return ms, ratio


def measure(model: str, sparsity: float, batches: list[int], repeats: dict[int, int], folder: Path) -> dict:
    network = masked_network(model, sparsity)
    buf = io.BytesIO()
    torch.save(network.state_dict(), buf)
    path = export_network(network, folder / f"{model}-{sparsity}.safetensors", model=model,
                          classes=[str(i) for i in range(10)], mean=(0.5,) * 3, std=(0.25,) * 3)
    folded = fold_batchnorm(network)
    fast = fold_batchnorm(network).to(memory_format=torch.channels_last)
    bf16 = fast_path_available(torch.device("cpu"))
    row = {"model": model, "sparsity": sparsity, "model_pt_bytes": len(buf.getvalue()),
           "export_bytes": path.stat().st_size, "fast_path": "bf16 + channels-last" if bf16 else "channels-last",
           "batches": {}}
    row["size_ratio"] = row["model_pt_bytes"] / row["export_bytes"]
    for b in batches:
        x = torch.randn(b, 3, 32, 32)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        sparse = load_exported(path, kernels="auto", example=x)

        def run_fast(x_cl=x_cl):
            with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                return fast(x_cl)

        paths = {"dense-fp32": lambda x=x: folded(x), "dense-fast": run_fast, "sparse": lambda x=x, s=sparse: s(x)}
        ms, ratio = interleaved_ms(paths, repeats[b])
        with torch.no_grad():
            gap = float((sparse(x) - folded(x)).abs().max())
        row["batches"][str(b)] = {
            "ms": ms, "speedup_over_dense_fp32": ratio,
            "sparse_layers": sum(v == "sparse" for v in sparse.kernels.values()),
            "layers": len(sparse.kernels), "max_abs_logit_gap": gap, "layer_timings": sparse.layer_timings}
        r = row["batches"][str(b)]
        print(f"  {model:<10} s={sparsity:<5} batch {b:>3}: dense fp32 {r['ms']['dense-fp32']:8.2f} ms, "
              f"fast ×{r['speedup_over_dense_fp32']['dense-fast']:.2f}, sparse ×"
              f"{r['speedup_over_dense_fp32']['sparse']:.2f} ({r['sparse_layers']}/{r['layers']} layers sparse)",
              flush=True)
    return row


def markdown(rows: list[dict], batches: list[int]) -> str:
    head = ["model", "sparsity", "model.pt MB", "export MB", "smaller ×"]
    for b in batches:
        head += [f"b{b} dense fp32 ms", f"b{b} fast ×", f"b{b} sparse ×", f"b{b} sparse layers"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], f"{r['sparsity']:g}", f"{r['model_pt_bytes'] / 1e6:.3f}", f"{r['export_bytes'] / 1e6:.3f}",
                 f"{r['size_ratio']:.1f}"]
        for b in batches:
            m = r["batches"][str(b)]
            cells += [f"{m['ms']['dense-fp32']:.2f}", f"{m['speedup_over_dense_fp32']['dense-fast']:.2f}",
                      f"{m['speedup_over_dense_fp32']['sparse']:.2f}", f"{m['sparse_layers']}/{m['layers']}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def add_host_allocator_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host-allocator", default="auto", choices=list(HOST_ALLOCATOR_MODES),
                   help="retain: glibc keeps freed memory (auto: on CPU); system: leave malloc alone")


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m benchmarks.inference", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--models", nargs="+", default=["wrn-22-2", "small-cnn"])
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.9, 0.95, 0.99])
    p.add_argument("--batches", nargs="+", type=int, default=[1, 256])
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default: 30 at batch 1, "
                   "7 at larger batches)")
    p.add_argument("--quick", action="store_true", help="small-cnn at 0.95, batches 1 and 8, 3 repeats")
    p.add_argument("--out", default="benchmarks/results/inference")
    add_host_allocator_argument(p)
    args = p.parse_args(argv)
    configure_host_allocator(args.host_allocator, torch.device("cpu"))
    if args.quick:  # an option given explicitly wins over the preset
        apply_preset(p, args, argv, models=["small-cnn"], sparsities=[0.95], batches=[1, 8], repeats=3)
    check_options(args)
    repeats = {b: args.repeats or (30 if b == 1 else 7) for b in args.batches}
    rows = []
    with tempfile.TemporaryDirectory(prefix="cigl-export-") as tmp:
        for model in args.models:
            for sparsity in args.sparsities:
                rows.append(measure(model, sparsity, args.batches, repeats, Path(tmp)))
    out = Path(args.out)
    result = {"rows": rows, "batches": args.batches, "repeats": repeats,
              "bf16_fast_path": fast_path_available(torch.device("cpu")), **describe_host(torch.device("cpu"))}
    atomic_write_json(result, out / "inference.json")
    table = markdown(rows, args.batches)
    atomic_write_bytes((table + "\n").encode(), out / "inference.md")
    print(table)
    return 0


if __name__ == "__main__":
    run_cli(main)
