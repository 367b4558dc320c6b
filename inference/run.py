"""A finished run folder as a Python object: ``load_run(run_dir) -> TrainedRun``.

    from cigl_bayes.inference import load_run
    run = load_run("runs/cigl")                       # config, network (eval mode), mask, WMA, samples
    pred = run.predict(images, "predictive")          # uint8 or float images, as the data set stores them
    pred.probs, pred.draws, pred.entropy(), pred.mutual_information()
    swag = run.swag(); swag.sample(torch.Generator().manual_seed(0))   # rank: up to 20, capped by the samples
    idata = run.to_inferencedata()                    # arviz InferenceData, layers named
    run.metrics                                       # metrics.json

No ``Trainer`` and no optimiser are built.  The training data are read only when a predictor
needs BatchNorm statistics recomputed (predictive, mc-z, swag, and CigL's final): the output
model's (wma for CigL, ``temperature_scaled`` on top of it) come from model.pt, where the run's
evaluation stored them, as long as this run computes as that evaluation did (same precision,
device type and memory format) and ``bn_batches`` is the run's own; setting ``run.bn_batches``
asks for a recomputation.  The statistics of each weight setting are cached, so a second
``predict`` with the same predictor costs forward passes only.

It lives in ``inference`` (not ``cigl_bayes``) because it joins the sparse engine's run folder
with the posterior tools (SWAG, arviz) of this package; imports flow experiments → inference →
cigl_bayes → models.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import torch

from cigl_bayes import data as data_lib
from cigl_bayes.averaging import Snapshot, SnapshotStore
from cigl_bayes.config import TrainConfig
from cigl_bayes.device import resolve_device
from cigl_bayes.metrics import apply_temperature
from cigl_bayes.network import SparseNetwork
from cigl_bayes.predict import (
    FINAL_RECOMPUTED_KEY,
    PREDICTORS,
    RECOMPUTED_CLEAN,
    SINGLE_WEIGHT,
    TRACKED,
    TRAINING_BN_KEY,
    check_bn_protocol,
    mc_dropout_probs,
    nnz,
    predict_log_probs,
    predictor_draws,
    recompute_batchnorm,
)
from cigl_bayes.runs import CheckpointError, load_checkpoint
from cigl_bayes.sparsity import sparse_parameter_names
from cigl_bayes.train import config_file_problem
from cigl_bayes.weights import WEIGHTS_FILE

from .prediction import (
    Prediction,
    at_least_float32,
    is_loader,
    joined_labels,
    loader_batches,
    one_row_per_input,
)
from .swag import SparseSWAG

PROTOCOL_SEPARATOR = "@"  # a draw key "wma@recomputed-augmented": its statistics recomputed under that protocol
AVERAGE_TOLERANCE = 1e-4  # stored samples vs the checkpoint's WMA, relative to the largest |weight| (≥ 1)
SWAG_RANK = 20  # SWAG's K when none is given (Maddox et al. 2019); a run with fewer samples keeps that many


class RunFolderError(ValueError):
    """A run folder that is missing, unfinished, or whose files disagree with each other."""


@dataclasses.dataclass
class TrainedRun:
    """A finished run: its config, network, WMA mean and samples (see :func:`load_run`)."""

    run_dir: Path
    config: TrainConfig
    net: SparseNetwork
    wma: Snapshot | None
    samples: list[Snapshot]
    sample_epochs: list[int]
    history: list[dict]
    device: torch.device
    data_dir: str | None = None
    _bn_cache: dict = dataclasses.field(default_factory=dict, repr=False)
    bn_batches: int | None = None  # training batches for BatchNorm recomputation (None: all)
    _data: object = dataclasses.field(default=None, repr=False)
    _swag: dict = dataclasses.field(default_factory=dict, repr=False)
    _final_state: dict = dataclasses.field(default_factory=dict, repr=False)
    # BatchNorm statistics model.pt holds for the output model ({draw key: buffers}), used instead of a
    # recomputation while bn_batches is the run's own: predicting with the output model needs no data
    _stored_bn: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def where(self) -> str:
        """How messages name what these weights come from."""
        return f"run {self.run_dir}"

    @property
    def mean_only_option(self) -> str:
        """The option that keeps the WMA mean without its samples, as messages name it."""
        return "--no-samples"

    @property
    def metrics(self) -> dict | None:
        """The run's metrics.json (None if it is missing)."""
        path = self.run_dir / "metrics.json"
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except ValueError as err:
            raise RunFolderError(f"{path} is unreadable ({err}); run the training command again to "
                                 "re-evaluate") from err

    # -- inputs -------------------------------------------------------------------------------------------
    def prepare(self, images) -> torch.Tensor:
        """uint8 (0–255) or float (0–1) images, (N, H, W, C) as the data set stores them or (N, C, H, W),
        of the size the run was trained on, as a normalised float tensor (N, C, H, W) on the run's device
        (:func:`cigl_bayes.data.image_batch` says what is refused)."""
        x = data_lib.image_batch(images, data_lib.image_size(self.config.dataset))
        mean, std = data_lib.NORMALIZATION[self.config.dataset]
        dtype = self.net.sparse_params[0].dtype
        x = x.to(self.device, dtype)
        mean_t = torch.tensor(mean, device=self.device, dtype=dtype).view(1, 3, 1, 1)
        std_t = torch.tensor(std, device=self.device, dtype=dtype).view(1, 3, 1, 1)
        return ((x - mean_t) / std_t).contiguous()

    # -- weight settings --------------------------------------------------------------------------------
    def weight_draws(self, predictor: str, draws: int | None = None, seed: int = 0,
                     swag_rank: int | None = None) -> list[tuple[str, Snapshot]]:
        """(cache key, weights) of every draw the predictor averages over
        (:func:`cigl_bayes.predict.predictor_draws`)."""
        if predictor in SCORED_PREDICTORS:
            raise ValueError(f"{predictor} is not a set of weight draws; ask predict() for it")
        if predictor not in PREDICTORS:
            raise ValueError(f"unknown predictor {predictor!r}; known: {', '.join(PREDICTORS + SCORED_PREDICTORS)}")
        if predictor in ("wma", "predictive", "swag") and not self.samples and \
                (predictor != "wma" or self.wma is None):
            kept_mean = self.wma is not None  # CigL(..., keep_samples=False): the mean, not the samples
            why = f", {self.mean_only_option} keeps only their mean" if kept_mean else ""
            instead = "'wma', 'final' or 'mc-z'" if kept_mean else "'final' or 'mc-z'"
            raise RunFolderError(f"{self.where} has no posterior samples (method {self.config.method}{why}); "
                                 f"use predictor {instead}")
        if draws is not None and (isinstance(draws, bool) or not isinstance(draws, int) or draws < 1):
            raise ValueError(f"draws must be a positive integer (or None: the run's default), got {draws!r}")
        if predictor == "predictive":
            if draws is not None and draws > len(self.samples):
                raise ValueError(f"draws={draws} but predictive averages over the samples and {self.where} "
                                 f"collected {len(self.samples)}; give draws ≤ {len(self.samples)}, or None for all")
            count = len(self.samples) if draws is None else draws
        else:
            count = self.config.mc_samples if draws is None else draws
        sampler = None
        if predictor == "swag":
            swag, dtype = self.swag(swag_rank), self.net.sparse_params[0].dtype

            def sampler(gen: torch.Generator) -> Snapshot:
                d = swag.sample(gen, scale=0.5)
                return Snapshot(d.sparse.to(self.device, dtype), d.other.to(self.device, dtype))
        drawn = predictor_draws(predictor, self._final(), self.samples, wma=self.wma, keep=self.keep,
                                count=count, seed=seed, swag_sample=sampler,
                                final_bn_recomputed=self.config.final_bn_recomputed)
        if predictor == "swag":  # the draws (and their cached BatchNorm statistics) depend on the rank
            rank = SWAG_RANK if swag_rank is None else swag_rank
            drawn = [(key.replace("swag:", f"swag:rank{rank}:", 1), snap) for key, snap in drawn]
        return drawn

    @property
    def compute_dtype(self) -> str:
        """The dtype of this loaded run's matrix products ("bfloat16" under autocast), as
        :attr:`cigl_bayes.train.Trainer.compute_dtype` records it for training."""
        return str(self.net.autocast_dtype or self.net.sparse_params[0].dtype).removeprefix("torch.")

    @property
    def keep(self) -> float:
        """Keep probability of the mc-z masks: the run's 1 − random-mask rate."""
        return 1.0 - self.config.mask_rate

    def parameters_stored(self, predictor: str, draws: list[tuple[str, Snapshot]],
                          swag_rank: int | None = None) -> int:
        """Numbers kept to make the prediction: non-zeros of every weight setting kept (mc-z keeps
        the final weights; SWAG its mean, second moment and K deviations on the support)."""
        if predictor in ("final", "mc-z"):
            return nnz(self._final())
        if predictor == "swag":
            swag = self.swag(swag_rank)
            return swag.nbytes // swag.mean_sparse.element_size()
        return sum(nnz(snap) for _, snap in draws)

    def _final(self) -> Snapshot:
        with torch.no_grad():
            return Snapshot(self.net.effective_flat().detach().clone(), self.net.other_flat().detach().clone())

    # -- prediction --------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images, predictor: str = "wma", draws: int | None = None, *, seed: int | None = None,
                batch_size: int | None = None, bn_protocol: str | None = None) -> Prediction:
        """Class probabilities of ``predictor`` for ``images``: handles normalisation, BatchNorm
        (recomputed on the training data for every weight setting but ``final``, and for CigL's ``final`` too:
        ``TrainConfig.final_bn_recomputed``) and eval mode.
        ``draws``: how many of the samples ``predictive`` averages (default: all; more than the run
        collected is refused) and how many ``mc-z``/``swag`` draw (default ``mc_samples`` of the run's
        config).  Images of another size than the run's training images are refused.

        ``images`` may also be a ``torch.utils.data.DataLoader`` of images or of ``(images, labels)``
        batches: it is read once, batch by batch, every draw predicting each batch (memory: the
        probabilities, not the images; ``mc-dropout`` holds the loader's images), and
        ``Prediction.labels`` holds the labels in the order of ``probs``, so a shuffled loader
        scores correctly.

        Two more predictors, as the run's own evaluation scored them (metrics.json, predictions.npz):
        ``temperature_scaled`` is the run's output predictor (``output_predictor``) with its logits
        divided by the temperature T fitted on the validation split, softmax(log p / T);
        ``mc-dropout`` (runs trained with activation dropout, ``rigl-mcdp``) averages ``draws``
        passes (default ``mc_samples``) of the final weights with dropout on and the tracked BatchNorm
        statistics.

        ``seed`` seeds the draws of ``mc-z`` and ``swag`` (default 0) and the dropout masks of
        ``mc-dropout`` (default: the run's seed, as its evaluation drew them); ``batch_size``: images
        per forward pass (default 500; ``mc-dropout``: the evaluation's, max(batch size, 500), so that
        the default call gives exactly the passes the run's evaluation made).

        ``bn_protocol`` picks the BatchNorm statistics (:data:`cigl_bayes.predict.BN_PROTOCOLS`):
        ``tracked`` (the running statistics of training; ``final`` only), ``recomputed-clean``
        (exact averages over the unaugmented training images) or ``recomputed-augmented`` (over
        augmented training batches, as the official CigL code does for its WMA model).  None: the
        run's own choice, as its headline numbers used it (``metrics.json`` → ``bn_protocol``)."""
        if bn_protocol is not None and predictor in ("temperature_scaled", "mc-dropout"):
            raise ValueError(f"{predictor} keeps the BatchNorm statistics the run's evaluation used; bn_protocol "
                             "applies to the weight-setting predictors (final, wma, predictive, mc-z, swag)")
        if predictor == "temperature_scaled":
            return self._temperature_scaled(images, draws, seed, batch_size)
        if predictor == "mc-dropout":
            return self._mc_dropout(images, draws, seed, batch_size)
        seed = 0 if seed is None else seed
        batch_size = 500 if batch_size is None else batch_size
        x = None if is_loader(images) else self.prepare(images)  # bad inputs are refused before any draw is made
        drawn = self._under(bn_protocol, predictor, self.weight_draws(predictor, draws, seed))
        labels = None
        try:  # a draw that fails (or Ctrl-C) must not leave its weights where the final ones belong
            if is_loader(images):  # batch by batch, every draw on each batch: the loader is read once
                per_batch, per_batch_labels = [], []
                for inputs, y in loader_batches(images):
                    x = self.prepare(inputs)
                    per_batch.append(torch.stack([self._probs(key, snap, x, batch_size) for key, snap in drawn]))
                    per_batch_labels.append(y)
                if not per_batch:
                    raise ValueError("the DataLoader gave no batches")
                stacked, labels = torch.cat(per_batch, 1), joined_labels(per_batch_labels)
            else:
                stacked = torch.stack([self._probs(key, snap, x, batch_size) for key, snap in drawn])
        finally:
            self._restore()
        single = predictor in SINGLE_WEIGHT
        return Prediction(predictor, stacked.mean(0), None if single else stacked, labels)

    def _probs(self, key: str, snap: Snapshot, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Softmax probabilities (N, C), on the CPU, of the weights ``snap`` with the BatchNorm statistics
        ``key`` names, for the prepared inputs ``x``, ``batch_size`` per forward pass."""
        self._load(key, snap)
        logits = torch.cat([at_least_float32(self._logits(b, snap.sparse)) for b in x.split(batch_size)])
        return torch.softmax(logits, -1).cpu()

    def _under(self, protocol: str | None, predictor: str,
               draws: list[tuple[str, Snapshot]]) -> list[tuple[str, Snapshot]]:
        """The draws with keys that say which BatchNorm statistics :meth:`_load` gives them under
        ``protocol`` (None: the keys as drawn, the run's own choice)."""
        if protocol is None:
            return draws
        check_bn_protocol(protocol)
        self._check_protocol(protocol)
        if protocol == TRACKED:
            if predictor != "final":
                raise ValueError(f"tracked BatchNorm statistics exist only for the final weights, not for "
                                 f"{predictor!r}; use recomputed-clean or recomputed-augmented")
            return [(TRAINING_BN_KEY, snap) for _, snap in draws]
        recomputed = [(FINAL_RECOMPUTED_KEY if key == TRAINING_BN_KEY else key, snap) for key, snap in draws]
        if protocol == RECOMPUTED_CLEAN:
            return recomputed  # the keys' own recomputation: on the unaugmented training images
        return [(f"{key}{PROTOCOL_SEPARATOR}{protocol}", snap) for key, snap in recomputed]

    def _check_protocol(self, protocol: str) -> None:
        """Refuse a BatchNorm protocol these weights cannot serve (before anything is loaded)."""

    def _logits(self, batch: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """The network's logits (B, C) for one batch of B inputs under the sparse weights ``sparse``."""
        return one_row_per_input(self.net.forward(batch, sparse), batch)

    def _temperature_scaled(self, images, draws: int | None, seed: int | None,
                            batch_size: int | None) -> Prediction:
        stored = self.metrics
        if stored is None:
            raise RunFolderError(f"{self.where} has no metrics.json, which holds the fitted temperature; run the "
                                 "training command again to re-evaluate, or use the other predictors")
        temperature, output = stored.get("temperature"), stored.get("output_predictor")
        if temperature is None or output is None:
            raise RunFolderError(f"{self.where} fitted no temperature (trained with --no-temperature-scaling, "
                                 "or without a validation split); use its other predictors")
        base = self.predict(images, output, draws, seed=seed, batch_size=batch_size)
        scaled = torch.softmax(apply_temperature(base.probs.clamp_min(1e-12).log(), temperature), -1)
        return Prediction("temperature_scaled", scaled, None, base.labels)

    def _mc_dropout(self, images, draws: int | None, seed: int | None, batch_size: int | None) -> Prediction:
        if not self.config.method_config.activation_dropout:
            raise ValueError(f"{self.where} (method {self.config.method}) has no activation dropout; "
                             "mc-dropout is the predictor of rigl-mcdp runs (for CigL's random mask use mc-z)")
        if draws is not None and (isinstance(draws, bool) or not isinstance(draws, int) or draws < 1):
            raise ValueError(f"draws must be a positive integer (or None: the run's default), got {draws!r}")
        seed = self.config.seed if seed is None else seed
        batch_size = max(self.config.batch_size, 500) if batch_size is None else batch_size  # build_data's
        x, labels = self._all_inputs(images)
        self._restore()  # the final weights with the BatchNorm statistics tracked in training
        batches = [(b, None) for b in x.split(batch_size)]
        try:
            passes = mc_dropout_probs(self.net, batches, self.config.mc_samples if draws is None else draws, seed)
        finally:
            self._restore()
        stacked = torch.stack(passes)
        return Prediction("mc-dropout", stacked.mean(0), stacked, labels)

    def _all_inputs(self, images) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``images`` prepared, or every batch of a DataLoader prepared and joined, with its labels."""
        if not is_loader(images):
            return self.prepare(images), None
        batches = list(loader_batches(images))
        if not batches:
            raise ValueError("the DataLoader gave no batches")
        return torch.cat([self.prepare(x) for x, _ in batches]), joined_labels([y for _, y in batches])

    @torch.no_grad()
    def log_probs(self, predictor: str, split: str = "test", draws: int | None = None, *, seed: int = 0,
                  swag_rank: int | None = None, bn_protocol: str | None = None) -> list[torch.Tensor]:
        """Per-draw log-probabilities (N, C) of ``predictor`` on the run's own ``split`` ("test" or
        "val"), in the loader's order (labels: :meth:`labels`); ``bn_protocol`` as in :meth:`predict`."""
        loader = self._split(split)
        out = []
        try:
            for key, snap in self._under(bn_protocol, predictor, self.weight_draws(predictor, draws, seed, swag_rank)):
                self._load(key, snap)
                out.append(predict_log_probs(self.net, loader, snap.sparse))
        finally:
            self._restore()
        return out

    @torch.no_grad()
    def network(self, predictor: str = "wma") -> torch.nn.Module:
        """A standalone copy of the network (eval mode) holding a single-weight predictor's
        weights — ``final`` or ``wma`` — and its BatchNorm statistics, e.g. for export."""
        if predictor not in SINGLE_WEIGHT:
            raise ValueError(f"only {' and '.join(SINGLE_WEIGHT)} are one network; {predictor!r} averages several")
        key, snap = self.weight_draws(predictor)[0]
        try:
            self._load(key, snap)
            self.net.load_flat_(snap.sparse, snap.other)  # the masked weights themselves, zeros included
            return copy.deepcopy(self.net.module).eval()
        finally:
            self._restore()

    def labels(self, split: str = "test") -> torch.Tensor:
        """Labels of the run's ``split``, in the order of :meth:`log_probs`."""
        return torch.cat([y.cpu() for _, y in self._split(split).epoch(0)])

    def _split(self, split: str):
        loader = {"test": self.data().test, "val": self.data().val}.get(split)
        if loader is None:
            raise ValueError(f"{self.where} has no {split!r} split (splits: test, val when val_fraction > 0)")
        return loader

    def _load(self, key: str, snap: Snapshot) -> None:
        """Load the weights and their BatchNorm statistics (recomputed once per key, then cached)."""
        self.net.load_flat_(snap.sparse, snap.other)
        if key == TRAINING_BN_KEY:
            self.net.module.load_state_dict(self._final_state)
        elif (key, self.bn_batches) in self._bn_cache:  # a new run.bn_batches asks for a recomputation
            self.net.module.load_state_dict(self._bn_cache[key, self.bn_batches], strict=False)
        elif key in self._stored_bn and self.bn_batches == self.config.bn_batches:
            self.net.module.load_state_dict(self._stored_bn[key], strict=False)
        else:
            _, _, protocol = key.partition(PROTOCOL_SEPARATOR)
            recompute_batchnorm(self.net, self.bn_loader(protocol or RECOMPUTED_CLEAN), snap.sparse, self.bn_batches)
            self._bn_cache[key, self.bn_batches] = {k: v.clone() for k, v in self.net.module.state_dict().items()
                                   if "running_" in k or "num_batches_tracked" in k}
        self.net.module.eval()

    def _restore(self) -> None:
        self.net.module.load_state_dict(self._final_state)
        self.net.module.eval()

    def bn_loader(self, protocol: str = RECOMPUTED_CLEAN):
        """The training batches BatchNorm statistics are recomputed on under ``protocol`` (loaded on
        first use): the unaugmented images, or augmented batches with the run's seeded plan."""
        return self.data().bn_loader(protocol)

    def data(self):
        """The run's data splits (``cigl_bayes.train.Data``), loaded on first use and checked against
        the fingerprints in metrics.json: other data than the run was trained and scored on is refused."""
        if self._data is None:
            from cigl_bayes.train import build_data

            cfg = dataclasses.replace(self.config, data_dir=self.data_dir or self.config.data_dir)
            data = build_data(cfg, self.device)
            stored = self.metrics or {}
            for split, loader in (("train", data.train_eval), ("test", data.test)):
                saved = stored.get(f"{split}_fingerprint")
                if saved is not None and saved != data_lib.fingerprint(loader):
                    raise RunFolderError(f"the {split} data found now (data dir {cfg.data_dir}) differ from those "
                                         f"{self.where} was trained and scored on; give the right data_dir")
            self._data = data
        return self._data

    # -- posterior objects -------------------------------------------------------------------------------
    def swag(self, rank: int | None = None) -> SparseSWAG:
        """SWAG moments (mean, diagonal variance, low-rank deviations) of the collected samples.

        ``rank`` K, the deviation columns kept: None keeps up to :data:`SWAG_RANK` (20, SWAG's
        default), as many as there are samples when there are fewer; a rank above the number of
        samples is refused (the deviation matrix has one column per sample)."""
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise ValueError(f"SWAG rank must be an integer ≥ 1, got {rank!r}")
        if len(self.samples) < 2:
            raise RunFolderError(f"SWAG needs at least 2 samples; {self.where} has {len(self.samples)}")
        if rank is not None and rank > len(self.samples):
            raise ValueError(f"SWAG rank {rank} is more than the {len(self.samples)} samples {self.where} "
                             f"collected (one deviation column per sample); give rank ≤ {len(self.samples)}, or "
                             f"none for up to {SWAG_RANK}")
        key = SWAG_RANK if rank is None else rank
        if key not in self._swag:
            self._swag[key] = SparseSWAG.from_snapshots(self.samples, max_rank=key)
        return self._swag[key]

    def to_inferencedata(self, inputs=None, labels=None, *, batch_size: int | None = None):
        """The samples as an arviz ``InferenceData`` (one chain; draws = samples; coordinates name the
        layers), with the per-epoch training loss as a sample statistic where the history holds it.

        With ``inputs`` and their class ``labels`` (held-out points, as ``predict`` takes them), the
        groups ``az.loo``, ``az.waic`` and ``az.compare`` read are added: ``log_likelihood`` ``y`` =
        log p(y_i | θ_s) of every sample s (the ``predictive`` draws: each sample with its own
        BatchNorm statistics; a probability below float32's smallest normal counts as that value),
        ``posterior_predictive`` (each draw's most probable class) and ``observed_data``.  ``inputs`` may
        be a DataLoader of ``(inputs, labels)`` batches, whose labels are taken when ``labels`` is None."""
        from . import diagnostics

        if not self.samples:
            why = f", {self.mean_only_option} keeps only their mean" if self.wma is not None else ""
            raise RunFolderError(f"{self.where} has no posterior samples (method {self.config.method}{why}); "
                                 "InferenceData holds the samples")
        if (inputs is None and labels is not None) or (labels is None and inputs is not None and not is_loader(inputs)):
            raise ValueError("to_inferencedata(inputs, labels): give both (held-out points and their classes), a "
                             "DataLoader of (inputs, labels) batches, or neither")
        layers = list(zip(self.net.sparse_names, self.net.mask.numels))
        by_epoch = {h["epoch"]: h["train_loss"] for h in self.history}
        loss = [by_epoch.get(e + 1, float("nan")) for e in self.sample_epochs]
        known = any(e + 1 in by_epoch for e in self.sample_epochs)  # a CigL object in memory keeps no loss
        points = {}
        if inputs is not None:
            if labels is not None:
                y = torch.as_tensor(labels)
                if y.dim() != 1 or y.is_floating_point() or y.is_complex():
                    raise ValueError(f"labels must be one integer class per input, got {tuple(y.shape)} {y.dtype}")
            predicted = self.predict(inputs, "predictive", batch_size=batch_size)
            draws = predicted.draws  # (samples, N, classes)
            if labels is None:
                if predicted.labels is None:
                    raise ValueError("the DataLoader's batches carry no integer labels (one class per input, shape "
                                     "(batch,)); give to_inferencedata(loader, labels)")
                y = predicted.labels
            elif predicted.labels is not None and not torch.equal(y.cpu().long().view(-1), predicted.labels):
                raise ValueError("the labels given differ from those the DataLoader's batches carry (in the order it "
                                 "gave them; a shuffled loader reorders them): give to_inferencedata(loader) alone")
            if draws.shape[1] != len(y):
                raise ValueError(f"{draws.shape[1]} inputs but {len(y)} labels")
            if len(y) and not (0 <= int(y.min()) and int(y.max()) < draws.shape[2]):
                raise ValueError(f"labels must lie in [0, {draws.shape[2]}) (the model's classes), got "
                                 f"{int(y.min())}..{int(y.max())}")
            picked = draws.gather(2, y.long().view(1, -1, 1).expand(len(draws), -1, 1)).squeeze(2)
            tiny = torch.finfo(torch.float32).tiny
            points = {"log_likelihood": [picked.double().clamp_min(tiny).log().numpy()],
                      "posterior_predictive": [draws.argmax(-1).numpy()], "observed": y.numpy()}
        return diagnostics.posterior_inference_data([self.samples], layers, train_loss=[loss] if known else None,
                                                    **points)


# predict() also gives these two, as the run's evaluation scored them (they are not weight draws)
SCORED_PREDICTORS = ("temperature_scaled", "mc-dropout")


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
