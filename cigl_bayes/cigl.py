"""CigL as an object that attaches to *your* module and optimizer: the one implementation of the
algorithm, which every host composes (a user's loop, the Lightning callback, this project's Trainer).

    cigl = CigL(model, optimizer, sparsity=0.95, total_steps=epochs * len(loader))   # T* = 0.8 × epochs
    for epoch in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)     # model(x) computes with M⊙Z⊙W
            loss.backward()
            cigl.step()                             # instead of optimizer.step()
        cigl.end_epoch()                            # WMA from epoch T*
    wma_model = cigl.averaged_model(bn_loader)      # a plain nn.Module, BatchNorm recomputed

What one step does (paper Algorithm 1):
    Z ~ Bernoulli(keep), drawn fresh for every step                     (``RandomKeepMask``)
    the forward pass uses M⊙Z⊙W                                          (``SparseNetwork``)
    every ΔT steps until ``update_end`` of ``total_steps``: M ← RigL/SET(M, |W|, |∂L/∂(M⊙Z⊙W)|),
        *instead of* the optimizer step; regrown weights and their optimizer state restart at 0
    otherwise: the optimizer's step, after which the Z = 0 entries get their values back, so
        only the M⊙Z entries move
At the end of every epoch ≥ T* (``collect_from_epoch``): the sample M⊙Z⊙W with the Z of the
epoch's last step goes into the running mean (WMA) and the sample store.

How ``model(x)`` sees M⊙Z⊙W: :meth:`attach` (done on construction unless ``attach=False``) gives
the module an instance ``forward`` that swaps M⊙Z⊙W in for the sparse weights in training mode
(``cigl_bayes/attached_forward.py``); in eval mode the module runs as it is (its weights are exactly
M⊙W: W outside M is kept at 0).  :meth:`detach` removes it.  A host that computes its own loss
through :attr:`net` (this project's Trainer, the Pyro engine) passes ``attach=False`` and asks for
:meth:`training_weights` or :attr:`z` instead.

Any torch optimizer works: on mask updates every per-parameter state tensor shaped like the
weight (SGD's ``momentum_buffer``, Adam's ``exp_avg``/``exp_avg_sq``) is zeroed for regrown
weights and outside the new M.  Under ``torch.distributed`` every rank draws the same M and Z
(the same seed), and the captured regrowth score is all-reduced (mean) on update steps.
"""

from __future__ import annotations

import difflib
import numbers
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from .attached_forward import AttachedForward
from .averaging import (
    MemorySnapshotStore,
    Snapshot,
    SnapshotStore,
    WeightMaskAverage,
    pack_snapshot,
    unpack_snapshot,
)
from .config import METHODS, MethodConfig
from .distributed import all_reduce_mean_, dist_info
from .masks import MaskSchedule, initial_mask
from .network import SparseNetwork
from .predict import RECOMPUTED_CLEAN, check_bn_protocol, has_batchnorm, recompute_batchnorm
from .random_mask import RandomKeepMask
from .settings import CigLSettings
from .sparsity import sparse_parameter_names


class CigL(AttachedForward):
    """The CigL algorithm (and RigL, SET, static, dense and the ablations) on a module and optimizer.

    ``method`` names a row of :data:`cigl_bayes.config.METHODS`; ``keep`` overrides its keep
    probability of Z (default: the method's, 0.99 for cigl).  ``sparse_params`` lists the
    parameter names to sparsify (default: every conv and linear weight, the project's rule;
    ``cigl_bayes.sparsity.sparse_parameter_names``).  ``total_steps`` is the run's number of
    optimizer steps (mask updates stop at ``update_end`` of it).  ``collect_from_epoch`` is T*:
    samples are collected at the end of every epoch ≥ T* (``end_epoch``).  Its default, None, is
    the Trainer's and the Lightning callback's: T* = ⌊0.8 × epochs⌋, where epochs =
    round(total_steps / the steps of the first epoch), fixed at the first ``end_epoch()`` (after
    the mask updates stop at the default ``update_end``, so every sample has the final M and the
    averaged model keeps the sparsity; a sample collected while M still changes is warned about,
    once, since the average then holds weights of several masks).  ``samples`` is where
    they go (default: in memory; the Trainer passes a :class:`SnapshotStore` on disk) and
    ``keep_samples=False`` keeps only their mean.  ``seed`` seeds M (``seed``), the Z stream
    (``seed + 1``) and SET's scores (``seed + 2``), as the Trainer always has.  ``sparsity``
    defaults to 0.95 for the sparse methods and must be 0 (or left out) for ``dense``.

    Construction zeroes the weights outside the initial M.  To resume, load the module and the
    optimizer as usual, build ``CigL`` on them and call :meth:`load_state_dict` before the first
    step: it puts back the weights that construction zeroed (a copy is kept until the first step)
    and then the saved M.  ``apply_mask=False`` skips the zeroing (and the copy) when the module
    already holds weights that lie in the M to be loaded.  An optimizer that holds state of earlier
    steps at the first step, with no such call, is warned about (a forgotten resume, or sparse
    training started from trained dense weights), and its state outside M is zeroed so that the
    weights outside M stay 0; SGD without momentum keeps no state, so it goes unnoticed.
    """

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, *, method: str = "cigl",
                 sparsity: float | None = None, total_steps: int, distribution: str = "erk",
                 sparse_params: Sequence[str] | None = None, keep: float | None = None, delta_t: int = 100,
                 drop_fraction: float = 0.3, update_end: float = 0.75, collect_from_epoch: int | None = None,
                 seed: int = 0, samples=None, keep_samples: bool = True, attach: bool = True,
                 apply_mask: bool = True):
        if not isinstance(module, nn.Module):
            raise ValueError(f"CigL(module, optimizer, ...): the first argument must be an nn.Module, "
                             f"got {type(module).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"CigL(module, optimizer, ...): the second argument must be a torch optimizer, "
                             f"got {type(optimizer).__name__}")
        self.settings = CigLSettings.resolve(
            method=method, sparsity=sparsity, total_steps=total_steps, distribution=distribution, keep=keep,
            delta_t=delta_t, drop_fraction=drop_fraction, update_end=update_end,
            collect_from_epoch=collect_from_epoch)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        seed = int(seed)
        if any(p.is_meta for p in module.parameters()):
            raise ValueError(f"{type(module).__name__} has parameters on the meta device (no values yet): "
                             "materialise it (e.g. module.to_empty(device=...) and initialise) before CigL(...)")
        self.method: MethodConfig = METHODS[method]
        self.sparsity, self.keep = self.settings.sparsity, self.settings.keep
        total_steps, delta_t, collect_from_epoch = (self.settings.total_steps, self.settings.delta_t,
                                                    self.settings.collect_from_epoch)
        if self.method.activation_dropout and not any(isinstance(m, nn.modules.dropout._DropoutNd)
                                                      for m in module.modules()):
            raise ValueError(f"method {method!r} is RigL with dropout layers kept on at test (MC dropout), and "
                             f"{type(module).__name__} has none: add nn.Dropout to the model, or use method='rigl'")
        self.optimizer = optimizer
        self._optimizer_step = None  # None: optimizer.step(); a host that wraps optimizer.step sets the inner one
        self.total_steps = total_steps
        self.schedule = MaskSchedule(total_steps, delta_t, self.settings.drop_fraction, self.settings.update_end)
        self.collect_from_epoch = collect_from_epoch
        self.seed = seed
        names = self._sparse_names(module, sparse_params, distribution)
        self.net = SparseNetwork(module, names, initial_mask(module, names, self.sparsity if self.method.sparse
                                                             else 0.0, distribution, seed))
        self._check_optimizer()
        # the weights as handed over, until the first step: a load_state_dict before it puts them back
        self._before_mask: list[torch.Tensor] | None = None
        if apply_mask:  # W ← M⊙W; off when the module already holds resumed weights (load_state_dict follows)
            self._before_mask = [p.detach().clone() for p in self.net.sparse_params]
            self.net.apply_mask_()
        device = self.net.sparse_params[0].device
        self.z_source = RandomKeepMask(sum(self.net.mask.numels), self.keep, seed + 1, device,
                                       rescale=self.method.rescale_random_mask)
        self.generator = torch.Generator().manual_seed(seed + 2)  # SET's scores (and the Trainer's mixup)
        self.wma = WeightMaskAverage()
        self.samples = samples if samples is not None else MemorySnapshotStore()
        self.keep_samples = keep_samples
        self.epoch = 0  # epochs completed
        self.step_count = 0  # optimizer steps (or mask updates) completed
        self.last_z: torch.Tensor | None = None  # Z of the last completed step (paired with the WMA sample)
        self._z: torch.Tensor | None = None  # Z of the step under way (drawn on first use)
        self._z_drawn = False
        self._score: torch.Tensor | None = None  # ∂L/∂(M⊙Z⊙W) summed over this step's passes, on update steps
        self._caller_trained = False  # a training pass ran with sparse weights the caller gave (Pyro's W)
        self._slots: list = []
        self._w: torch.Tensor | None = None  # M⊙Z⊙W of this step's forward
        self._inside = False
        self._attached = False
        self._detached = False  # detach() was called: no step until attach()
        self._warned_early_sample = False  # a sample collected while M still changes is warned about once
        self._state_loaded = False  # load_state_dict was called: this object resumes a run
        self._first_step_checked = False  # the first step's check of the optimizer's state (step())
        if attach:
            self.attach()

    # -- construction ----------------------------------------------------------------------
    def _sparse_names(self, module: nn.Module, names: Sequence[str] | None, distribution: str) -> list[str]:
        params = dict(module.named_parameters())
        if names is None:  # every conv and linear weight that trains (a frozen layer stays as it is)
            names = [n for n in sparse_parameter_names(module, dense_first=distribution == "uniform")
                     if params[n].requires_grad]
            if not names:
                raise ValueError(f"{type(module).__name__} has no trainable conv or linear weight to sparsify")
            return names
        if isinstance(names, str):
            raise ValueError(f"sparse_params must be a list of parameter names, got the string {names!r}")
        if not names:
            raise ValueError("sparse_params is empty: name at least one parameter to sparsify")
        unknown = [n for n in names if n not in params]
        if unknown:
            near = ([p for p in params if p.startswith(f"{unknown[0]}.")]
                    or difflib.get_close_matches(unknown[0], params))
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ValueError(f"no such parameter in {type(module).__name__}: {unknown[0]!r}{hint}")
        frozen = [n for n in names if not params[n].requires_grad]
        if frozen:
            raise ValueError(f"parameter {frozen[0]!r} is frozen (requires_grad=False): CigL cannot train its mask; "
                             "leave it out of sparse_params")
        return list(dict.fromkeys(names))

    def _check_optimizer(self) -> None:
        held = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        missing = [n for n, p in zip(self.net.sparse_names, self.net.sparse_params) if id(p) not in held]
        if missing:
            raise ValueError(f"the optimizer does not hold the sparse weight {missing[0]!r}; build it from "
                             "model.parameters() before CigL(...), or leave that weight out of sparse_params")

    # -- one step ----------------------------------------------------------------------------
    @property
    def z(self) -> torch.Tensor | None:
        """Z of the step under way (None without a random mask), drawn fresh once per step."""
        if not self._z_drawn:
            self._z = self.z_source.sample(self.net.mask.float.dtype)
            self._z_drawn = True
        return self._z

    @property
    def is_update_step(self) -> bool:
        """Whether the step under way updates M instead of stepping the optimizer."""
        return (self.schedule.is_update_step(self.step_count + 1) and self.method.regrowth != "none"
                and self.net.mask.density < 1.0)  # a fully dense mask cannot change

    @property
    def needs_score(self) -> bool:
        """Whether the step under way needs the dense gradient ∂L/∂(M⊙Z⊙W) (RigL regrowth)."""
        return self.is_update_step and self.method.regrowth == "gradient"

    def training_weights(self) -> torch.Tensor:
        """M⊙Z⊙W (flat, differentiable) for this step's forward pass; on update steps its gradient
        is kept as the regrowth score.  Every forward pass with gradients since the optimizer's
        gradients were last cleared adds its gradient to the score, as ``backward`` adds to ``.grad``
        (gradient accumulation over micro-batches scores the whole batch; a batch thrown away with
        ``zero_grad()`` is not scored); a pass without gradients (``torch.no_grad``, a metric
        on the training batch) trains nothing and is not recorded."""
        w = self.net.effective_flat(self.z)
        if not torch.is_grad_enabled():
            return w
        self._w = w
        if self.needs_score:
            if self._score is not None and _gradients_cleared(self.net.sparse_params):
                self._score = None  # zero_grad() since the last pass: its gradient was thrown away
            w.register_hook(self._add_to_score)
        return w

    def _add_to_score(self, grad: torch.Tensor) -> None:
        """Backward hook on M⊙Z⊙W: the regrowth score sums the gradients of the passes since the
        optimizer's gradients were last cleared, in one buffer."""
        self._score = grad.detach().clone() if self._score is None else self._score.add_(grad)

    def l2(self) -> torch.Tensor:
        """‖M⊙Z⊙W‖² + ‖θ‖² of this step's training forward: add (wd/2)·l2() to the loss to train as
        paper Eq. 1 (the Gaussian prior's term; the optimizer's own weight_decay then stays 0).
        Weight decay inside the optimizer differs only in the Z = 0 entries' momentum."""
        if self._w is None:
            raise RuntimeError("l2() needs this step's training forward pass first (module in train mode)")
        l2 = self._w.square().sum()
        if self.net.other_params:
            l2 = l2 + torch.stack(torch._foreach_norm(self.net.other_params)).square().sum()
        return l2

    def step(self, score: torch.Tensor | None = None) -> bool:
        """After ``loss.backward()``: a mask update on update steps, else the optimizer's step with
        the Z = 0 entries restored.  ``score`` (the dense gradient ∂L/∂(M⊙Z⊙W)) defaults to the one
        captured in this step's forward, all-reduced across ranks.  Returns True on a mask update
        (the optimizer did not step)."""
        if self._detached:
            raise RuntimeError("cigl.step() after cigl.detach(): the module is a plain module again and the "
                               "optimizer would move weights outside the mask; call cigl.attach() to train on "
                               "with CigL (or optimizer.step() to train it without)")
        if self._attached and self._w is None and not self._caller_trained:
            raise RuntimeError("cigl.step() without a training forward pass through the module CigL is attached "
                               f"to ({type(self.net.module).__name__}, in train mode, gradients on): the "
                               "optimizer would move weights outside the mask; call that module (or attach CigL "
                               "to the one you call)")
        replaced = self.net.replaced_parameter()
        if replaced is not None:
            raise RuntimeError(f"{type(self.net.module).__name__}'s parameter {replaced!r} was replaced after "
                               "CigL(...) (load_state_dict(..., assign=True), or a new layer assigned): the "
                               "optimizer and the mask hold the old one; load weights in place (without assign), "
                               "or build the optimizer and CigL again on the module as it is now")
        self._before_mask = None  # training has begun: a load_state_dict no longer restores them
        if not self._first_step_checked:
            self._first_step_checked = True
            if not self._state_loaded and _has_stepped(self.optimizer, self.net.sparse_params):
                self._zero_optimizer_state(self.net.mask.views(self.net.mask.float))
                warnings.warn("CigL's optimizer holds state from earlier steps (momentum, moments) and no "
                              "cigl.load_state_dict(...) came before this first step: if this resumes a run, its "
                              "mask was drawn afresh over the trained weights; load the CigL state saved with the "
                              "run first.  Starting sparse training from trained dense weights is fine (ignore "
                              "this): the optimizer's state outside the mask was zeroed, so those weights stay 0",
                              stacklevel=2)
        if self.step_count == self.total_steps:
            warnings.warn(f"cigl.step() beyond total_steps = {self.total_steps}: the mask schedule (updates until "
                          f"update_end × total_steps, the drop fraction's decay) was laid out for "
                          f"{self.total_steps} steps; build CigL with the run's true number of optimizer steps",
                          stacklevel=2)
        z = self.z
        update = self.is_update_step
        if update:
            if self.method.regrowth == "gradient" and score is None:
                score = self._captured_score()
            self.update_mask(score, self.schedule.fraction(self.step_count + 1))
        else:
            self.optimizer_step(z)
        self.step_count += 1
        self.last_z = z
        self._z, self._z_drawn, self._score, self._w, self._caller_trained = None, False, None, None, False
        return update

    def _captured_score(self) -> torch.Tensor:
        if self._score is None:
            raise RuntimeError("this is a mask-update step and no regrowth score was captured: run the training "
                               "forward pass (module in train mode) and loss.backward() before cigl.step()")
        score = self._score
        info = dist_info()
        if info.active:
            all_reduce_mean_([score], 1, info)
        return score

    def optimizer_step(self, z: torch.Tensor | None) -> None:
        """The optimizer's step on M⊙Z⊙W.  The gradient of the Z = 0 entries is 0, but momentum
        (or Adam's moments) would still move them; Algorithm 1 updates only the M⊙Z entries, so
        their values are restored after the step (their optimizer state takes the zero-gradient
        step).  Weight dropout (``rigl-wdp``, Z / keep) is left to the plain optimizer."""
        freeze = z is not None and self.method.random_mask and not self.method.rescale_random_mask
        params = self.net.sparse_params
        with torch.no_grad():
            before = torch._foreach_mul(params, 1.0) if freeze else None  # a copy, one kernel per layer group
        (self._optimizer_step or self.optimizer.step)()
        if freeze:  # W ← Z·W_new + (1 − Z)·W_old, exact for Z ∈ {0, 1}
            with torch.no_grad():
                torch._foreach_mul_(params, self.net.mask.views(z))
                torch._foreach_addcmul_(params, before, self.net.mask.views(1.0 - z))

    @torch.no_grad()
    def update_mask(self, score: torch.Tensor | None, fraction: float) -> None:
        """RigL/SET update of M (drop ⌊f·nnz⌋ smallest |W| per layer, regrow as many by |score|).
        Every regrown weight, a just-dropped-and-regrown one included, and its optimizer state are
        set to 0, as are the weights and state outside the new M (official code: ``abs_grad_growth``
        and ``reset_momentum``)."""
        grown = self.net.mask.update(self.net.sparse_flat(), score, fraction, self.method.regrowth, self.generator)
        keep = self.net.mask.float * (~grown).to(self.net.mask.float.dtype)
        kept_views = self.net.mask.views(keep)
        torch._foreach_mul_(self.net.sparse_params, kept_views)
        self._zero_optimizer_state(kept_views)

    def _zero_optimizer_state(self, kept_views: list[torch.Tensor]) -> None:
        """Multiply every per-weight state tensor of the sparse parameters (momentum, Adam's moments)
        by ``kept_views`` (1 where it stays, 0 where it is reset)."""
        state = self.optimizer.state
        pairs = [(buf, v) for p, v in zip(self.net.sparse_params, kept_views)
                 for buf in state[p].values() if torch.is_tensor(buf) and buf.shape == p.shape]
        if pairs:  # layers without state yet have nothing to reset
            torch._foreach_mul_([b for b, _ in pairs], [v for _, v in pairs])

    # -- epochs and collection ---------------------------------------------------------------
    def end_epoch(self) -> None:
        """At the end of an epoch ≥ T*: collect M⊙Z⊙W (the Z of the epoch's last step) into the
        WMA mean and the sample store."""
        if self.collect_from_epoch is None:
            self.collect_from_epoch = self._default_collect_from_epoch()
        if self.epoch >= self.collect_from_epoch:
            self.collect()
        self.epoch += 1

    def _mask_will_change(self) -> bool:
        """Whether a mask update is still to come (RigL/SET before ``update_end`` of training)."""
        if self.method.regrowth == "none" or not self.method.sparse or self.net.mask.density >= 1.0:
            return False
        delta_t = self.schedule.delta_t
        return (self.step_count // delta_t + 1) * delta_t <= self.schedule.end_step

    def _default_collect_from_epoch(self) -> int:
        """T* = ⌊0.8 × epochs⌋, epochs = round(total_steps / steps of the first epoch), at its end."""
        if self.epoch != 0 or self.step_count == 0:
            raise RuntimeError("end_epoch() before any cigl.step() of the first epoch: the default T* "
                               "(collect_from_epoch) is 0.8 × epochs, counted from the first epoch's steps; "
                               "step first, or give collect_from_epoch")
        epochs = max(1, round(self.total_steps / self.step_count))
        return int(0.8 * epochs)

    def collect(self) -> None:
        """One sample M⊙Z⊙W, with the Z of the last step, into WMA and the sample store."""
        if not (self.method.wma or self.method.snapshots):
            return
        if not self._warned_early_sample and self._mask_will_change():
            self._warned_early_sample = True
            warnings.warn(f"CigL collects a WMA sample at the end of epoch {self.epoch} (step {self.step_count}) "
                          f"while mask updates go on until step {self.schedule.end_step}: the averaged model "
                          "will hold the weights of several masks, denser than the sparsity; set "
                          "collect_from_epoch to an epoch after the mask updates stop", stacklevel=3)
        with torch.no_grad():
            snap = Snapshot(self.net.effective_flat(self.last_z), self.net.other_flat())
        self.wma.update(snap)
        if (self.keep_samples or self.method.snapshots) and dist_info().is_main:
            self.samples.save(self.wma.count - 1, snap, epoch=self.epoch)

    # -- what it hands back --------------------------------------------------------------------
    def final(self) -> Snapshot:
        """The last weights M⊙W and θ."""
        with torch.no_grad():
            return Snapshot(self.net.effective_flat().detach().clone(), self.net.other_flat().detach().clone())

    def averaged_model(self, bn_loader=None, protocol: str = RECOMPUTED_CLEAN,
                       bn_batches: int | None = None) -> nn.Module:
        """A plain ``nn.Module`` (a copy, eval mode, no CigL attached) holding the WMA mean, its
        BatchNorm statistics recomputed as exact averages over ``bn_loader`` (an iterable of
        ``(x, y)`` batches, or a loader with ``epoch(e)``; the protocol names what it serves:
        ``recomputed-clean`` unaugmented, ``recomputed-augmented`` augmented training images).
        Exportable with :func:`cigl_bayes.export.export_network`: by name for a built-in
        architecture (a registry name, ``wrn-D-K``, ``torchvision:NAME`` or ``timm:NAME``), or as
        ``model="custom"`` for your own, which ``load_exported(path, module=YourNet())`` loads."""
        if not (self.method.wma or self.method.snapshots):
            raise ValueError(f"method {self.method.name!r} collects no weight samples, so it has no averaged model: "
                             "use final_model(), or a method that averages (cigl, cigl-no-rm)")
        if not self.wma.count:
            t_star = ("T* = 0.8 × epochs, fixed at the first end_epoch()" if self.collect_from_epoch is None
                      else f"collect_from_epoch = {self.collect_from_epoch}")
            raise RuntimeError(f"no samples collected yet ({self.epoch} epochs ended): WMA starts at the end of "
                               f"epoch T* ({t_star}); call end_epoch() after each epoch")
        if check_bn_protocol(protocol) == "tracked":
            raise ValueError("an averaged model has no tracked BatchNorm statistics (it was never trained as such): "
                             "give bn_loader and protocol='recomputed-clean' or 'recomputed-augmented'")
        return self._model_of(self.wma.mean(), bn_loader, protocol, bn_batches)

    def final_model(self, bn_loader=None, protocol: str | None = None, bn_batches: int | None = None) -> nn.Module:
        """A plain copy (eval mode) holding the last weights M⊙W.  Without ``bn_loader`` its
        BatchNorm statistics are those tracked in training (for CigL: tracked under M⊙Z⊙W, with
        Z's dropped weights); with one they are recomputed over it, as for :meth:`averaged_model`
        (``protocol`` default ``recomputed-clean``).  Compare the WMA with this model under the same
        protocol: statistics tracked in training against recomputed ones differ by more than the
        averaging does (docs/reproduction.md, "The controlled study")."""
        if protocol is None:
            protocol = "tracked" if bn_loader is None else RECOMPUTED_CLEAN
        elif check_bn_protocol(protocol) == "tracked" and bn_loader is not None:
            raise ValueError("protocol='tracked' keeps the statistics tracked in training and would not use "
                             "bn_loader: leave one of them out")
        return self._model_of(self.final(), bn_loader, protocol, bn_batches)

    def _model_of(self, snap: Snapshot, bn_loader, protocol: str, bn_batches: int | None) -> nn.Module:
        check_bn_protocol(protocol)
        has_bn = has_batchnorm(self.net.module)
        if protocol != "tracked" and bn_loader is None and has_bn:
            raise ValueError(f"BatchNorm protocol {protocol!r} needs bn_loader (training batches to recompute on)")
        module = self.plain_copy()
        copy_net = SparseNetwork(module, self.net.sparse_names, self.net.mask)
        copy_net.load_flat_(snap.sparse, snap.other)
        if protocol != "tracked" and has_bn:
            recompute_batchnorm(copy_net, bn_loader, snap.sparse, bn_batches)
        return module.eval()

    # -- checkpoints ---------------------------------------------------------------------------
    def _untouched_since_construction(self) -> bool:
        """Whether the sparse weights are still exactly M₀⊙W as construction left them (a host that
        loaded its checkpoint into the module after building CigL has replaced them)."""
        with torch.no_grad():
            return all(torch.equal(p, b * m) for p, b, m in
                       zip(self.net.sparse_params, self._before_mask, self.net.mask.views(self.net.mask.float)))

    def _check_saved_mask(self, saved: dict) -> None:
        """A saved M of other layers, or of another per-layer size (another sparsity or
        distribution), would leave this object describing a network it does not hold."""
        if [list(s) for s in self.net.mask.shapes] != saved.get("shapes"):
            raise ValueError("the saved mask is for other sparse weights (their shapes differ): build CigL on the "
                             "same model, with the same sparse_params and distribution (distribution='uniform' "
                             "keeps the first layer dense)")
        numels = [int(torch.Size(s).numel()) for s in saved["shapes"]]
        saved_nnz = [int(v.sum()) for v in torch.as_tensor(saved["flat"]).split(numels)]
        if saved_nnz != list(self.net.mask.nnz):
            raise ValueError(f"the saved mask keeps {sum(saved_nnz)} of {sum(numels)} weights and this CigL "
                             f"(sparsity {self.sparsity:g}) keeps {sum(self.net.mask.nnz)}: build it with the "
                             "checkpoint's sparsity and distribution")

    def state_dict(self) -> dict:
        """Everything of the algorithm that a resumed run needs (the module and optimizer are the
        host's): the settings it was built with (:class:`CigLSettings`), counters, M (and its ITOP
        union), the Z and SET generators, the WMA mean, and the in-memory samples.  Every tensor
        is a copy: training on does not change a state taken."""
        state = {"settings": self.settings.to_dict(),
                 "epoch": self.epoch, "step": self.step_count, "mask": self.net.mask.state_dict(),
                 "z_source": self.z_source.state_dict(), "aux_generator": self.generator.get_state(),
                 "wma": self.wma.state_dict(),
                 # the Z of the last step: a checkpoint taken mid-epoch (Lightning) collects with it at the epoch's end
                 "last_z": self.last_z,
                 "collect_from_epoch": self.collect_from_epoch}  # T* as in use (the default is fixed in epoch 0)
        if isinstance(self.samples, MemorySnapshotStore):  # packed: the support's bits and the values on it
            state["samples"] = [pack_snapshot(s) for s in self.samples]
        return _copied(state)

    def load_state_dict(self, state: dict) -> None:
        """Resume from :meth:`state_dict` (copied: the state stays as it was).  Before the first
        step, and while the module still holds what construction left, the weights that construction
        zeroed outside its initial M are put back first, so the usual order (module, optimizer,
        ``CigL(...)``, this) resumes exactly; a module loaded after construction is kept as it is."""
        missing = [k for k in ("epoch", "step", "mask", "z_source", "aux_generator", "wma") if k not in state]
        if missing:
            raise ValueError(f"not a CigL state_dict: it has no {missing[0]!r}")
        saved = state.get("settings")  # absent from states saved before the settings were recorded
        if saved is not None:
            differ = self.settings.differences(saved)
            if differ:
                raise ValueError(f"the state was saved under other CigL settings ({'; '.join(differ)}): build "
                                 "CigL with the settings of the run you resume")
        self._check_saved_mask(state["mask"])
        state = _copied(state)
        if self._before_mask is not None and self._untouched_since_construction():
            with torch.no_grad():  # undo construction's zeroing; the saved M is applied below
                torch._foreach_copy_(self.net.sparse_params, self._before_mask)
        self._before_mask = None
        self._state_loaded = True
        self.epoch, self.step_count = state["epoch"], state["step"]
        if self.settings.collect_from_epoch is None and state.get("collect_from_epoch") is not None:
            self.collect_from_epoch = state["collect_from_epoch"]  # the default T* the saved run fixed
        self.net.mask.load_state_dict(state["mask"])
        self.net.apply_mask_()
        self.z_source.load_state_dict(state["z_source"])
        self.generator.set_state(state["aux_generator"])
        self.wma.load_state_dict(state["wma"], self.net.sparse_params[0].device)
        if "samples" in state and isinstance(self.samples, MemorySnapshotStore):
            device = self.net.sparse_params[0].device
            self.samples.snapshots = [Snapshot(s["sparse"].to(device), s["other"].to(device)) if "sparse" in s
                                      else unpack_snapshot(s, device) for s in state["samples"]]  # dense: older
        self._z, self._z_drawn, self._score, self._caller_trained = None, False, None, False
        last_z = state.get("last_z")
        self.last_z = None if last_z is None else last_z.to(self.net.sparse_params[0].device)


def _has_stepped(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> bool:
    """Whether ``optimizer`` holds state of an earlier step for any of ``params``: a per-weight buffer
    (SGD's momentum exists only after a step) or a step count above 0 (Adam's; Adagrad creates its
    state, step 0, at construction).  SGD without momentum keeps no state: it never counts."""
    for p in params:
        state = optimizer.state.get(p, {})
        step = state.get("step")
        if step is not None:
            if float(step) > 0:
                return True
        elif any(torch.is_tensor(v) and v.shape == p.shape for v in state.values()):
            return True
    return False


def _gradients_cleared(params: Sequence[torch.Tensor]) -> bool:
    """Whether ``optimizer.zero_grad()`` ran since the last backward: no gradient, or all zeros."""
    return all(p.grad is None for p in params) or not any(bool(p.grad.any()) for p in params if p.grad is not None)


def _copied(state):
    """``state`` with every tensor cloned (dicts and lists rebuilt), so no caller shares memory with CigL."""
    if torch.is_tensor(state):
        return state.detach().clone()
    if isinstance(state, dict):
        return {k: _copied(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_copied(v) for v in state]
    return state


__all__ = ["CigL", "MemorySnapshotStore", "SnapshotStore"]
