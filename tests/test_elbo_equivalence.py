"""The Bayesian reading of CigL (paper §4.2; training loss Eq. 1, guide Eq. 3): −ELBO/N ↔ cross-entropy +
λ‖M⊙Z⊙V‖²."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from cigl_bayes.inference import ElboObjective, HierarchicalGuide, SparseBayesianModel, prior_scale_from_weight_decay
from cigl_bayes.masks import DeterministicMask
from cigl_bayes.network import SparseNetwork
from cigl_bayes.objectives import PlainObjective
from cigl_bayes.random_mask import random_keep_mask
from cigl_bayes.sparsity import densities_for, layer_nnz, sparse_parameter_names

WD, N, KEEP = 5e-4, 4500, 0.9


def tiny_net(seed: int = 0) -> SparseNetwork:
    torch.manual_seed(seed)
    module = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ).double()
    names = sparse_parameter_names(module)
    shapes = [dict(module.named_parameters())[n].shape for n in names]
    nnz = layer_nnz(shapes, densities_for(shapes, 0.7, "erk"))
    mask = DeterministicMask.random(shapes, nnz, torch.Generator().manual_seed(seed))
    mask.float = mask.float.double()
    net = SparseNetwork(module, names, mask)
    net.apply_mask_()
    return net


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 3, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 5, (16,), generator=g)


def elbo_objective(net: SparseNetwork, sigma: float = 0.0) -> ElboObjective:
    s = prior_scale_from_weight_decay(WD, N)
    return ElboObjective(SparseBayesianModel(net, s, N, keep=KEEP), HierarchicalGuide(net, sigma, KEEP), N)


def grads(net: SparseNetwork, loss: torch.Tensor) -> list[torch.Tensor]:
    params = net.sparse_params + net.other_params
    return list(torch.autograd.grad(loss, params))


def test_prior_scale_matches_weight_decay():
    s = prior_scale_from_weight_decay(WD, N)
    assert 1.0 / (2 * s**2 * N) == pytest.approx(WD / 2)  # λ = 1/(2 s² N) = wd/2
    with pytest.raises(ValueError, match="weight decay"):
        prior_scale_from_weight_decay(0.0, N)


def test_negative_elbo_over_n_equals_l2_objective_up_to_a_constant():
    """Training loss (Eq. 1) ↔ −ELBO/N with σ = 0, fixed Z, M and mini-batch: equal values (up to an analytic
    constant independent of V) and equal gradients with respect to V and θ."""
    net = tiny_net()
    x, y = batch()
    z = random_keep_mask(sum(net.mask.numels), KEEP, torch.Generator().manual_seed(2), dtype=torch.float64)
    plain, elbo = PlainObjective(net, WD), elbo_objective(net)
    s = prior_scale_from_weight_decay(WD, N)
    dims = sum(net.mask.numels) + sum(p.numel() for p in net.other_params)
    constant = dims * math.log(s * math.sqrt(2 * math.pi)) / N  # −log N(·; 0, s²) normalisers / N

    for scale in (1.0, 3.0):  # two different V: the constant must not depend on V
        with torch.no_grad():
            for p in net.sparse_params:
                p.mul_(scale)
        loss_p, w_p = plain(x, y, z)
        loss_e, w_e = elbo(x, y, z)
        assert torch.equal(w_p, w_e)  # the same effective weights M⊙Z⊙V
        assert (loss_e - loss_p).item() == pytest.approx(constant, rel=1e-10)
        for gp, ge in zip(grads(net, loss_p), grads(net, loss_e)):
            torch.testing.assert_close(ge, gp, rtol=1e-10, atol=1e-13)


def test_dense_gradient_of_sampled_w_matches_plain_engine():
    """The regrowth signal ∂loss/∂W of the SVI engine equals the plain engine's."""
    net = tiny_net()
    x, y = batch()
    z = random_keep_mask(sum(net.mask.numels), KEEP, torch.Generator().manual_seed(3), dtype=torch.float64)
    out = []
    for objective in (PlainObjective(net, WD), elbo_objective(net)):
        loss, w = objective(x, y, z)
        out.append(torch.autograd.grad(loss, w)[0])
    torch.testing.assert_close(out[1], out[0], rtol=1e-10, atol=1e-13)
    assert (out[0][net.mask.flat == 0] != 0).any()  # dense: non-zero off the support too


def test_elbo_gradient_tends_to_cigl_gradient_linearly_in_sigma():
    """σ → 0 limit: the ELBO gradient (fixed noise seeds, 8 particles) approaches the CigL
    gradient with error ∝ σ."""
    net = tiny_net()
    x, y = batch()
    z = random_keep_mask(sum(net.mask.numels), KEEP, torch.Generator().manual_seed(4), dtype=torch.float64)
    loss, _ = PlainObjective(net, WD)(x, y, z)
    target = torch.cat([g.reshape(-1) for g in grads(net, loss)[: len(net.sparse_params)]])

    sigmas = [1e-1, 1e-2, 1e-3, 1e-4, 1e-5]
    errors = []
    for sigma in sigmas:
        objective = elbo_objective(net, sigma)
        total = torch.zeros_like(target)
        for seed in range(8):
            torch.manual_seed(seed)
            loss, _ = objective(x, y, z)
            total += torch.cat([g.reshape(-1) for g in grads(net, loss)[: len(net.sparse_params)]])
        errors.append((total / 8 - target).norm().item() / target.norm().item())
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    slope = np.polyfit(np.log(sigmas), np.log(errors), 1)[0]
    assert 0.8 < slope < 1.3, (slope, errors)
    assert errors[-1] < 1e-3


def test_guide_samples_respect_mask_when_sigma_is_zero():
    net = tiny_net()
    x, y = batch()
    z = random_keep_mask(sum(net.mask.numels), KEEP, torch.Generator().manual_seed(5), dtype=torch.float64)
    guide = HierarchicalGuide(net, 0.0, KEEP)
    w = guide(x, y, z)
    assert not ((w != 0) & ((net.mask.float * z) == 0)).any()
    with pytest.raises(ValueError, match="sigma"):
        HierarchicalGuide(net, -1.0)


def test_gaussian_likelihood_elbo_equals_mse_plus_l2():
    """Regression form (paper Eq. 2): −ELBO/N = τ/2·mean (f − y)² + λ‖M⊙Z⊙V‖² + λ‖θ‖² + const."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(1, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1)).double()
    names = sparse_parameter_names(module)
    shapes = [dict(module.named_parameters())[n].shape for n in names]
    mask = DeterministicMask.random(shapes, layer_nnz(shapes, densities_for(shapes, 0.5, "erk")),
                                    torch.Generator().manual_seed(0), dtype=torch.float64)
    net = SparseNetwork(module, names, mask)
    net.apply_mask_()
    tau, n = 25.0, 200
    g = torch.Generator().manual_seed(3)
    x = torch.randn(32, 1, generator=g, dtype=torch.float64)
    y = torch.sin(3 * x[:, 0]) + 0.2 * torch.randn(32, generator=g, dtype=torch.float64)
    z = random_keep_mask(sum(net.mask.numels), KEEP, torch.Generator().manual_seed(4), dtype=torch.float64)
    s = prior_scale_from_weight_decay(WD, n)
    model = SparseBayesianModel(net, s, n, keep=KEEP, likelihood="gaussian", likelihood_kwargs={"precision": tau})
    elbo = ElboObjective(model, HierarchicalGuide(net, 0.0, KEEP), n)
    plain = PlainObjective(net, WD, likelihood="gaussian", precision=tau)
    dims = sum(net.mask.numels) + sum(p.numel() for p in net.other_params)
    constant = dims * math.log(s * math.sqrt(2 * math.pi)) / n + 0.5 * math.log(2 * math.pi / tau)
    loss_p, _ = plain(x, y, z)
    loss_e, _ = elbo(x, y, z)
    assert (loss_e - loss_p).item() == pytest.approx(constant, rel=1e-10)
    for gp, ge in zip(grads(net, loss_p), grads(net, loss_e)):
        torch.testing.assert_close(ge, gp, rtol=1e-10, atol=1e-13)
    with pytest.raises(ValueError, match="likelihood"):
        PlainObjective(net, WD, likelihood="poisson")(x, y, z)
