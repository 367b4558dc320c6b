"""CigL as variational inference on a 1-D regression problem with a gap in the inputs.

    python -m experiments.toy_regression                  # ~30 s on a CPU
    python -m experiments.toy_regression --engine plain --sparsity 0.8 --out runs/toy-s08

Data (generated here, seeded): x ~ U([−4, −1.25] ∪ [1.25, 4]), y = sin(x) + x/4 + ε, ε ~ N(0, 1/τ).
A sparse MLP (``mlp-1d``) is trained with the Gaussian likelihood y ~ N(f(x), 1/τ) (paper Eq. 2)
by the same trainer and engines as CIFAR; samples M⊙Z⊙W are collected every epoch from T*.
Predictive distributions on a grid (mean ± 2 standard deviations of y):
  wma         f(x; x̄) with aleatoric noise only (a point estimate)
  predictive  mixture over the collected samples: mean_t f_t, var_t f_t + 1/τ
  swag        the same over S draws from the SWAG Gaussian fitted to the samples
Writes toy_regression.png, metrics.json and metrics.csv (held-out NLL, RMSE, mean predictive
standard deviation inside the gap and on the data region).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib
import numpy as np
import torch

from cigl_bayes.averaging import Snapshot
from cigl_bayes.config import TrainConfig
from cigl_bayes.data import TensorLoader
from cigl_bayes.device import resolve_device
from cigl_bayes.inference.training import Trainer
from cigl_bayes.predict import predictor_draws
from cigl_bayes.runs import atomic_save_figure, atomic_write_csv, atomic_write_json
from cigl_bayes.train import Data

from .cli import ArgumentParser, run_cli

GAP = 1.25
LIMIT = 4.0


def true_function(x: np.ndarray) -> np.ndarray:
    return np.sin(x) + x / 4


def make_points(n: int, noise_std: float, rng: np.random.Generator, *, in_gap: bool = False):
    """n points on the data region (or inside the gap), y = f(x) + noise."""
    if in_gap:
        x = rng.uniform(-GAP, GAP, n)
    else:
        x = rng.uniform(GAP, LIMIT, n) * rng.choice([-1.0, 1.0], n)
    return x, true_function(x) + noise_std * rng.standard_normal(n)


def to_loader(x: np.ndarray, y: np.ndarray, batch_size: int, device, dtype, shuffle: bool, seed: int):
    return TensorLoader(torch.as_tensor(x, dtype=dtype).view(-1, 1), torch.as_tensor(y, dtype=dtype),
                        batch_size=batch_size, device=device, shuffle=shuffle, seed=seed)


@torch.no_grad()
def outputs(net, snap: Snapshot, x: torch.Tensor) -> torch.Tensor:
    net.module.eval()
    return net.forward(x, snap.sparse, snap.other).squeeze(-1).double().cpu()


def gaussian_mixture_nll(means: torch.Tensor, y: torch.Tensor, precision: float) -> float:
    """−mean_i log (1/S) Σ_s N(y_i; μ_si, 1/τ)."""
    log_n = -0.5 * precision * (y - means).square() + 0.5 * math.log(precision / (2 * math.pi))
    return float(-(torch.logsumexp(log_n, 0) - math.log(means.shape[0])).mean())


def summarize(precision: float, held_out: dict[str, tuple[torch.Tensor, torch.Tensor]],
              grid_means: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """NLL and RMSE on held-out points, and the predictive std of y on the grid.

    ``held_out[split] = (f values (draws, n), y (n,))``; ``grid_means`` is (draws, grid points)."""
    out = {}
    for split, (means, y) in held_out.items():
        out[f"nll_{split}"] = gaussian_mixture_nll(means, y, precision)
        out[f"rmse_{split}"] = float((means.mean(0) - y).square().mean().sqrt())
    std = (grid_means.var(0, unbiased=False) + 1.0 / precision).sqrt()
    return out, std


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m experiments.toy_regression", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--engine", choices=["svi", "plain"], default="svi")
    p.add_argument("--method", default="cigl")
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--n-train", type=int, default=160)
    p.add_argument("--noise-std", type=float, default=0.2)
    p.add_argument("--epochs", type=int, default=600)
    p.add_argument("--wma-start-epoch", type=int, default=300)
    p.add_argument("--lr", type=float, default=0.002)
    p.add_argument("--weight-decay", type=float, default=1e-3)
    p.add_argument("--swag-rank", type=int, default=20)
    p.add_argument("--swag-samples", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/toy_regression")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    if args.n_train < 8 or args.noise_std <= 0:
        raise ValueError("need --n-train ≥ 8 and --noise-std > 0")

    from cigl_bayes.inference.swag import SparseSWAG

    device = resolve_device(args.device)
    tau = 1.0 / args.noise_std**2
    rng = np.random.default_rng(args.seed)
    x_train, y_train = make_points(args.n_train, args.noise_std, rng)
    held_out = {"data": make_points(500, args.noise_std, rng),
                "gap": make_points(500, args.noise_std, rng, in_gap=True)}
    cfg = TrainConfig(method=args.method, engine=args.engine, model="mlp-1d", likelihood="gaussian",
                      noise_precision=tau, sparsity=args.sparsity, epochs=args.epochs, batch_size=32, lr=args.lr,
                      weight_decay=args.weight_decay, delta_t=25, wma_start_epoch=args.wma_start_epoch,
                      val_fraction=0.0, temperature_scaling=False, augment=False, seed=args.seed,
                      device=str(device), log_every=10)
    grid = np.linspace(-1.5 * LIMIT, 1.5 * LIMIT, 400)
    dtype = cfg.torch_dtype
    train = to_loader(x_train, y_train, cfg.batch_size, device, dtype, True, args.seed)
    data = Data(train=train, train_eval=to_loader(x_train, y_train, 256, device, dtype, False, 0), val=None,
                test=to_loader(grid, np.zeros_like(grid), 512, device, dtype, False, 0), num_classes=1)
    trainer = Trainer(cfg, args.out, progress=args.progress, data=data)
    trainer.maybe_resume()
    trainer.fit()
    if not trainer.method.wma and not trainer.method.snapshots and not trainer.cfg.save_samples:
        raise ValueError(f"method {args.method!r} collects no samples; use cigl")
    samples = [Snapshot(s.sparse.to(device), s.other.to(device)) for s in trainer.samples]
    if len(samples) < 2:
        raise ValueError("fewer than 2 posterior samples were collected; lower --wma-start-epoch")

    # the predictors' weights, as everywhere (cigl_bayes.predict); mlp-1d has no BatchNorm to recompute
    with torch.no_grad():
        final = Snapshot(trainer.net.effective_flat().clone(), trainer.net.other_flat().clone())
    swag = SparseSWAG.from_snapshots(samples, max_rank=args.swag_rank)
    counts = {"wma": 1, "predictive": len(samples), "swag": args.swag_samples}
    predictors = {name: [snap for _, snap in predictor_draws(name, final, samples, count=count, seed=args.seed + 10,
                                                             swag_sample=swag.sample)]
                  for name, count in counts.items()}

    points = {name: torch.as_tensor(v[0], dtype=dtype, device=device).view(-1, 1) for name, v in held_out.items()}
    targets = {name: torch.as_tensor(v[1], dtype=torch.float64) for name, v in held_out.items()}
    grid_t = torch.as_tensor(grid, dtype=dtype, device=device).view(-1, 1)
    gap = np.abs(grid) < GAP
    region = (np.abs(grid) >= GAP) & (np.abs(grid) <= LIMIT)
    rows, bands = [], {}
    for name, snaps in predictors.items():
        grid_means = torch.stack([outputs(trainer.net, s, grid_t) for s in snaps])
        evals = {k: (torch.stack([outputs(trainer.net, s, points[k]) for s in snaps]), targets[k]) for k in points}
        stats, std = summarize(tau, evals, grid_means)
        stats.update({"predictor": name, "draws": len(snaps), "std_gap": float(std[gap].mean()),
                      "std_data": float(std[region].mean())})
        rows.append(stats)
        bands[name] = (grid_means.mean(0).numpy(), std.numpy())

    out = Path(args.out)
    atomic_write_json({"config": trainer.cfg.to_dict(), "noise_std": args.noise_std, "n_train": args.n_train,
                       "samples": len(samples), "predictors": rows}, out / "metrics.json")
    atomic_write_csv(rows, out / "metrics.csv")
    plot(out / "toy_regression.png", grid, bands, x_train, y_train, title=f"{args.method} ({args.engine}) · "
         f"sparsity {args.sparsity} · {len(samples)} samples")
    print(f"{'predictor':<12}{'draws':>6}{'nll_data':>10}{'nll_gap':>10}{'std_data':>10}{'std_gap':>10}")
    for r in rows:
        print(f"{r['predictor']:<12}{r['draws']:>6}{r['nll_data']:>10.3f}{r['nll_gap']:>10.3f}"
              f"{r['std_data']:>10.3f}{r['std_gap']:>10.3f}")
    print(f"written: {out / 'toy_regression.png'}, {out / 'metrics.json'}")
    return 0


def plot(path: Path, grid, bands: dict, x_train, y_train, title: str) -> None:
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(bands), figsize=(5 * len(bands), 4), sharey=True)
    for ax, (name, (mean, std)) in zip(np.atleast_1d(axes), bands.items()):
        ax.fill_between(grid, mean - 2 * std, mean + 2 * std, alpha=0.3, label="±2σ")
        ax.plot(grid, mean, lw=1.5, label="predictive mean")
        ax.plot(grid, true_function(grid), "k--", lw=1, label="true f")
        ax.scatter(x_train, y_train, s=6, c="k", alpha=0.6, label="data")
        ax.axvspan(-GAP, GAP, color="grey", alpha=0.08)
        ax.set_title(name)
        ax.set_xlabel("x")
    np.atleast_1d(axes)[0].set_ylabel("y")
    np.atleast_1d(axes)[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_save_figure(fig, path)


if __name__ == "__main__":
    run_cli(main)
