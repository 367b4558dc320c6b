"""Likelihoods p(y | f(x; W)) over a mini-batch plate (paper Eq. 2 and its classification form).

Each is called inside ``pyro.plate("data", N, subsample=…)`` so Pyro scales the batch log-
likelihood by N/B.
  categorical   y ~ Categorical(softmax(f))                     hard labels
  soft          log p = Σ_c ỹ_c log softmax(f)_c                 soft labels (mixup, smoothing)
  gaussian      y ~ N(f, 1/τ)                                    regression, precision τ
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch


def categorical(output: torch.Tensor, target: torch.Tensor, **_) -> None:
    if target.dtype.is_floating_point:  # soft labels (mixup / label smoothing)
        soft(output, target)
        return
    pyro.sample("y", dist.Categorical(logits=output), obs=target)


def soft(output: torch.Tensor, target: torch.Tensor, **_) -> None:
    """Soft-label cross-entropy as a log-likelihood factor (a tempered categorical)."""
    pyro.factor("y", (target * torch.log_softmax(output, dim=-1)).sum(-1))


def gaussian(output: torch.Tensor, target: torch.Tensor, *, precision: float = 1.0, **_) -> None:
    """y ~ N(f(x), τ⁻¹) (paper Eq. 2)."""
    if precision <= 0:
        raise ValueError(f"Gaussian likelihood precision τ must be > 0, got {precision}")
    mean = output.squeeze(-1) if output.dim() == target.dim() + 1 else output
    pyro.sample("y", dist.Normal(mean, precision ** -0.5), obs=target)


LIKELIHOODS = {"categorical": categorical, "soft": soft, "gaussian": gaussian}
