"""A committed run folder as a :class:`TrainedRun`: read from its ``weights.safetensors``.

A study commits each finished run's small files and its weights file, never its checkpoint
(``cigl_bayes/weights.py``).  ``load_run`` reads such a folder through :func:`load_committed_run`,
so the committed runs of ``docs/results`` work like a run folder on the machine that trained them:

    from cigl_bayes.inference import load_run
    run = load_run("docs/results/controlled/runs/cigl-keep0.99-plain-s0.95-seed3")
    run.predict(images, "wma", bn_protocol="recomputed-augmented").probs

The file holds the final weights M⊙W with the BatchNorm statistics tracked in training, the WMA
mean, and the collected samples only of a method that predicts with them (cigl-no-wma), so
``predictive`` and ``swag`` of a CigL run are refused by name; ``final``, ``wma``, ``mc-z`` and
``temperature_scaled`` (from ``metrics.json``) work.  BatchNorm statistics of the averaged weights
are recomputed from the training data (the file stores none for them).  Loading runs no code:
safetensors holds tensors and text.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from cigl_bayes.evaluate import classes_of_weights, config_of_weights, network_of_weights
from cigl_bayes.train import config_file_problem
from cigl_bayes.weights import WEIGHTS_FILE, WeightsFileError, load_run_weights

from .run import RunFolderError, TrainedRun


@dataclasses.dataclass
class CommittedRun(TrainedRun):
    """A :class:`TrainedRun` whose weights come from the run folder's ``weights.safetensors``."""

    @property
    def where(self) -> str:
        return f"committed run {self.run_dir} ({WEIGHTS_FILE})"

    @property
    def mean_only_option(self) -> str:
        return WEIGHTS_FILE


def load_committed_run(run_dir: Path, data_dir: str | None, device: torch.device,
                       amp: str | None) -> CommittedRun:
    """The run of ``run_dir/weights.safetensors``, checked against the folder's ``config.json``
    (a weights file copied in from another run is refused by name).  See :func:`inference.load_run`."""
    path = run_dir / WEIGHTS_FILE
    try:
        weights, meta = load_run_weights(path)
        stored = config_of_weights(path, meta)
    except WeightsFileError as err:
        raise RunFolderError(str(err)) from None
    problem = config_file_problem(run_dir, meta["config"], source=WEIGHTS_FILE)
    if problem:
        raise RunFolderError(problem)
    cfg = dataclasses.replace(stored, device=str(device), data_dir=data_dir or stored.data_dir,
                              amp=amp or stored.amp)
    try:
        net = network_of_weights(path, weights, meta, cfg, device, classes_of_weights(meta, cfg))
    except WeightsFileError as err:
        raise RunFolderError(str(err)) from None
    net.module.eval()
    epochs = [cfg.wma_start_epoch + i for i in range(len(weights.samples))]
    run = CommittedRun(run_dir, cfg, net, weights.wma, weights.samples, epochs, _history(run_dir), device,
                       data_dir, bn_batches=cfg.bn_batches)
    run._final_state = {k: v.clone() for k, v in net.module.state_dict().items()}
    return run


def _history(run_dir: Path) -> list[dict]:
    """The per-epoch log of metrics.json (its ``history``), or [] when it cannot be read."""
    try:
        history = json.loads((run_dir / "metrics.json").read_text()).get("history", [])
    except (OSError, ValueError, AttributeError):
        return []
    return history if isinstance(history, list) else []
