"""How ``module(x)`` computes with M⊙Z⊙W: the instance ``forward`` that :class:`cigl_bayes.cigl.CigL`
attaches to the user's module (one job, kept apart from the algorithm).

:meth:`AttachedForward.attach` gives the module an instance ``forward`` that, in training mode, calls
the class's own forward with the sparse weights swapped for M⊙Z⊙W (``torch.func.functional_call``'s
swap, without calling the module a second time, so its hooks run once): one flat multiply for every
sparse weight, differentiable, so the dense regrowth score ∂L/∂(M⊙Z⊙W) is kept on update steps.
Parameters, state-dict keys and the optimizer are untouched; in eval mode the module runs as it is
(its weights are exactly M⊙W).  A copy of the module (``copy.deepcopy``, ``AveragedModel``, a
pickled module) is a plain module: the forward it inherits sees that it is not the module CigL
trains.  Weights a caller substitutes (``functional_call``, the Pyro model's sampled W) win.
"""

from __future__ import annotations

import copy
import types
import weakref

import torch
from torch import nn
from torch.nn.utils.stateless import _reparametrize_module  # functional_call's swap, without module(x)


class AttachedForward:
    """The attach / detach half of :class:`cigl_bayes.cigl.CigL` (a mixin).  It reads the host's
    ``net`` (:class:`cigl_bayes.network.SparseNetwork`) and ``training_weights()`` (M⊙Z⊙W of the
    step), and keeps the flags ``_attached``, ``_detached``, ``_inside``, ``_caller_trained`` and
    the weights' ``_slots``, which the host initialises."""

    # -- the module's forward ----------------------------------------------------------------
    def attach(self) -> AttachedForward:
        """Make ``module(x)`` compute with M⊙Z⊙W in training mode (an instance ``forward``).

        A copy of the module (``copy.deepcopy``, ``torch.optim.swa_utils.AveragedModel``) is a
        plain module: the forward it inherits sees that it is not the module CigL trains and runs
        the class's own forward on the copy's weights."""
        self._detached = False
        self._install_forward()
        return self

    def detach(self) -> nn.Module:
        """Remove the instance forward; the module is a plain module holding M⊙W.  :meth:`step`
        is refused until :meth:`attach` (the optimizer would move the weights outside M)."""
        self._remove_forward()
        self._detached = True
        return self.net.module

    def _install_forward(self) -> None:
        if self._attached:
            return
        module = self.net.module
        inherited = vars(module).get("forward")
        if inherited is not None and _inert_forward(inherited, module):
            del module.forward  # a copy's inherited forward (deepcopy, or a pickled module): it trains nothing here
        elif inherited is not None:
            raise ValueError(f"{type(module).__name__} already has an instance forward (another CigL attached?)")
        cls_forward = type(module).forward
        trainer = weakref.ref(self)  # a copy of the module must not keep this object (and its samples) alive
        trained = weakref.ref(module)

        def forward(this, *args, **kwargs):
            cigl = trainer()
            if cigl is None or cigl._inside or not this.training or this is not trained():  # a copy: a plain module
                return cls_forward(this, *args, **kwargs)
            theirs = cigl._substituted_by_caller()  # functional_call(module, {...}), net.forward(x, w): theirs win
            if theirs and torch.is_grad_enabled():
                cigl._caller_trained = True  # e.g. the Pyro model's sampled W: a training pass all the same
            if len(theirs) == len(cigl.net.sparse_names):
                return cls_forward(this, *args, **kwargs)
            weights = {name: w for name, w in zip(cigl.net.sparse_names, cigl.net.mask.views(cigl.training_weights()))
                       if name not in theirs}  # M⊙Z⊙W for every sparse weight the caller left to the module
            cigl._inside = True
            try:  # the class's forward under M⊙Z⊙W, not module(x) again: the module's hooks ran once already
                with _reparametrize_module(this, weights, tie_weights=True, strict=False):
                    return cls_forward(this, *args, **kwargs)
            finally:
                cigl._inside = False

        forward.cigl_module, forward.cigl_object = trained, trainer  # a deepcopy keeps the function: see _inert_forward
        # where each sparse weight sits ({leaf: Parameter} of its owner), looked up once
        self._slots = [(name, (module.get_submodule(owner) if owner else module)._parameters, leaf, param)
                       for name, param in zip(self.net.sparse_names, self.net.sparse_params)
                       for owner, _, leaf in [name.rpartition(".")]]
        module.forward = types.MethodType(forward, module)
        self._attached = True

    def _substituted_by_caller(self) -> set[str]:
        """The sparse weights a caller runs the module with in place of its parameters
        (``torch.func.functional_call``, :meth:`SparseNetwork.forward` with a sampled W — the Pyro
        model and guide): those are the weights asked for, so the attached forward leaves them and
        gives M⊙Z⊙W only to the others."""
        return {name for name, slots, leaf, param in self._slots if slots.get(leaf) is not param}

    def _remove_forward(self) -> None:
        if self._attached:
            del self.net.module.forward
            self._attached = False

    def __deepcopy__(self, memo) -> AttachedForward:
        """A copy of the whole object (module and optimizer included, as ``copy.deepcopy`` copies
        them), attached to its own copy of the module: the forward it inherits trains the original."""
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for key, value in vars(self).items():
            setattr(new, key, copy.deepcopy(value, memo))
        if new._attached:
            new._attached = False
            vars(new.net.module).pop("forward", None)
            new._install_forward()
        return new

    def plain_copy(self) -> nn.Module:
        """A deep copy of the module without CigL's forward, holding the current weights (M⊙W)."""
        was = self._attached
        self._remove_forward()  # copied without it: a class's own __deepcopy__ never meets the bound forward
        try:
            return copy.deepcopy(self.net.module)
        finally:
            if was:
                self._install_forward()


def _inert_forward(forward, module: nn.Module) -> bool:
    """Whether ``forward`` (an instance forward found on ``module``) trains nothing here: CigL's,
    inherited by copying a module another CigL trains, or the class's own forward stored on the
    instance (what pickling a module with CigL attached brings back).  A forward whose CigL object
    is gone trains nothing either."""
    func = getattr(forward, "__func__", None)
    owner = getattr(func, "cigl_module", None)
    if owner is not None:
        return owner() is not module or func.cigl_object() is None
    return func is type(module).forward and getattr(forward, "__self__", None) is module
