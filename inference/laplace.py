"""Last-layer Laplace on a trained network: the post-hoc peer a practitioner would pick instead of
retraining with CigL (issue #39, item 7).

laplace-torch (Daxberger et al., NeurIPS 2021) fits a Gaussian around the trained last layer,
p(w_L | D) ≈ N(w_L*, (H + δI)⁻¹) with H the Kronecker-factored GGN of the training NLL, and
predicts with the probit approximation of the GLM predictive
    p(y | x, D) ≈ softmax( f(x) / √(1 + π/8 · diag(J Σ Jᵀ)) ).
The prior precision δ is chosen by laplace-torch's validation grid search (lowest validation NLL
over 10^[−4, 4]); the Hessian sees the clean training images, the grid search the validation
split, and the test split is only scored.  Why laplace-torch: it is the maintained reference
implementation of these approximations, and writing the Kronecker GGN and probit predictive again
would only risk getting them wrong.  It is an optional dependency (``pip install -e ".[laplace]"``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn


class LoaderView:
    """A ``DeviceLoader`` as laplace-torch reads a DataLoader: ``dataset`` (its length is N),
    ``batch_size``, and iteration over (x, y) batches of one fixed epoch."""

    def __init__(self, loader):
        self.loader = loader
        self.batch_size = loader.batch_size
        self.dataset = range(loader.num_samples)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.loader.epoch(0))

    def __len__(self) -> int:
        return len(self.loader)


@dataclass
class LaplaceFit:
    prior_precision: float
    log_probs: dict[str, torch.Tensor]  # {split: (N, C) log predictive probabilities}


def last_layer_laplace(module: nn.Module, train, loaders: dict, *, hessian_structure: str = "kron",
                       link_approx: str = "probit") -> LaplaceFit:
    """Fit a last-layer Laplace approximation of ``module`` (eval mode: its BatchNorm statistics
    stay as they are) on ``train``, choose the prior precision on ``loaders["val"]``, and return
    the predictive log-probabilities on every split of ``loaders``."""
    try:
        from laplace import Laplace
    except ImportError as err:  # pragma: no cover - depends on the extra
        raise ImportError("the Laplace baseline needs laplace-torch: pip install -e \".[laplace]\"") from err
    if "val" not in loaders:
        raise ValueError("the Laplace prior precision is chosen on the validation split, and this run has none")
    # a copy in the contiguous format: laplace-torch flattens parameters with view(), which a
    # channels-last weight (the float32 default here) refuses
    module = copy.deepcopy(module).to(memory_format=torch.contiguous_format).eval()
    la = Laplace(module, "classification", subset_of_weights="last_layer", hessian_structure=hessian_structure)
    la.fit(LoaderView(train))
    la.optimize_prior_precision(pred_type="glm", method="gridsearch", val_loader=LoaderView(loaders["val"]),
                                link_approx=link_approx)
    out = {}
    with torch.no_grad():
        for split, loader in loaders.items():
            probs = torch.cat([la(x, pred_type="glm", link_approx=link_approx).float().cpu()
                               for x, _ in loader.epoch(0)])
            out[split] = probs.clamp_min(1e-12).log()
    return LaplaceFit(prior_precision=float(la.prior_precision.mean()), log_probs=out)
