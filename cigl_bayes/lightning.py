"""CigL for any LightningModule: ``Trainer(callbacks=[CigLCallback(sparsity=0.95)])``.

    import lightning as L
    from cigl_bayes.lightning import CigLCallback

    callback = CigLCallback(method="cigl", sparsity=0.95)
    L.Trainer(max_epochs=30, callbacks=[callback]).fit(model, train_loader)
    wma = callback.cigl.averaged_model(bn_loader)            # the calibrated output model

On ``fit`` start the callback attaches a :class:`cigl_bayes.CigL` to the LightningModule (or to
its submodule ``module``) and the first optimizer, with ``total_steps`` = the trainer's
``estimated_stepping_batches`` and T* = ``collect_from_epoch`` (default 0.8 × the epochs,
counted from the first epoch's steps: with ``max_steps`` as with ``max_epochs``).  The
optimizer's ``step`` is wrapped so that Lightning's own call runs the closure (forward and
backward) and then :meth:`CigL.step` — a mask update instead of the step every ΔT steps, else the
optimizer step with the Z = 0 entries restored.  Each training epoch's end collects the WMA
sample; the callback's ``state_dict`` is CigL's, so Lightning checkpoints resume it
(``fit(..., ckpt_path=...)``).  A callback trains one run: a second ``fit`` without a checkpoint
would start CigL over on trained weights (a fresh M, no samples), so it is refused.

``training_step`` must call the module CigL is attached to (``self(x)``, the LightningModule's
own forward, or name the submodule it calls with ``module="net"``): its training forward then
computes with M⊙Z⊙W.  One optimizer, automatic optimization.  With ``accumulate_grad_batches=k``
a step is k micro-batches: one Z for all of them, and RigL's regrowth score is the gradient of
their summed loss, exactly as the optimizer's step sees it.
Needs ``pip install lightning`` (the ``lightning`` extra).
"""

from __future__ import annotations

import inspect

try:
    import lightning as L
except ImportError as err:  # pragma: no cover - depends on the extra
    raise ImportError("cigl_bayes.lightning needs the lightning package: pip install lightning") from err

from .cigl import CigL
from .settings import CigLSettings

_CIGL_OPTIONS = set(inspect.signature(CigL).parameters) - {"module", "optimizer", "method", "sparsity",
                                                           "total_steps", "collect_from_epoch", "apply_mask",
                                                           "attach"}


class CigLCallback(L.Callback):
    """Train any LightningModule with CigL (see the module docstring); ``cigl`` holds the object
    after ``fit`` starts.  Keyword arguments not named here go to :class:`CigL` (``keep``,
    ``delta_t``, ``drop_fraction``, ``update_end``, ``distribution``, ``sparse_params``, ``seed``)."""

    def __init__(self, method: str = "cigl", sparsity: float | None = None, *, module: str | None = None,
                 collect_from_epoch: int | None = None, **cigl_kwargs):
        unknown = sorted(set(cigl_kwargs) - _CIGL_OPTIONS)
        if unknown:
            raise TypeError(f"CigLCallback got an unknown option {unknown[0]!r}; CigL's options: "
                            f"{', '.join(sorted(_CIGL_OPTIONS))}")
        settings = {k: v for k, v in cigl_kwargs.items()
                    if k in ("distribution", "keep", "delta_t", "drop_fraction", "update_end")}
        # checked now, as CigL(...) would check them: total_steps and T* are known only when fit starts
        CigLSettings.resolve(method=method, sparsity=sparsity, total_steps=1, collect_from_epoch=collect_from_epoch,
                             **settings)
        self.method, self.sparsity, self.module = method, sparsity, module
        self.collect_from_epoch = collect_from_epoch
        self.cigl_kwargs = cigl_kwargs
        self.cigl: CigL | None = None
        self._pending_state: dict | None = None
        self._replaced: tuple = (None, None)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise ValueError(f"CigLCallback needs exactly one optimizer, got {len(trainer.optimizers)}")
        if self.cigl is not None and self._pending_state is None:
            raise RuntimeError(f"this CigLCallback already trained a run ({self.cigl.epoch} epochs, "
                               f"{self.cigl.wma.count} WMA samples); a second fit would start CigL over on its "
                               "trained weights: resume with fit(..., ckpt_path=...), or give the new run a new "
                               "CigLCallback")
        target = pl_module if self.module is None else pl_module.get_submodule(self.module)
        optimizer = trainer.optimizers[0]
        max_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        if self.collect_from_epoch is not None and max_epochs is not None and self.collect_from_epoch >= max_epochs:
            raise ValueError(f"collect_from_epoch (T*) = {self.collect_from_epoch} but max_epochs = {max_epochs}: "
                             "no WMA sample would be collected; T* must be below max_epochs")
        # resuming: Lightning restored the module's weights before this hook, so they are not masked by a
        # fresh initial M (the saved M is applied by load_state_dict); a refused state then leaves them as
        # the checkpoint holds them
        self.cigl = CigL(target, optimizer, method=self.method, sparsity=self.sparsity,
                         total_steps=int(trainer.estimated_stepping_batches),
                         collect_from_epoch=self.collect_from_epoch,
                         apply_mask=self._pending_state is None, **self.cigl_kwargs)
        if self._pending_state is not None:
            self.cigl.load_state_dict(self._pending_state)
            self._pending_state = None
        inner_step = optimizer.step
        self.cigl._optimizer_step = inner_step
        # an instance step already there (a scheduler's wrapper) is put back at the end
        self._replaced = (optimizer, vars(optimizer).get("step"))
        cigl = self.cigl

        def step(closure=None, **kwargs):
            loss = closure() if closure is not None else None
            cigl.step()
            optimizer._opt_called = True  # what an LR scheduler's wrapper records, mask-update steps included
            return loss

        if hasattr(inner_step, "_wrapped_by_lr_sched"):  # an LR scheduler already wraps the step: keep its
            step._wrapped_by_lr_sched = True  # mark, so it does not warn that optimizer.step was overridden
        optimizer.step = step

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.cigl.end_epoch()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The optimizer's step as it was, and the module without CigL's forward (a later ``fit``
        attaches again)."""
        optimizer, previous = self._replaced
        if previous is not None:
            optimizer.step = previous
        elif "step" in vars(optimizer):
            del optimizer.step
        self.cigl.detach()

    def state_dict(self) -> dict:
        return self.cigl.state_dict() if self.cigl is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict:
            self._pending_state = state_dict
