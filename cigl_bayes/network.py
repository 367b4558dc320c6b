"""A module together with its deterministic mask: M⊙Z⊙W and the forward pass that uses it.

The sparse weights stay ordinary ``nn.Parameter``s of the module (so optimisers, state dicts and
torchvision models work unchanged).  Each step they are gathered into one flat vector, masked
with one multiply, and fed back through ``torch.func.functional_call`` — the same path for the
plain objective (W_eff = M⊙Z⊙W) and the Pyro guide (W sampled around M⊙Z⊙U).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from .masks import DeterministicMask


class SparseNetwork:
    """``module`` whose parameters named ``sparse_names`` are masked by ``mask``."""

    def __init__(self, module: nn.Module, sparse_names: list[str], mask: DeterministicMask):
        params = dict(module.named_parameters())
        unknown = [n for n in sparse_names if n not in params]
        if unknown:
            raise ValueError(f"no such parameters in {type(module).__name__}: {unknown}")
        self.module = module
        self.sparse_names = list(sparse_names)
        self.sparse_params = [params[n] for n in sparse_names]
        chosen = set(sparse_names)
        self.other_names = [n for n in params if n not in chosen]
        self.other_params = [params[n] for n in self.other_names]
        if [p.shape for p in self.sparse_params] != mask.shapes:
            raise ValueError("mask shapes do not match the sparse parameters")
        self.mask = mask
        self._places = _places_of(module, self.sparse_names + self.other_names,
                                  self.sparse_params + self.other_params)
        self.autocast_dtype: torch.dtype | None = None  # e.g. torch.bfloat16 on CUDA (see ``configure``)
        self._call = self._functional_call

    def replaced_parameter(self) -> str | None:
        """The name of the first parameter that is no longer where it was when this object was
        built (``load_state_dict(..., assign=True)``, a new layer assigned to the module): the
        optimizer and the mask still hold the old one, so training it would silently do nothing.
        None when every parameter is in place.  One dictionary lookup per module and parameter."""
        for slots, key, value, name in self._places:
            held = slots.get(key)
            # a submodule compiled in place (module.body = torch.compile(module.body)) wraps the same one
            if held is not value and getattr(held, "_orig_mod", None) is not value:
                return name
        return None

    def configure(self, *, autocast_dtype: torch.dtype | None = None, channels_last: bool = False,
                  compile: bool = False) -> SparseNetwork:
        """Speed options: mixed precision for the forward pass (outputs are returned in float32),
        channels-last memory format, and ``torch.compile`` of the functional forward (both engines
        call the same compiled function; the Pyro sites stay outside it)."""
        self.autocast_dtype = autocast_dtype
        if channels_last:
            self.module.to(memory_format=torch.channels_last)
        self._call = torch.compile(self._functional_call) if compile else self._functional_call
        return self

    def _functional_call(self, weights: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, weights, (x,), strict=False)

    # -- flat views ------------------------------------------------------------
    def sparse_flat(self) -> torch.Tensor:
        """W as one flat vector (differentiable w.r.t. the parameters)."""
        return torch.cat([p.reshape(-1) for p in self.sparse_params])

    def other_flat(self) -> torch.Tensor:
        """The dense parameters θ (biases, BatchNorm affine, ...) as one flat vector."""
        if not self.other_params:
            return self.sparse_params[0].new_zeros(0)
        return torch.cat([p.reshape(-1) for p in self.other_params])

    def effective_flat(self, z: torch.Tensor | None = None) -> torch.Tensor:
        """M⊙Z⊙W, flat (Z = None means Z = 1)."""
        mz = self.mask.float if z is None else self.mask.float * z
        return self.sparse_flat() * mz

    # -- forward ---------------------------------------------------------------
    def forward(
        self, x: torch.Tensor, sparse_flat: torch.Tensor, other_flat: torch.Tensor | None = None
    ) -> torch.Tensor:
        """f(x; W = sparse_flat, θ) through ``functional_call`` (module buffers update in place).

        θ is the module's own dense parameters unless ``other_flat`` supplies them (the Pyro model)."""
        weights = dict(zip(self.sparse_names, self.mask.views(sparse_flat)))
        if other_flat is not None:
            parts = other_flat.split([p.numel() for p in self.other_params])
            weights.update({n: v.view_as(p) for n, v, p in zip(self.other_names, parts, self.other_params)})
        if self.autocast_dtype is None:
            return self._call(weights, x)
        with torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype):
            out = self._call(weights, x)
        return out.float()

    # -- in-place updates ------------------------------------------------------
    @torch.no_grad()
    def apply_mask_(self) -> None:
        """W ← M⊙W for every sparse parameter (keeps W zero outside the support)."""
        torch._foreach_mul_(self.sparse_params, self.mask.views(self.mask.float))

    @torch.no_grad()
    def load_flat_(self, sparse_flat: torch.Tensor, other_flat: torch.Tensor | None = None) -> None:
        """Copy flat vectors back into the parameters."""
        for p, v in zip(self.sparse_params, self.mask.views(sparse_flat)):
            p.copy_(v)
        if other_flat is not None and self.other_params:
            for p, v in zip(self.other_params, other_flat.split([q.numel() for q in self.other_params])):
                p.copy_(v.view_as(p))

    def sparsity(self) -> float:
        """Fraction of exact zeros over the sparse weights as they are now."""
        with torch.no_grad():
            flat = self.sparse_flat()
            return float((flat == 0).sum()) / max(1, flat.numel())


def _places_of(module: nn.Module, names: list[str], params: list[torch.Tensor]) -> list[tuple]:
    """Every slot on the way from ``module`` to each named parameter — each submodule's entry in
    its parent's ``_modules`` and the parameter's entry in its owner's ``_parameters`` — as
    (dict, key, value held, the first parameter name reached through it)."""
    places: dict[tuple[int, str], tuple] = {}
    for name, param in zip(names, params):
        *path, leaf = name.split(".")
        owner = module
        for key in path:
            child = owner._modules[key]
            places.setdefault((id(owner._modules), key), (owner._modules, key, child, name))
            owner = child
        places.setdefault((id(owner._parameters), leaf), (owner._parameters, leaf, param, name))
    return list(places.values())
