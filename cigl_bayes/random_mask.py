"""The random mask Z of CigL (paper §4.1, Algorithm 1): Z ~ Bernoulli(keep) every step.

Z is drawn over the flat buffer of all sparse weights from its own seeded ``torch.Generator``
(on the training device), so both engines — plain and Pyro — see the same stream of Z for the
same seed, and the generator state is part of every checkpoint.
"""

from __future__ import annotations

import numbers

import torch


def check_keep(keep: float) -> float:
    """Return ``keep`` if it lies in (0, 1], else raise a ValueError naming it."""
    if isinstance(keep, bool) or not isinstance(keep, numbers.Real) or not 0.0 < float(keep) <= 1.0:
        raise ValueError(f"keep probability must be in (0, 1], got {keep!r} (keep = 1 - random-mask rate)")
    return float(keep)


def random_keep_mask(
    numel: int, keep: float, generator: torch.Generator, *, dtype=torch.float32, device=None
) -> torch.Tensor:
    """One flat draw Z_i ~ Bernoulli(keep), i = 1..numel, as 0/1 values of ``dtype``."""
    out = torch.empty(numel, dtype=dtype, device=device if device is not None else generator.device)
    return out.bernoulli_(check_keep(keep), generator=generator)


class RandomKeepMask:
    """A seeded source of Z ~ Bernoulli(keep) over ``numel`` weights.

    ``keep == 1`` means no random mask: :meth:`sample` returns ``None`` and no random numbers are
    consumed, so CigL without the random mask has the same trajectory as RigL.
    ``rescale`` divides Z by keep (inverted weight dropout / DropConnect, used by ``rigl-wdp``).
    """

    def __init__(self, numel: int, keep: float, seed: int, device=None, *, rescale: bool = False):
        self.numel = numel
        self.keep = check_keep(keep)
        self.rescale = rescale
        self.generator = torch.Generator(device=device or "cpu")
        self.generator.manual_seed(seed)

    @property
    def active(self) -> bool:
        return self.keep < 1.0

    def sample(self, dtype=torch.float32) -> torch.Tensor | None:
        if not self.active:
            return None
        z = random_keep_mask(self.numel, self.keep, self.generator, dtype=dtype)
        return z.div_(self.keep) if self.rescale else z

    def state_dict(self) -> dict:
        return {"keep": self.keep, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
