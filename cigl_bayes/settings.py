"""The settings of a CigL run (:class:`CigLSettings`): the options that fix what it computes,
resolved from ``CigL(...)``'s keyword arguments and checked, each bad one a ValueError naming it.
:meth:`cigl_bayes.CigL.state_dict` records them, and ``load_state_dict`` refuses a state saved
under other settings, but for the run's length (a resumed run may be extended)."""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

from .config import METHODS
from .random_mask import check_keep
from .sparsity import DISTRIBUTIONS, check_sparsity

__all__ = ["EXTENDABLE_SETTINGS", "CigLSettings"]

EXTENDABLE_SETTINGS = ("total_steps", "collect_from_epoch")  # may differ on resume: the run is extended


@dataclass(frozen=True)
class CigLSettings:
    """The options that fix what a CigL run computes, resolved and checked.  :meth:`CigL.state_dict`
    records them, and :meth:`CigL.load_state_dict` refuses a state saved under other settings (a
    resumed run would silently follow another schedule, keep or method)."""

    method: str
    sparsity: float
    keep: float
    distribution: str
    total_steps: int
    delta_t: int
    drop_fraction: float
    update_end: float
    collect_from_epoch: int | None  # None: 0.8 × the run's epochs, fixed at the first end_epoch()

    @classmethod
    def resolve(cls, *, method: str = "cigl", sparsity: float | None = None, total_steps: int,
                distribution: str = "erk", keep: float | None = None, delta_t: int = 100,
                drop_fraction: float = 0.3, update_end: float = 0.75,
                collect_from_epoch: int | None = None) -> CigLSettings:
        """The settings of ``CigL(...)``'s keyword arguments, or a ValueError naming the bad one:
        sparsity defaults to 0.95 for the sparse methods (0 for ``dense``), keep to the method's."""
        if not isinstance(method, str) or method not in METHODS:
            raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
        if not isinstance(distribution, str) or distribution not in DISTRIBUTIONS:
            raise ValueError(f"unknown sparsity distribution {distribution!r}; known: {', '.join(DISTRIBUTIONS)}")
        config = METHODS[method]
        if config.sparse:
            sparsity = check_sparsity(0.95 if sparsity is None else sparsity)
        elif sparsity is None or (not isinstance(sparsity, bool) and sparsity == 0):
            sparsity = 0.0
        else:
            raise ValueError(f"method {method!r} trains every weight: leave sparsity out (got {sparsity!r})")
        if keep is not None:
            check_keep(keep)
        if not config.random_mask:
            if keep is not None and keep != 1:
                users = ", ".join(n for n, c in METHODS.items() if c.random_mask)
                raise ValueError(f"method {method!r} has no random mask Z, so keep={keep!r} would be ignored; "
                                 f"keep applies to {users}")
            keep = 1.0
        else:  # as TrainConfig.keep computes it, so a Trainer's keep reaches Z bit for bit
            keep = 1.0 - config.random_mask_rate if keep is None else check_keep(keep)
        return cls(method=method, sparsity=float(sparsity), keep=float(keep), distribution=distribution,
                   total_steps=_count("total_steps", total_steps, minimum=1),
                   delta_t=_count("delta_t", delta_t, minimum=1),
                   drop_fraction=_fraction("drop_fraction", drop_fraction),
                   update_end=_fraction("update_end", update_end),
                   collect_from_epoch=None if collect_from_epoch is None
                   else _count("collect_from_epoch", collect_from_epoch, minimum=0))

    def to_dict(self) -> dict:
        """Plain values, as :meth:`CigL.state_dict` records them."""
        return dataclasses.asdict(self)

    def differences(self, saved: dict) -> list[str]:
        """``name: saved → now`` for every setting a saved state disagrees with, but the run's length
        (``total_steps``, ``collect_from_epoch``): a resumed run may be extended (Lightning's
        ``max_epochs`` raised), and the schedule then follows the new length."""
        now = self.to_dict()
        return [f"{k} {saved[k]!r} in the state, {v!r} here" for k, v in now.items()
                if k in saved and k not in EXTENDABLE_SETTINGS and saved[k] != v]


def _count(name: str, value, *, minimum: int) -> int:
    """An integer option (numpy integers too; not a bool, not a float) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer ≥ {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return int(value)


def _fraction(name: str, value) -> float:
    """A fraction option in [0, 1] (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0.0 <= float(value) <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)
