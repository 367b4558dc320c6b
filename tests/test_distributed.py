"""Two gloo processes on the CPU take the same steps as one process on the same global batches."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cigl_bayes.config import TrainConfig
from cigl_bayes.distributed import DistInfo, shard_positions
from cigl_bayes.inference.training import Trainer
from cigl_bayes.objectives import batch_targets
from cigl_bayes.runs import load_checkpoint


def _worker(rank: int, world: int, rendezvous: str, cfg: TrainConfig, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        trainer = Trainer(cfg, out, progress=False)
        assert trainer.dist == DistInfo(rank, world)
        trainer.fit()
    finally:
        dist.destroy_process_group()


def test_shards_cover_the_global_batch_once():
    for n in (1, 7, 64):
        for world in (1, 2, 3):
            parts = [shard_positions(10, 10 + n, DistInfo(r, world)) for r in range(world)]
            covered = [i for s in parts for i in range(s.start, s.stop)]
            assert covered == list(range(10, 10 + n))
            assert max(s.stop - s.start for s in parts) - min(s.stop - s.start for s in parts) <= 1


@pytest.mark.parametrize("engine", ["plain", "svi"])
def test_two_gloo_processes_equal_one_process(engine, cifar_data_dir, cache_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("CIGL_CACHE_DIR", str(cache_dir))
    # mlp: no BatchNorm, whose per-rank batch statistics would differ from the global batch's on CPU.
    # float32 (amp off): on a CPU with bf16 instructions --amp auto trains in bf16, whose rounding of
    # per-rank and whole-batch gradients differs enough to flip mask decisions between near-equal weights
    cfg = TrainConfig(method="cigl", engine=engine, model="mlp", data_dir=str(cifar_data_dir), sparsity=0.9,
                      epochs=2, subset=600, test_subset=100, batch_size=64, delta_t=3, update_end=1.0,
                      wma_start_epoch=0, device="cpu", lr=0.05, amp="off")
    single = Trainer(cfg, tmp_path / "one", progress=False)
    single.fit()
    mp.spawn(_worker, args=(2, str(tmp_path / "rendezvous"), cfg, str(tmp_path / "two")), nprocs=2, join=True)

    two = load_checkpoint(tmp_path / "two" / "checkpoint.pt")
    one = single.state_dict()
    assert two["step"] == one["step"] == 2 * 10
    assert torch.equal(two["mask"]["flat"], one["mask"]["flat"].cpu())  # same mask decisions
    for k, v in one["module"].items():
        torch.testing.assert_close(two["module"][k], v, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(two["wma"]["sparse"], one["wma"]["sparse"], rtol=1e-4, atol=1e-5)
    assert not (tmp_path / "two" / "samples" / "sample_0002.pt").exists()  # epochs 0 and 1: two samples
    assert len(list((tmp_path / "two" / "samples").glob("sample_*.pt"))) == 2


def test_torchrun_launch_of_the_cli(cifar_data_dir, cache_dir, tmp_path):
    """The documented launch: torchrun --nproc_per_node=2 -m experiments.train ... (gloo on CPU)."""
    import os
    import socket
    import subprocess
    import sys

    from tests.conftest import REPO

    with socket.socket() as sock:  # a free port for the rendezvous (torchrun hangs with port 0)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "run"
    env = {**os.environ, "MPLBACKEND": "Agg", "CIGL_CACHE_DIR": str(cache_dir), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", "-m",
         "experiments.train", "--method", "rigl", "--model", "mlp", "--epochs", "1", "--subset", "400",
         "--test-subset", "100", "--batch-size", "50", "--device", "cpu", "--no-progress",
         "--data-dir", str(cifar_data_dir), "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "metrics.json").is_file() and proc.stdout.count("run folder:") == 1  # rank 0 reports once


def test_mixup_advances_the_shared_generator_equally_for_any_shard_size():
    """Ranks whose shards differ in size (the last batch of an epoch) keep identical generator
    states, so they go on drawing the same mixup λ and the same SET regrowth scores."""
    states = []
    for n in (8, 5):
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(n, 3, 4, 4), torch.randint(0, 10, (n,))
        _, target = batch_targets(x, y, 10, mixup=0.2, generator=g)
        assert target.shape == (n, 10) and torch.allclose(target.sum(1), torch.ones(n))
        states.append(g.get_state())
    assert torch.equal(states[0], states[1])


def _ddp_drop_in_worker(rank: int, world: int, rendezvous: str, out: str) -> None:
    """A user's DDP loop with CigL attached to the inner module: each rank trains on its half of
    every global batch."""
    import torch.nn.functional as F

    from cigl_bayes import CigL
    from cigl_bayes.models import build_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = build_model("mlp", num_classes=10, in_features=48, hidden=(32,))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        cigl = CigL(model, optimizer, method="cigl", sparsity=0.8, total_steps=24, delta_t=3, update_end=1.0,
                    keep=0.9, seed=4)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        g = torch.Generator().manual_seed(1)
        data = [(torch.randn(32, 48, generator=g), torch.randint(0, 10, (32,), generator=g)) for _ in range(24)]
        for x, y in data:
            optimizer.zero_grad()
            F.cross_entropy(ddp(x[rank::world]), y[rank::world]).backward()
            cigl.step()
        torch.save({"mask": cigl.net.mask.flat, "w": cigl.net.sparse_flat().detach(),
                    "ever": cigl.net.mask.ever_active}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_keep_the_same_mask_and_weights_with_the_drop_in_object(tmp_path):
    mp.spawn(_ddp_drop_in_worker, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(a["mask"], b["mask"])  # the score was all-reduced: the same regrowth on both ranks
    assert torch.equal(a["w"], b["w"])
    assert int((a["ever"] & ~a["mask"]).sum()) > 0  # the mask did move
