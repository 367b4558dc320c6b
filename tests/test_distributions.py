"""The closed-form flat distributions equal Pyro's generic element-wise ones."""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch

from cigl_bayes.inference.distributions import IidBernoulli, IsotropicNormal, PointMass


def test_isotropic_normal_matches_pyro_normal_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1000, generator=g, dtype=torch.float64, requires_grad=True)
    ours = IsotropicNormal(0.3, 1000, w)
    reference = dist.Normal(torch.tensor(0.0, dtype=torch.float64), 0.3).expand([1000]).to_event(1)
    a, b = ours.log_prob(w), reference.log_prob(w)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(torch.autograd.grad(a, w)[0], torch.autograd.grad(b, w)[0])
    assert ours.event_shape == (1000,) and ours.batch_shape == ()
    draws = ours.rsample((400,))
    assert draws.shape == (400, 1000) and draws.dtype == torch.float64
    assert draws.std().item() == pytest.approx(0.3, rel=0.02)
    with pytest.raises(ValueError, match="scale"):
        IsotropicNormal(0.0, 3, w)


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.01])
def test_iid_bernoulli_matches_pyro_bernoulli(keep):
    g = torch.Generator().manual_seed(1)
    z = torch.bernoulli(torch.full((5000,), keep), generator=g)
    ours = IidBernoulli(keep, 5000, z).log_prob(z)
    reference = dist.Bernoulli(torch.tensor(keep)).expand([5000]).to_event(1).log_prob(z)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-3)
    assert IidBernoulli(keep, 5000, z).sample().shape == (5000,)


def test_iid_bernoulli_keep_one_allows_only_all_ones():
    ones, other = torch.ones(10), torch.ones(10)
    other[3] = 0
    law = IidBernoulli(1.0, 10, ones)
    assert law.log_prob(ones).item() == 0.0
    assert law.log_prob(other).item() == -math.inf
    assert torch.equal(law.sample(), ones)
    with pytest.raises(ValueError, match="keep"):
        IidBernoulli(0.0, 10, ones)


def test_point_mass_scores_its_own_sample_without_looking_and_other_values_like_delta():
    v = torch.randn(50)
    law = PointMass(v, log_density=torch.tensor(-2.5), event_dim=1)
    assert law.log_prob(law.rsample()).item() == -2.5  # the guide's case: a view of v
    moved = v.clone()
    assert law.log_prob(moved).item() == -2.5  # equal values, other memory: Delta's test
    moved[7] += 1.0
    assert law.log_prob(moved).item() == -math.inf
    assert law.log_prob(v.flip(0)).item() == -math.inf  # a reordered copy


def test_values_of_the_wrong_length_and_reinterpreted_views_are_not_scored_as_matches():
    w = torch.randn(10)
    for law in (IsotropicNormal(1.0, 4, w), IidBernoulli(0.9, 4, w)):
        with pytest.raises(ValueError, match="last dimension is 4"):
            law.log_prob(w)
    v = torch.randn(6)
    assert PointMass(v, event_dim=1).log_prob(v.view(torch.int32)[:6]).item() == -math.inf
