"""A compact, runnable export of a trained sparse network: non-zeros only, in safetensors.

    export_network(module, "model.safetensors", model="wrn-22-2", classes=[...], mean=..., std=...)
    exported = load_exported("model.safetensors")          # an nn.Module, eval mode
    probs = exported.predict(uint8_images)                   # normalisation and temperature applied

    export_network(my_net, "mine.safetensors", model="custom", classes=[...], mean=..., std=...)
    mine = load_exported("mine.safetensors", module=MyNet())  # your own architecture: you build it

What is written:

* BatchNorm folded into the convolution before it wherever that convolution feeds only the
  BatchNorm (``torch.fx.experimental.optimization.fuse``: W' = W·γ/σ per output channel,
  b' = β + (b − μ)·γ/σ; the zeros of W stay zeros).  In pre-activation networks such as WRN-22-2
  the BatchNorm after a residual sum has no convolution to fold into and stays.
* every weight of a convolution or linear layer that has zeros as CSR of its (out, in·k·k) matrix:
  ``<name>::crow`` (int32), ``<name>::col`` (int16 when it fits, else int32), ``<name>::values``
  (float32); everything else dense;
* metadata: the format, the architecture (registry name), the classes, the input normalisation,
  the input image size (when given; ``predict`` refuses other sizes), the temperature of
  temperature scaling, and free-form fields (method, sparsity, the run).

``safetensors`` (Hugging Face) was chosen because it is a plain, memory-mappable tensor container
with string metadata, readable without pickle, i.e. without running code from the file.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cigl_bayes.models import build_model

from .data import image_batch
from .runs import atomic_write_via
from .sparse_kernels import sparsify, to_csr

FORMAT = "cigl-bayes-sparse-v1"
CUSTOM = "custom"  # model= for your own architecture: load_exported(path, module=YourNet(...)) rebuilds it


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (eval mode) with every Conv→BatchNorm pair folded into one Conv."""
    from torch.fx.experimental.optimization import fuse

    return fuse(copy.deepcopy(module).eval())


def _is_sparse_weight(name: str, t: torch.Tensor) -> bool:
    return name.endswith("weight") and t.dim() >= 2 and bool((t == 0).any())


def export_network(module: nn.Module, path: str | Path, *, model: str, classes: list[str],
                   mean: tuple[float, ...], std: tuple[float, ...], temperature: float | None = None,
                   image_size: tuple[int, int] | None = None, model_options: dict | None = None, **info) -> Path:
    """Write ``module`` (BatchNorm folded, sparse weights as CSR) and its metadata to ``path``;
    ``image_size`` (H, W) is the input size the network was trained on, if known.

    :func:`load_exported` rebuilds the network from ``model``, so ``model`` must name a built-in
    architecture (``cigl_bayes.models.list_models()``, ``wrn-D-K``, ``torchvision:NAME``,
    ``timm:NAME``) with ``len(classes)`` outputs and the parameters of ``module``, or be ``"custom"``
    (your own architecture: ``load_exported(path, module=...)`` takes a fresh instance of it, and
    BatchNorm is folded only where ``torch.fx`` can trace the module, recorded as ``folded``); any
    other name, None, or a module of another architecture is refused here (ValueError), before
    anything is written.
    ``model_options`` are the builder's keyword arguments the network was built with (e.g.
    ``{"hidden": [64, 32], "in_features": 768}`` for ``mlp``): JSON values, stored in the file and
    given to the builder again by :func:`load_exported`."""
    from safetensors.torch import save_file

    mean, std = _normalisation("mean", mean), _normalisation("std", std)
    if len(mean) != len(std):
        raise ValueError(f"mean has {len(mean)} channels and std {len(std)}: give one value per input channel")
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be positive in every channel (predict divides by it), got {list(std)}")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, numbers.Real)
                                    or not math.isfinite(temperature) or temperature <= 0):
        raise ValueError(f"temperature must be a positive number (logits are divided by it) or None, got "
                         f"{temperature!r}")
    temperature = None if temperature is None else float(temperature)  # numpy scalars too, stored as JSON
    options = _model_options(model_options)
    if model == CUSTOM:
        folded, was_folded = _folded_if_traceable(module)
    else:
        folded, was_folded = fold_batchnorm(module), True
        _check_rebuildable(folded.state_dict(), model, len(classes), options)
    tensors: dict[str, torch.Tensor] = {}
    shapes: dict[str, list[int]] = {}
    for name, t in folded.state_dict().items():
        t = t.detach().cpu()
        if _is_sparse_weight(name, t):
            csr = to_csr(t.float().reshape(t.shape[0], -1))
            col = csr.col_indices()
            tensors[f"{name}::crow"] = csr.crow_indices().to(torch.int32)
            tensors[f"{name}::col"] = col.to(torch.int16 if t[0].numel() <= 2**15 else torch.int32)
            tensors[f"{name}::values"] = csr.values().contiguous()
            shapes[name] = list(t.shape)
        else:
            tensors[name] = t.contiguous()
    meta = {"format": FORMAT, "model": model, "num_classes": str(len(classes)), "classes": json.dumps(list(classes)),
            "mean": json.dumps(list(mean)), "std": json.dumps(list(std)),
            "temperature": json.dumps(temperature), "sparse_shapes": json.dumps(shapes),
            "image_size": json.dumps(None if image_size is None else [int(v) for v in image_size]),
            "model_options": json.dumps(options), "folded": json.dumps(was_folded),
            "info": json.dumps(info, default=str)}
    return atomic_write_via(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def _folded_if_traceable(module: nn.Module) -> tuple[nn.Module, bool]:
    """(BatchNorm folded copy, True), or (a plain eval copy, False) when ``torch.fx`` cannot trace
    ``module`` (data-dependent control flow in your forward): the export is then exact, unfolded."""
    try:
        return fold_batchnorm(module), True
    except Exception:  # noqa: BLE001  (torch.fx raises many kinds on an untraceable forward)
        return copy.deepcopy(module).eval(), False


def _into(module: nn.Module, state: dict[str, torch.Tensor], folded: bool, path: Path) -> nn.Module:
    """``module`` (your architecture) folded as the export was, holding ``state``; a ValueError naming
    the first parameter that differs when it is another architecture."""
    network = _folded_if_traceable(module)[0] if folded else copy.deepcopy(module).eval()
    in_file, in_module = _shapes(state), _shapes(network.state_dict())
    name = _first_difference(in_file, in_module)
    if name is not None:
        raise ValueError(f"{path} does not fit the module given ({type(module).__name__}): {name} is "
                         f"{in_file.get(name, 'absent')} in the file and {in_module.get(name, 'absent')} in the module")
    network.load_state_dict(state)
    return network


def _model_options(options: dict | None) -> dict:
    """The builder's keyword arguments as JSON stores them (tuples become lists), or a ValueError."""
    if options is None:
        return {}
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise ValueError(f"model_options must be a dict of the builder's keyword arguments, got {options!r}")
    try:
        return json.loads(json.dumps(options, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(f"model_options must hold JSON values (numbers, strings, lists), got {options!r}: "
                         f"{err}") from None


def _check_rebuildable(state: dict[str, torch.Tensor], model: str, num_classes: int, options: dict) -> None:
    """ValueError unless :func:`load_exported` can rebuild a network of ``state``'s parameter names and
    shapes from the name ``model`` and ``options`` (a built-in architecture, BatchNorm folded as the
    export folds it)."""
    try:
        rebuilt = fold_batchnorm(build_model(model, num_classes=num_classes, **options)).state_dict()
    except (ValueError, TypeError) as err:  # UnknownModelError is a ValueError
        raise ValueError(f"cannot export with model={model!r}: load_exported rebuilds only built-in architectures, "
                         f"by name ({err}; torchvision:NAME and timm:NAME too), or your own with model='custom' "
                         "and load_exported(path, module=YourNet(...))") from None
    shapes, expected = _shapes(state), _shapes(rebuilt)
    if shapes != expected:
        name = _first_difference(shapes, expected)
        wrapped = _wrapping_prefix(shapes, expected)
        hint = f"; it wraps one: pass module.{wrapped}" if wrapped else ""
        raise ValueError(f"cannot export with model={model!r}: the module is not that architecture with {num_classes} "
                         f"classes ({name}: {shapes.get(name, 'absent')} in the module, {expected.get(name, 'absent')} "
                         f"in {model!r}{_with(options)}), and load_exported rebuilds the network from that name and "
                         f"model_options (the builder's keyword arguments){hint}")


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _first_difference(a: dict, b: dict) -> str | None:
    """The first name (sorted) whose shape differs between ``a`` and ``b``, or is in one only."""
    return next((k for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)), None)


def _with(options: dict) -> str:
    return f" with model_options {options}" if options else ""


def _wrapping_prefix(shapes: dict, expected: dict) -> str | None:
    """``net`` when ``shapes`` holds ``expected`` under ``net.`` and nothing else (a LightningModule
    or another wrapper that only holds the network), else None: exporting the inner network of a
    wrapper with its own layers would drop them."""
    prefixes = {key[: -len(want) - 1] for key in shapes for want in expected if key.endswith("." + want)}
    for prefix in sorted(prefixes, key=len):
        inner = {k[len(prefix) + 1:]: v for k, v in shapes.items() if k.startswith(prefix + ".")}
        if inner == expected and len(inner) == len(shapes):  # nothing else learned (an adapter, another head)
            return prefix
    return None


def _normalisation(name: str, values) -> tuple[float, ...]:
    """Per-channel ``mean`` or ``std``: finite numbers, at least one."""
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of numbers, one per input channel, got {values!r}") from None
    if not out or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be finite numbers, one per input channel, got {values!r}")
    return out


class ExportedNetwork(nn.Module):
    """A network read by :func:`load_exported`: ``forward`` takes normalised float inputs and
    returns logits; :meth:`predict` takes images as the data set stores them."""

    def __init__(self, network: nn.Module, meta: dict):
        super().__init__()
        self.network = network.eval()
        self.model = meta["model"]
        self.classes = json.loads(meta["classes"])
        self.mean = torch.tensor(json.loads(meta["mean"])).view(1, -1, 1, 1)
        self.std = torch.tensor(json.loads(meta["std"])).view(1, -1, 1, 1)
        self.temperature = json.loads(meta["temperature"])
        size = json.loads(meta.get("image_size", "null"))  # exports written before it was recorded have none
        self.image_size: tuple[int, int] | None = None if size is None else (int(size[0]), int(size[1]))
        self.info = json.loads(meta["info"])
        self.kernels: dict[str, str] = {}  # layer → "sparse" | "dense", as chosen at load
        self.layer_timings: dict[str, dict] = {}  # layer → density, dense_ms, sparse_ms (kernels="auto" + example)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    @torch.no_grad()
    def predict(self, images, *, temperature: bool = True, batch_size: int = 256) -> torch.Tensor:
        """Class probabilities for uint8 (0–255) or float (0–1) images, (N, H, W, C) or (N, C, H, W), of
        the recorded image size; divided by the stored temperature unless ``temperature`` is False.
        The images are checked as ``cigl_bayes.inference.TrainedRun.predict`` checks them
        (:func:`cigl_bayes.data.image_batch`)."""
        x = image_batch(images, self.image_size).float()
        x = (x - self.mean) / self.std
        logits = torch.cat([self.network(b) for b in x.split(batch_size)])
        t = self.temperature if temperature and self.temperature else 1.0
        return torch.softmax(logits / t, -1)


def load_exported(path: str | Path, *, kernels: str = "auto", max_density: float = 0.2,
                  example: torch.Tensor | None = None, module: nn.Module | None = None) -> ExportedNetwork:
    """Rebuild the network written by :func:`export_network`, in eval mode on the CPU.

    ``module``: a fresh instance of the architecture, needed for an export of your own
    (``model="custom"``) and accepted for any export; its parameters must have the file's names
    and shapes, and the file's weights replace its own (the instance itself is not changed).

    ``kernels``: "dense" keeps torch's dense layers; "sparse" puts every layer with zeros on the
    sparse kernels (:mod:`cigl_bayes.sparse_kernels`); "auto" does so for layers of density ≤
    ``max_density``, or, given an ``example`` batch, for the layers that run faster sparse on it."""
    from safetensors import safe_open

    if kernels not in ("auto", "dense", "sparse"):
        raise ValueError(f"kernels must be auto, dense or sparse, got {kernels!r}")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"exported model {path} is a folder, expected a .safetensors file")
    if not path.is_file():
        raise FileNotFoundError(f"exported model {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            stored = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as err:  # not a safetensors file, truncated
        raise ValueError(f"{path} is not a readable safetensors file ({type(err).__name__}: {err})") from err
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a cigl-bayes export (format {meta.get('format')!r}, expected {FORMAT})")
    state = {k: v for k, v in stored.items() if "::" not in k}
    for name, shape in json.loads(meta["sparse_shapes"]).items():
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse (CSR tensor support is in beta|invariant checks)")
            csr = torch.sparse_csr_tensor(stored[f"{name}::crow"].long(), stored[f"{name}::col"].long(),
                                          stored[f"{name}::values"], (shape[0], int(np.prod(shape[1:]))))
        state[name] = csr.to_dense().reshape(shape)
    folded = json.loads(meta.get("folded", "true"))  # exports written before it was recorded were all folded
    if module is not None:
        network = _into(module, state, folded, path)
    elif meta["model"] == CUSTOM:
        raise ValueError(f"{path} holds an architecture of your own (model='custom'): give a fresh instance of it, "
                         "load_exported(path, module=YourNet(...))")
    else:
        options = json.loads(meta.get("model_options", "{}"))  # absent from exports written before it was recorded
        network = fold_batchnorm(build_model(meta["model"], num_classes=int(meta["num_classes"]), **options))
        network.load_state_dict(state)
    exported = ExportedNetwork(network, meta)
    if kernels != "dense":
        exported.kernels = sparsify(network, max_density=1.0 if kernels == "sparse" else max_density,
                                    example=example if kernels == "auto" else None, timings=exported.layer_timings)
    return exported.eval()  # every module, the sparse kernels' too, in eval mode: an export only predicts
