"""Export a finished run's output model as a compact sparse file (safetensors, non-zeros only).

    python -m experiments.export runs/cigl --out cigl.safetensors
    python -c "import cigl_bayes; m = cigl_bayes.load_exported('cigl.safetensors'); print(m.classes)"

The exported network is the run's output predictor (``wma`` for CigL, ``final`` otherwise, or
``--predictor``) with its BatchNorm statistics, BatchNorm folded into the preceding convolution
where possible, every sparse weight stored as CSR, and metadata naming the architecture, the
classes, the normalisation and the temperature of temperature scaling (``cigl_bayes/export.py``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cigl_bayes import data as data_lib
from cigl_bayes.export import export_network, load_exported
from cigl_bayes.inference import load_run

from .cli import ArgumentParser, run_cli


def class_names(run) -> list[str]:
    """The run's class names (CIFAR), or their indices where the data set gives none."""
    n = run.data().num_classes
    if run.config.dataset in ("cifar10", "cifar100"):
        classes = data_lib.load_dataset(run.config.dataset, run.data_dir or run.config.data_dir)[1].classes
        if len(classes) == n:
            return list(classes)
    return [str(i) for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m experiments.export", description=__doc__.split("\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("run", type=Path, help="finished run folder")
    p.add_argument("--out", type=Path, required=True, help="file to write (.safetensors)")
    p.add_argument("--predictor", choices=["wma", "final"], default=None,
                   help="which weights (default: the run's output predictor)")
    p.add_argument("--device", default="auto", help="device for BatchNorm recomputation")
    p.add_argument("--data-dir", default=None, help="data folder if it moved since training")
    args = p.parse_args(argv)
    if args.out.exists() and args.out.is_dir():
        raise ValueError(f"--out {args.out} is a folder; give a file name such as model.safetensors")
    # the exported model computes in float32, so its BatchNorm statistics are recomputed in float32
    # too, whatever the run's own --amp (bf16 statistics differ by ~1e-3 on a bf16 CPU)
    run = load_run(args.run, data_dir=args.data_dir, device=args.device, amp="off")
    stored = run.metrics or {}
    predictor = args.predictor or ("wma" if stored.get("output_predictor") == "wma" and run.samples else "final")
    network = run.network(predictor).to("cpu")
    temperature = stored.get("temperature") if stored.get("output_predictor", "final") == predictor else None
    classes = class_names(run)
    mean, std = data_lib.NORMALIZATION[run.config.dataset]
    export_network(network, args.out, model=run.config.model, classes=classes, mean=mean, std=std,
                   temperature=temperature, image_size=data_lib.image_size(run.config.dataset),
                   method=run.config.method, predictor=predictor,
                   sparsity=run.config.sparsity, run=str(args.run))
    exported = load_exported(args.out, kernels="dense")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        gap = float((exported(x) - network.float()(x)).abs().max())
    dense_bytes = sum(t.numel() * t.element_size() for t in network.state_dict().values())
    size = args.out.stat().st_size
    print(f"{args.run.name} ({predictor}) → {args.out}: {size / 1e6:.3f} MB (dense state {dense_bytes / 1e6:.3f} MB, "
          f"×{dense_bytes / size:.1f} smaller); max |logit difference| after reloading {gap:.2e}")
    return 0


if __name__ == "__main__":
    run_cli(main)
