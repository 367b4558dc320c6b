"""SparseSWAG: moments vs numpy, memory ∝ nnz, sampling law, WMA consistency, state, bad input."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from cigl_bayes.averaging import Snapshot, SnapshotStore, WeightMaskAverage
from cigl_bayes.inference.swag import SparseSWAG


def make_samples(n_samples: int = 10, numel: int = 1000, dim_other: int = 7, density: float = 0.1, seed: int = 0,
                 dtype: torch.dtype = torch.float64) -> tuple[list[Snapshot], np.ndarray]:
    """Random sparse samples sharing one support (``density`` of ``numel``); also returns the support."""
    rng = np.random.default_rng(seed)
    support = np.zeros(numel, dtype=bool)
    support[rng.choice(numel, int(round(density * numel)), replace=False)] = True
    snaps = []
    for _ in range(n_samples):
        sparse = np.zeros(numel)
        sparse[support] = rng.normal(1.0, 2.0, support.sum())
        snaps.append(Snapshot(torch.tensor(sparse, dtype=dtype), torch.tensor(rng.normal(size=dim_other), dtype=dtype)))
    return snaps, support


def stacked(snaps: list[Snapshot]) -> tuple[np.ndarray, np.ndarray]:
    return np.stack([s.sparse.numpy() for s in snaps]), np.stack([s.other.numpy() for s in snaps])


def fit(snaps: list[Snapshot], max_rank: int = 4, **kw) -> SparseSWAG:
    return SparseSWAG.from_snapshots(snaps, max_rank=max_rank, **kw)


def test_moments_and_deviations_match_numpy() -> None:
    snaps, support = make_samples()
    swag = fit(snaps, max_rank=4)
    xs, xo = stacked(snaps)
    assert swag.count == 10 and swag.nnz == support.sum() == 100
    assert torch.equal(swag.support(), torch.from_numpy(support))

    mean, var = swag.mean(), swag.variance()
    np.testing.assert_allclose(mean.sparse.numpy(), xs.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mean.other.numpy(), xo.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(swag.sq_sparse.numpy(), (xs**2).mean(0)[support], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(swag.sq_other.numpy(), (xo**2).mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(var.sparse.numpy(), xs.var(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(var.other.numpy(), xo.var(0), rtol=1e-9, atol=1e-12)
    assert (mean.sparse[~torch.from_numpy(support)] == 0).all() and (var.sparse[~torch.from_numpy(support)] == 0).all()

    # D: x_t − mean of the first t samples, for the last K = 4 of 10 samples, oldest first
    running = np.cumsum(xs, 0) / np.arange(1, 11)[:, None]
    running_o = np.cumsum(xo, 0) / np.arange(1, 11)[:, None]
    dev_s, dev_o = swag.deviations()
    assert dev_s.shape == (4, 100) and dev_o.shape == (4, 7)
    np.testing.assert_allclose(dev_s.numpy(), (xs - running)[6:][:, support], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dev_o.numpy(), (xo - running_o)[6:], rtol=1e-10, atol=1e-12)
    # fewer samples than K: all of them, in order
    few = fit(snaps[:3], max_rank=4)
    np.testing.assert_allclose(few.deviations()[0].numpy(), (xs - running)[:3][:, support], rtol=1e-10, atol=1e-12)
    assert few.rank == 3


def test_memory_scales_with_nnz() -> None:
    numel, k_rank = 20_000, 10

    def nbytes(density: float) -> int:
        snaps, _ = make_samples(n_samples=1, numel=numel, dim_other=5, density=density, dtype=torch.float32)
        return fit(snaps, max_rank=k_rank).nbytes

    small, large = nbytes(0.05), nbytes(0.10)
    assert large / small == pytest.approx(2.0, rel=0.02)
    dense_d = k_rank * numel * 4  # a dense K × numel float32 deviation matrix alone
    assert small < 0.1 * dense_d
    # and the exact accounting: int64 index + (2 + K) float32 rows over nnz and over θ
    assert small == 1000 * 8 + (2 + k_rank) * 4 * (1000 + 5)


def test_samples_zero_off_support_and_diagonal_variance() -> None:
    snaps, support = make_samples(n_samples=10, numel=300, dim_other=4, density=0.1)
    swag = fit(snaps, max_rank=5)
    g = torch.Generator().manual_seed(1)
    draws = [swag.sample(g, scale=0.5, low_rank=False) for _ in range(4000)]
    s, o = torch.stack([d.sparse for d in draws]), torch.stack([d.other for d in draws])
    off = ~torch.from_numpy(support)
    assert (s[:, off] == 0).all()
    var = swag.variance()
    on = torch.from_numpy(support)
    # sample variance of 4000 normals has relative sd √(2/3999) ≈ 2.2%; allow ~5.5 sd
    torch.testing.assert_close(s[:, on].var(0), 0.5 * var.sparse[on], rtol=0.12, atol=0)
    torch.testing.assert_close(o.var(0), 0.5 * var.other, rtol=0.12, atol=0)
    # the mean: |empirical − θ̄| within 5 standard errors
    se = (0.5 * var.sparse[on] / 4000).sqrt()
    assert ((s[:, on].mean(0) - swag.mean().sparse[on]).abs() < 5 * se).all()

    # full SWAG: diagonal of scale·(Σ_diag + D Dᵀ/(K−1))
    full = torch.stack([swag.sample(g, scale=0.5).sparse for _ in range(4000)])
    dev_s, _ = swag.deviations()
    expected = 0.5 * (var.sparse[on] + (dev_s**2).sum(0) / (dev_s.shape[0] - 1))
    torch.testing.assert_close(full[:, on].var(0), expected, rtol=0.12, atol=0)
    assert (full[:, off] == 0).all()


def test_low_rank_samples_lie_in_span_of_deviations() -> None:
    snaps, support = make_samples(n_samples=10, numel=300, dim_other=4, density=0.1)
    swag = fit(snaps, max_rank=5)
    dev_s, dev_o = swag.deviations()
    basis = torch.cat([dev_s, dev_o], 1).T  # (nnz + dim θ, K)
    mean = swag.mean()
    on = torch.from_numpy(support)
    g = torch.Generator().manual_seed(2)
    for _ in range(5):
        d = swag.sample(g, diagonal=False)
        r = torch.cat([(d.sparse - mean.sparse)[on], d.other - mean.other])
        coef = torch.linalg.lstsq(basis, r[:, None]).solution
        assert torch.linalg.norm(basis @ coef - r[:, None]) < 1e-9 * torch.linalg.norm(r)
        assert torch.linalg.norm(r) > 1e-3
        assert (d.sparse[~on] == 0).all()
    # a diagonal draw is not in that 5-dimensional span
    r = swag.sample(g, low_rank=False)
    r = torch.cat([(r.sparse - mean.sparse)[on], r.other - mean.other])
    coef = torch.linalg.lstsq(basis, r[:, None]).solution
    assert torch.linalg.norm(basis @ coef - r[:, None]) > 0.5 * torch.linalg.norm(r)
    # low-rank covariance: scale · D Dᵀ / (K − 1)
    draws = torch.stack([swag.sample(g, scale=0.5, diagonal=False).sparse[on][:10] for _ in range(4000)])
    cov = torch.cov(draws.T)
    expected = 0.5 * dev_s[:, :10].T @ dev_s[:, :10] / 4
    assert torch.allclose(cov, expected, atol=0.12 * expected.diag().max().item())


def test_fixed_seed_reproducible_and_seeds_differ() -> None:
    snaps, _ = make_samples()
    swag = fit(snaps)
    a = swag.sample(torch.Generator().manual_seed(7))
    b = swag.sample(torch.Generator().manual_seed(7))
    c = swag.sample(torch.Generator().manual_seed(8))
    assert torch.equal(a.sparse, b.sparse) and torch.equal(a.other, b.other)
    assert not torch.equal(a.sparse, c.sparse)
    both_off = swag.sample(torch.Generator().manual_seed(7), diagonal=False, low_rank=False)
    assert torch.equal(both_off.sparse, swag.mean().sparse)


def test_mean_equals_weight_mask_average(tmp_path) -> None:
    snaps, _ = make_samples(n_samples=12)
    wma = WeightMaskAverage()
    for s in snaps:
        wma.update(s)
    swag = fit(snaps)
    torch.testing.assert_close(swag.mean().sparse, wma.mean().sparse, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(swag.mean().other, wma.mean().other, rtol=1e-14, atol=1e-15)
    # the same from a SnapshotStore (re-iterable, two passes)
    store = SnapshotStore(tmp_path / "samples")
    for i, s in enumerate(snaps):
        store.save(i, s, epoch=i)
    from_store = SparseSWAG.from_snapshots(store, max_rank=4)
    assert torch.equal(from_store.mean().sparse, swag.mean().sparse)
    assert torch.equal(from_store.variance().other, swag.variance().other)


def test_state_dict_round_trip_gives_identical_samples() -> None:
    snaps, support = make_samples(n_samples=9)
    swag = fit(snaps[:7], max_rank=4)
    buf = io.BytesIO()
    torch.save(swag.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    restored = SparseSWAG.from_state_dict(state)
    other = SparseSWAG(torch.from_numpy(support), max_rank=4)
    other.load_state_dict(state)
    for copy in (restored, other):
        assert copy.count == 7 and copy.nbytes == swag.nbytes
        a = swag.sample(torch.Generator().manual_seed(3))
        b = copy.sample(torch.Generator().manual_seed(3))
        assert torch.equal(a.sparse, b.sparse) and torch.equal(a.other, b.other)
    # continuing after the round trip (ring buffer position) matches continuing the original
    for s in snaps[7:]:
        swag.update(s)
        restored.update(s)
    for x, y in zip(swag.deviations(), restored.deviations()):
        assert torch.equal(x, y)
    assert torch.equal(swag.sample(torch.Generator().manual_seed(4)).sparse,
                       restored.sample(torch.Generator().manual_seed(4)).sparse)
    with pytest.raises(ValueError, match="max_rank"):
        SparseSWAG(torch.from_numpy(support), max_rank=5).load_state_dict(state)


def test_device_and_dtype() -> None:
    snaps, _ = make_samples(dtype=torch.float32)
    swag = fit(snaps, dtype=torch.float64)
    assert swag.dtype == torch.float64 and swag.mean().sparse.dtype == torch.float64
    assert swag.to("cpu") is swag and swag.device == torch.device("cpu")
    assert swag.sample(torch.Generator().manual_seed(0)).sparse.device == torch.device("cpu")


def test_bad_input() -> None:
    snaps, support = make_samples()
    mask = torch.from_numpy(support)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="max_rank"):
            SparseSWAG(mask, max_rank=bad)
    swag = SparseSWAG(mask, max_rank=3)
    with pytest.raises(ValueError, match="length 999 but the support has length 1000"):
        swag.update(Snapshot(snaps[0].sparse[:-1], snaps[0].other))
    with pytest.raises(ValueError, match="off the SWAG support"):
        swag.update(Snapshot(torch.ones(1000, dtype=torch.float64), snaps[0].other))
    swag.update(snaps[0])
    with pytest.raises(ValueError, match="θ has length 6"):
        swag.update(Snapshot(snaps[1].sparse, snaps[1].other[:-1]))
    with pytest.raises(ValueError, match="differ in length"):
        SparseSWAG.from_snapshots([snaps[0], Snapshot(snaps[1].sparse[:10], snaps[1].other)])
    with pytest.raises(TypeError, match="re-iterable"):
        SparseSWAG.from_snapshots(iter(snaps))
    with pytest.raises(RuntimeError, match="no snapshots"):
        SparseSWAG(mask).mean()
    # strict=False drops off-support values
    lax = SparseSWAG(mask, strict=False)
    lax.update(Snapshot(torch.ones(1000, dtype=torch.float64), snaps[0].other))
    assert (lax.mean().sparse[~mask] == 0).all() and (lax.mean().sparse[mask] == 1).all()
