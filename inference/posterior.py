"""Predictors built from a trained run's posterior samples, each with its cost.

For a run collected from epoch T* on, with samples x_t = (M⊙Z⁽ᵗ⁾⊙W⁽ᵗ⁾, θ⁽ᵗ⁾), t = 1..T:
  final       f(x; M⊙W_final)                                    one forward pass
  wma         f(x; x̄), x̄ = (1/T) Σ_t x_t (moment-matched mean)   one forward pass
  predictive  (1/T) Σ_t softmax f(x; x_t)       (paper "w/o WMA")  T forward passes
  mc-z        (1/S) Σ_s softmax f(x; M⊙Z_s⊙W_final), Z_s ~ Bern(keep)    S passes
  swag        (1/S) Σ_s softmax f(x; x̃_s), x̃_s ~ N(x̄, ½(Σ_diag + D Dᵀ/(K−1)))   S passes
BatchNorm statistics are recomputed on training data for every weight setting other than
``final`` (whose statistics were tracked during training).  Each predictor keeps its
per-sample log-probabilities so that arviz can treat samples as posterior draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cigl_bayes.averaging import Snapshot
from cigl_bayes.metrics import calibration_metrics
from cigl_bayes.predict import ensemble_log_probs, predict_log_probs, weights_loaded
from cigl_bayes.random_mask import random_keep_mask

PREDICTORS = ("final", "wma", "predictive", "mc-z", "swag")


@dataclass
class PredictorResult:
    """Test log-probabilities of one predictor, per draw and averaged, and what it costs."""

    name: str
    draws: list[torch.Tensor]  # per weight sample: (N, C) log-probabilities
    forward_passes: int  # forward passes per test batch
    parameters_stored: int  # numbers kept to make the prediction
    metrics: dict = field(default_factory=dict)

    @property
    def log_probs(self) -> torch.Tensor:
        """log of the softmax averaged over draws (Bayesian model averaging)."""
        return self.draws[0] if len(self.draws) == 1 else ensemble_log_probs(self.draws)

    def per_draw_log_likelihood(self, labels: torch.Tensor) -> torch.Tensor:
        """(draws, N): log p(y_i | draw) for the true labels."""
        idx = labels.view(1, -1, 1).expand(len(self.draws), -1, 1)
        return torch.stack(self.draws).gather(2, idx).squeeze(2)

    def evaluate(self, labels: torch.Tensor) -> dict:
        self.metrics = calibration_metrics(self.log_probs, labels, from_logits=True)
        return self.metrics


def nnz(snap: Snapshot) -> int:
    return int((snap.sparse != 0).sum()) + snap.other.numel()


def _draw(net, snap: Snapshot, loader, bn_loader, bn_batches) -> torch.Tensor:
    with weights_loaded(net, snap, bn_loader, bn_batches):
        return predict_log_probs(net, loader, snap.sparse)


def final_predictor(net, loader) -> PredictorResult:
    with torch.no_grad():
        w = net.effective_flat()
        snap = Snapshot(w, net.other_flat())
    return PredictorResult("final", [predict_log_probs(net, loader, w)], 1, nnz(snap))


def wma_predictor(net, samples: list[Snapshot], loader, bn_loader, bn_batches=None) -> PredictorResult:
    from cigl_bayes.averaging import WeightMaskAverage

    wma = WeightMaskAverage()
    for s in samples:
        wma.update(s)
    mean = wma.mean()
    return PredictorResult("wma", [_draw(net, mean, loader, bn_loader, bn_batches)], 1, nnz(mean))


def sample_predictor(name: str, net, samples: list[Snapshot], loader, bn_loader, bn_batches=None,
                     stored: int | None = None) -> PredictorResult:
    """Bayesian model averaging over the given weight samples (BN recomputed for each)."""
    if not samples:
        raise ValueError(f"predictor {name!r} needs at least one weight sample")
    draws = [_draw(net, s, loader, bn_loader, bn_batches) for s in samples]
    return PredictorResult(name, draws, len(samples), stored if stored is not None else sum(nnz(s) for s in samples))


def mc_z_samples(net, keep: float, count: int, seed: int = 0) -> list[Snapshot]:
    """M⊙Z_s⊙W_final for ``count`` fresh Z_s ~ Bernoulli(keep) from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    numel = sum(net.mask.numels)
    with torch.no_grad():
        w, other = net.effective_flat(), net.other_flat()
        return [Snapshot(w * random_keep_mask(numel, keep, gen, dtype=w.dtype).to(w.device), other)
                for _ in range(count)]
