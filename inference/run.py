"""A finished run folder as a Python object: ``load_run(run_dir) -> TrainedRun`` (the reading
itself is :mod:`inference.loading`; this module is what the object does).

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
from cigl_bayes.averaging import Snapshot
from cigl_bayes.config import TrainConfig
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


def __getattr__(name: str):
    """``from cigl_bayes.inference.run import load_run`` (its home until 2026-12-06) still works:
    reading a run folder moved to :mod:`inference.loading`, which imports this module."""
    if name in ("load_run", "AVERAGE_TOLERANCE"):
        from . import loading

        return getattr(loading, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
