"""Data-parallel training through ``torch.distributed`` (NCCL on GPU, gloo on CPU).

Launch with ``torchrun --nproc_per_node=K -m experiments.train ...`` (or ``svi_cifar``).  Every
rank holds the whole network, the same mask M and the same random-mask stream Z (same seeds);
each global batch is split into K contiguous shards, one per rank.  After the backward pass the
gradients (and, at mask-update steps, the dense gradient ∂L/∂W that RigL regrows from) are
all-reduced as Σ_r (n_r / n) g_r, the gradient of the global-batch mean, so every rank takes
the same step and the same mask decision.  Rank 0 alone writes checkpoints, samples and
results.  BatchNorm statistics are per rank unless the model is converted to SyncBatchNorm
(done automatically on CUDA), so on CPU only BatchNorm-free models reproduce the 1-process run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def dist_info() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size())
    return DistInfo()


def init_from_env(device: str = "auto") -> tuple[DistInfo, str]:
    """Join the process group ``torchrun`` describes (WORLD_SIZE > 1); returns (info, device name).

    Each rank uses ``cuda:LOCAL_RANK`` on GPU machines (NCCL), the CPU otherwise (gloo)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return dist_info(), device
    use_cuda = device != "cpu" and torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist_info(), device if use_cuda else "cpu"


def shard_positions(start: int, stop: int, info: DistInfo) -> slice:
    """This rank's contiguous part of the global batch [start, stop) (sizes differ by ≤ 1)."""
    n = stop - start
    base, extra = divmod(n, info.world)
    lo = start + info.rank * base + min(info.rank, extra)
    return slice(lo, lo + base + (1 if info.rank < extra else 0))


def all_reduce_mean_(tensors: list[torch.Tensor], local_count: int, info: DistInfo) -> None:
    """In place: t ← Σ_r (n_r / n) t_r over ranks (one coalesced all-reduce for the whole list)."""
    if not info.active or not tensors:
        return
    device = tensors[0].device
    count = torch.tensor([float(local_count)], device=device, dtype=torch.float64)
    dist.all_reduce(count)
    flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors]) * (local_count / count)
    dist.all_reduce(flat)
    for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(part.view_as(t))


def barrier(info: DistInfo) -> None:
    if info.active:
        dist.barrier()
