"""Last-layer Laplace (laplace-torch) on committed runs' final weights, without retraining.

    python -m experiments.laplace_baseline docs/results/controlled/runs/rigl-plain-s0.95-seed3

Each RUN folder must hold ``weights.safetensors``.  The network is rebuilt with its final weights
and the BatchNorm statistics tracked in training (what RigL ships), a Kronecker-factored last-layer
Laplace approximation is fitted on the clean training images, its prior precision chosen by
validation NLL, and the probit predictive is scored on the test and validation splits
(``inference/laplace.py``).  Written to ``<run>/laplace.json``, which ``experiments.controlled_study``
pairs with CigL by seed (``--out DIR`` writes ``DIR/<run>.json`` instead, for read-only runs; the
study's analysis does not read those).  laplace-torch treats the last layer as dense, so the
pruned weights of a sparse last layer get posterior variance too: the baseline's predictive is
not a sparse model's (recorded as ``last_layer_sparsity_kept: false``).
"""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tqdm.auto import tqdm

from cigl_bayes import metrics
from cigl_bayes.device import describe_host, resolve_device
from cigl_bayes.evaluate import evaluation_loaders, network_from_weights
from cigl_bayes.inference.laplace import last_layer_laplace
from cigl_bayes.runs import RunFolderLock, atomic_write_json

from .cli import ArgumentParser, run_cli
from .reevaluate import weights_path


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m experiments.laplace_baseline", description=__doc__.split("\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("runs", nargs="+", type=Path, help="run folders holding weights.safetensors")
    p.add_argument("--out", type=Path, default=None, help="write <run name>.json here instead of into the runs")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    try:  # before any data are read
        import laplace  # noqa: F401
    except ImportError:
        raise ValueError("the Laplace baseline needs laplace-torch: pip install -e \".[laplace]\"") from None
    try:  # the package has no __version__; read before the fit, so a missing record never costs one
        laplace_version = version("laplace-torch")
    except PackageNotFoundError:
        laplace_version = "unknown (laplace imports, but no laplace-torch package metadata)"
    paths = [weights_path(r) for r in args.runs]
    for run, path in tqdm(list(zip(args.runs, paths)), desc="laplace", unit="run", disable=not args.progress):
        net, cfg, data, _ = network_from_weights(path, data_dir=args.data_dir, device=args.device)
        loaders, labels = evaluation_loaders(data)
        fit = last_layer_laplace(net.module, data.train_eval, loaders)
        result = {"method": cfg.method, "seed": cfg.seed, "weights": "final", "bn_protocol": "tracked",
                  "subset_of_weights": "last_layer", "hessian_structure": "kron", "link_approx": "probit",
                  "prior_precision": fit.prior_precision,
                  "prior_precision_fit": "laplace-torch gridsearch, validation NLL, 10^[-4, 4] (100 points)",
                  # a choice at the grid's edge with a flat curve: the posterior variance barely matters
                  "prior_precision_at_grid_edge": not 1e-4 * 1.001 < fit.prior_precision < 1e4 / 1.001,
                  "val_nll_by_prior_precision": {f"{k:g}": v for k, v in fit.val_nll_by_prior_precision.items()},
                  "hessian_data": "clean training images",
                  # laplace-torch treats the last layer as dense: its pruned weights get posterior variance too
                  "last_layer_sparsity_kept": False,
                  "laplace_torch": laplace_version,
                  **{split: metrics.calibration_metrics(lp, labels[split], from_logits=True)
                     for split, lp in fit.log_probs.items()},
                  "runtime": describe_host(resolve_device(args.device))}
        folder = run if run.is_dir() else run.parent
        if args.out is not None:
            target = atomic_write_json(result, args.out / f"{folder.resolve().name}.json")
        else:
            with RunFolderLock(folder):
                target = atomic_write_json(result, folder / "laplace.json")
        t = result["test"]
        print(f"{run}: laplace acc {t['accuracy']:.4f} ECE {t['ece']:.4f} NLL {t['nll']:.4f} "
              f"(prior precision {fit.prior_precision:.3g}) → {target}")
    return 0


if __name__ == "__main__":
    run_cli(main)
