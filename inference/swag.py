"""SWAG restricted to the sparse support: Gaussian second moments of the collected samples.

SWAG (Maddox, Izmailov, Garipov, Vetrov & Wilson 2019, "A Simple Baseline for Bayesian
Uncertainty in Deep Learning", §3 / Eq. 1–2) fits a Gaussian N(θ̄, Σ) to the iterates θ_1..θ_T:

    θ̄       = (1/T) Σ_t θ_t                          running first moment (= WMA's mean)
    \\bar{θ²} = (1/T) Σ_t θ_t²                         running uncentred second moment
    Σ_diag   = diag(\\bar{θ²} − θ̄²)
    D        = [θ_{T−K+1} − θ̄_{T−K+1}, …, θ_T − θ̄_T]   last K deviations from the running mean
    Σ        = ½ (Σ_diag + D Dᵀ / (K − 1))

and samples θ̃ = θ̄ + (1/√2) Σ_diag^{1/2} z₁ + (1/√(2(K−1))) D z₂, z₁ ~ N(0, I), z₂ ~ N(0, I_K).

Here a sample is a :class:`~cigl_bayes.averaging.Snapshot`: the flat sparse vector M⊙Z⊙W
(mostly exact zeros) and the flat dense vector θ.  The moments of the sparse part are kept only
on a fixed *support* S (positions that may be non-zero), so the memory is O((K + 2)·|S|) for the
sparse part plus O((K + 2)·dim θ) for θ, never O(K·dense size).  Off S every moment, deviation
and sample is exactly 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch

from cigl_bayes.averaging import Snapshot

__all__ = ["SparseSWAG"]

_MOMENTS = ("mean_sparse", "sq_sparse", "dev_sparse", "mean_other", "sq_other", "dev_other")


class SparseSWAG:
    """SWAG moments (Maddox et al. 2019) of snapshots, held only on a flat sparse support.

    ``support`` is a flat tensor of length ``numel`` (the dense length of ``Snapshot.sparse``);
    its non-zero / True entries are the positions whose moments are kept.  Only their int64
    indices are stored.  ``max_rank`` is K, the number of deviation columns kept in a ring buffer.

    dtype: the moments are kept in ``dtype``, or, if None, in the dtype of the first snapshot;
    ``mean``, ``variance`` and ``sample`` return that dtype (cast with ``.to`` if needed).  The
    second moment is uncentred as in SWAG, so prefer float64 when the spread is tiny relative to
    the mean (cancellation in \\bar{θ²} − θ̄²).
    device: ``device`` (default: the support's device); snapshots are moved there on ``update``;
    ``to(device)`` moves everything.

    ``strict`` (default True): a snapshot with a non-zero value off the support raises
    ValueError; with ``strict=False`` such values are silently dropped (use this to restrict the
    posterior to e.g. the final mask).  ``var_floor`` is the lower clamp of the diagonal variance.
    """

    def __init__(
        self,
        support: torch.Tensor,
        max_rank: int = 20,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        var_floor: float = 0.0,
        strict: bool = True,
    ) -> None:
        if isinstance(max_rank, bool) or not isinstance(max_rank, int) or max_rank < 1:
            raise ValueError(f"max_rank (K, the number of deviation columns) must be an integer ≥ 1, got {max_rank!r}")
        if var_floor < 0:
            raise ValueError(f"var_floor must be ≥ 0, got {var_floor}")
        support = torch.as_tensor(support)
        if support.dim() != 1:
            raise ValueError(f"support must be a flat (1-D) tensor over the sparse vector, got {tuple(support.shape)}")
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        self.max_rank = max_rank
        self.numel = support.numel()
        self.var_floor = float(var_floor)
        self.strict = strict
        self._dtype = dtype
        self._device = torch.device(device) if device is not None else support.device
        mask = support if support.dtype == torch.bool else support != 0
        self.index = torch.nonzero(mask, as_tuple=False).flatten().to(self._device)  # int64, sorted
        self.count = 0
        self.mean_sparse: torch.Tensor | None = None  # (nnz,)   running θ̄ on the support
        self.sq_sparse: torch.Tensor | None = None  # (nnz,)     running \bar{θ²} on the support
        self.dev_sparse: torch.Tensor | None = None  # (K, nnz)  ring buffer of deviations
        self.mean_other: torch.Tensor | None = None  # (dim θ,)
        self.sq_other: torch.Tensor | None = None  # (dim θ,)
        self.dev_other: torch.Tensor | None = None  # (K, dim θ)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_snapshots(
        cls,
        snapshots: Iterable[Snapshot],
        max_rank: int = 20,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        var_floor: float = 0.0,
    ) -> SparseSWAG:
        """Fit on ``snapshots`` with support = the union of their non-zero positions.

        Two passes: the first builds the support, the second updates the moments, so
        ``snapshots`` must be re-iterable (a list, tuple or :class:`SnapshotStore`); a one-shot
        iterator or generator raises TypeError (wrap it in ``list(...)`` first).
        """
        if isinstance(snapshots, Iterator):
            raise TypeError(
                "SparseSWAG.from_snapshots makes two passes (support, then moments) and needs a re-iterable "
                "such as a list or a SnapshotStore, not a one-shot iterator; wrap it in list(...)"
            )
        union: torch.Tensor | None = None
        for snap in snapshots:
            nz = snap.sparse.detach().flatten() != 0
            if union is None:
                union = nz.clone()
            elif nz.numel() != union.numel():
                raise ValueError(
                    f"snapshot sparse vectors differ in length: {nz.numel()} vs {union.numel()} in an earlier one"
                )
            else:
                union |= nz.to(union.device)
        if union is None:
            raise ValueError("SparseSWAG.from_snapshots needs at least one snapshot")
        swag = cls(union, max_rank, device=device, dtype=dtype, var_floor=var_floor, strict=True)
        for snap in snapshots:
            swag.update(snap)
        return swag

    @classmethod
    def from_state_dict(cls, state: dict, device: torch.device | str | None = None) -> SparseSWAG:
        """Rebuild an instance from :meth:`state_dict` (on ``device``, default CPU)."""
        support = torch.zeros(int(state["numel"]), dtype=torch.bool)
        support[state["index"].cpu()] = True
        swag = cls(support, int(state["max_rank"]), device=device or "cpu", var_floor=float(state["var_floor"]),
                   strict=bool(state["strict"]))
        swag.load_state_dict(state)
        return swag

    # ------------------------------------------------------------------ properties
    @property
    def nnz(self) -> int:
        """|S|, the number of support positions."""
        return self.index.numel()

    @property
    def rank(self) -> int:
        """Number of deviation columns collected so far, min(count, K)."""
        return min(self.count, self.max_rank)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def dtype(self) -> torch.dtype | None:
        """The moments' dtype (None before the first update when no dtype was given)."""
        return self.mean_sparse.dtype if self.mean_sparse is not None else self._dtype

    @property
    def nbytes(self) -> int:
        """Bytes held in this object's tensors (support indices, moments, deviation buffers)."""
        tensors = [self.index] + [getattr(self, name) for name in _MOMENTS]
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)

    def support(self) -> torch.Tensor:
        """The support as a dense flat bool tensor of length ``numel`` (built on demand)."""
        mask = torch.zeros(self.numel, dtype=torch.bool, device=self._device)
        mask[self.index] = True
        return mask

    # ------------------------------------------------------------------ updates
    def _check(self, snap: Snapshot) -> tuple[torch.Tensor, torch.Tensor]:
        sparse, other = snap.sparse.detach().flatten(), snap.other.detach().flatten()
        if sparse.numel() != self.numel:
            raise ValueError(
                f"snapshot sparse vector has length {sparse.numel()} but the support has length {self.numel}"
            )
        if self.mean_other is not None and other.numel() != self.mean_other.numel():
            raise ValueError(
                f"snapshot dense vector θ has length {other.numel()} but earlier ones had {self.mean_other.numel()}"
            )
        sparse = sparse.to(self._device)
        values = sparse[self.index]
        if self.strict:
            off = int(torch.count_nonzero(sparse)) - int(torch.count_nonzero(values))
            if off:
                raise ValueError(
                    f"snapshot has {off} non-zero values off the SWAG support; build the support from all "
                    "snapshots (from_snapshots) or pass strict=False to drop them"
                )
        return values, other.to(self._device)

    def _allocate(self, values: torch.Tensor, other: torch.Tensor) -> None:
        dtype = self._dtype or values.dtype
        if not dtype.is_floating_point:
            raise ValueError(f"snapshots must be floating point (or pass dtype=...), got {dtype}")
        kw = {"dtype": dtype, "device": self._device}
        self.mean_sparse, self.sq_sparse = torch.zeros(self.nnz, **kw), torch.zeros(self.nnz, **kw)
        self.dev_sparse = torch.zeros(self.max_rank, self.nnz, **kw)
        self.mean_other, self.sq_other = torch.zeros(other.numel(), **kw), torch.zeros(other.numel(), **kw)
        self.dev_other = torch.zeros(self.max_rank, other.numel(), **kw)

    @torch.no_grad()
    def update(self, snap: Snapshot) -> None:
        """Add x_t: θ̄ += (x_t − θ̄)/t, \\bar{θ²} += (x_t² − \\bar{θ²})/t, D[t mod K] = x_t − θ̄_t."""
        values, other = self._check(snap)
        if self.mean_sparse is None:
            self._allocate(values, other)
        values, other = values.to(self.mean_sparse.dtype), other.to(self.mean_sparse.dtype)
        slot = self.count % self.max_rank
        self.count += 1
        alpha = 1.0 / self.count
        for x, mean, sq, dev in ((values, self.mean_sparse, self.sq_sparse, self.dev_sparse),
                                 (other, self.mean_other, self.sq_other, self.dev_other)):
            mean.add_(x - mean, alpha=alpha)  # same arithmetic as WeightMaskAverage
            sq.add_(x * x - sq, alpha=alpha)
            dev[slot] = x - mean

    # ------------------------------------------------------------------ read-out
    def _require(self) -> None:
        if self.count == 0:
            raise RuntimeError("SparseSWAG has no snapshots yet")

    def _dense(self, values: torch.Tensor) -> torch.Tensor:
        out = values.new_zeros(self.numel)
        out[self.index] = values
        return out

    def mean(self) -> Snapshot:
        """θ̄ (SWA / WMA mean) as a Snapshot; the sparse vector is dense-flat with zeros off the support."""
        self._require()
        return Snapshot(self._dense(self.mean_sparse), self.mean_other.clone())

    def _variance(self) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple((sq - mean * mean).clamp_(min=self.var_floor)
                     for mean, sq in ((self.mean_sparse, self.sq_sparse), (self.mean_other, self.sq_other)))

    def variance(self) -> Snapshot:
        """diag Σ_diag = max(\\bar{θ²} − θ̄², var_floor) as a Snapshot (0 off the support)."""
        self._require()
        var_s, var_o = self._variance()
        return Snapshot(self._dense(var_s), var_o)

    def deviations(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The collected deviation columns, oldest first, as rows: ((k, nnz) on the support, (k, dim θ)).

        Row j is x_t − θ̄_t for the j-th of the last k = min(count, K) snapshots; sparse columns
        follow ``index`` (the support positions in increasing order).
        """
        self._require()
        k = self.rank
        shift = -(self.count % self.max_rank) if self.count > self.max_rank else 0
        return (torch.roll(self.dev_sparse, shift, dims=0)[:k].clone(),
                torch.roll(self.dev_other, shift, dims=0)[:k].clone())

    @torch.no_grad()
    def sample(
        self,
        generator: torch.Generator | None = None,
        scale: float = 0.5,
        diagonal: bool = True,
        low_rank: bool = True,
    ) -> Snapshot:
        """One draw θ̃ = θ̄ + √scale·Σ_diag^{1/2} z₁ + √scale/√(K−1)·Dᵀ z₂ (SWAG, Maddox et al. 2019).

        Covariance scale·(Σ_diag + D Dᵀ/(K−1)); scale = ½ is SWAG's Σ = ½(Σ_diag + D Dᵀ/(K−1)).
        K is the number of deviation columns collected; the low-rank term is skipped when K < 2.
        z₁ (first, sparse then θ) and z₂ are drawn from ``generator`` on its own device and moved to
        this object's device, so a CPU generator with a fixed seed reproduces a draw on any device.
        Off the support the sample is exactly 0.  With both terms off it returns θ̄.
        """
        self._require()
        if scale < 0:
            raise ValueError(f"scale must be ≥ 0, got {scale}")
        dtype = self.mean_sparse.dtype
        gen_device = generator.device if generator is not None else torch.device("cpu")

        def randn(n: int) -> torch.Tensor:
            return torch.randn(n, generator=generator, dtype=dtype, device=gen_device).to(self._device)

        s, o = self.mean_sparse.clone(), self.mean_other.clone()
        if diagonal:
            var_s, var_o = self._variance()
            s.add_(var_s.sqrt_().mul_(randn(self.nnz)), alpha=math.sqrt(scale))
            o.add_(var_o.sqrt_().mul_(randn(o.numel())), alpha=math.sqrt(scale))
        k = self.rank
        if low_rank and k >= 2:
            z2 = randn(k)
            coef = math.sqrt(scale) / math.sqrt(k - 1)
            s.add_(z2 @ self.dev_sparse[:k], alpha=coef)  # Dᵀ z₂; row order is irrelevant in law, fixed in state
            o.add_(z2 @ self.dev_other[:k], alpha=coef)
        return Snapshot(self._dense(s), o)

    # ------------------------------------------------------------------ state, device
    def state_dict(self) -> dict:
        """Plain ints/floats/bools and tensors (loadable with ``torch.load(..., weights_only=True)``)."""
        state = {"max_rank": self.max_rank, "numel": self.numel, "count": self.count, "var_floor": self.var_floor,
                 "strict": self.strict, "index": self.index}
        state.update({name: getattr(self, name) for name in _MOMENTS})
        return state

    def load_state_dict(self, state: dict, device: torch.device | str | None = None) -> None:
        """Load :meth:`state_dict` output; the support, numel and max_rank must match this object's."""
        if int(state["max_rank"]) != self.max_rank:
            raise ValueError(f"state has max_rank {state['max_rank']} but this SparseSWAG has {self.max_rank}")
        if int(state["numel"]) != self.numel:
            raise ValueError(f"state has support length {state['numel']} but this SparseSWAG has {self.numel}")
        if not torch.equal(state["index"].cpu(), self.index.cpu()):
            raise ValueError("state's support differs from this SparseSWAG's support")
        if device is not None:
            self._device = torch.device(device)
            self.index = self.index.to(self._device)
        self.count = int(state["count"])
        self.var_floor = float(state["var_floor"])
        self.strict = bool(state["strict"])
        for name in _MOMENTS:
            t = state[name]
            setattr(self, name, None if t is None else t.detach().clone().to(self._device))

    def to(self, device: torch.device | str) -> SparseSWAG:
        """Move all tensors to ``device`` (in place); returns self."""
        self._device = torch.device(device)
        self.index = self.index.to(self._device)
        for name in _MOMENTS:
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.to(self._device))
        return self
