"""Which weights are sparse, and how many non-zeros each layer keeps.

Convention (RigL, Evci et al. 2020, and the CigL code built on it): every convolution and
linear *weight* is sparsified; biases and BatchNorm parameters stay dense.  Under ERK the
first and last layers are sparsified too (ERK itself gives small layers a high density and
makes a layer dense when its density would exceed 1).  Under ``uniform`` the first layer is
kept dense, as RigL does following Gale et al. (2019).  Both choices can be overridden.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn

DISTRIBUTIONS = ("erk", "uniform")


def check_sparsity(sparsity: float) -> float:
    """Return ``sparsity`` if it lies in [0, 1), else raise a ValueError naming it."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity!r}")
    return float(sparsity)


def sparse_parameter_names(
    model: nn.Module, *, dense_first: bool = False, dense_last: bool = False
) -> list[str]:
    """Names of the conv/linear weights to sparsify, in module (= forward) order, as
    ``named_parameters()`` names them: a weight tied between two layers is one parameter and is
    listed once, and a weight that is not a parameter of its layer (a parametrization's output)
    is left out."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    names = list(dict.fromkeys(
        name_of[id(module.weight)]
        for _, module in model.named_modules()
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)) and id(module.weight) in name_of
    ))
    if not names:
        raise ValueError(f"{type(model).__name__} has no conv or linear weights to sparsify")
    first, last = names[0], names[-1]
    return [n for n in names if not ((dense_first and n == first) or (dense_last and n == last))]


def erk_densities(shapes: Sequence[torch.Size], sparsity: float) -> list[float]:
    """Erdős–Rényi-Kernel densities (RigL, Eq. in §3 / appendix).

    density_l = ε · (Σ_i n_i^l) / (Π_i n_i^l) for a layer of shape (n_1, …, n_k), with ε chosen so
    Σ_l density_l · |W_l| = (1 − S) · Σ_l |W_l|.  Layers whose density would exceed 1 are made
    dense and ε is solved again for the rest, so the global non-zero count is met exactly
    (up to rounding to whole weights).
    """
    sparsity = check_sparsity(sparsity)
    numels = [math.prod(s) for s in shapes]
    raw = [sum(s) / math.prod(s) for s in shapes]
    dense: set[int] = set()
    while True:
        budget = (1.0 - sparsity) * sum(numels) - sum(numels[i] for i in dense)
        divisor = sum(raw[i] * numels[i] for i in range(len(shapes)) if i not in dense)
        if divisor == 0:
            break
        eps = budget / divisor
        over = [i for i in range(len(shapes)) if i not in dense and eps * raw[i] > 1.0]
        if not over:
            break
        dense.update(over)
    return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))]


def uniform_densities(shapes: Sequence[torch.Size], sparsity: float) -> list[float]:
    """Every sparsified layer at density 1 − S (RigL's uniform; its dense first layer is
    excluded from the sparsified set by :func:`sparse_parameter_names`)."""
    return [1.0 - check_sparsity(sparsity)] * len(shapes)


def layer_nnz(shapes: Sequence[torch.Size], densities: Sequence[float]) -> list[int]:
    """Non-zeros per layer: round(density · numel), at least 1 and at most numel."""
    return [min(math.prod(s), max(1, round(d * math.prod(s)))) for s, d in zip(shapes, densities)]


def densities_for(shapes: Sequence[torch.Size], sparsity: float, distribution: str) -> list[float]:
    """Per-layer densities for a global ``sparsity`` under ``distribution`` ('erk' or 'uniform')."""
    if distribution == "erk":
        return erk_densities(shapes, sparsity)
    if distribution == "uniform":
        return uniform_densities(shapes, sparsity)
    raise ValueError(f"unknown sparsity distribution {distribution!r}; known: {', '.join(DISTRIBUTIONS)}")
