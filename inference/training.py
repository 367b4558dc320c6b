"""Training with either engine: the one loop of ``cigl_bayes.train`` with the Pyro objective plugged in.

    from cigl_bayes.inference import run
    run(TrainConfig(method="cigl", engine="svi", ...), "runs/cigl-svi")

``cigl_bayes`` knows only the plain objective, so that imports flow one way (inference →
cigl_bayes); :data:`ENGINES` maps every ``TrainConfig.engine`` to the factory of its objective.
"""

from __future__ import annotations

from pathlib import Path

from cigl_bayes import train
from cigl_bayes.config import TrainConfig

from .objective import ElboObjective

ENGINES: dict[str, train.ObjectiveFactory] = {"plain": train.plain_objective, "svi": ElboObjective.from_config}


def run(config: TrainConfig, out_dir: str | Path, **kwargs) -> dict | None:
    """:func:`cigl_bayes.train.run` with both engines available (same keyword arguments)."""
    return train.run(config, out_dir, objectives=ENGINES, **kwargs)


class Trainer(train.Trainer):
    """:class:`cigl_bayes.train.Trainer` with both engines available (same arguments)."""

    def __init__(self, config: TrainConfig, out_dir: str | Path, **kwargs):
        kwargs.setdefault("objectives", ENGINES)
        super().__init__(config, out_dir, **kwargs)
