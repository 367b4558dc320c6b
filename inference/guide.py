"""The hierarchical guide of CigL (paper Eq. 3).

    U | V ~ N(V, σ² I)                                   V: the module's sparse weights
    Z     ~ Bernoulli(keep)                              no learnable parameters
    W | Z, U, M ~ Z·N(M⊙U, σ²) + (1 − Z)·N(0, σ²)  =  N(M⊙Z⊙U, σ² I)   (Z is 0/1)
    θ     ~ Delta(θ̂)                                     MAP for the dense parameters
M is a point estimate kept as guide state (the sparse engine's ``DeterministicMask``) and
updated every ΔT steps by the same RigL rule as the plain engine, from |V| and the dense
gradient ∂(−ELBO/N)/∂W of the sampled W.  σ = 0 is the Delta limit: U = V, W = M⊙Z⊙V (the U
site is then left out of the trace: a Delta at V contributes log-density 0).

Z is drawn by the engine's seeded :class:`~cigl_bayes.random_mask.RandomKeepMask` and enters
the guide as a Delta carrying Bernoulli(keep)'s log-density, so log p(Z) − log q(Z) = 0
exactly and both engines see the same stream of random masks.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from cigl_bayes.network import SparseNetwork
from cigl_bayes.random_mask import check_keep

from .distributions import IidBernoulli, PointMass, check_z


class HierarchicalGuide:
    """``guide(x, target, z)``; after each call ``last_w`` holds the sampled flat W."""

    def __init__(self, net: SparseNetwork, sigma: float = 0.0, keep: float = 1.0):
        if sigma < 0:
            raise ValueError(f"guide scale sigma must be ≥ 0, got {sigma}")
        self.net = net
        self.sigma = float(sigma)
        self.keep = check_keep(keep)
        self.last_w: torch.Tensor | None = None

    def _site(self, loc: torch.Tensor) -> dist.Distribution:
        if self.sigma == 0:
            return PointMass(loc, event_dim=1)
        return dist.Normal(loc, self.sigma).to_event(1)

    def __call__(self, x: torch.Tensor, target: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        check_z(z, self.keep)
        net = self.net
        v = net.sparse_flat()
        # σ = 0: U = V exactly (a Delta with log-density 0), so the site is skipped to save work
        u = v if self.sigma == 0 else pyro.sample("U", self._site(v), infer={"is_auxiliary": True})
        mz = net.mask.float
        if z is not None:
            log_density = IidBernoulli(self.keep, z.numel(), z).log_prob(z)
            z = pyro.sample("Z", PointMass(z, log_density=log_density, event_dim=1))
            mz = mz * z
        w = pyro.sample("W", self._site(u * mz))
        if net.other_params:
            pyro.sample("theta", PointMass(net.other_flat(), event_dim=1))
        self.last_w = w
        return w
