"""Last-layer Laplace on a trained network: the post-hoc peer a practitioner would pick instead of
retraining with CigL (issue #39, item 7).

laplace-torch (Daxberger et al., NeurIPS 2021) fits a Gaussian around the trained last layer,
p(w_L | D) ≈ N(w_L*, (H + δI)⁻¹) with H the Kronecker-factored GGN of the training NLL, and
predicts with the probit approximation of the GLM predictive
    p(y | x, D) ≈ softmax( f(x) / √(1 + π/8 · diag(J Σ Jᵀ)) ).
The prior precision δ is chosen by laplace-torch's validation grid search (lowest validation NLL
over 10^[−4, 4], the NLL computed afresh at each point: ``validation_nll``); the Hessian sees the
clean training images, the grid search the validation split, and the test split is only scored.
Why laplace-torch: it is the maintained reference implementation of these approximations, and
writing the Kronecker GGN and probit predictive again would only risk getting them wrong.  It is
an optional dependency (``pip install -e ".[laplace]"``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn


class LoaderView:
    """(x, y) batches as laplace-torch reads a DataLoader: ``dataset`` (its length is N),
    ``batch_size``, and iteration in a fixed order."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int):
        self.inputs, self.targets, self.batch_size = inputs, targets, batch_size
        self.dataset = range(len(inputs))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self.inputs), self.batch_size):
            yield self.inputs[i:i + self.batch_size], self.targets[i:i + self.batch_size]

    def __len__(self) -> int:
        return -(-len(self.inputs) // self.batch_size)


@dataclass
class LaplaceFit:
    prior_precision: float
    log_probs: dict[str, torch.Tensor]  # {split: (N, C) log predictive probabilities}
    # validation NLL of the predictive at 10^-4, 10^-3, …, 10^4: how much the choice mattered
    val_nll_by_prior_precision: dict[float, float]


def last_linear_layer(module: nn.Module, x: torch.Tensor) -> nn.Linear:
    """The layer laplace-torch calls the last one: the last leaf module to run in a forward pass
    of ``x``.  It must be an ``nn.Linear`` whose output is the network's output, so that a Laplace
    approximation fitted on that layer's inputs is the last-layer approximation of the network."""
    order: list[nn.Module] = []
    outputs: dict[int, torch.Tensor] = {}

    def record(m, _inputs, out):
        order.append(m)
        outputs[id(m)] = out

    leaves = [m for m in module.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(record) for m in leaves]
    try:
        with torch.no_grad():
            logits = module(x)
    finally:
        for h in hooks:
            h.remove()
    if not order or not isinstance(order[-1], nn.Linear) or not torch.equal(outputs[id(order[-1])], logits):
        raise ValueError("last-layer Laplace needs a network whose output is that of a final nn.Linear layer")
    return order[-1]


def one_epoch(loader):
    """The (x, y) batches of one fixed-order pass: ``loader.epoch(0)`` for this project's loaders,
    else the iterable itself (a list of batches, a DataLoader without shuffling)."""
    return loader.epoch(0) if hasattr(loader, "epoch") else iter(loader)


def reiterable(loader):
    """``loader`` if it can be read more than once, else its batches in a list (a generator is
    read once: its first batch, taken to find the last layer, would be lost to the fit)."""
    return list(loader) if not hasattr(loader, "epoch") and iter(loader) is loader else loader


def last_layer_inputs(module: nn.Module, head: nn.Linear, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, labels) over one fixed-order epoch of ``loader``: the inputs of ``head`` in an
    eval-mode forward pass, and the labels.  Computed once per split, so that laplace-torch's
    curvature pass and its prior-precision grid (100 predictive passes over the validation split)
    read stored features instead of running the whole network again each time."""
    features: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, inputs, _out: features.append(inputs[0].detach()))
    try:
        with torch.no_grad():
            for x, y in one_epoch(loader):
                module(x)
                labels.append(y)
    finally:
        hook.remove()
    return torch.cat(features), torch.cat(labels)


def validation_nll(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log predictive probability of the labels (a 0-d tensor): the grid search's score."""
    return -probs.clamp_min(1e-12).log().gather(1, targets.long()[:, None]).mean()


def last_layer_laplace(module: nn.Module, train, loaders: dict, *, hessian_structure: str = "kron",
                       link_approx: str = "probit") -> LaplaceFit:
    """Fit a last-layer Laplace approximation of ``module`` (eval mode: its BatchNorm statistics
    stay as they are) on ``train``, choose the prior precision on ``loaders["val"]``, and return
    the predictive log-probabilities on every split of ``loaders``.  Each is a loader of this
    project or any iterable of (x, y) batches (a list, a DataLoader without shuffling).  The
    approximation covers the whole last layer: its pruned weights (zeros outside M) get posterior
    variance too, as in ``Laplace(..., subset_of_weights="last_layer")`` on a dense layer.

    The network below the last layer is fixed, so the approximation depends on the data only
    through that layer's inputs: laplace-torch is run on a copy of the last layer alone, fed the
    features of each split, computed once (``last_layer_inputs``).  This is the same posterior
    and predictive as ``Laplace(module, subset_of_weights="last_layer")`` (tested), without a
    pass of the whole network for each of the grid's 100 prior precisions."""
    try:
        from laplace import Laplace
    except ImportError as err:  # pragma: no cover - depends on the extra
        raise ImportError("the Laplace baseline needs laplace-torch: pip install -e \".[laplace]\"") from err
    if "val" not in loaders:
        raise ValueError("the Laplace prior precision is chosen on the validation split, and this run has none")
    module = copy.deepcopy(module).eval()  # the caller's network is left alone
    train, loaders = reiterable(train), {split: reiterable(loader) for split, loader in loaders.items()}
    first_batch = next(iter(one_epoch(train)))[0]
    head = last_linear_layer(module, first_batch)
    # the head alone, behind an Identity so that laplace-torch finds it as the last layer; a
    # contiguous copy, as laplace-torch flattens parameters with view()
    head_only = nn.Sequential(nn.Identity(), copy.deepcopy(head)).to(memory_format=torch.contiguous_format)
    la = Laplace(head_only, "classification", subset_of_weights="last_layer", hessian_structure=hessian_structure)
    batch = getattr(train, "batch_size", None) or len(first_batch)
    features = {split: last_layer_inputs(module, head, loader) for split, loader in loaders.items()}
    la.fit(LoaderView(*last_layer_inputs(module, head, train), batch))  # the Hessian: training data
    # the prior precision: validation data.  The NLL is given as a function, computed afresh at each
    # grid point: laplace-torch's default, a running torchmetrics metric, is never reset between
    # grid points (laplace-torch 0.3), so it compares running means over all points so far
    la.optimize_prior_precision(pred_type="glm", method="gridsearch", val_loader=LoaderView(*features["val"], batch),
                                link_approx=link_approx, loss=validation_nll)

    def log_predictive(inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            probs = torch.cat([la(f, pred_type="glm", link_approx=link_approx).float().cpu()
                               for f, _ in LoaderView(inputs, inputs, batch)])
        return probs.clamp_min(1e-12).log()

    chosen = la.prior_precision.clone()
    val_inputs, val_targets = features["val"]
    curve = {}
    for decade in range(-4, 5):  # the grid's range, a point a decade: the validation NLL it was chosen by
        la.prior_precision = 10.0 ** decade
        nll = -log_predictive(val_inputs).gather(1, val_targets.cpu().long()[:, None]).mean()
        curve[10.0 ** decade] = float(nll)
    la.prior_precision = chosen
    # every split, the test split included, is only scored
    out = {split: log_predictive(inputs) for split, (inputs, _) in features.items()}
    return LaplaceFit(prior_precision=float(la.prior_precision.mean()), log_probs=out,
                      val_nll_by_prior_precision=curve)
