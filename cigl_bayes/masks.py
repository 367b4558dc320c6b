"""The deterministic mask M of RigL / CigL and its update schedule.

All layer masks live in one flat boolean buffer (``DeterministicMask.flat``) with a float copy
(``DeterministicMask.float``) so that M⊙Z⊙W is one multiply over every sparse weight.
An update (RigL, SET, or none for 'static') runs every ΔT steps until ``end`` of training with
drop fraction f(t) = α/2 · (1 + cos(π t / T_end)) (RigL Eq. 1).  Every update keeps each
layer's non-zero count exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .sparsity import densities_for, layer_nnz

REGROWTH = ("gradient", "random", "none")  # rigl, set, static


@dataclass(frozen=True)
class MaskSchedule:
    """When M is updated and how much of it: every ``delta_t`` steps while t ≤ end·total."""

    total_steps: int
    delta_t: int = 100
    drop_fraction: float = 0.3
    end: float = 0.75

    def __post_init__(self) -> None:
        if self.delta_t <= 0:
            raise ValueError(f"mask update interval delta_t must be > 0, got {self.delta_t}")
        if not 0.0 <= self.drop_fraction <= 1.0:
            raise ValueError(f"drop fraction must be in [0, 1], got {self.drop_fraction}")
        if not 0.0 <= self.end <= 1.0:
            raise ValueError(f"mask-update end fraction must be in [0, 1], got {self.end}")

    @property
    def end_step(self) -> int:
        return int(self.end * self.total_steps)

    def is_update_step(self, step: int) -> bool:
        """``step`` counts completed optimiser steps (1, 2, …)."""
        return step % self.delta_t == 0 and 0 < step <= self.end_step

    def fraction(self, step: int) -> float:
        """Cosine-decayed drop fraction α/2 · (1 + cos(π t / T_end))."""
        if self.end_step == 0:
            return 0.0
        return 0.5 * self.drop_fraction * (1.0 + math.cos(math.pi * min(step, self.end_step) / self.end_step))


class DeterministicMask:
    """Boolean masks for a list of weight shapes, stored flat; exact non-zeros per layer.

    ``ever_active`` is the union of every mask M has been since it was made: the weights the
    sparse training has explored.  Its mean over all sparse-layer weights is the in-time
    over-parameterisation (ITOP) rate R = |∪_t M_t| / N (Liu et al., ICML 2021; CigL App. D.1),
    :attr:`itop_rate`."""

    def __init__(self, shapes: Sequence[torch.Size], flat: torch.Tensor, dtype: torch.dtype = torch.float32,
                 ever_active: torch.Tensor | None = None):
        self.shapes = [torch.Size(s) for s in shapes]
        self.numels = [math.prod(s) for s in self.shapes]
        if flat.dtype != torch.bool or flat.numel() != sum(self.numels):
            raise ValueError("mask buffer must be a bool tensor with one entry per sparse weight")
        self.flat = flat
        self.nnz = [int(v.sum()) for v in self.flat_views()]
        self.float = flat.to(dtype)  # 0/1 copy in the weights' dtype, for M⊙Z⊙W
        self.ever_active = flat.clone() if ever_active is None else ever_active.to(flat.device) | flat

    @classmethod
    def random(
        cls, shapes: Sequence[torch.Size], nnz: Sequence[int], generator: torch.Generator, device=None,
        dtype: torch.dtype = torch.float32,
    ) -> DeterministicMask:
        """Each layer keeps ``nnz[l]`` positions chosen uniformly at random (RigL's random init)."""
        parts = []
        for shape, k in zip(shapes, nnz):
            numel = math.prod(shape)
            keep = torch.zeros(numel, dtype=torch.bool)
            keep[torch.randperm(numel, generator=generator)[:k]] = True
            parts.append(keep)
        return cls(shapes, torch.cat(parts).to(device), dtype)

    @classmethod
    def dense(cls, shapes: Sequence[torch.Size], device=None, dtype: torch.dtype = torch.float32) -> DeterministicMask:
        return cls(shapes, torch.ones(sum(math.prod(s) for s in shapes), dtype=torch.bool, device=device), dtype)

    # -- views -----------------------------------------------------------------
    def flat_views(self, flat: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Per-layer 1-D views into ``flat`` (default: this mask)."""
        return list((self.flat if flat is None else flat).split(self.numels))

    def views(self, flat: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Per-layer views shaped like the weights."""
        return [v.view(s) for v, s in zip(self.flat_views(flat), self.shapes)]

    @property
    def density(self) -> float:
        return sum(self.nnz) / max(1, sum(self.numels))

    @property
    def itop_rate(self) -> float:
        """ITOP rate |∪_t M_t| / N: the fraction of all sparse-layer weights that were ever active."""
        return int(self.ever_active.sum()) / max(1, self.ever_active.numel())

    def to(self, device) -> DeterministicMask:
        return DeterministicMask(self.shapes, self.flat.to(device), self.float.dtype, self.ever_active)

    # -- update ----------------------------------------------------------------
    def update(
        self,
        weights: torch.Tensor,
        scores: torch.Tensor | None,
        drop_fraction: float,
        regrowth: str = "gradient",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Drop the ⌊f·nnz⌋ smallest-|w| active weights of each layer and regrow as many.

        ``weights`` and ``scores`` are flat (like ``self.flat``).  Regrowth picks the largest
        ``|scores|`` (RigL: the dense gradient ∂L/∂(M⊙Z⊙W)) or uniform random scores (SET) among
        positions not kept after the drop (so a just-dropped weight may come back).  The drop count
        is ⌊f·nnz⌋ (RigL; the official CigL code rounds up).  Returns the flat boolean set of
        *regrown* positions — every position the growth step picked, a just-dropped-and-regrown one
        included — whose weights and momentum the caller zeroes (as the official code's
        ``abs_grad_growth`` does).

        Per layer it costs one top-k (batched over the two rows "drop" and "grow") plus a
        top-k over 2k candidates; no Python work per element.
        """
        if regrowth not in REGROWTH:
            raise ValueError(f"unknown regrowth {regrowth!r}; known: {', '.join(REGROWTH)}")
        new_flat = self.flat.clone()
        grown = torch.zeros_like(self.flat)
        if regrowth == "none" or drop_fraction <= 0:
            return grown
        if regrowth == "random":
            scores = torch.rand(weights.shape, generator=generator, device="cpu").to(weights.device)
        elif scores is None:
            raise ValueError("RigL regrowth needs the dense gradient scores")
        layers = zip(self.flat_views(), self.flat_views(new_flat), self.flat_views(grown),
                     weights.split(self.numels), scores.split(self.numels), self.nnz)
        for old, new, grown_here, w, s, nnz in layers:
            k = int(drop_fraction * nnz)
            if k == 0 or nnz == old.numel():
                continue
            inf = torch.tensor(float("inf"), device=w.device, dtype=w.dtype)
            grow_score = s.abs().to(w.dtype)
            rows = torch.stack([torch.where(old, -w.abs(), -inf),  # top-k: the k smallest active |w|
                                torch.where(old, -inf, grow_score)])  # top-k: best inactive scores
            dropped, inactive_best = rows.topk(k, dim=1).indices
            new[dropped] = False
            # regrow among (inactive ∪ dropped): its top-k lies within these 2k candidates
            cand = torch.cat([inactive_best, dropped])
            eligible = torch.cat([~old[inactive_best], torch.ones_like(dropped, dtype=torch.bool)])
            cand_score = torch.where(eligible, grow_score[cand], -inf)
            picked = cand[cand_score.topk(k).indices]
            new[picked] = True
            grown_here[picked] = True
        self.flat.copy_(new_flat)
        self.float.copy_(new_flat)
        self.ever_active |= new_flat
        return grown

    # -- persistence -----------------------------------------------------------
    def state_dict(self) -> dict:
        return {"shapes": [list(s) for s in self.shapes], "flat": self.flat.cpu(),
                "ever_active": self.ever_active.cpu()}

    def load_state_dict(self, state: dict) -> None:
        """Load M (and the union of past masks; a checkpoint from before ITOP was recorded has
        none, and the union restarts from the current M, so its rate is then a lower bound)."""
        if [list(s) for s in self.shapes] != state["shapes"]:
            raise ValueError("checkpoint mask shapes do not match the model's sparse weights")
        self.flat.copy_(state["flat"].to(self.flat.device))
        self.float.copy_(self.flat)
        self.nnz = [int(v.sum()) for v in self.flat_views()]
        ever = state.get("ever_active")
        self.ever_active = self.flat.clone() if ever is None else ever.to(self.flat.device) | self.flat


def initial_mask(module: nn.Module, names: Sequence[str], sparsity: float, distribution: str,
                 seed: int) -> DeterministicMask:
    """M at the start: ERK or uniform per-layer densities for ``sparsity``, each layer's positions
    drawn at random from a generator seeded by ``seed`` (RigL's initialisation); all ones at
    sparsity 0."""
    params = dict(module.named_parameters())
    shapes = [params[n].shape for n in names]
    first = params[names[0]]
    if sparsity > 0:
        nnz = layer_nnz(shapes, densities_for(shapes, sparsity, distribution))
        gen = torch.Generator().manual_seed(seed)
        return DeterministicMask.random(shapes, nnz, gen, device=first.device, dtype=first.dtype)
    return DeterministicMask.dense(shapes, device=first.device, dtype=first.dtype)
