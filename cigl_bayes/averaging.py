"""Weight & mask averaging (WMA, paper Algorithm 1) and the store of collected samples.

A *snapshot* is one sample of the parameters: the sparse part M⊙Z⊙W (flat) and the dense
part θ (flat).  WMA keeps their running mean, mean_t = mean_{t−1} + (x_t − mean_{t−1}) / t, the
moment-matched posterior mean of the paper's Bayesian reading; its support is ⊆ the union of
the collected masks.  :class:`SnapshotStore` keeps every snapshot on disk, storing only the
values on the support (memory ∝ non-zeros), for predictive sampling and SWAG later.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .runs import atomic_torch_save


@dataclass
class Snapshot:
    sparse: torch.Tensor  # flat M⊙Z⊙W
    other: torch.Tensor  # flat θ


class WeightMaskAverage:
    """Running arithmetic mean of snapshots (first moment)."""

    def __init__(self) -> None:
        self.count = 0
        self.sparse: torch.Tensor | None = None
        self.other: torch.Tensor | None = None

    @torch.no_grad()
    def update(self, snap: Snapshot) -> None:
        self.count += 1
        if self.sparse is None:
            self.sparse, self.other = snap.sparse.detach().clone(), snap.other.detach().clone()
            return
        self.sparse.add_(snap.sparse - self.sparse, alpha=1.0 / self.count)
        self.other.add_(snap.other - self.other, alpha=1.0 / self.count)

    def mean(self) -> Snapshot:
        if self.sparse is None:
            raise RuntimeError("WeightMaskAverage has no snapshots yet")
        return Snapshot(self.sparse, self.other)

    def state_dict(self) -> dict:
        return {"count": self.count, "sparse": self.sparse, "other": self.other}

    def load_state_dict(self, state: dict, device=None) -> None:
        self.count = state["count"]
        self.sparse = None if state["sparse"] is None else state["sparse"].to(device)
        self.other = None if state["other"] is None else state["other"].to(device)


def pack_snapshot(snap: Snapshot) -> dict:
    """A sample M⊙Z⊙W as its support (one bit per sparse weight, packed) and the values on it, plus
    θ: at 95% sparsity about a twelfth of the dense vector.  CPU tensors, exact."""
    sparse = snap.sparse.detach().cpu()
    support = sparse != 0
    return {"numel": sparse.numel(), "support": torch.from_numpy(np.packbits(support.numpy())),
            "values": sparse[support].clone(), "other": snap.other.detach().cpu().clone()}


def unpack_snapshot(record: dict, device=None) -> Snapshot:
    """The :class:`Snapshot` that :func:`pack_snapshot` packed, on ``device``."""
    bits = np.unpackbits(record["support"].numpy(), count=record["numel"]).astype(bool)
    sparse = record["values"].new_zeros(record["numel"])
    sparse[torch.from_numpy(bits)] = record["values"]
    return Snapshot(sparse.to(device), record["other"].to(device))


class SnapshotStore:
    """Snapshots on disk as ``<folder>/sample_XXXX.pt``: packed support bits, values on it, θ."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, index: int) -> Path:
        return self.folder / f"sample_{index:04d}.pt"

    def save(self, index: int, snap: Snapshot, *, epoch: int) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"epoch": epoch, **pack_snapshot(snap)}, self.path(index))
        return self.path(index)

    def load(self, index: int, device=None) -> Snapshot:
        return unpack_snapshot(torch.load(self.path(index), map_location="cpu", weights_only=True), device)

    def clear(self, keep: int = 0) -> None:
        """Delete the stored samples with index ≥ ``keep`` (all of them by default)."""
        for i in self.indices():
            if i >= keep:
                self.path(i).unlink(missing_ok=True)

    def indices(self) -> list[int]:
        return sorted(int(p.stem.split("_")[1]) for p in self.folder.glob("sample_*.pt"))

    def __len__(self) -> int:
        return len(self.indices())

    def __iter__(self):
        return (self.load(i) for i in self.indices())


class MemorySnapshotStore:
    """The collected samples in memory (same interface as :class:`~cigl_bayes.averaging.SnapshotStore`,
    which keeps them on disk for run folders)."""

    def __init__(self) -> None:
        self.snapshots: list[Snapshot] = []

    def save(self, index: int, snap: Snapshot, *, epoch: int) -> None:
        del self.snapshots[index:]
        self.snapshots.append(Snapshot(snap.sparse.detach().clone(), snap.other.detach().clone()))

    def clear(self, keep: int = 0) -> None:
        del self.snapshots[keep:]

    def __len__(self) -> int:
        return len(self.snapshots)

    def __iter__(self):
        return iter(self.snapshots)
