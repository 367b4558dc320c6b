"""The sparse engine's invariants (paper Algorithm 1; RigL §3): one test per claim."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cigl_bayes.averaging import Snapshot, SnapshotStore, WeightMaskAverage
from cigl_bayes.masks import DeterministicMask, MaskSchedule
from cigl_bayes.network import SparseNetwork
from cigl_bayes.random_mask import RandomKeepMask, random_keep_mask
from cigl_bayes.sparsity import (
    densities_for,
    erk_densities,
    layer_nnz,
    sparse_parameter_names,
    uniform_densities,
)

SHAPES = [torch.Size(s) for s in [(16, 3, 3, 3), (32, 16, 3, 3), (64, 32, 3, 3), (10, 64)]]

shape_lists = st.lists(
    st.one_of(
        st.tuples(st.integers(1, 12), st.integers(1, 12)),
        st.tuples(st.integers(1, 8), st.integers(1, 8), st.sampled_from([1, 3]), st.sampled_from([1, 3])),
    ),
    min_size=1,
    max_size=5,
).map(lambda ls: [torch.Size(s) for s in ls])


# -- densities -------------------------------------------------------------------------------
@given(shapes=shape_lists, sparsity=st.floats(0.0, 0.99))
@settings(max_examples=60, deadline=None)
def test_erk_densities_meet_global_sparsity(shapes, sparsity):
    dens = erk_densities(shapes, sparsity)
    numels = [math.prod(s) for s in shapes]
    assert all(0.0 < d <= 1.0 + 1e-12 for d in dens)
    kept = sum(d * n for d, n in zip(dens, numels))
    # exact unless every layer had to be made dense (then the target is unreachable from above)
    if not all(d == 1.0 for d in dens):
        assert kept == pytest.approx((1 - sparsity) * sum(numels), rel=1e-9)


def test_erk_gives_small_layers_higher_density():
    dens = erk_densities(SHAPES, 0.9)
    assert dens[0] > dens[2]  # 3·3·3·16 first conv is denser than the 64×32×3×3 conv
    nnz = layer_nnz(SHAPES, dens)
    assert sum(nnz) == pytest.approx(0.1 * sum(math.prod(s) for s in SHAPES), abs=len(SHAPES))


def test_uniform_densities_and_bad_inputs():
    assert uniform_densities(SHAPES, 0.8) == [pytest.approx(0.2)] * 4
    for bad in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="sparsity"):
            densities_for(SHAPES, bad, "erk")
    with pytest.raises(ValueError, match="distribution"):
        densities_for(SHAPES, 0.5, "gaussian")


def test_sparse_parameter_names_follow_convention():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    assert sparse_parameter_names(model) == ["0.weight", "3.weight"]
    assert sparse_parameter_names(model, dense_first=True) == ["3.weight"]


# -- deterministic mask ----------------------------------------------------------------------
def _random_mask(shapes, sparsity, seed=0):
    nnz = layer_nnz(shapes, densities_for(shapes, sparsity, "erk"))
    return DeterministicMask.random(shapes, nnz, torch.Generator().manual_seed(seed)), nnz


@given(shapes=shape_lists, sparsity=st.floats(0.0, 0.95), fractions=st.lists(st.floats(0, 1), min_size=1,
       max_size=6), regrowth=st.sampled_from(["gradient", "random"]), seed=st.integers(0, 2**16))
@settings(max_examples=80, deadline=None)
def test_every_update_keeps_exact_nnz_per_layer(shapes, sparsity, fractions, regrowth, seed):
    mask, nnz = _random_mask(shapes, sparsity, seed)
    gen = torch.Generator().manual_seed(seed)
    n = sum(mask.numels)
    for f in fractions:
        w = torch.randn(n, generator=gen) * mask.float
        g = torch.randn(n, generator=gen)
        before = mask.flat.clone()
        regrown = mask.update(w, g, f, regrowth, gen)
        assert [int(v.sum()) for v in mask.flat_views()] == nnz
        assert not (regrown & ~mask.flat).any()
        assert not (mask.flat & ~before & ~regrown).any()  # every newly active position is regrown


def test_rigl_drops_smallest_and_regrows_largest_gradient():
    mask = DeterministicMask([torch.Size([8])], torch.tensor([1, 1, 1, 1, 0, 0, 0, 0], dtype=torch.bool))
    w = torch.tensor([0.5, -0.1, 2.0, 0.05, 0, 0, 0, 0])
    g = torch.tensor([0, 0, 0, 0, 0.1, -3.0, 0.2, 1.0])
    regrown = mask.update(w, g, 0.5, "gradient")  # drop 2 of 4 active
    assert mask.flat.tolist() == [True, False, True, False, False, True, False, True]
    assert regrown.tolist() == [False, False, False, False, False, True, False, True]


def test_dropped_weight_can_be_regrown_when_its_gradient_is_largest():
    mask = DeterministicMask([torch.Size([4])], torch.tensor([1, 1, 0, 0], dtype=torch.bool))
    w = torch.tensor([1.0, 0.01, 0, 0])
    g = torch.tensor([0.0, 9.0, 0.1, 0.2])
    regrown = mask.update(w, g, 0.5, "gradient")
    assert mask.flat.tolist() == [True, True, False, False]
    assert regrown.tolist() == [False, True, False, False]  # regrown, so the caller zeroes it


def test_static_update_changes_nothing():
    mask, _ = _random_mask(SHAPES, 0.9)
    before = mask.flat.clone()
    mask.update(torch.randn(before.numel()), None, 0.3, "none")
    assert torch.equal(before, mask.flat)


def test_cosine_drop_fraction_schedule():
    s = MaskSchedule(total_steps=1000, delta_t=100, drop_fraction=0.3, end=0.75)
    assert s.fraction(0) == pytest.approx(0.3)
    assert s.fraction(375) == pytest.approx(0.15)  # half-way to T_end = 750
    assert s.fraction(750) == pytest.approx(0.0, abs=1e-12)
    assert [t for t in range(1, 1001) if s.is_update_step(t)] == [100, 200, 300, 400, 500, 600, 700]
    with pytest.raises(ValueError, match="delta_t"):
        MaskSchedule(10, delta_t=0)


# -- random mask Z ---------------------------------------------------------------------------
def test_random_keep_rate_matches_keep():
    z = random_keep_mask(200_000, 0.9, torch.Generator().manual_seed(0))
    assert set(z.unique().tolist()) <= {0.0, 1.0}
    assert z.mean().item() == pytest.approx(0.9, abs=0.003)


def test_random_mask_is_seeded_and_resumable():
    a, b = RandomKeepMask(100, 0.5, seed=3), RandomKeepMask(100, 0.5, seed=3)
    assert torch.equal(a.sample(), b.sample())
    state = a.state_dict()
    first = a.sample()
    a.load_state_dict(state)
    assert torch.equal(first, a.sample())
    assert RandomKeepMask(10, 1.0, seed=0).sample() is None
    for bad in (0.0, -1, 1.5):
        with pytest.raises(ValueError, match="keep"):
            RandomKeepMask(10, bad, seed=0)


def test_masked_weights_and_gradient_support_within_m():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))
    names = sparse_parameter_names(model)
    shapes = [dict(model.named_parameters())[n].shape for n in names]
    mask, _ = _random_mask(shapes, 0.8)
    net = SparseNetwork(model, names, mask)
    z = random_keep_mask(sum(mask.numels), 0.9, torch.Generator().manual_seed(1))
    w = net.effective_flat(z)
    assert not ((w != 0) & ~mask.flat).any()  # supp(M⊙Z⊙W) ⊆ supp(M)
    net.forward(torch.randn(2, 3, 8, 8), w).sum().backward()
    grad = torch.cat([p.grad.reshape(-1) for p in net.sparse_params])
    assert not ((grad != 0) & ((mask.float * z) == 0)).any()  # ∇W = M⊙Z⊙∇L(M⊙Z⊙W)


# -- WMA -------------------------------------------------------------------------------------
def test_wma_equals_arithmetic_mean_and_store_round_trips(tmp_path):
    gen = torch.Generator().manual_seed(0)
    snaps = [Snapshot(torch.randn(50, generator=gen) * (torch.rand(50, generator=gen) > 0.5),
                      torch.randn(7, generator=gen)) for _ in range(5)]
    wma = WeightMaskAverage()
    store = SnapshotStore(tmp_path / "samples")
    for i, s in enumerate(snaps):
        wma.update(s)
        store.save(i, s, epoch=i)
    assert torch.allclose(wma.mean().sparse, torch.stack([s.sparse for s in snaps]).mean(0), atol=1e-6)
    assert torch.allclose(wma.mean().other, torch.stack([s.other for s in snaps]).mean(0), atol=1e-6)
    assert len(store) == 5
    for s, loaded in zip(snaps, store):
        assert torch.equal(s.sparse, loaded.sparse) and torch.equal(s.other, loaded.other)


def test_wma_of_identical_samples_is_the_sample():
    s = Snapshot(torch.tensor([0.0, 1.5, -2.0]), torch.tensor([3.0]))
    wma = WeightMaskAverage()
    for _ in range(4):
        wma.update(s)
    assert torch.equal(wma.mean().sparse, s.sparse)
