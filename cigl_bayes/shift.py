"""The shifted and out-of-distribution test sets of one data set, built once and cached.

``build_shift_sets(test, images=500)`` takes a seeded class-balanced subset of the test set,
applies every CIFAR-10-C corruption at severities 1–5 to the *same* images
(:mod:`cigl_bayes.corruptions`), adds the OOD sets of :mod:`cigl_bayes.ood`, and caches the
arrays as one ``.npz`` in the data cache (``$CIGL_CACHE_DIR``), keyed by the images and every
parameter, so a second report costs no corruption time.
"""

from __future__ import annotations

import hashlib
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import corruptions as corruption_lib
from . import ood as ood_lib
from .data import CACHE_DIR_ENV, ArrayDataset, take_subset
from .runs import atomic_write_npz

SHIFT_CACHE_VERSION = 1


@dataclass
class ShiftSets:
    """``clean`` (N, 32, 32, 3) with ``labels``; ``corrupted[(name, severity)]`` the same images
    corrupted; ``ood[name]`` the OOD images (no labels)."""

    clean: np.ndarray
    labels: np.ndarray
    corrupted: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    ood: dict[str, np.ndarray] = field(default_factory=dict)
    build_seconds: float = 0.0
    from_cache: bool = False


def _cache_path(clean: np.ndarray, labels: np.ndarray, names, ood_names, ood_size: int, seed: int,
                cache_dir) -> Path:
    from importlib.metadata import version

    h = hashlib.sha256()
    h.update(f"{SHIFT_CACHE_VERSION}|{','.join(names)}|{','.join(ood_names)}|{ood_size}|{seed}".encode())
    # the parameters and the library that applies them: a change to either builds the sets again
    h.update(f"{corruption_lib.PARAMETERS!r}|{version('imagecorruptions-imaug')}|{version('scikit-learn')}".encode())
    h.update(np.ascontiguousarray(clean).tobytes())
    h.update(np.ascontiguousarray(labels).tobytes())
    root = cache_dir or os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "cigl-bayes"
    return Path(root).expanduser() / f"shift-{len(clean)}-{h.hexdigest()[:16]}.npz"


def build_shift_sets(test: ArrayDataset, *, images: int = 500, ood_size: int = 1000,
                     corruption_names: tuple[str, ...] = corruption_lib.CORRUPTIONS,
                     ood_names: tuple[str, ...] = ood_lib.OOD_SETS, seed: int = 0, cache_dir=None,
                     progress: bool = True) -> ShiftSets:
    """The shifted sets of ``images`` test images (seeded, class-balanced) and the OOD sets of
    ``ood_size`` images each; read from the cache when they were built before."""
    for name in corruption_names:
        if name not in corruption_lib.PARAMETERS:
            raise ValueError(f"unknown corruption {name!r}; known: {', '.join(corruption_lib.CORRUPTIONS)}")
    for name in ood_names:
        if name not in ood_lib.BUILDERS:
            raise ValueError(f"unknown OOD set {name!r}; known: {', '.join(ood_lib.OOD_SETS)}")
    if images < 1 or ood_size < 1:
        raise ValueError(f"need at least one image per set (images={images}, ood_size={ood_size})")
    subset = take_subset(test, min(images, len(test)), seed=seed)
    path = _cache_path(subset.images, subset.labels, corruption_names, ood_names, ood_size, seed, cache_dir)
    cached = _read(path, subset, corruption_names, ood_names)
    if cached is not None:
        return cached
    start = time.perf_counter()
    sets = ShiftSets(subset.images, subset.labels)
    frost = corruption_lib._frost_photos() if "frost" in corruption_names else None
    cells = [(name, s) for name in corruption_names for s in corruption_lib.SEVERITIES]
    for name, severity in tqdm(cells, desc="corrupting", disable=not progress):
        sets.corrupted[(name, severity)] = corruption_lib.corrupted_set(subset.images, name, severity, seed, frost)
    for name in ood_names:
        sets.ood[name] = ood_lib.ood_set(name, ood_size, seed)
    sets.build_seconds = time.perf_counter() - start
    arrays = {"clean": sets.clean, "labels": sets.labels, "build_seconds": np.float64(sets.build_seconds)}
    arrays.update({f"c/{n}/{s}": v for (n, s), v in sets.corrupted.items()})
    arrays.update({f"ood/{n}": v for n, v in sets.ood.items()})
    try:
        atomic_write_npz(arrays, path)
    except OSError as err:
        warnings.warn(f"could not cache the shifted sets at {path}: {err}", stacklevel=2)
    return sets


def _read(path: Path, subset: ArrayDataset, names, ood_names) -> ShiftSets | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            sets = ShiftSets(z["clean"], z["labels"], build_seconds=float(z["build_seconds"]), from_cache=True)
            sets.corrupted = {(n, s): z[f"c/{n}/{s}"] for n in names for s in corruption_lib.SEVERITIES}
            sets.ood = {n: z[f"ood/{n}"] for n in ood_names}
        if not (np.array_equal(sets.clean, subset.images) and np.array_equal(sets.labels, subset.labels)):
            raise ValueError("the cached clean images differ from the test subset")
    except Exception as err:  # truncated, foreign or stale: rebuild
        warnings.warn(f"ignoring unreadable shift cache {path} ({err}); rebuilding it", stacklevel=3)
        return None
    return sets
