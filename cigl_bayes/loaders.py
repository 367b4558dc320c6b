"""Batches for training and evaluation: a whole split resident on the device, served in seeded
order with the CIFAR training augmentation done on the device in one gather per batch.

* :class:`DeviceLoader`: one split (an :class:`~cigl_bayes.data.ArrayDataset`) as uint8 NCHW on the
  device; batches come out as float NCHW normalised ``(x / 255 − mean) / std`` and int64 labels,
  optionally with a random crop of the zero-padded image and a horizontal flip (:func:`crop_flip`).
* :class:`TensorLoader`: in-memory ``(x, y)`` tensors with the same interface, for toy problems.
* Epoch order and augmentation are a pure function of ``(seed, epoch)``, drawn up front on a CPU
  ``torch.Generator``, so a run resumed mid-epoch sees exactly the batches it would have seen.
* :func:`fingerprint`: a short hash of a loader's data, stored in metrics.json.

``cigl_bayes.data`` re-exports these names, so ``from cigl_bayes.data import DeviceLoader`` keeps working.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from .distributed import DistInfo, shard_positions

if TYPE_CHECKING:
    from .data import ArrayDataset

__all__ = ["DeviceLoader", "TensorLoader", "crop_flip", "fingerprint"]


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator seeded by (seed, epoch) through numpy's SeedSequence (well-mixed, reproducible)."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def crop_flip(x: Tensor, offsets: Tensor, flips: Tensor, pad: int) -> Tensor:
    """Zero-pad NCHW ``x`` by ``pad``, crop each image at ``offsets[i] = (dy, dx)``, mirror where ``flips``.

    One gather for the whole batch: rows ``dy + [0, H)``, columns ``dx + [0, W)`` (reversed if flipped).
    """
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # (n, h)
    cols = offsets[:, 1, None] + torch.arange(w, device=x.device)  # (n, w)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


class DeviceLoader:
    """Whole split resident on ``device`` as uint8 NCHW; yields (x normalised NCHW of ``dtype``, y int64).

    Batch order and augmentation (random 32x32 crop of the 4-zero-padded image, horizontal flip) are
    drawn for the whole epoch up front from a CPU generator seeded by ``(seed, epoch)``, so
    ``epoch(e, start_batch=k)`` yields exactly the batches ``k, k+1, ...`` of ``epoch(e)``.
    """

    pad = 4

    def __init__(
        self,
        ds: ArrayDataset,
        *,
        batch_size: int,
        device: torch.device | str,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool = True,
        augment: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if drop_last and batch_size > len(ds):
            raise ValueError(
                f"batch_size {batch_size} exceeds the {len(ds)} samples, so drop_last=True leaves no batch"
            )
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.device = torch.device(device)
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.drop_last, self.seed, self.channels_last = drop_last, seed, channels_last
        self.dtype = dtype
        if not 0 <= shard[0] < shard[1]:
            raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard}")
        self.shard = shard  # (rank, world): serve only this rank's part of every global batch
        self.images = torch.from_numpy(ds.images).to(self.device).permute(0, 3, 1, 2).contiguous()
        self.labels = torch.from_numpy(ds.labels).to(self.device)
        mean_t = torch.as_tensor(mean, dtype=dtype, device=self.device).view(1, -1, 1, 1)
        std_t = torch.as_tensor(std, dtype=dtype, device=self.device).view(1, -1, 1, 1)
        self.scale, self.shift = 1.0 / (255.0 * std_t), -mean_t / std_t  # x*scale + shift

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def _plan(self, epoch: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(order, crop offsets (N, 2) in [0, 2*pad], flip bits (N,)) for the epoch, on the device.

        Offsets and flips are per position in the epoch: the j-th sample served gets ``offsets[j]``.
        """
        gen = _epoch_generator(self.seed, epoch)
        n = self.num_samples
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        if not self.augment:
            return order.to(self.device), None, None
        offsets = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=gen)
        flips = torch.randint(0, 2, (n,), generator=gen).bool()
        return order.to(self.device), offsets.to(self.device), flips.to(self.device)

    def _batch(self, idx: Tensor, offsets: Tensor | None, flips: Tensor | None) -> tuple[Tensor, Tensor]:
        x = self.images[idx]
        if offsets is not None:
            x = crop_flip(x, offsets, flips, self.pad)
        x = x.to(self.dtype).mul_(self.scale).add_(self.shift)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.labels[idx]

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches of ``epoch``, starting at batch ``start_batch`` (for mid-epoch resume)."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must be in [0, {len(self)}], got {start_batch}")
        return self._iterate(epoch, start_batch)

    def _iterate(self, epoch: int, start_batch: int) -> Iterator[tuple[Tensor, Tensor]]:
        order, offsets, flips = self._plan(epoch)
        rank, world = self.shard
        for b in range(start_batch, len(self)):
            sl = slice(b * self.batch_size, min((b + 1) * self.batch_size, self.num_samples))
            if world > 1:
                sl = shard_positions(sl.start, sl.stop, DistInfo(rank, world))
            yield self._batch(order[sl], None if offsets is None else offsets[sl], None if flips is None else flips[sl])

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.epoch(0)


def fingerprint(loader) -> str | None:
    """A short SHA-256 of a loader's images and labels in order (None for a loader without them):
    stored in metrics.json so that analyses can tell whether two runs were scored on the same
    test points and whether the data found now are the data a run was trained on."""
    import hashlib

    images, labels = getattr(loader, "images", None), getattr(loader, "labels", None)
    if not isinstance(images, Tensor) and hasattr(loader, "x"):
        images, labels = loader.x, loader.y
    if not isinstance(images, Tensor) or not isinstance(labels, Tensor):
        index = getattr(loader, "index", None)  # ImageNet: the file list
        if index is None:
            return None
        digest = hashlib.sha256("\n".join(map(str, index.files)).encode())
        digest.update(np.asarray(index.labels).tobytes())
        return digest.hexdigest()[:16]
    digest = hashlib.sha256(images.detach().cpu().contiguous().numpy().tobytes())
    digest.update(labels.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class TensorLoader:
    """In-memory (x, y) tensors on ``device`` served in seeded shuffled batches, with the same
    interface as :class:`DeviceLoader` (``epoch(e, start_batch)``, ``num_samples``, ``len``):
    for toy problems such as 1-D regression (``experiments.toy_regression``)."""

    def __init__(self, x: Tensor, y: Tensor, *, batch_size: int, device: torch.device | str = "cpu",
                 shuffle: bool = True, seed: int = 0) -> None:
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"x and y must hold the same positive number of rows, got {len(x)} and {len(y)}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device = torch.device(device)
        self.x, self.y = x.to(self.device), y.to(self.device)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed

    @property
    def num_samples(self) -> int:
        return len(self.y)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.batch_size)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must be in [0, {len(self)}], got {start_batch}")
        n = self.num_samples
        order = torch.randperm(n, generator=_epoch_generator(self.seed, epoch)) if self.shuffle else torch.arange(n)
        order = order.to(self.device)
        return ((self.x[idx], self.y[idx]) for idx in order.split(self.batch_size)[start_batch:])

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return self.epoch(0)
