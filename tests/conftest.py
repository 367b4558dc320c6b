"""Shared test fixtures: the real CIFAR-10 location and a per-session cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def cifar_data_dir() -> Path:
    """Directory holding the real CIFAR-10 (``CIGL_DATA_DIR`` or ``../shared/data``)."""
    path = Path(os.environ.get("CIGL_DATA_DIR", SHARED_DATA))
    if not (path / "cifar10-jpeg.tar.gz").exists() and not any(path.glob("cifar*")):
        pytest.fail(f"real CIFAR-10 not found in {path}; set CIGL_DATA_DIR to the folder holding cifar10-jpeg.tar.gz")
    return path


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """Decoded-array cache shared by the whole test session (``CIGL_CACHE_DIR`` if set)."""
    env = os.environ.get("CIGL_CACHE_DIR")
    return Path(env) if env else tmp_path_factory.mktemp("cigl-cache")


SLOW_MODULES = {"test_cli.py", "test_faults.py", "test_distributed.py"}  # subprocesses and torchrun


def pytest_collection_modifyitems(config, items):
    """Mark as ``slow`` every test that reads the real CIFAR-10 (the ``cifar_data_dir`` fixture) or
    starts processes, so that ``python -m pytest -m "not slow"`` is the fast subset (docs/testing.md)."""
    for item in items:
        if "cifar_data_dir" in getattr(item, "fixturenames", ()) or item.path.name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
