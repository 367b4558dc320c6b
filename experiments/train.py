"""Train one method (plain or SVI engine, `--engine`) and write a run folder.

    python -m experiments.train --method cigl --model small-cnn --sparsity 0.9 \
        --epochs 2 --subset 2000 --out runs/demo

Re-running with the same --out resumes an interrupted run (or reports a finished one).
"""

from __future__ import annotations

from cigl_bayes.distributed import init_from_env
from cigl_bayes.inference.training import run

from .cli import ArgumentParser, add_train_arguments, apply_host_allocator, config_from_args, print_results, run_cli


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m experiments.train", description=__doc__.split("\n")[0])
    add_train_arguments(p)
    args = p.parse_args(argv)
    if args.out is None:
        p.error("--out is required")
    args.device = init_from_env(args.device)[1]  # joins torchrun's process group if there is one
    apply_host_allocator(args)
    result = run(config_from_args(args), args.out, progress=args.progress)
    if result is not None:
        print_results(result)
        print(f"run folder: {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
