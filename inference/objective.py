"""−ELBO/N of the Pyro model and guide: the SVI engine's objective.

``Trace_ELBO().differentiable_loss`` gives a differentiable −ELBO estimate (one particle); we
divide by N so that, with σ = 0, it equals the plain objective CE + (wd/2)(‖M⊙Z⊙V‖² + ‖θ‖²) up
to a constant (tests/test_elbo_equivalence.py).  Optimising it with the
same torch SGD, schedule and mask updates as the plain engine is SVI.
"""

from __future__ import annotations

import pyro
import torch
from pyro.infer import Trace_ELBO

from cigl_bayes.network import SparseNetwork
from cigl_bayes.objectives import data_loss

from .guide import HierarchicalGuide
from .model import SparseBayesianModel
from .priors import prior_scale_from_weight_decay


class ElboObjective:
    """Callable (x, target, z) → (−ELBO/N, sampled W), like ``PlainObjective``."""

    def __init__(self, model: SparseBayesianModel, guide: HierarchicalGuide, n_train: int):
        if model.net is not guide.net:
            raise ValueError("the model and the guide are built on different networks: give both the same "
                             "SparseNetwork (e.g. cigl.net)")
        if model.keep != guide.keep:
            raise ValueError(f"the model's keep {model.keep} and the guide's keep {guide.keep} differ: give both the "
                             "keep Z is drawn with")
        if n_train != model.n_train:
            raise ValueError(f"n_train {n_train} differs from the model's n_train {model.n_train} (the N of its "
                             "data plate): give the same number of training points")
        self.model, self.guide, self.n_train = model, guide, n_train
        self.last_data_loss: torch.Tensor | None = None
        # max_plate_nesting given: no extra "guess" run of the model (which would touch BN stats)
        self.elbo = Trace_ELBO(num_particles=1, max_plate_nesting=1)

    @classmethod
    def from_config(cls, cfg, net: SparseNetwork, n_train: int, num_classes: int) -> ElboObjective:
        scale = prior_scale_from_weight_decay(cfg.weight_decay, n_train)
        kwargs = {"precision": cfg.noise_precision} if cfg.likelihood == "gaussian" else None
        model = SparseBayesianModel(net, scale, n_train, keep=cfg.keep, likelihood=cfg.likelihood,
                                    likelihood_kwargs=kwargs)
        return cls(model, HierarchicalGuide(net, sigma=cfg.sigma, keep=cfg.keep), n_train)

    def __call__(self, x, target, z, *, track_score: bool = False):
        self.model.tap_forward_weights = track_score
        self.model.forward_weights = None
        with pyro.validation_enabled(False):
            try:
                loss = self.elbo.differentiable_loss(self.model, self.guide, x, target, z)
            except (ValueError, RuntimeError) as err:  # Pyro appends its trace's shapes to the model's errors
                if type(err.__cause__) is type(err) and str(err).startswith(str(err.__cause__)):
                    raise err.__cause__ from None
                raise
        # the data term per data point (cross-entropy, or τ/2·MSE for the Gaussian likelihood, up to
        # its constant), read off the model's output: comparable with the plain engine's
        name = self.model.likelihood_name
        if name is None or target is None:  # a custom likelihood: its data term is not known here
            self.last_data_loss = torch.full((), float("nan"), device=loss.device)
        else:
            precision = self.model.likelihood_kwargs.get("precision", 1.0)
            self.last_data_loss = data_loss(self.model.last_output.detach(), target, name, precision)
        return loss / self.n_train, self.guide.last_w

    def regrowth_score(self) -> torch.Tensor:
        """After ``loss.backward()``: RigL's regrowth score from the *model's* part of −ELBO/N,

            ∂/∂W [ −log p(y | x, W, θ) / N − log p(W) / N ] = ∂(NLL/N)/∂W + W / (s² N),

        at the sampled W.  The guide's −log q(W) is left out: its gradient −(W − M⊙Z⊙U)/σ² is
        pure noise of size 1/σ, which would swamp the score as σ → 0.  With it left out the score
        tends to the plain engine's dense gradient ∂L/∂(M⊙Z⊙V) as σ → 0, and equals it at σ = 0
        (tests/test_cigl_fidelity.py)."""
        tapped = self.model.forward_weights
        if tapped is None or tapped.grad is None:
            raise RuntimeError("call the objective with track_score=True and back-propagate first")
        w = self.guide.last_w.detach()
        return tapped.grad + w / (self.model.prior_scale**2 * self.n_train)
