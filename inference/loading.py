"""Reading a finished run folder from disk: ``load_run(run_dir) -> TrainedRun``
(:mod:`inference.run`).  A training run folder is read from its checkpoint (config, network,
mask, WMA) and its stored samples, each checked against the other; a committed one
(``weights.safetensors``, no checkpoint) from its weights file (:mod:`inference.committed`).
Nothing is unpickled: checkpoints load with ``weights_only`` (``cigl_bayes.runs.load_checkpoint``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from cigl_bayes.averaging import Snapshot, SnapshotStore
from cigl_bayes.config import TrainConfig
from cigl_bayes.device import resolve_device
from cigl_bayes.network import SparseNetwork
from cigl_bayes.predict import FINAL_RECOMPUTED_KEY
from cigl_bayes.runs import CheckpointError, load_checkpoint
from cigl_bayes.sparsity import sparse_parameter_names
from cigl_bayes.train import config_file_problem
from cigl_bayes.weights import WEIGHTS_FILE

from .run import RunFolderError, TrainedRun

AVERAGE_TOLERANCE = 1e-4  # stored samples vs the checkpoint's WMA, relative to the largest |weight| (≥ 1)


def load_run(run_dir: str | Path, data_dir: str | None = None, device: str = "auto",
             amp: str | None = None) -> TrainedRun:
    """Read a finished run folder (see docs/api.md): config, network in eval mode with its final
    weights and BatchNorm statistics, mask, WMA mean and the stored samples, checked against the
    checkpoint.  ``data_dir`` is where the training images are, for BatchNorm recomputation.
    A committed run folder (``weights.safetensors``, no checkpoint: ``docs/results``) is read from
    its weights file (:mod:`inference.committed`; it keeps no samples of a CigL run).

    ``amp`` is the precision of every forward pass made from the loaded run, BatchNorm
    recomputation included: None keeps the run's own ``--amp`` (resolved on this machine, as
    training resolved it on its own), "off" evaluates in float32, "bf16" under bf16 autocast.
    The precision in use is :attr:`TrainedRun.compute_dtype`.  A ``final`` predictor that keeps the
    BatchNorm statistics tracked in training (RigL, dense) keeps them from training's precision."""
    if amp is not None and amp not in ("auto", "bf16", "off"):
        raise ValueError(f"amp must be auto, bf16, off or None (the run's own), got {amp!r}")
    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise RunFolderError(f"run folder {run_dir} is a file, expected a run folder")
    if not run_dir.is_dir():
        raise RunFolderError(f"run folder {run_dir} does not exist")
    ckpt = run_dir / "checkpoint.pt"
    if not ckpt.exists():
        if (run_dir / WEIGHTS_FILE).exists():  # a committed run: its weights file, not its checkpoint
            from .committed import load_committed_run

            return load_committed_run(run_dir, data_dir, resolve_device(device), amp)
        raise RunFolderError(f"{run_dir} has no checkpoint.pt or {WEIGHTS_FILE}: not a run folder, or training "
                             "never finished an epoch")
    dev = resolve_device(device)
    try:
        state = load_checkpoint(ckpt, map_location=dev)
    except CheckpointError as err:
        raise RunFolderError(str(err)) from err
    problem = config_file_problem(run_dir, state["config"])
    if problem:
        raise RunFolderError(problem)
    cfg = TrainConfig.from_dict(state["config"])
    if state["epoch"] < cfg.epochs:
        raise RunFolderError(f"run {run_dir} stopped at epoch {state['epoch']} of {cfg.epochs}; resume it first "
                             "(the same training command with the same --out)")
    cfg = dataclasses.replace(cfg, device=str(dev), data_dir=data_dir or cfg.data_dir, amp=amp or cfg.amp)
    net = _network(cfg, state["module"], dev)
    net.mask.load_state_dict(state["mask"])
    net.module.load_state_dict(state["module"])
    net.module.eval()
    wma_state = state["wma"]
    wma = None if wma_state["sparse"] is None else Snapshot(wma_state["sparse"].to(dev), wma_state["other"].to(dev))
    samples, epochs = _samples(run_dir, wma_state["count"], cfg, dev)
    _check_average(run_dir, samples, wma)
    run = TrainedRun(run_dir, cfg, net, wma, samples, epochs, state["history"], dev, data_dir,
                     bn_batches=cfg.bn_batches)
    run._final_state = {k: v.clone() for k, v in net.module.state_dict().items()}
    run._stored_bn = _stored_batchnorm(run, wma)
    return run


def _stored_batchnorm(run: TrainedRun, wma: Snapshot | None) -> dict:
    """{draw key: BatchNorm buffers} that model.pt holds for the run's output model: the WMA mean
    (key ``wma``) or CigL's final weights (key ``final:bn-recomputed``), with the statistics the
    evaluation recomputed for them.  They stand in for a recomputation only where that would give the
    same numbers: model.pt must hold exactly those weights (sparse and dense θ), and this loaded run
    must compute as the evaluation did (precision, device type, memory format: metrics.json →
    ``runtime``).  Otherwise, or when model.pt or metrics.json cannot be read, {}: the statistics
    are recomputed from the training data when a prediction needs them."""
    path = run.run_dir / "model.pt"
    if not path.exists():
        return {}
    if wma is not None and run.config.method_config.wma:
        key, weights = "wma", wma
    elif run.config.final_bn_recomputed:
        key, weights = FINAL_RECOMPUTED_KEY, run._final()
    else:
        return {}  # the output model keeps the statistics tracked in training: already loaded
    try:
        runtime = (run.metrics or {}).get("runtime") or {}
        here = {"compute_dtype": run.compute_dtype, "device": run.device.type,
                "channels_last": run.config.speed_options(run.device)["channels_last"]}
        if any(runtime.get(field) != value for field, value in here.items()):
            return {}
        state = torch.load(path, map_location=run.device, weights_only=True)
        module = run.net.module.state_dict()
        sparse = torch.cat([state[name].reshape(-1).to(weights.sparse.dtype) for name in run.net.sparse_names])
        other = torch.cat([state[name].reshape(-1).to(weights.other.dtype) for name in run.net.other_names]
                          or [weights.other.new_zeros(0)])
        if set(state) != set(module):
            return {}
    except Exception:  # noqa: BLE001  (a damaged or foreign model.pt, an unreadable metrics.json: recompute)
        return {}
    if not (sparse.shape == weights.sparse.shape and torch.allclose(sparse, weights.sparse, rtol=0, atol=1e-6)
            and other.shape == weights.other.shape and torch.allclose(other, weights.other, rtol=0, atol=1e-6)):
        return {}
    return {key: {k: v for k, v in state.items() if "running_" in k or "num_batches_tracked" in k}}


def _network(cfg: TrainConfig, module_state: dict, device: torch.device) -> SparseNetwork:
    """The run's network, built with as many outputs as its saved last layer has."""
    from cigl_bayes.models import build_model
    from cigl_bayes.train import build_network

    probe = build_model(cfg.model, num_classes=2, dropout=cfg.dropout)
    last = sparse_parameter_names(probe)[-1]
    if last not in module_state:
        raise RunFolderError(f"checkpoint does not hold the weights of model {cfg.model!r} (no {last})")
    return build_network(cfg, int(module_state[last].shape[0]), device)


def _check_average(run_dir: Path, samples: list[Snapshot], wma: Snapshot | None) -> None:
    """The stored samples must average to the checkpoint's WMA, the trainer's running mean of the very
    same snapshots: a sample file copied in from another run, or altered, is refused by name.  The
    running mean in float32 differs from the exact mean by rounding only, far below the tolerance."""
    if not samples or wma is None:
        return
    worst, scale = 0.0, 1.0
    for part in ("sparse", "other"):
        stored = getattr(wma, part).detach().double().cpu()
        total = torch.zeros_like(stored)
        for snap in samples:
            total += getattr(snap, part).detach().double().cpu()
        if total.numel():
            worst = max(worst, float((total / len(samples) - stored).abs().max()))
            scale = max(scale, float(stored.abs().max()))
    if not worst <= AVERAGE_TOLERANCE * scale:  # NaN fails too
        store = SnapshotStore(run_dir / "samples")
        names = [store.path(i).name for i in range(len(samples))]
        listed = ", ".join(names) if len(names) <= 4 else f"{names[0]} … {names[-1]}"
        raise RunFolderError(f"the samples in {store.folder} ({listed}) do not average to the checkpoint's WMA "
                             f"(largest difference {worst:.3g}): a sample file was copied in from another run or "
                             "altered; put back this run's own samples or train the run again")


def _samples(run_dir: Path, count: int, cfg: TrainConfig, device) -> tuple[list[Snapshot], list[int]]:
    """The stored samples, checked against the checkpoint's WMA count and the collection epochs."""
    store = SnapshotStore(run_dir / "samples")
    indices = store.indices()
    if not cfg.save_samples and not cfg.method_config.snapshots:
        return [], []
    expected = list(range(count))
    if indices != expected:
        missing = sorted(set(expected) - set(indices))
        stray = sorted(set(indices) - set(expected))
        detail = "; ".join(filter(None, [
            f"missing {', '.join(store.path(i).name for i in missing)}" if missing else "",
            f"stray {', '.join(store.path(i).name for i in stray)}" if stray else ""]))
        raise RunFolderError(f"{store.folder} does not match the checkpoint's {count} samples: {detail}")
    samples, epochs = [], []
    for i in indices:
        try:
            record = torch.load(store.path(i), map_location="cpu", weights_only=True)
            snap = store.load(i, device)
        except Exception as err:  # truncated or foreign file
            raise RunFolderError(f"sample file {store.path(i)} is unreadable ({type(err).__name__})") from err
        if record.get("epoch") != cfg.wma_start_epoch + i:
            raise RunFolderError(f"sample file {store.path(i)} is from epoch {record.get('epoch')}, expected "
                                 f"{cfg.wma_start_epoch + i} (a sample of another run?)")
        samples.append(snap)
        epochs.append(record["epoch"])
    return samples, epochs
