"""Run folders: atomic writes, checkpoints that detect truncation, config checks on resume.

Every file is written to a temporary name in the same folder and then ``os.replace``d, so a
crash mid-write leaves the previous complete file in place.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FORMAT = "cigl-bayes-checkpoint-v1"


class CheckpointError(RuntimeError):
    """A checkpoint that is truncated, corrupt, foreign, or from a different configuration."""


def _atomic(path: str | Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; give the usual permissions
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(data: bytes, path: str | Path) -> Path:
    return _atomic(path, lambda f: f.write(data))


def atomic_write_json(obj: Any, path: str | Path) -> Path:
    return atomic_write_bytes((json.dumps(obj, indent=2, sort_keys=False) + "\n").encode(), path)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    return _atomic(path, lambda f: torch.save(obj, f))


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write a resumable checkpoint, tagged with the format name."""
    return atomic_torch_save({"format": CHECKPOINT_FORMAT, **state}, path)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`, or raise :class:`CheckpointError`."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # truncated zip, garbage bytes, ...
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: {err})") from err
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
    """Another process is writing the same run folder."""


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
            owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunFolderBusy(f"run folder {self.path.parent} is being written by another process (pid {owner}); "
                                "wait for it or use another --out") from None
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
