"""The one training loop.  Methods differ by :class:`MethodConfig`, engines by the objective.

One step (paper Algorithm 1):
    Z ~ Bernoulli(keep)                                    (random_mask.RandomKeepMask)
    loss, W = objective(x, y, Z)      W = M⊙Z⊙W (plain) or W ~ q(W | Z, U, M) (SVI)
    every ΔT steps until T_end:  M ← RigL/SET(M, |W|, |∂L/∂(M⊙Z⊙W)|), regrown W and momentum 0
                                 (masks.DeterministicMask; this replaces the SGD step, as in the
                                 official code)
    otherwise:                   W ← W − α · M⊙Z⊙∇L(M⊙Z⊙W)   (SGD, Nesterov momentum; the Z = 0
                                 entries keep their values)
At the end of every epoch ≥ T*: collect M⊙Z⊙W, with the Z of the epoch's last step, into the WMA
mean (and the sample store).
After training: evaluate every predictor of the method, fit temperature scaling on the
validation split, and write the run folder (see ``docs/run-folder.md``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from cigl_bayes.models import build_model

from . import data as data_lib
from .averaging import SnapshotStore
from .cigl import CigL
from .config import RESUME_FREE_FIELDS, TrainConfig
from .device import resolve_device
from .distributed import DistInfo, all_reduce_mean_, barrier, dist_info
from .masks import initial_mask
from .network import SparseNetwork
from .objectives import PlainObjective, batch_targets
from .runs import (
    CheckpointError,
    RunFolderLock,
    atomic_write_json,
    check_out_dir,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .sparsity import sparse_parameter_names


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclasses.dataclass
class Data:
    train: data_lib.DeviceLoader  # shuffled, augmented
    # same images, no augmentation, one fixed seeded shuffle (BN recompute): the stored order is by class,
    # and BatchNorm statistics averaged over single-class batches miss the between-class variance
    train_eval: data_lib.DeviceLoader
    val: data_lib.DeviceLoader | None
    test: data_lib.DeviceLoader
    num_classes: int
    # same images, augmented (crop + flip) with one seeded plan: the ``recomputed-augmented`` BatchNorm
    # protocol (the official code recomputes its WMA model's statistics on augmented training batches)
    train_bn_augmented: data_lib.DeviceLoader | None = None

    @property
    def bn_protocols(self) -> tuple[str, ...]:
        """The BatchNorm protocols this data can serve (recomputed-augmented needs its loader;
        data made by hand, e.g. tensors of a toy problem, may have none)."""
        from .predict import BN_PROTOCOLS, RECOMPUTED_AUGMENTED

        return tuple(p for p in BN_PROTOCOLS if p != RECOMPUTED_AUGMENTED or self.train_bn_augmented is not None)

    def bn_loader(self, protocol: str):
        """The loader BatchNorm statistics are recomputed on under ``protocol`` (None: tracked)."""
        from .predict import RECOMPUTED_AUGMENTED, RECOMPUTED_CLEAN, check_bn_protocol

        check_bn_protocol(protocol)
        if protocol == RECOMPUTED_CLEAN:
            return self.train_eval
        if protocol == RECOMPUTED_AUGMENTED:
            if self.train_bn_augmented is None:
                raise ValueError("this data has no augmented training loader for the recomputed-augmented protocol")
            return self.train_bn_augmented
        return None


def recorded_data_dir(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with ``data_dir`` set to the folder the data were found in ($CIGL_DATA_DIR or the
    default, made absolute), so config.json says where a run's data were and a run loaded later,
    from another folder, finds them.  ``data_dir`` is free to change on resume."""
    if cfg.data_dir is not None or cfg.dataset == "imagenet":
        return cfg
    try:
        found = data_lib.resolve_data_dir(None)
    except Exception:  # data given by hand (tests, toy problems): nothing to record
        return cfg
    return dataclasses.replace(cfg, data_dir=str(Path(found).resolve()))


def build_data(cfg: TrainConfig, device: torch.device, info: DistInfo | None = None) -> Data:
    """Load, split (validation), subset, and put every split on ``device``; under
    ``torch.distributed`` each rank's training loader serves its shard of every global batch."""
    if cfg.dataset == "imagenet":
        return build_imagenet_data(cfg, device, info or DistInfo())
    train_full, test = data_lib.load_dataset(cfg.dataset, cfg.data_dir, download=cfg.download)
    train, val = data_lib.split_validation(train_full, cfg.val_fraction, seed=cfg.seed)
    if cfg.subset is not None:
        train = data_lib.take_subset(train, data_lib.check_subset(cfg.subset, len(train), len(val)), seed=cfg.seed)
        val = data_lib.take_subset(val, min(len(val), max(1, round(cfg.subset * cfg.val_fraction))), seed=cfg.seed)
    if cfg.test_subset is not None:
        # seed 0 for every run: all seeds are scored on the same test points, so they can be pooled
        n_test = data_lib.check_subset(cfg.test_subset, len(test), flag="--test-subset", what="test images")
        test = data_lib.take_subset(test, n_test, seed=0)
    info = info or DistInfo()
    if cfg.batch_size > len(train):
        raise ValueError(f"batch size {cfg.batch_size} is larger than the training set ({len(train)} images)")
    mean, std = data_lib.NORMALIZATION[cfg.dataset]
    common = {"device": device, "mean": mean, "std": std, "dtype": cfg.torch_dtype,
              "channels_last": cfg.speed_options(device)["channels_last"]}
    eval_bs = max(cfg.batch_size, 500)
    return Data(
        train=data_lib.DeviceLoader(train, batch_size=cfg.batch_size, shuffle=True, augment=cfg.augment,
                                    seed=cfg.seed, shard=(info.rank, info.world), **common),
        train_eval=data_lib.DeviceLoader(train, batch_size=eval_bs, shuffle=True, seed=cfg.seed, **common),
        val=data_lib.DeviceLoader(val, batch_size=eval_bs, shuffle=False, **common) if len(val) else None,
        test=data_lib.DeviceLoader(test, batch_size=eval_bs, shuffle=False, **common),
        num_classes=len(train.classes),
        train_bn_augmented=data_lib.DeviceLoader(train, batch_size=eval_bs, shuffle=True, augment=True,
                                                 seed=cfg.seed, **common),  # augmented, whatever training used
    )


def build_imagenet_data(cfg: TrainConfig, device: torch.device, info: DistInfo) -> Data:
    """ImageFolder train/ (minus a seeded per-class validation split) and val/ (the test split)."""
    from . import imagenet

    root = imagenet.find_imagenet(cfg.data_dir)
    full = imagenet.index_folder(root / "train")
    test = imagenet.index_folder(root / "val", full.classes)
    if cfg.test_subset is not None:
        data_lib.check_subset(cfg.test_subset, len(test), flag="--test-subset", what="test (val/) images")
    test = imagenet.take(test, cfg.test_subset, cfg.seed)
    train, val = imagenet.split_index(full, cfg.val_fraction, cfg.seed)
    if cfg.subset is not None:
        train = imagenet.take(train, data_lib.check_subset(cfg.subset, len(train), len(val)), cfg.seed)
        val = imagenet.take(val, max(1, round(cfg.subset * cfg.val_fraction)), cfg.seed)
    if cfg.batch_size > len(train):
        raise ValueError(f"batch size {cfg.batch_size} is larger than the training set ({len(train)} images)")
    common = {"device": device, "seed": cfg.seed, "dtype": cfg.torch_dtype,
              "channels_last": cfg.speed_options(device)["channels_last"]}
    eval_bs = max(cfg.batch_size, 250)

    def loader(index, train_mode: bool, **kw):
        return imagenet.ImageNetLoader(index, train=train_mode, **common, **kw)

    return Data(
        train=loader(train, True, batch_size=cfg.batch_size, shuffle=True, shard=(info.rank, info.world)),
        train_eval=loader(train, False, batch_size=eval_bs, shuffle=True),  # mixed classes, fixed order
        val=loader(val, False, batch_size=eval_bs, shuffle=False) if len(val) else None,
        test=loader(test, False, batch_size=eval_bs, shuffle=False),
        num_classes=len(full.classes),
        train_bn_augmented=loader(train, True, batch_size=eval_bs, shuffle=True),
    )


def build_module(cfg: TrainConfig, num_classes: int, device: torch.device) -> torch.nn.Module:
    """The registry's model for ``cfg``, initialised from ``cfg.seed``, on ``device`` in ``cfg.dtype``."""
    torch.manual_seed(cfg.seed)
    return build_model(cfg.model, num_classes=num_classes, dropout=cfg.dropout).to(device=device,
                                                                                    dtype=cfg.torch_dtype)


def build_network(cfg: TrainConfig, num_classes: int, device: torch.device) -> SparseNetwork:
    """Model from the registry, sparse weights chosen and masked at random (seeded) as a trainer's
    :class:`CigL` would start it; for evaluating stored weights, where no optimizer is needed."""
    module = build_module(cfg, num_classes, device)
    names = sparse_parameter_names(module, dense_first=cfg.distribution == "uniform")
    sparsity = cfg.sparsity if cfg.method_config.sparse else 0.0
    net = SparseNetwork(module, names, initial_mask(module, names, sparsity, cfg.distribution, cfg.seed))
    net.configure(**cfg.speed_options(device))
    net.apply_mask_()
    return net


def build_cigl(cfg: TrainConfig, module: torch.nn.Module, optimizer: torch.optim.Optimizer, total_steps: int,
               samples: SnapshotStore | None = None) -> CigL:
    """The algorithm object of a config: the one place a TrainConfig becomes a :class:`CigL`
    (method, sparsity, distribution, keep, ΔT, drop fraction, end, T*, seed)."""
    sparsity = cfg.sparsity if cfg.method_config.sparse else None  # dense: every weight, whatever the config says
    return CigL(module, optimizer, method=cfg.method, sparsity=sparsity, total_steps=total_steps,
                distribution=cfg.distribution, keep=cfg.keep, delta_t=cfg.delta_t, drop_fraction=cfg.drop_fraction,
                update_end=cfg.update_end, collect_from_epoch=cfg.wma_start_epoch, seed=cfg.seed, samples=samples,
                keep_samples=cfg.save_samples, attach=False)


ObjectiveFactory = Callable[[TrainConfig, SparseNetwork, int, int], Any]


def plain_objective(cfg: TrainConfig, net: SparseNetwork, n_train: int, num_classes: int) -> PlainObjective:
    """The plain engine's objective: cross-entropy (or Gaussian NLL) + (wd/2)‖M⊙Z⊙W‖²."""
    return PlainObjective(net, cfg.weight_decay, cfg.likelihood, cfg.noise_precision)


def make_objective(cfg: TrainConfig, net: SparseNetwork, n_train: int, num_classes: int,
                   objectives: Mapping[str, ObjectiveFactory] | None = None):
    """The objective of ``cfg.engine``, built by the factory ``objectives`` names for it.

    This package knows only the plain engine; the Pyro engine ("svi", −ELBO/N of the model and
    guide) lives a layer up, in ``inference``, and is passed in (``cigl_bayes.inference.ENGINES``, used by
    ``cigl_bayes.inference.run`` and the ``experiments`` CLIs), so that imports flow one way."""
    factories: dict[str, ObjectiveFactory] = {"plain": plain_objective, **(objectives or {})}
    if cfg.engine not in factories:
        raise ValueError(f"engine {cfg.engine!r} is not known to this trainer; pass "
                         "objectives=cigl_bayes.inference.ENGINES (or train with cigl_bayes.inference.run) "
                         "for the SVI engine")
    return factories[cfg.engine](cfg, net, n_train, num_classes)


def lr_factor(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then

    ``step`` (the paper's):   γ^⌊t / decay_every⌋                        (γ = ``lr_decay_factor``)
    ``cosine-window``:        w + (1 − w)·½(1 + cos(π·min(t, T*)/T*)),   w = γ^⌊T* / decay_every⌋

    where T* is the step at which WMA collection starts.  The cosine shape descends smoothly to
    the *same* learning rate w that the step schedule has at T* and holds it there, so the
    averaging window (and RigL's last epochs) run at the paper's learning rate (0.025 for
    WRN-22-2), while the descent before it has no plateaus."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.lr_schedule == "step":
        return warm * cfg.lr_decay_factor ** (step // cfg.lr_decay_every)
    t_star = max(1, round(total_steps * cfg.wma_start_epoch / cfg.epochs))
    window = cfg.lr_decay_factor ** (t_star // cfg.lr_decay_every)
    return warm * (window + (1 - window) * 0.5 * (1 + math.cos(math.pi * min(step, t_star) / t_star)))


class Trainer:
    """Owns every object whose state survives a restart; ``state_dict`` is the checkpoint."""

    def __init__(self, config: TrainConfig, out_dir: str | Path, *, progress: bool = True, data: Data | None = None,
                 objectives: Mapping[str, ObjectiveFactory] | None = None):
        config.validate()
        self.dist = dist_info()
        self.out = check_out_dir(out_dir)
        self.device = resolve_device(config.device)
        self.data = data if data is not None else build_data(config, self.device, self.dist)
        cfg = config.resolved(n_train=self.data.train.num_samples)
        self.cfg = cfg = recorded_data_dir(cfg) if data is None else cfg
        self.method = cfg.method_config
        self.progress = progress and self.dist.is_main
        module = build_module(cfg, self.data.num_classes, self.device)
        if self.dist.active and self.device.type == "cuda":
            module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        self.optimizer = torch.optim.SGD(module.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         nesterov=cfg.nesterov, weight_decay=0.0)
        self.steps_per_epoch = len(self.data.train)
        total_steps = cfg.epochs * self.steps_per_epoch
        # the algorithm: masks, Z, schedule, update, WMA (cigl_bayes.cigl); this class keeps the loop,
        # the data, the objective, evaluation and the run folder
        self.cigl = build_cigl(cfg, module, self.optimizer, total_steps, SnapshotStore(self.out / "samples"))
        self.net = self.cigl.net.configure(**cfg.speed_options(self.device))
        self.objective = make_objective(cfg, self.net, self.data.train.num_samples, self.data.num_classes, objectives)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, cfg, total_steps))
        self.history: list[dict] = []
        self.epoch_data_loss = float("nan")  # mean data term of the last epoch

    # the algorithm's state, as the loop, evaluation and tests read it
    schedule = property(lambda self: self.cigl.schedule)
    z_source = property(lambda self: self.cigl.z_source)
    aux_generator = property(lambda self: self.cigl.generator)
    wma = property(lambda self: self.cigl.wma)
    samples = property(lambda self: self.cigl.samples)
    last_z = property(lambda self: self.cigl.last_z)
    epoch = property(lambda self: self.cigl.epoch)  # epochs completed
    step = property(lambda self: self.cigl.step_count)  # optimiser steps (or mask updates) completed

    # -- checkpoint --------------------------------------------------------------
    def state_dict(self) -> dict:
        """The checkpoint: config, the algorithm's state (:meth:`CigL.state_dict`: settings, epoch, step,
        mask, z_source, aux_generator, wma), module, optimizer, schedule, history and RNG states."""
        return {
            "config": self.cfg.to_dict(),
            **self.cigl.state_dict(),
            "module": self.net.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": self.history,
            "rng": rng_state(),  # tensors and plain values: the checkpoint loads with weights_only=True
        }

    def load_state_dict(self, state: dict) -> None:
        saved = TrainConfig.from_dict(state["config"])
        diffs = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in RESUME_FREE_FIELDS
                 and getattr(saved, f.name) != getattr(self.cfg, f.name)]
        if diffs:
            detail = ", ".join(f"{n}: {getattr(saved, n)!r} → {getattr(self.cfg, n)!r}" for n in diffs)
            raise CheckpointError(f"cannot resume {self.out} with a different config ({detail}); "
                                  "use another --out or the same options")
        self.history = state["history"]
        self.net.module.load_state_dict(state["module"])
        self.cigl.load_state_dict(state)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])

    def save_checkpoint(self) -> None:
        if self.dist.is_main:
            save_checkpoint(self.state_dict(), self.out / "checkpoint.pt")
        barrier(self.dist)

    def maybe_resume(self) -> bool:
        path = self.out / "checkpoint.pt"
        if not path.exists():
            return False
        state = load_checkpoint(path, map_location=self.device)
        problem = config_file_problem(self.out, state["config"])
        if problem:
            raise CheckpointError(problem)
        self.load_state_dict(state)
        return True

    # -- one step ----------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One step of Algorithm 1 (:meth:`CigL.step`): the objective's loss under this step's Z,
        its gradient (all-reduced under torch.distributed), then a mask update *instead of* the
        optimiser step every ΔT steps until T_end, else the optimiser step on the M⊙Z entries."""
        cfg = self.cfg
        x, target = batch_targets(x, y, self.data.num_classes, mixup=cfg.mixup,
                                  label_smoothing=cfg.label_smoothing, generator=self.cigl.generator)
        scored = self.cigl.needs_score
        loss, _ = self.objective(x, target, self.cigl.z, track_score=scored)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        score = self.objective.regrowth_score() if scored else None  # dense ∂L/∂(M⊙Z⊙W)
        if self.dist.active:  # the gradient of the global-batch mean on every rank
            grads = [p.grad for p in self.net.module.parameters() if p.grad is not None]
            all_reduce_mean_(grads + ([score] if score is not None else []), x.shape[0], self.dist)
        self.cigl.step(score)
        self.scheduler.step()
        return loss.detach()

    # -- one epoch ---------------------------------------------------------------
    def train_epoch(self, bar) -> float:
        self.net.module.train()
        total = torch.zeros((), device=self.device)
        data_total = torch.zeros((), device=self.device)
        for i, (x, y) in enumerate(self.data.train.epoch(self.epoch)):
            loss = self.train_step(x, y)
            total += loss
            data_total += self.objective.last_data_loss
            if (i + 1) % self.cfg.log_every == 0 or i + 1 == self.steps_per_epoch:
                value = float(loss)  # host sync only at logging intervals
                if not math.isfinite(value):
                    ckpt = self.out / "checkpoint.pt"
                    where = f"the last good checkpoint is {ckpt}" if ckpt.exists() else "no checkpoint yet"
                    if self.dist.is_main:  # a record a study's analysis reads (a diverged run has no metrics.json)
                        atomic_write_json({"loss": str(value), "step": self.step, "epoch": self.epoch + 1},
                                          self.out / "diverged.json")
                    raise TrainingDiverged(f"loss became {value} at step {self.step} (epoch {self.epoch + 1}); "
                                           f"{where} — lower the learning rate (--lr)")
                bar.set_postfix(loss=f"{value:.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.3g}")
            bar.update(1)
        self.epoch_data_loss = float(data_total) / self.steps_per_epoch
        return float(total) / self.steps_per_epoch

    # -- the run -----------------------------------------------------------------
    def fit(self, stop_after_epochs: int | None = None) -> None:
        """Train until ``cfg.epochs`` (or ``stop_after_epochs`` more epochs), checkpointing each."""
        cfg = self.cfg
        if self.dist.is_main:
            atomic_write_json(cfg.to_dict(), self.out / "config.json")
        last = cfg.epochs if stop_after_epochs is None else min(cfg.epochs, self.epoch + stop_after_epochs)
        interrupted = []
        previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True)) \
            if _main_thread() else None
        try:
            with tqdm(total=cfg.epochs * self.steps_per_epoch, initial=self.step, disable=not self.progress,
                      desc=f"{cfg.method} {cfg.model} s={cfg.sparsity}", unit="step", dynamic_ncols=True) as bar:
                while self.epoch < last:
                    start = time.perf_counter()
                    mean_loss = self.train_epoch(bar)
                    self.cigl.end_epoch()  # WMA / sample collection from T*
                    # train_loss = the objective; its data term (mean NLL per data point, comparable
                    # across engines) and the rest, the prior / KL term per data point (SVI: with the
                    # prior's normalising constant n·log(s√2π)/N)
                    self.history.append({"epoch": self.epoch, "step": self.step, "train_loss": mean_loss,
                                         "train_data_loss": self.epoch_data_loss,
                                         "train_regulariser": mean_loss - self.epoch_data_loss,
                                         "seconds": time.perf_counter() - start,
                                         "density": self.net.mask.density, "itop_rate": self.net.mask.itop_rate,
                                         "compute_dtype": self.compute_dtype, **self.validation_point()})
                    self.save_checkpoint()
                    if interrupted:
                        raise KeyboardInterrupt(f"interrupted; checkpoint saved at epoch {self.epoch}")
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)

    def validation_point(self) -> dict:
        """This epoch's point of the validation curves (``cfg.val_curves``).  Every rank computes it
        (each holds the whole validation split), so a SyncBatchNorm recompute meets its peers."""
        if not self.cfg.val_curves:
            return {}
        from .evaluate import validation_point

        wma = self.wma.mean() if self.method.wma and self.wma.count else None
        return validation_point(self.net, self.cfg, self.data, wma)

    @property
    def finished_training(self) -> bool:
        return self.epoch >= self.cfg.epochs

    @property
    def compute_dtype(self) -> str:
        """The dtype of the forward pass's matrix products: "bfloat16" under autocast, else the
        parameters' dtype ("float32", "float64").  Recorded per epoch in ``history`` and in
        metrics.json → runtime, so a run resumed on a machine with another precision shows it."""
        return str(self.net.autocast_dtype or self.cfg.torch_dtype).removeprefix("torch.")


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def config_file_problem(folder: Path, saved: dict, source: str = "checkpoint.pt") -> str | None:
    """Why ``folder/config.json`` disagrees with ``saved``, the config of the run's ``source`` (its
    checkpoint, or its committed weights file), or None (also when there is no config.json).
    Training writes the file from the same config as the checkpoint, and the sweep and reports read
    it, so a damaged or hand-edited file is named rather than ignored; nothing is rewritten.
    Fields a resumption may change (``RESUME_FREE_FIELDS``) are not compared."""
    path = folder / "config.json"
    if not path.exists():
        return None
    try:
        written = TrainConfig.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as err:  # not JSON, not an object, unknown fields
        return f"{path} cannot be read as a run config ({err}); put back the run's own config.json or remove it"
    checkpoint = TrainConfig.from_dict(saved)
    for field in dataclasses.fields(TrainConfig):
        mine, theirs = getattr(written, field.name), getattr(checkpoint, field.name)
        if field.name not in RESUME_FREE_FIELDS and mine != theirs:
            return (f"{path} disagrees with the run's {source} ({field.name}: {mine!r} in config.json, "
                    f"{theirs!r} in {source}): one of them was edited or copied from another run; put back "
                    "the run's own files")
    return None


class ShortRunWarning(UserWarning):
    """A run that will collect fewer than two posterior samples."""


def run(config: TrainConfig, out_dir: str | Path, *, progress: bool = True,
        stop_after_epochs: int | None = None, objectives: Mapping[str, ObjectiveFactory] | None = None) -> dict | None:
    """Train (resuming from ``out_dir/checkpoint.pt`` if present), evaluate, write the run folder.

    Returns the metrics dict, or None when ``stop_after_epochs`` ended training early.
    A finished run is not trained again: its metrics are returned as they are (re-evaluated when
    ``metrics.json`` is missing or unreadable).  One process writes a run folder at a time
    (:class:`~cigl_bayes.runs.RunFolderLock`); a fresh start clears samples left by an earlier run.
    """
    import contextlib
    import json
    import warnings

    from .evaluate import evaluate_and_write

    out = check_out_dir(out_dir)
    with RunFolderLock(out) if dist_info().is_main else contextlib.nullcontext():
        trainer = Trainer(config, out, progress=progress, objectives=objectives)
        cfg = trainer.cfg
        collected = cfg.epochs - cfg.wma_start_epoch
        if (trainer.method.wma or trainer.method.snapshots) and collected < 2 and trainer.dist.is_main:
            warnings.warn(f"this run collects {collected} posterior sample (epochs {cfg.epochs}, WMA from epoch "
                          f"{cfg.wma_start_epoch}): predictive and swag will equal wma and no posterior.nc is "
                          "written; give more --epochs or an earlier --wma-start-epoch", ShortRunWarning,
                          stacklevel=2)
        if trainer.maybe_resume():
            trainer.samples.clear(keep=trainer.wma.count)  # written after the last checkpoint: redone
        else:
            trainer.samples.clear()  # a fresh start: samples of an earlier run in this folder are stale
        metrics_path = trainer.out / "metrics.json"
        if trainer.finished_training and metrics_path.exists():
            try:
                return json.loads(metrics_path.read_text())
            except ValueError:
                warnings.warn(f"{metrics_path} is unreadable; evaluating the finished run again", stacklevel=2)
        (trainer.out / "diverged.json").unlink(missing_ok=True)  # written again if this attempt diverges too
        trainer.fit(stop_after_epochs)
        if not trainer.finished_training or not trainer.dist.is_main:
            return None  # under torch.distributed rank 0 alone evaluates and writes the results
        return evaluate_and_write(trainer, train_seconds=sum(h["seconds"] for h in trainer.history))
