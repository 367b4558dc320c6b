"""Sparse CPU inference: convolutions and linear layers that multiply only the non-zero weights.

A k×k convolution of x (N, C, H, W) with weights W (O, C, k, k) is the matrix product

    Y = W_csr · im2col(x),    W_csr: (O, C·k·k) in CSR,  im2col(x): (C·k·k, N·H'·W')

(``F.unfold`` builds im2col(x); the product is torch's sparse CSR × dense kernel, MKL's on x86).
It costs nnz(W)·N·H'·W' multiply-adds instead of O·C·k²·N·H'·W', but sparse kernels reach a
much smaller fraction of the CPU's peak than dense ones, and im2col itself costs memory traffic,
so it pays only for sparse enough layers at small batches.  :func:`sparsify` swaps a module's
layers in place, each chosen by a density threshold or, with ``example``, by timing both kernels
on that input (``docs/performance.md`` has the measurements).
"""

from __future__ import annotations

import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn


class SparseConv2d(nn.Module):
    """A Conv2d (groups = 1) whose weight is kept as CSR (O, C·kh·kw); same outputs."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("SparseConv2d supports groups=1, zero padding given as numbers")
        w = conv.weight.detach()
        self.out_channels, self.kernel_size = w.shape[0], tuple(conv.kernel_size)
        self.stride, self.padding, self.dilation = tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation)
        self.weight = to_csr(w.reshape(w.shape[0], -1))
        self.bias = None if conv.bias is None else conv.bias.detach().clone()
        self.density = float((w != 0).float().mean())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        kh, kw = self.kernel_size
        h_out = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        w_out = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # (N, C·k², L)
        rows = cols.transpose(0, 1).reshape(cols.shape[1], -1) if n > 1 else cols[0]  # (C·k², N·L)
        y = (self.weight @ rows).view(self.out_channels, n, h_out * w_out).transpose(0, 1)
        y = y.reshape(n, self.out_channels, h_out, w_out)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)


class SparseLinear(nn.Module):
    """A Linear whose weight is kept as CSR (out, in); same outputs."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach()
        self.weight = to_csr(w)
        self.bias = None if linear.bias is None else linear.bias.detach().clone()
        self.density = float((w != 0).float().mean())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = (self.weight @ x.reshape(-1, x.shape[-1]).T).T.reshape(*x.shape[:-1], -1)
        return y if self.bias is None else y + self.bias


def to_csr(w: torch.Tensor) -> torch.Tensor:
    """``w`` as a CSR matrix (torch marks CSR as beta and warns on every conversion; silenced here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return w.to_sparse_csr()


def _time(layer: nn.Module, x: torch.Tensor, repeats: int) -> float:
    with torch.no_grad():
        layer(x)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            layer(x)
    return (time.perf_counter() - start) / repeats


@torch.no_grad()
def sparsify(module: nn.Module, *, max_density: float = 0.2, example: torch.Tensor | None = None,
             repeats: int = 5, timings: dict | None = None) -> dict[str, str]:
    """Replace, in place, every Conv2d (groups 1) and Linear of ``module`` whose weight density is at
    most ``max_density`` by its sparse version.  With ``example`` (an input batch), each such layer
    is instead timed on its real input, dense against sparse, and the faster kept.  Returns
    {layer name: "sparse" | "dense"} for the layers considered; ``timings`` (a dict), if given,
    receives {layer name: {"density", "dense_ms", "sparse_ms"}} for the layers timed."""
    candidates = {name: m for name, m in module.named_modules()
                  if (isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros"
                      and not isinstance(m.padding, str)) or isinstance(m, nn.Linear)}
    inputs: dict[str, torch.Tensor] = {}
    if example is not None:
        def keep_input(name: str):
            def hook(mod, args, out):  # returns None: the output is left alone
                inputs.setdefault(name, args[0])
            return hook

        hooks = [m.register_forward_hook(keep_input(n)) for n, m in candidates.items()]
        module.eval()(example)
        for h in hooks:
            h.remove()
    choice = {}
    for name, layer in candidates.items():
        sparse = (SparseConv2d if isinstance(layer, nn.Conv2d) else SparseLinear)(layer)
        if example is not None and name in inputs:
            sparse_s, dense_s = _time(sparse, inputs[name], repeats), _time(layer, inputs[name], repeats)
            faster = sparse_s < dense_s
            if timings is not None:
                timings[name] = {"density": sparse.density, "dense_ms": dense_s * 1e3, "sparse_ms": sparse_s * 1e3}
        else:
            faster = sparse.density <= max_density and sparse.density < 1.0
        choice[name] = "sparse" if faster else "dense"
        if faster:
            parent_name, _, child = name.rpartition(".")
            setattr(module.get_submodule(parent_name) if parent_name else module, child, sparse)
    return choice
