"""The host-allocator option: glibc keeps freed memory in the process when asked to."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cigl_bayes.device import configure_host_allocator

PROBE = """
import os, sys, torch
from cigl_bayes.device import configure_host_allocator
changed = configure_host_allocator(sys.argv[1], torch.device("cpu"))
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
torch.ones(1000).sum()                # torch's own lazy set-up happens before the measurement
before = rss_mb()
block = torch.ones(64 * 2**20 // 4)   # 64 MiB, every page touched
del block
print(changed, rss_mb() - before)
"""


def probe(mode: str) -> tuple[bool, float]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    changed, grown = out.stdout.split()
    return changed == "True", float(grown)


@pytest.mark.skipif(not sys.platform.startswith("linux") or not Path("/proc/self/statm").exists(),
                    reason="glibc malloc and /proc are Linux features")
def test_retain_keeps_a_freed_block_resident_and_system_returns_it():
    changed, grown = probe("retain")
    if not changed:
        pytest.skip("malloc here is not glibc's")
    assert grown > 56  # the freed 64 MiB stayed in the process, ready for the next step
    changed, grown = probe("system")
    assert not changed and grown < 24  # glibc's default: a block this large is unmapped on free


def test_auto_leaves_the_allocator_alone_off_cpu_and_bad_modes_are_refused():
    assert configure_host_allocator("system", torch.device("cpu")) is False
    assert configure_host_allocator("auto", torch.device("meta")) is False
    with pytest.raises(ValueError, match="host allocator"):
        configure_host_allocator("jemalloc", torch.device("cpu"))


def test_the_training_clis_take_the_option_and_refuse_bad_values(capsys):
    from cigl_bayes.experiments import train

    with pytest.raises(SystemExit) as exit_info:
        train.main(["--host-allocator", "jemalloc", "--out", "unused"])
    assert exit_info.value.code == 2 and "--host-allocator" in capsys.readouterr().err
