"""The predictors, each defined once, and the forward passes they need.

A predictor is the set of weight settings it averages over.  For a run collected from epoch T*
on, with samples x_t = (M⊙Z⁽ᵗ⁾⊙W⁽ᵗ⁾, θ⁽ᵗ⁾), t = 1..T (paper Algorithm 1, lines 12–14):

  final       f(x; M⊙W_final)                                    one forward pass
  wma         f(x; x̄), x̄ = (1/T) Σ_t x_t (moment-matched mean)   one forward pass
  predictive  (1/T) Σ_t softmax f(x; x_t)       (paper "w/o WMA")  T forward passes
  mc-z        (1/S) Σ_s softmax f(x; M⊙Z_s⊙W_final), Z_s ~ Bern(keep)    S passes
  swag        (1/S) Σ_s softmax f(x; x̃_s), x̃_s ~ N(x̄, ½(Σ_diag + D Dᵀ/(K−1)))   S passes

(:func:`predictor_draws`).  By default BatchNorm statistics are recomputed on the training data for every
weight setting (SWA/SWAG do the same for averaged weights) except ``final`` of a method without
an unscaled random mask, whose statistics were tracked during training for the very weights it
evaluates (key ``"final"``).  Under CigL's unscaled Z they were tracked for M⊙Z⊙W, not M⊙W, so
there ``final`` is recomputed too (key ``"final:bn-recomputed"``,
:attr:`cigl_bayes.config.TrainConfig.final_bn_recomputed`).  MC dropout (rigl-mcdp) keeps the
weights and samples activations instead (:func:`mc_dropout_log_probs`).  The run's evaluation
(``cigl_bayes.evaluate``), the Python API (``cigl_bayes.inference.load_run``) and
``experiments.posterior_report`` all draw their weights from here.

BatchNorm protocols (:data:`BN_PROTOCOLS`), for comparing methods under the same statistics:

  tracked               the running (EMA) statistics tracked in training, on augmented batches,
                        for the weights being trained; they exist only for ``final``
  recomputed-clean      exact averages (momentum None) over the unaugmented training images
  recomputed-augmented  exact averages over augmented training batches (random crop and flip),
                        as the official CigL code recomputes them for its WMA model

:func:`draws_log_probs` takes a ``protocol``; without one the draw keys decide, as above.

Every predictor returns *log-probabilities* (N, C) on the CPU: log-softmax of the logits for
a single weight setting, log of the averaged softmax for an ensemble.  Softmax of
log-probabilities is the probability itself, so temperature scaling and the metrics treat both
alike.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from .averaging import Snapshot, WeightMaskAverage
from .network import SparseNetwork
from .random_mask import random_keep_mask


def _batches(loader) -> Iterable:
    return loader.epoch(0) if hasattr(loader, "epoch") else loader


@torch.no_grad()
def predict_log_probs(net: SparseNetwork, loader, sparse_flat: torch.Tensor | None = None) -> torch.Tensor:
    """log softmax f(x; W) over a loader, with ``sparse_flat`` (default M⊙W) and eval-mode BN."""
    w = net.effective_flat() if sparse_flat is None else sparse_flat
    was_training = net.module.training
    net.module.eval()
    out = [torch.log_softmax(net.forward(x, w).float(), dim=-1).cpu() for x, _ in _batches(loader)]
    net.module.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def mc_dropout_probs(net: SparseNetwork, loader, samples: int, generator_seed: int = 0) -> list[torch.Tensor]:
    """Softmax probabilities (N, C) of each of ``samples`` passes with dropout on and BatchNorm in
    eval mode (MC dropout, Gal & Ghahramani 2016), for the final weights M⊙W; torch's global RNGs are
    seeded with ``generator_seed`` for the passes and restored afterwards (CPU, and CUDA on a GPU)."""
    w = net.effective_flat()
    net.module.eval()
    dropouts = [m for m in net.module.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    for m in dropouts:
        m.train()
    devices = [w.device] if w.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # the caller's CPU and CUDA generators are left as they were
        torch.manual_seed(generator_seed)
        passes = [torch.cat([torch.softmax(net.forward(x, w).float(), -1).cpu() for x, _ in _batches(loader)])
                  for _ in range(samples)]
    net.module.train()
    return passes


@torch.no_grad()
def mc_dropout_log_probs(net: SparseNetwork, loader, samples: int, generator_seed: int = 0) -> torch.Tensor:
    """log of the softmax averaged over ``samples`` passes with dropout on and BN in eval mode."""
    total = None
    for probs in mc_dropout_probs(net, loader, samples, generator_seed):
        total = probs if total is None else total + probs
    return (total / samples).clamp_min(1e-12).log()


def has_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` holds a BatchNorm layer (whose statistics a weight change invalidates)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


@torch.no_grad()
def recompute_batchnorm(net: SparseNetwork, loader, sparse_flat: torch.Tensor, max_batches: int | None = None) -> None:
    """Reset BatchNorm running statistics and re-estimate them as exact averages over
    ``max_batches`` training batches (all if None) for the weights ``sparse_flat``
    (as SWA/SWAG do for averaged weights: the whole module in train mode, as in training).
    Dropout, if the module has any, draws its masks from a generator seeded 0 inside a forked
    random state: the same weights get the same statistics every time, and the caller's random
    stream (the next training step's) is left as it was."""
    bns = [m for m in net.module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"BatchNorm recomputation needs at least one batch, got bn_batches={max_batches}")
    if torch.is_tensor(loader):
        raise ValueError(f"the BatchNorm loader is one tensor {tuple(loader.shape)}, which iterates over single "
                         "samples: give an iterable of batches, e.g. a DataLoader or [(x, y), ...]")
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    was_training = net.module.training
    net.module.train()
    seen = 0
    device = sparse_flat.device
    try:
        cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.default_generator.manual_seed(0)
            for index in cuda:  # the weights' GPU, which need not be the current one
                torch.cuda.default_generators[index].manual_seed(0)
            for i, batch in enumerate(_batches(loader)):
                if max_batches is not None and i >= max_batches:
                    break
                x = _images(batch)
                if not seen and net.autocast_dtype is None:  # under autocast the layers cast their inputs
                    _check_first_batch(x, sparse_flat)
                try:
                    net.forward(x, sparse_flat)
                except Exception as err:
                    if not seen and hasattr(err, "add_note"):  # Python ≥ 3.11: the same error, with where it arose
                        err.add_note(f"(while recomputing BatchNorm statistics on the first batch of the "
                                     f"BatchNorm loader, {x.dtype} {tuple(x.shape)})")
                    raise
                seen += 1
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        net.module.train(was_training)
    if not seen:  # reset and never re-estimated: mean 0, variance 1 would be served as statistics
        raise ValueError("the BatchNorm loader yielded no batch: its statistics cannot be recomputed")


def _check_first_batch(x: torch.Tensor, sparse_flat: torch.Tensor) -> None:
    """A floating batch of another precision than the weights is the loader's mistake (a float64
    tensor built with numpy, a float32 loader for a float64 model): name it, not the layer it breaks."""
    if x.is_floating_point() and sparse_flat.is_floating_point() and x.dtype != sparse_flat.dtype:
        raise ValueError(f"the BatchNorm loader's first batch is {x.dtype} {tuple(x.shape)} and the model's weights "
                         f"are {sparse_flat.dtype}: it must yield training batches as the model takes them")


def _images(batch) -> torch.Tensor:
    """The images of a BatchNorm batch: a tensor, or the first item of an (x, y, ...) pair."""
    if torch.is_tensor(batch):
        return batch
    if isinstance(batch, (tuple, list)) and batch and torch.is_tensor(batch[0]):
        return batch[0]
    raise ValueError(f"a BatchNorm loader must yield image tensors or (x, y) pairs, got a {type(batch).__name__}")


@contextmanager
def weights_loaded(net: SparseNetwork, snap: Snapshot, bn_loader=None, bn_batches: int | None = None) -> Iterator[None]:
    """Temporarily load a snapshot (and recompute BN statistics for it); restore afterwards."""
    saved = copy.deepcopy(net.module.state_dict())
    try:
        net.load_flat_(snap.sparse, snap.other)
        if bn_loader is not None:
            recompute_batchnorm(net, bn_loader, snap.sparse, bn_batches)
        yield
    finally:
        net.module.load_state_dict(saved)


def ensemble_log_probs(log_probs: Iterable[torch.Tensor]) -> torch.Tensor:
    """log of the mean of softmax outputs (Bayesian model averaging over samples)."""
    total, n = None, 0
    for lp in log_probs:
        p = lp.exp()
        total = p if total is None else total + p
        n += 1
    if n == 0:
        raise ValueError("no samples to average")
    return (total / n).clamp_min(1e-12).log()


PREDICTORS = ("final", "wma", "predictive", "mc-z", "swag")  # the weight-draw predictors
TRAINING_BN_KEY = "final"  # the one draw key evaluated with the BatchNorm statistics tracked in training
FINAL_RECOMPUTED_KEY = "final:bn-recomputed"  # M⊙W with BatchNorm recomputed (CigL: trained under M⊙Z⊙W)
SINGLE_WEIGHT = ("final", "wma")  # one weight setting: no draws to average


def predictor_draws(name: str, final: Snapshot, samples: Sequence[Snapshot] = (), *, wma: Snapshot | None = None,
                    keep: float = 1.0, count: int = 10, seed: int = 0,
                    swag_sample: Callable[[torch.Generator], Snapshot] | None = None,
                    final_bn_recomputed: bool = False) -> list[tuple[str, Snapshot]]:
    """The weight settings predictor ``name`` averages over, each with a key that names it (a cache
    key for its BatchNorm statistics; only ``"final"`` keeps the training statistics, and
    ``final_bn_recomputed`` — CigL's unscaled Z — gives ``final`` the key
    ``"final:bn-recomputed"`` instead, so its statistics are recomputed for M⊙W).

    ``final`` is M⊙W; ``samples`` the collected x_t; ``wma`` their mean (computed from ``samples``
    when not given); ``count`` the draws of mc-z and swag, and the cap on the samples of
    predictive; ``seed`` seeds the Z_s of mc-z and the x̃_s of swag (drawn by ``swag_sample``)."""
    if name not in PREDICTORS:
        raise ValueError(f"unknown predictor {name!r}; known: {', '.join(PREDICTORS)}")
    if count < 1:
        raise ValueError(f"draws must be ≥ 1, got {count}")
    if name == "final":
        return [(FINAL_RECOMPUTED_KEY if final_bn_recomputed else TRAINING_BN_KEY, final)]
    if name == "mc-z":
        gen = torch.Generator().manual_seed(seed)
        w = final.sparse
        return [(f"mc-z:{seed}:{i}", Snapshot(w * random_keep_mask(w.numel(), keep, gen, dtype=w.dtype).to(w.device),
                                              final.other)) for i in range(count)]
    if name == "wma" and wma is not None:
        return [("wma", wma)]
    if not samples:
        raise ValueError(f"predictor {name!r} needs collected weight samples; this run has none "
                         "(use 'final' or 'mc-z')")
    if name == "wma":
        average = WeightMaskAverage()
        for snap in samples:
            average.update(snap)
        return [("wma", average.mean())]
    if name == "predictive":
        return [(f"sample{i}", snap) for i, snap in enumerate(samples[:count])]
    if swag_sample is None:
        raise ValueError("predictor 'swag' needs a SWAG sampler (cigl_bayes.inference.swag.SparseSWAG.sample)")
    gen = torch.Generator().manual_seed(seed)
    return [(f"swag:{seed}:{i}", swag_sample(gen)) for i in range(count)]


BN_PROTOCOLS = ("tracked", "recomputed-clean", "recomputed-augmented")
TRACKED, RECOMPUTED_CLEAN, RECOMPUTED_AUGMENTED = BN_PROTOCOLS


def check_bn_protocol(protocol: str) -> str:
    if protocol not in BN_PROTOCOLS:
        raise ValueError(f"unknown BatchNorm protocol {protocol!r}; known: {', '.join(BN_PROTOCOLS)}")
    return protocol


def bn_protocols_of(name: str) -> tuple[str, ...]:
    """The protocols predictor ``name`` can be evaluated under: only ``final`` has tracked statistics
    (an averaged or sampled weight setting was never trained as such)."""
    return BN_PROTOCOLS if name == "final" else BN_PROTOCOLS[1:]


def default_bn_protocol(name: str, final_bn_recomputed: bool = False) -> str:
    """The protocol a run's headline entry of ``name`` uses (``metrics.json`` → ``test``): tracked
    for ``final`` (recomputed-clean under CigL's unscaled Z, ``final_bn_recomputed``), and
    recomputed-clean for every other weight setting."""
    if name == "final" and not final_bn_recomputed:
        return TRACKED
    return RECOMPUTED_CLEAN


def draws_log_probs(net: SparseNetwork, draws: Sequence[tuple[str, Snapshot]], loaders: dict, bn_loader=None,
                    bn_batches: int | None = None, protocol: str | None = None) -> dict[str, list[torch.Tensor]]:
    """{split: [log-probabilities of each draw]} over ``loaders``.

    Without ``protocol``: BatchNorm is recomputed on ``bn_loader`` for every draw but the one keyed
    ``"final"`` (skipped when ``bn_loader`` is None).  With ``protocol="tracked"`` every draw keeps
    the module's tracked statistics (only ``final``'s draw may); with a recomputed protocol every
    draw, ``final`` included, is recomputed on ``bn_loader`` (the caller passes the protocol's loader)."""
    if protocol is not None:
        check_bn_protocol(protocol)
        foreign = [k for k, _ in draws if k not in (TRAINING_BN_KEY, FINAL_RECOMPUTED_KEY)]
        if protocol == TRACKED and foreign:
            raise ValueError(f"tracked BatchNorm statistics exist only for the final weights, not for {foreign[0]!r}")
        if protocol != TRACKED and bn_loader is None:
            raise ValueError(f"BatchNorm protocol {protocol!r} needs the training loader to recompute on")
    out: dict[str, list[torch.Tensor]] = {k: [] for k in loaders}
    for key, snap in draws:
        if protocol == TRACKED or (protocol is None and key == TRAINING_BN_KEY):
            for k, loader in loaders.items():
                out[k].append(predict_log_probs(net, loader, snap.sparse))
            continue
        with weights_loaded(net, snap, bn_loader, bn_batches):
            for k, loader in loaders.items():
                out[k].append(predict_log_probs(net, loader, snap.sparse))
    return out


def combine(name: str, draws: Sequence[torch.Tensor]) -> torch.Tensor:
    """The predictor's log-probabilities from its draws: the draw itself for a single weight
    setting, else the log of the averaged softmax (Bayesian model averaging)."""
    return draws[0] if len(draws) == 1 else ensemble_log_probs(draws)


def nnz(snap: Snapshot) -> int:
    """Numbers kept to predict with one weight setting: non-zero sparse weights + dense parameters."""
    return int((snap.sparse != 0).sum()) + snap.other.numel()
