"""Closed-form distributions for the network-wide flat sample sites (W, θ, Z).

Every site of the model and the guide is one flat vector over all layers (``inference.model``).
Pyro's generic ``Normal(0, s).expand([n]).to_event(1)``, ``Bernoulli(p).expand([n]).to_event(1)``
and ``Delta(v).log_prob`` evaluate their log-densities element by element (several kernels and a
temporary of size n each); these give the same numbers with one or two kernels.  On small networks
those element-wise evaluations were the largest part of the SVI engine's per-step overhead
(see docs/performance.md); tests/test_distributions.py checks them against Pyro's.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch.distributions import constraints


class _FlatSite(TorchDistribution):
    """A law on flat vectors of ``numel`` entries, with the dtype and device of ``like``."""

    arg_constraints: dict = {}

    def __init__(self, numel: int, like: torch.Tensor):
        self.numel, self.dtype, self.device = int(numel), like.dtype, like.device
        super().__init__(torch.Size(), torch.Size([self.numel]), validate_args=False)

    def _shape(self, sample_shape) -> torch.Size:
        return torch.Size(sample_shape) + self.event_shape

    def _check(self, value: torch.Tensor) -> None:
        if value.shape[-1:] != (self.numel,):
            raise ValueError(f"expected a value whose last dimension is {self.numel}, got shape {tuple(value.shape)}")


class IsotropicNormal(_FlatSite):
    """N(0, s² I) on ℝⁿ:  log p(w) = −‖w‖² / (2s²) − n·log(s√(2π))  (the prior of paper Eq. 1)."""

    support = constraints.independent(constraints.real, 1)
    has_rsample = True

    def __init__(self, scale: float, numel: int, like: torch.Tensor):
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.scale = float(scale)
        super().__init__(numel, like)

    def rsample(self, sample_shape=()) -> torch.Tensor:
        return self.scale * torch.randn(self._shape(sample_shape), dtype=self.dtype, device=self.device)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        self._check(value)
        norm = self.numel * math.log(self.scale * math.sqrt(2 * math.pi))
        return -0.5 * (value * value).sum(-1) / self.scale**2 - norm


class IidBernoulli(_FlatSite):
    """n iid Bernoulli(p) draws:  log p(z) = n₁·log p + n₀·log(1 − p),  n₁ = #{zᵢ ≠ 0}.

    The random mask's law (paper Eq. 3, Z ~ Bernoulli(keep)); p is a constant, so the
    log-density carries no gradient."""

    support = constraints.independent(constraints.boolean, 1)

    def __init__(self, probs: float, numel: int, like: torch.Tensor):
        if not 0.0 < probs <= 1.0:
            raise ValueError(f"keep probability must be in (0, 1], got {probs}")
        self.probs = float(probs)
        super().__init__(numel, like)

    def sample(self, sample_shape=()) -> torch.Tensor:
        probs = torch.full(self._shape(sample_shape), self.probs, dtype=self.dtype, device=self.device)
        return torch.bernoulli(probs)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        self._check(value)
        ones = torch.count_nonzero(value, dim=-1).to(torch.float64)
        if self.probs >= 1.0:  # all-ones is the only outcome
            return torch.where(ones == self.numel, 0.0, float("-inf")).to(value.dtype)
        return (ones * math.log(self.probs) + (self.numel - ones) * math.log1p(-self.probs)).to(value.dtype)


def check_z(z: torch.Tensor | None, keep: float) -> None:
    """Refuse a random mask Z with zeros under keep = 1 (the default of the model and the guide):
    log p(Z) = log q(Z) = −∞ there and −ELBO would be NaN.  Give both the keep Z was drawn with."""
    if z is not None and keep >= 1.0 and not bool(z.all()):
        raise ValueError("the random mask Z has zeros but keep=1.0: give the model and the guide the keep Z "
                         "was drawn with (e.g. keep=cigl.keep)")


class PointMass(dist.Delta):
    """Pyro's ``Delta(v)`` that skips the element-wise test ``x == v`` when scored at v itself.

    Inside a guide the site's value is the Delta's own sample, a view of the same memory as v,
    so log q(v) = ``log_density`` exactly (no test is made, so no host synchronisation: a NaN in
    v scores 0 rather than −inf, and the loss is NaN through the network anyway); any other
    value is scored by ``Delta.log_prob``."""

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        v = self.v
        same = (x.dtype == v.dtype and x.device == v.device and x.shape == v.shape
                and x.stride() == v.stride() and x.data_ptr() == v.data_ptr())
        return self.log_density if same else super().log_prob(x)
