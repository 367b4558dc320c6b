"""CigL trained by SVI in Pyro on CIFAR: the project's main command.

    python -m experiments.svi_cifar --sparsity 0.95                  # paper settings (GPU)
    python -m experiments.svi_cifar --sparsity 0.95 --preset quick   # minutes on a CPU

Paper preset (defaults): WRN-22-2, 250 epochs, batch 128, SGD lr 0.1 Nesterov 0.9, wd 5e-4
(prior s = 1/√(wd·N)), lr ×0.5 every 30k steps, ΔT = 100, drop fraction 0.3 cosine-decayed,
mask updates until 75% of training, ERK, keep = 0.99 (the official code's; the paper's text
gives 0.9 as an example), WMA from epoch 200, σ = 0 (the Delta
limit, equal to CigL; give --sigma > 0 for a genuinely stochastic guide).
Writes metrics.json (predictors final, wma, temperature_scaled), reliability.png,
predictions.npz, model.pt, checkpoint.pt and the posterior samples (samples/) into --out.
"""

from __future__ import annotations

import argparse

from cigl_bayes.config import TrainConfig
from cigl_bayes.distributed import init_from_env
from cigl_bayes.inference.training import run

from .cli import ArgumentParser, add_train_arguments, apply_host_allocator, config_from_args, print_results, run_cli

PRESETS: dict[str, dict] = {
    "paper": {},
    # A newcomer's first run on a laptop CPU: a small CNN on 5,000 images for 6 epochs.
    "quick": {"model": "small-cnn", "epochs": 6, "subset": 5000, "batch_size": 64, "delta_t": 20},
}


def build_parser(preset: str) -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m experiments.svi_cifar", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--preset", choices=sorted(PRESETS), default="paper",
                   help="paper: the paper's CIFAR settings; quick: a few CPU minutes")
    add_train_arguments(p, TrainConfig(method="cigl", engine="svi"), exclude=("engine",))
    p.add_argument("--keep", type=float, default=None, help="keep probability of Z (= 1 - random-mask rate)")
    p.set_defaults(**PRESETS[preset])
    return p


def main(argv: list[str] | None = None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    preset = pre.parse_known_args(argv)[0].preset
    args = build_parser(preset).parse_args(argv)
    if args.keep is not None:
        if not 0.0 < args.keep <= 1.0:  # NaN fails this too
            raise ValueError(f"--keep must be in (0, 1], got {args.keep}")
        if args.random_mask_rate is not None and abs(args.random_mask_rate - (1.0 - args.keep)) > 1e-12:
            raise ValueError(f"--keep {args.keep} and --random-mask-rate {args.random_mask_rate} disagree "
                             "(keep = 1 − rate); give one of them")
        args.random_mask_rate = round(1.0 - args.keep, 12)  # 1 − 0.99 is 0.010000000000000009, not the default 0.01
    args.device = init_from_env(args.device)[1]  # joins torchrun's process group if there is one
    apply_host_allocator(args)
    cfg = config_from_args(args, engine="svi")
    out = args.out or f"runs/svi_cifar-{cfg.model}-s{cfg.sparsity}-seed{cfg.seed}"
    result = run(cfg, out, progress=args.progress)
    if result is not None:
        print_results(result)
        print(f"run folder: {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
