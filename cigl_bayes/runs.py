"""Run folders: atomic writes, checkpoints that detect truncation, config checks on resume.

Every file is written to a temporary name in the same folder and then ``os.replace``d, so a
crash mid-write leaves the previous complete file in place.  This module is the one writer of
the project's result files: JSON, CSV, npz, torch files and figures.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import random
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FORMAT = "cigl-bayes-checkpoint-v2"
# v1 held numpy's RNG state as numpy objects, which only full unpickling (running code from the
# file) can read; v2 holds tensors and plain values only (:func:`rng_state`), read with
# ``torch.load(..., weights_only=True)``.


class CheckpointError(RuntimeError):
    """A checkpoint that is truncated, corrupt, foreign, unsafe to load, or from a different configuration."""


def _atomic(path: str | Path, write: Callable[[Any], Any] | None = None,
            write_to: Callable[[str], Any] | None = None) -> Path:
    """``write(file object)`` or ``write_to(file name)`` into a temporary file beside ``path``,
    fsync, then ``os.replace`` onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; give the usual permissions
    try:
        with os.fdopen(fd, "wb") as f:
            if write is not None:
                write(f)
        if write_to is not None:
            write_to(tmp)
            os.chmod(tmp, 0o666 & ~umask)  # a writer that re-creates the file brings back mkstemp's mode
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_via(path: str | Path, write_to: Callable[[str], Any]) -> Path:
    """For writers that need a file name (netCDF, safetensors): ``write_to(tmp_name)``, then
    ``os.replace`` onto ``path``."""
    return _atomic(path, write_to=write_to)


def atomic_write_bytes(data: bytes, path: str | Path) -> Path:
    return _atomic(path, lambda f: f.write(data))


def atomic_write_json(obj: Any, path: str | Path) -> Path:
    return atomic_write_bytes((json.dumps(obj, indent=2, sort_keys=False) + "\n").encode(), path)


def atomic_write_csv(rows: list[dict], path: str | Path) -> Path:
    """Rows of dicts as CSV (header from the first row's keys; later rows may omit columns)."""
    if not rows:
        raise ValueError(f"no rows to write to {path}")
    fields = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_bytes(buf.getvalue().encode(), path)


def atomic_write_npz(arrays: dict, path: str | Path) -> Path:
    """numpy arrays as an (uncompressed) .npz."""
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(buf.getvalue(), path)


def atomic_save_figure(fig: Any, path: str | Path, dpi: int = 110, close: bool = True) -> Path:
    """A matplotlib figure, in the format its suffix names (png by default), cropped to its content;
    the figure is closed afterwards unless ``close`` is False."""
    path = Path(path)
    fmt = path.suffix[1:].lower() or "png"
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight")
    finally:
        if close:
            import matplotlib.pyplot as plt

            plt.close(fig)
    return atomic_write_bytes(buf.getvalue(), path)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    return _atomic(path, lambda f: torch.save(obj, f))


def rng_state() -> dict:
    """The global random states of torch (CPU and CUDA), numpy and Python as tensors and plain
    values only, so that a checkpoint holding them loads with ``torch.load(..., weights_only=True)``."""
    import numpy as np

    return plain_rng_state({"torch": torch.get_rng_state(),
                            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                            "numpy": np.random.get_state(), "python": random.getstate()})


def plain_rng_state(rng: dict) -> dict:
    """``{"torch", "cuda", "numpy", "python"}`` as the getters return them (numpy's state a tuple
    holding an array, Python's a tuple) → tensors and plain values (:func:`rng_state`)."""
    import numpy as np

    name, key, pos, has_gauss, cached = rng["numpy"][:5]
    version, internal, gauss_next = rng["python"]
    return {
        "torch": rng["torch"],
        "cuda": list(rng["cuda"]),
        "numpy": [str(name), torch.from_numpy(np.asarray(key, dtype=np.int64)), int(pos), int(has_gauss),
                  float(cached)],
        "python": [int(version), [int(i) for i in internal], None if gauss_next is None else float(gauss_next)],
    }


def set_rng_state(state: dict) -> None:
    """Restore the random states :func:`rng_state` returned."""
    import numpy as np

    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    name, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, key.cpu().numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss_next = state["python"]
    random.setstate((int(version), tuple(int(i) for i in internal), gauss_next))


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write a resumable checkpoint, tagged with the format name."""
    return atomic_torch_save({"format": CHECKPOINT_FORMAT, **state}, path)


_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, or raise :class:`CheckpointError`.

    The file is read with ``torch.load(..., weights_only=True)`` only: tensors and plain values,
    never an arbitrary Python object, so opening a checkpoint someone handed you runs no code from
    it.  A file that needs more (a v1 checkpoint of an older cigl-bayes, or a crafted one) is
    refused, never unpickled in full."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = _UNSAFE_GLOBAL.search(str(err))
        if unsafe is None:  # garbage bytes that are not a torch file
            raise CheckpointError(f"checkpoint {path} is corrupt or truncated (not a torch file)") from None
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded safely: it holds a Python object ({unsafe.group(1)}) besides "
            "tensors and plain values, so it is from an older cigl-bayes (checkpoint format v1) or was not "
            "written by cigl-bayes, and it was not opened; start the run again in a fresh --out folder, or, "
            "only if you trust where the file came from, convert it with "
            f"python -m experiments.convert_checkpoint {path}") from None
    except Exception as err:  # truncated zip, unreadable file, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: {first})") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a cigl-bayes checkpoint (format tag missing or different)")
    return state


def check_out_dir(out: str | Path) -> Path:
    """The run folder: created if missing; an existing *file* at that path is an error."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create run folder {out}: {err.strerror or err}") from err
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"run folder {out} is not writable")
    return out


class RunFolderBusy(RuntimeError):
    """Another process is writing the same run folder (``owner``: its pid as the lock file says, or None)."""

    def __init__(self, message: str, owner: str | None = None):
        super().__init__(message)
        self.owner = owner


class RunFolderLock:
    """An exclusive lock on ``<run folder>/.lock`` while one process writes the folder.

    ``fcntl.flock`` is released by the kernel when the process ends, killed or not, so a crashed
    run never leaves a stale lock (only, at worst, an unlocked ``.lock`` file); a second writer
    gets :class:`RunFolderBusy` at once.  A clean exit removes the file, so a refused bad input
    leaves the folder as it was.  Where ``fcntl`` does not exist (Windows) the lock is a no-op."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> RunFolderLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not on POSIX
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or None
            os.close(fd)
            raise RunFolderBusy(f"run folder {self.path.parent} is being written by another process "
                                f"(pid {owner or 'unknown'}); wait for it or use another --out", owner=owner) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the previous writer removed the file between our open and our lock
            os.close(fd)
            raise RunFolderBusy(f"run folder {self.path.parent} changed writer while locking; try again")
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # leave the folder as it was; a waiting opener re-checks the inode
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None
