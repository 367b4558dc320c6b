"""CIFAR data: load a split (decoded once into a uint8 cache), hold out validation, take subsets,
and turn user images into a network's input.

Conventions
-----------
* On the host a split is an :class:`ArrayDataset` (:mod:`cigl_bayes.data_sources`, which also finds
  and safely reads the on-disk formats).
* On the device (:class:`DeviceLoader`) the whole split lives as uint8 NCHW; batches come out as
  float32 NCHW normalised ``(x / 255 - mean) / std`` and int64 labels.
* The data directory is ``data_dir`` if given, else ``$CIGL_DATA_DIR``.
* Decoded arrays are cached as an uncompressed ``.npz`` in ``cache_dir`` (else ``$CIGL_CACHE_DIR``,
  else ``~/.cache/cigl-bayes``), keyed by the source's path, size and mtime.
* Batching, augmentation and epoch order live in :mod:`cigl_bayes.loaders`.  Both modules' public
  names are re-exported here: ``cigl_bayes.data`` is the one data entry point.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .data_sources import (  # re-exported: one data entry point
    CIFAR10_CLASSES,
    DATA_DIR_ENV,
    DATASETS,
    IMAGE_SHAPE,
    NORMALIZATION,
    PICKLE_LAYOUTS,
    SPLITS,
    ArrayDataset,
    DataFormatError,
    DataNotFoundError,
    Source,
    candidate_sources,
    find_source,
    not_found_message,
    num_classes,
    read_source,
    resolve_data_dir,
    validate_split,
)
from .loaders import DeviceLoader, TensorLoader, crop_flip, fingerprint  # re-exported: one data entry point

__all__ = [
    "CIFAR10_CLASSES",
    "DATASETS",
    "NORMALIZATION",
    "ArrayDataset",
    "DataFormatError",
    "DataNotFoundError",
    "DeviceLoader",
    "Source",
    "TensorLoader",
    "candidate_sources",
    "check_subset",
    "crop_flip",
    "find_source",
    "fingerprint",
    "image_batch",
    "image_size",
    "load_dataset",
    "num_classes",
    "resolve_data_dir",
    "split_validation",
    "take_subset",
]

CACHE_DIR_ENV = "CIGL_CACHE_DIR"
CACHE_FORMAT_VERSION = 1

# --------------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------------


def _fingerprint(path: Path) -> str:
    """Cheap change detector: size and mtime of a file; file count, total size, max mtime of a folder."""
    if path.is_file():
        st = path.stat()
        return f"file:{st.st_size}:{st.st_mtime_ns}"
    count = size = latest = 0
    for dirpath, _, names in os.walk(path):
        for n in names:
            st = os.stat(os.path.join(dirpath, n))
            count, size, latest = count + 1, size + st.st_size, max(latest, st.st_mtime_ns)
    return f"dir:{count}:{size}:{latest}"


def _cache_file(name: str, label_mode: str, source: Source, cache_dir: str | os.PathLike | None) -> Path:
    """``<cache_dir>/<name>-<label_mode>-<key>.npz``, key = sha256(version, kind, path, fingerprint)[:16]."""
    root = cache_dir or os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "cigl-bayes"
    ident = f"{CACHE_FORMAT_VERSION}|{source.kind}|{source.path.resolve()}|{_fingerprint(source.path)}"
    key = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return Path(root).expanduser() / f"{name}-{label_mode}-{key}.npz"


def _read_cache(path: Path, n_classes: int) -> tuple[ArrayDataset, ArrayDataset] | None:
    """The cached (train, test), or None when missing, unreadable or invalid."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            classes = tuple(str(c) for c in z["classes"])
            splits = tuple(ArrayDataset(z[f"{s}_images"], z[f"{s}_labels"], classes) for s in SPLITS)
        for split, ds in zip(SPLITS, splits):
            validate_split(ds, n_classes, f"cache {path} ({split})")
    except Exception as e:  # truncated zip, missing keys, wrong dtypes, ...: rebuild it
        warnings.warn(f"ignoring unreadable data cache {path} ({e}); rebuilding it", stacklevel=3)
        return None
    return splits[0], splits[1]


def _write_cache(path: Path, train: ArrayDataset, test: ArrayDataset) -> None:
    """Write the arrays atomically (temp file in the same folder, then ``os.replace``)."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                train_images=train.images, train_labels=train.labels,
                test_images=test.images, test_labels=test.labels,
                classes=np.array(train.classes, dtype=str),
            )  # fmt: skip
        os.replace(tmp, path)
    except OSError as e:
        warnings.warn(f"could not write data cache {path}: {e}", stacklevel=3)
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


# --------------------------------------------------------------------------------------------------
# Public loading API
# --------------------------------------------------------------------------------------------------


def _download(name: str, root: Path) -> Source:
    """Fetch the pickle release with torchvision into ``root`` and return its folder."""
    from torchvision import datasets

    cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    cls(root=str(root), train=True, download=True)  # downloads and extracts the whole archive
    return Source("pickle-dir", root / PICKLE_LAYOUTS[name].folder)


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    download: bool = False,
    label_mode: str = "fine",
) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) of ``name`` ("cifar10" | "cifar100"), decoded once then served from the cache."""
    n_classes = num_classes(name, label_mode)
    if download:
        given = data_dir or os.environ.get(DATA_DIR_ENV)
        if given:
            Path(given).expanduser().mkdir(parents=True, exist_ok=True)
    root = resolve_data_dir(data_dir)
    source = find_source(name, root)
    if source is None:
        if not download:
            raise DataNotFoundError(not_found_message(name, root))
        source = _download(name, root)
    cache = _cache_file(name, label_mode, source, cache_dir)
    cached = _read_cache(cache, n_classes)
    if cached is not None:
        return cached
    train, test = read_source(source, name, label_mode)
    for split, ds in zip(SPLITS, (train, test)):
        validate_split(ds, n_classes, f"{source.path} ({split})")
    _write_cache(cache, train, test)
    return train, test


def split_validation(ds: ArrayDataset, fraction: float, seed: int) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, val): a seeded random ``round(fraction * N)`` samples held out; both keep the input order."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    n_val = int(round(fraction * len(ds)))
    if len(ds) and n_val >= len(ds):
        raise ValueError(f"validation fraction {fraction} of {len(ds)} samples leaves no training data")
    perm = np.random.default_rng(seed).permutation(len(ds))
    return ds.take(np.sort(perm[n_val:])), ds.take(np.sort(perm[:n_val]))


def image_size(dataset: str) -> tuple[int, int] | None:
    """(H, W) of the images a network of ``dataset`` is trained on (None where not fixed here)."""
    return IMAGE_SHAPE[:2] if dataset in DATASETS else None


def image_batch(images: Any, size: tuple[int, int] | None = None) -> Tensor:
    """Images as a trained network's ``predict`` takes them → float ``(N, 3, H, W)`` in [0, 1], not yet
    normalised.  Accepted: uint8 (0–255, divided by 255 here) or float in [0, 1]; ``(N, H, W, 3)``
    as the data sets store them, ``(N, 3, H, W)``, or one image without N; (H, W) equal to ``size``
    when given.  Anything else is a ValueError naming it: float images in 0–255, other shapes,
    other sizes (a network with global pooling would silently score them)."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    given = tuple(x.shape)  # the shape quoted when refused, before one image gets its N
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or 3 not in (x.shape[1], x.shape[-1]):
        raise ValueError(f"images must be (N, H, W, 3) or (N, 3, H, W), got shape {given}")
    if x.shape[-1] == 3 and x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        raise ValueError(f"images must be {size[0]}×{size[1]}, the size the network was trained on, got "
                         f"{x.shape[-2]}×{x.shape[-1]}; resize or crop them first")
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not x.is_floating_point():
        raise ValueError(f"images must be uint8 or float, got {x.dtype}")
    if x.numel() and not (bool(torch.isfinite(x).all()) and float(x.min()) >= -1e-6 and float(x.max()) <= 1 + 1e-6):
        raise ValueError(f"float images must lie in [0, 1], got values in [{float(x.min()):g}, {float(x.max()):g}] "
                         "(give uint8 images for 0–255; they are divided by 255 here)")
    return x


def check_subset(n: int, available: int, held_out: int = 0, *, flag: str = "--subset",
                 what: str = "training images") -> int:
    """``n`` when a split of ``available`` images (after ``held_out`` went to validation) has that
    many, else ValueError naming the count: ``--subset`` and ``--test-subset`` are never silently clipped."""
    if n > available:
        held = f" ({held_out} more are held out for validation by --val-fraction)" if held_out else ""
        raise ValueError(f"{flag} {n} is more than the {available} {what} available{held}; "
                         f"give {flag} {available} or fewer")
    return n


def take_subset(ds: ArrayDataset, n: int | None, seed: int) -> ArrayDataset:
    """A seeded, class-balanced subset of ``n`` samples (round-robin over classes), in input order."""
    if n is None:
        return ds
    if not 0 <= n <= len(ds):
        raise ValueError(f"subset size must be in [0, {len(ds)}], got {n}")
    perm = np.random.default_rng(seed).permutation(len(ds))
    labels = ds.labels[perm]
    by_class = np.argsort(labels, kind="stable")
    first_of_class = np.searchsorted(labels[by_class], labels[by_class], side="left")
    rank = np.empty(len(ds), dtype=np.int64)
    rank[by_class] = np.arange(len(ds)) - first_of_class  # position of each sample within its class
    chosen = perm[np.argsort(rank, kind="stable")[:n]]
    return ds.take(np.sort(chosen))

