"""The Pyro model of a sparse network (paper §4.2, Eq. 1–2).

    W ~ N(0, s² I)               the sparsified weights (one flat site "W")
    θ ~ N(0, s² I)               the dense parameters: biases, BatchNorm affine (site "theta")
    Z ~ Bernoulli(keep)          the random mask; its guide equals this prior, so KL(Z) = 0
    y_i | x_i, W, θ ~ p(y | f(x_i; W, θ)),  i in a mini-batch plate of size N (scale N/B)

The guide (``inference.guide``) gives θ a Delta (MAP) and W the hierarchical q(W | Z, U, M).
A handful of sites for the whole network keeps Pyro's per-step overhead to a few
microseconds of Python, whatever the depth of the network; their log-densities are evaluated
in closed form (``inference.distributions``).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import pyro
import torch

from cigl_bayes.network import SparseNetwork
from cigl_bayes.random_mask import check_keep

from .distributions import IidBernoulli, IsotropicNormal, check_z
from .likelihoods import LIKELIHOODS


class SparseBayesianModel:
    """``model(x, target, z)`` for Pyro inference over ``net``'s parameters."""

    def __init__(self, net: SparseNetwork, prior_scale: float, n_train: int, *, keep: float = 1.0,
                 likelihood: str | Callable = "categorical", likelihood_kwargs: dict | None = None):
        if prior_scale <= 0:
            raise ValueError(f"prior scale s must be > 0, got {prior_scale}")
        self.net = net
        self.prior_scale = prior_scale
        if isinstance(n_train, bool) or not isinstance(n_train, numbers.Integral) or n_train < 1:
            raise ValueError(f"n_train (the number of training points N) must be a positive integer, got {n_train!r}")
        self.n_train = int(n_train)
        self.keep = check_keep(keep)
        if isinstance(likelihood, str) and likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}; known: {', '.join(LIKELIHOODS)}")
        self.likelihood = LIKELIHOODS[likelihood] if isinstance(likelihood, str) else likelihood
        self.likelihood_name = likelihood if isinstance(likelihood, str) else None
        self.likelihood_kwargs = likelihood_kwargs or {}
        # When set, each call keeps the W it feeds the network (``forward_weights``) with its
        # gradient retained: the likelihood's part of the RigL regrowth score (inference.objective).
        self.tap_forward_weights = False
        self.forward_weights: torch.Tensor | None = None
        self.last_output: torch.Tensor | None = None  # f(x; W, θ) of the last call

    def _prior(self, numel: int, like: torch.Tensor) -> IsotropicNormal:
        return IsotropicNormal(self.prior_scale, numel, like)

    def __call__(self, x: torch.Tensor, target: torch.Tensor | None, z: torch.Tensor | None = None) -> torch.Tensor:
        """One pass of the model; ``target=None`` samples y (``pyro.infer.Predictive``)."""
        check_z(z, self.keep)
        like = self.net.sparse_params[0]
        w = pyro.sample("W", self._prior(sum(self.net.mask.numels), like))
        theta = None
        if self.net.other_params:
            theta = pyro.sample("theta", self._prior(sum(p.numel() for p in self.net.other_params), like))
        if z is not None:
            pyro.sample("Z", IidBernoulli(self.keep, w.numel(), like))
        if self.tap_forward_weights:  # the likelihood's own ∂/∂W, apart from the guide's log q(W)
            w = w.view_as(w)
            w.retain_grad()
            self.forward_weights = w
        output = self.net.forward(x, w, theta)
        self.last_output = output
        with pyro.plate("data", self.n_train, subsample=torch.arange(x.shape[0], device=x.device)):
            self.likelihood(output, target, **self.likelihood_kwargs)
        return output
