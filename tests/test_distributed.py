"""Distributed training: an effdsl-built network under DDP keeps its replicas identical.

Two processes (gloo, CPU, a free port on 127.0.0.1 only) each build the same tiny network from
a *different* random seed and train it for a few steps on *different* data, with dropout and
stochastic depth drawing different masks. DDP must broadcast rank 0's parameters at the start
and average the gradients at every step, so afterwards both replicas hold identical parameters,
and they differ from where they started.
"""

from __future__ import annotations

import socket
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import effdsl

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="no gloo backend"
)

TINY = """\
network tiny {
  input size=32
  defaults drop_path=0.2 se=0.25
  stem  conv            k3 s2 c8
  stage fused_mbconv e1 k3 s1 c8  x1
  stage mbconv       e4 k3 s2 c16 x2
  head  conv            k1 c32
  classifier dropout=0.2 classes=10
}
"""
WORLD = 2
STEPS = 4
TIMEOUT = 120.0  # seconds for the whole run; a hung rendezvous fails rather than hangs


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def flat_parameters(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def train(rank: int, port: int, out: str) -> None:
    """One replica: build, wrap in DDP, train, and save its parameters before and after."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=60),
    )
    try:
        torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
        model = effdsl.build(effdsl.parse(TINY))
        initial = flat_parameters(model)
        replica = DistributedDataParallel(model)
        synced = flat_parameters(model)
        optimiser = torch.optim.SGD(replica.parameters(), lr=0.05, momentum=0.9)
        data = torch.Generator().manual_seed(1000 + rank)  # different data on each rank
        replica.train()
        losses = []
        for _ in range(STEPS):
            images = torch.randn(4, 3, 32, 32, generator=data)
            labels = torch.randint(0, 10, (4,), generator=data)
            loss = F.cross_entropy(replica(images), labels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        torch.save(
            {
                "initial": initial,
                "synced": synced,
                "final": flat_parameters(model),
                "losses": losses,
            },
            Path(out) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_ddp_replicas_stay_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")  # loopback only
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    context = mp.start_processes(
        train, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT
    try:
        while not context.join(timeout=1.0):
            assert time.monotonic() < deadline, f"training did not finish in {TIMEOUT:g} s"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    first, second = results
    assert not torch.equal(first["initial"], second["initial"])  # the seeds did differ
    assert torch.equal(first["synced"], first["initial"])  # rank 0's weights were broadcast...
    assert torch.equal(second["synced"], first["initial"])  # ...to rank 1
    assert torch.equal(first["final"], second["final"])  # every step kept them equal
    assert not torch.equal(first["final"], first["initial"])  # and training moved them
    assert first["losses"] != second["losses"]  # on different data
    assert all(torch.isfinite(torch.tensor(r["losses"])).all() for r in results)
