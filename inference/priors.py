"""Gaussian priors and their correspondence with weight decay (the L2 term of the paper's training
loss, Eq. 1, against the prior of its Bayesian reading, §4.2).

With prior W ~ N(0, s²) and N training points, −log p(W)/N = ‖W‖² / (2 s² N) + const, so the
per-data-point objective carries λ‖W‖² with λ = 1/(2 s² N).  Torch weight decay wd adds
(wd/2)‖W‖², hence λ = wd/2 and s = 1/√(wd · N).
"""

from __future__ import annotations

import math


def prior_scale_from_weight_decay(weight_decay: float, n_train: int) -> float:
    """s = 1/√(wd · N): the prior standard deviation whose −log-density / N is (wd/2)‖W‖²."""
    if weight_decay <= 0:
        raise ValueError(f"a Gaussian prior needs weight decay > 0 (got {weight_decay}); s = 1/sqrt(wd N)")
    if n_train <= 0:
        raise ValueError(f"number of training points must be > 0, got {n_train}")
    return 1.0 / math.sqrt(weight_decay * n_train)


def weight_decay_from_prior_scale(scale: float, n_train: int) -> float:
    """wd = 1/(s² N), the inverse of :func:`prior_scale_from_weight_decay`."""
    return 1.0 / (scale * scale * n_train)
