"""Device choice (CUDA when available, else CPU; overridable by name) and host-allocator tuning."""

from __future__ import annotations

import ctypes
import platform
from pathlib import Path

import torch


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' → cuda if available else cpu; otherwise the named device, checked to exist."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for but CUDA is not available here; use --device cpu")
    return device


def cpu_bf16_matmul() -> str | None:
    """The bf16 matrix instructions of this CPU that oneDNN uses ("amx-bf16", "avx512-bf16"), or
    None.  Asked of torch (``torch.cpu._is_amx_tile_supported`` / ``_is_avx512_bf16_supported``,
    cpuinfo underneath); a torch without those probes counts as None.  Without them bf16 is
    emulated and slower than float32, so the CPU fast path (``--amp auto``) stays off."""
    probes = (("amx-bf16", "_is_amx_tile_supported"), ("avx512-bf16", "_is_avx512_bf16_supported"))
    for name, probe in probes:
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return name
        except RuntimeError:
            continue
    return None


def fast_path_available(device: torch.device) -> bool:
    """True where bf16 autocast + channels-last is the faster default: CUDA, or a CPU with bf16
    matrix instructions (measured in docs/performance.md)."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_bf16_matmul() is not None)


def cpu_model_name() -> str:
    """The CPU's model name ("AMD EPYC 7B13", "Intel(R) Xeon(R) Platinum 8481C", ...): the first
    ``model name`` of /proc/cpuinfo on Linux, else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_host(device: torch.device) -> dict:
    """Where a computation ran: device, its name, torch version and CPU threads.  Kept with run
    results so that a study accumulated over several machines says which machine made each row."""
    host = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "cpu_threads": torch.get_num_threads(), "cpu": cpu_model_name(),
            "cpu_bf16_matmul": cpu_bf16_matmul()}
    if device.type == "cuda":
        host["gpu"] = torch.cuda.get_device_name(device)
    return host


# glibc ``mallopt`` parameters (<malloc.h>)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
HOST_ALLOCATOR_MODES = ("auto", "retain", "system")


def retain_host_memory() -> bool:
    """Make glibc malloc keep freed memory in the process: no ``mmap`` for large blocks and no
    trimming of the heap.  A CPU training step frees and re-allocates activation buffers of
    several MB each; by default glibc unmaps them and the next step page-faults them in again
    (docs/performance.md measures the cost).  The price: the process keeps its heap, peak and
    fragmentation included, until it exits.  Process-wide and not undone; forked children
    (DataLoader workers) inherit it.  Returns False where malloc is not glibc's."""
    try:
        mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    except (OSError, TypeError):  # no C library to open by that name (Windows)
        return False
    if mallopt is None:  # macOS, musl: nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    no_mmap = mallopt(_M_MMAP_MAX, 0) == 1
    no_trim = mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    return no_mmap and no_trim


def configure_host_allocator(mode: str, device: torch.device) -> bool:
    """For a whole training process (the CLIs call it; the library's ``Trainer`` does not):
    "retain", or "auto" when training on CPU, → :func:`retain_host_memory`; "system" leaves
    malloc as it is.  Returns whether the allocator was changed."""
    if mode not in HOST_ALLOCATOR_MODES:
        raise ValueError(f"host allocator must be one of {', '.join(HOST_ALLOCATOR_MODES)}, got {mode!r}")
    if mode == "retain" or (mode == "auto" and device.type == "cpu"):
        return retain_host_memory()
    return False
