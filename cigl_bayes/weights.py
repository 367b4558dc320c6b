"""A run's weights in one compact file that outlives the machine: ``weights.safetensors``.

A study commits this file with every run, so anyone can evaluate the run again later without
retraining: ``python -m experiments.reevaluate`` scores every predictor under every BatchNorm
protocol, and ``cigl_bayes.inference.load_run`` reads a committed run folder from it (``final``,
``wma``, ``mc-z`` under any protocol; the samples that ``predictive``, SWAG and arviz need are
kept only for methods that predict with them).  It holds, for the network of ``config``:

  final     M (packed bits over the flat sparse weights), W on M, the dense parameters θ, and the
            module's buffers as training left them (BatchNorm's tracked running statistics)
  wma       the WMA mean x̄ of M⊙Z⊙W (its non-zero support as packed bits, values on it) and θ̄
  samples   the collected x_t, only for methods that predict with them (cigl-no-wma's predictive)

Each weight setting is stored as its support bits plus the values on it, so a WRN-22-2 at 95%
sparsity needs ≈ 0.36 MB per setting (1.1 M bits + 5% of the values).  safetensors holds tensors
and string metadata only: loading it runs no code (unlike a pickled ``.pt``), which is why it is
the format of files that people hand each other.  Unlike the sparse export
(``cigl_bayes.export``), nothing is folded: BatchNorm statistics can be recomputed under any
protocol.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .averaging import Snapshot
from .runs import atomic_write_via

WEIGHTS_FORMAT = "cigl-bayes-weights-v1"
WEIGHTS_FILE = "weights.safetensors"


class WeightsFileError(ValueError):
    """A weights file that is missing, corrupt, of another format, or for another network."""


@dataclass
class RunWeights:
    """What an evaluation of a run reads: the final weights with their mask and tracked buffers,
    the WMA mean, and the collected samples its predictors average over."""

    final: Snapshot  # M⊙W, θ
    mask: torch.Tensor  # M, flat bool
    buffers: dict[str, torch.Tensor]  # module buffers after training (tracked BatchNorm statistics)
    wma: Snapshot | None = None
    samples: list[Snapshot] = field(default_factory=list)


def _pack(prefix: str, values: torch.Tensor, support: torch.Tensor, other: torch.Tensor) -> dict[str, torch.Tensor]:
    bits = np.packbits(support.detach().cpu().numpy())
    return {f"{prefix}.support": torch.from_numpy(bits), f"{prefix}.values": values.detach().cpu()[support.cpu()],
            f"{prefix}.other": other.detach().cpu().clone()}


def _unpack(tensors: dict[str, torch.Tensor], prefix: str, numel: int) -> tuple[torch.Tensor, ...]:
    """(flat values with zeros off the support, support bits, θ)."""
    try:
        bits, values, other = (tensors[f"{prefix}.{k}"] for k in ("support", "values", "other"))
    except KeyError as err:
        raise WeightsFileError(f"weights file lacks the tensor {err.args[0]!r}") from None
    if bits.dtype != torch.uint8 or bits.numel() != (numel + 7) // 8:
        raise WeightsFileError(f"{prefix}.support does not cover the {numel} sparse weights of this network")
    support = torch.from_numpy(np.unpackbits(bits.numpy(), count=numel).astype(bool))
    if int(support.sum()) != values.numel():
        raise WeightsFileError(f"{prefix}: {values.numel()} values for a support of {int(support.sum())}")
    flat = values.new_zeros(numel)
    flat[support] = values
    return flat, support, other


def save_run_weights(path: str | Path, weights: RunWeights, config: dict, sparse_names: list[str],
                     num_classes: int | None = None) -> Path:
    """Write ``weights`` atomically; ``config`` is the run's resolved ``TrainConfig.to_dict()`` and
    ``num_classes`` the network's outputs (recorded; files without it are of a fixed-class data set)."""
    from safetensors.torch import save_file

    numel = weights.final.sparse.numel()
    tensors = _pack("final", weights.final.sparse, weights.mask, weights.final.other)
    if weights.wma is not None:
        tensors.update(_pack("wma", weights.wma.sparse, weights.wma.sparse != 0, weights.wma.other))
    for i, snap in enumerate(weights.samples):
        tensors.update(_pack(f"sample.{i:04d}", snap.sparse, snap.sparse != 0, snap.other))
    tensors.update({f"buffer.{k}": v.detach().cpu().contiguous() for k, v in weights.buffers.items()})
    meta = {"format": WEIGHTS_FORMAT, "config": json.dumps(config), "sparse_names": json.dumps(sparse_names),
            "numel": str(numel), "samples": str(len(weights.samples))}
    if num_classes is not None:
        meta["num_classes"] = str(int(num_classes))
    return atomic_write_via(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_run_weights(path: str | Path) -> tuple[RunWeights, dict]:
    """(weights, {"config": dict, "sparse_names": list}) from a file written by :func:`save_run_weights`,
    or :class:`WeightsFileError` naming what is wrong."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"no weights file at {path} (runs trained before weights were committed have none)")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise WeightsFileError(f"{path} is not a readable safetensors file ({err})") from None
    if meta.get("format") != WEIGHTS_FORMAT:
        raise WeightsFileError(f"{path} is not a cigl-bayes weights file (format {meta.get('format')!r}, "
                               f"expected {WEIGHTS_FORMAT!r})")
    try:
        config, names, numel = json.loads(meta["config"]), json.loads(meta["sparse_names"]), int(meta["numel"])
        n_samples = int(meta.get("samples", "0"))
    except (KeyError, ValueError) as err:
        raise WeightsFileError(f"{path} has unreadable metadata ({err})") from None
    final, mask, other = _unpack(tensors, "final", numel)
    wma = None
    if "wma.values" in tensors:
        w, _, o = _unpack(tensors, "wma", numel)
        wma = Snapshot(w, o)
    samples = [Snapshot(*_unpack(tensors, f"sample.{i:04d}", numel)[::2]) for i in range(n_samples)]
    buffers = {k.removeprefix("buffer."): v for k, v in tensors.items() if k.startswith("buffer.")}
    weights = RunWeights(final=Snapshot(final, other), mask=mask, buffers=buffers, wma=wma, samples=samples)
    return weights, {"config": config, "sparse_names": names, "num_classes": meta.get("num_classes")}
