"""Evaluation helpers: predictions under given weights, BatchNorm recomputation, MC dropout.

Every predictor returns *log-probabilities* (N, C) on the CPU: log-softmax of the logits for
a single weight setting, log of the averaged softmax for an ensemble (predictive sampling,
MC dropout).  Softmax of log-probabilities is the probability itself, so temperature scaling
and the metrics treat both alike.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .averaging import Snapshot
from .network import SparseNetwork


def _batches(loader) -> Iterable:
    return loader.epoch(0) if hasattr(loader, "epoch") else loader


@torch.no_grad()
def predict_log_probs(net: SparseNetwork, loader, sparse_flat: torch.Tensor | None = None) -> torch.Tensor:
    """log softmax f(x; W) over a loader, with ``sparse_flat`` (default M⊙W) and eval-mode BN."""
    w = net.effective_flat() if sparse_flat is None else sparse_flat
    was_training = net.module.training
    net.module.eval()
    out = [torch.log_softmax(net.forward(x, w).float(), dim=-1).cpu() for x, _ in _batches(loader)]
    net.module.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def mc_dropout_log_probs(net: SparseNetwork, loader, samples: int, generator_seed: int = 0) -> torch.Tensor:
    """log of the softmax averaged over ``samples`` passes with dropout on and BN in eval mode."""
    w = net.effective_flat()
    net.module.eval()
    dropouts = [m for m in net.module.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    for m in dropouts:
        m.train()
    state = torch.get_rng_state()
    torch.manual_seed(generator_seed)
    total = None
    for _ in range(samples):
        probs = torch.cat([torch.softmax(net.forward(x, w).float(), -1).cpu() for x, _ in _batches(loader)])
        total = probs if total is None else total + probs
    torch.set_rng_state(state)
    net.module.train()
    return (total / samples).clamp_min(1e-12).log()


@torch.no_grad()
def recompute_batchnorm(net: SparseNetwork, loader, sparse_flat: torch.Tensor, max_batches: int | None = None) -> None:
    """Reset BatchNorm running statistics and re-estimate them as exact averages over
    ``max_batches`` training batches (all if None) for the weights ``sparse_flat``
    (as SWA/SWAG do for averaged weights)."""
    bns = [m for m in net.module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    was_training = net.module.training
    net.module.train()
    for i, (x, _) in enumerate(_batches(loader)):
        if max_batches is not None and i >= max_batches:
            break
        net.forward(x, sparse_flat)
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    net.module.train(was_training)


@contextmanager
def weights_loaded(net: SparseNetwork, snap: Snapshot, bn_loader=None, bn_batches: int | None = None) -> Iterator[None]:
    """Temporarily load a snapshot (and recompute BN statistics for it); restore afterwards."""
    saved = copy.deepcopy(net.module.state_dict())
    try:
        net.load_flat_(snap.sparse, snap.other)
        if bn_loader is not None:
            recompute_batchnorm(net, bn_loader, snap.sparse, bn_batches)
        yield
    finally:
        net.module.load_state_dict(saved)


def ensemble_log_probs(log_probs: Iterable[torch.Tensor]) -> torch.Tensor:
    """log of the mean of softmax outputs (Bayesian model averaging over samples)."""
    total, n = None, 0
    for lp in log_probs:
        p = lp.exp()
        total = p if total is None else total + p
        n += 1
    if n == 0:
        raise ValueError("no samples to average")
    return (total / n).clamp_min(1e-12).log()
