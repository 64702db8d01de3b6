"""`effdsl search --data` under torchrun: two CPU processes (gloo) train each candidate together.

First the protocol of `effdsl.distributed` alone (two spawned processes, a stand-in scorer):
rank 0 sends each candidate, the other rank scores the same ones, waits while rank 0 waits,
returns rank 0's result, and stops with rank 0 on a group-wide error. Then the real launcher,
`python -m torch.distributed.run --standalone --nproc-per-node 2 -m effdsl search …`, on a tiny
two-candidate grid at 32–35 px. The validation split holds 15 images, so the two ranks hold 8
and 7 of them: a score out of 15 can only be the two shards' counts summed. Only rank 0 talks
to the storage and prints; each candidate is one trial, scored once.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from effdsl.distributed import Leader, follow, join
from effdsl.errors import EffError

from .conftest import ROOT
from .test_search import TINY
from .textures import make_textures

optuna = pytest.importorskip("optuna")
dist = pytest.importorskip("torch.distributed")
pytestmark = [
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                       reason="no gloo backend"),
    pytest.mark.slow,
]

GRID = ["--grid", "alpha=1,beta=1,gamma=1:1.1:0.1", "--target", "1.1", "--tolerance", "0.15"]
VAL_PER_CLASS = 5  # × 3 classes: 15 validation images, 8 on rank 0 and 7 on rank 1
EPOCH_LINE = re.compile(r"epoch (\d)/2: loss [0-9.]+, val top-1 ([0-9.]+) \((\d+)/(\d+)\)")
SCORED_LINE = re.compile(r"\] α=1 β=1 γ=(1\.1|1) score=([0-9.e-]+) ")


# ---- the protocol: rank 0 leads, rank 1 follows -----------------------------------------------

KEYS = [(1.0, 1.0, 1.0), (1.0, 1.1, 1.0)]
BAD = (1.2, 1.0, 1.0)  # the stand-in scorer fails on it, on every rank: a diverged loss
TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def rank_main(rank: int, port: int, out: str, fail: bool) -> None:
    """One of two processes, as torchrun would start it."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")
    scored: list[list[float]] = []
    outcome: object
    with join() as group:

        def score(key: tuple[float, float, float]) -> float:
            # a collective, as training has: it pairs only if both ranks score the same key
            (total,) = group.sum([sum(key)])
            scored.append([*key, total])
            if key == BAD:
                raise EffError("training diverged at epoch 1 (loss nan)")
            return total

        try:
            if group.leader:
                with Leader(group) as leader:
                    together = leader.scores(score)
                    values = [together(key) for key in KEYS]
                    leader.idle(0.05)  # waiting for other workers: rank 1 hears it and waits
                    leader.idle(0.05)
                    if fail:
                        together(BAD)
                    leader.finish({"values": values})
                    outcome = {"values": values}
            else:
                outcome = follow(group, score)
        except EffError as error:
            outcome = {"error": error.message}
    Path(out, f"rank{rank}.json").write_text(json.dumps({"scored": scored, "outcome": outcome}))


def run_ranks(tmp_path: Path, fail: bool) -> list[dict[str, object]]:
    import torch.multiprocessing as mp

    context = mp.start_processes(rank_main, args=(free_port(), str(tmp_path), fail), nprocs=2,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT
    try:
        while not context.join(timeout=1.0):
            assert time.monotonic() < deadline, f"the ranks did not finish in {TIMEOUT:g} s"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.parametrize("fail", [False, True], ids=["finish", "group-wide error"])
def test_rank_1_scores_what_rank_0_sends_and_ends_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: bool
) -> None:
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")  # loopback only
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    leader, other = run_ranks(tmp_path, fail)
    expected = [[*key, 2 * sum(key)] for key in KEYS]  # summed over both ranks
    if not fail:
        assert leader["scored"] == other["scored"] == expected
        assert leader["outcome"] == other["outcome"] == {"values": [e[3] for e in expected]}
    else:
        bad = [[*BAD, 2 * sum(BAD)]]
        assert leader["scored"] == other["scored"] == expected + bad
        assert leader["outcome"] == {"error": "training diverged at epoch 1 (loss nan)"}
        assert other["outcome"] == {"error": "training diverged at epoch 1 (loss nan)"}


# ---- the real launcher ----------------------------------------------------------------------


def torchrun(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    spec = tmp_path / "tiny.eff"
    spec.write_text(TINY)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", "2", "-m", "effdsl", "search", str(spec), *GRID, *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "GLOO_SOCKET_IFNAME": "lo",  # loopback only
           "CUDA_VISIBLE_DEVICES": ""}  # gloo on the CPU even where there are GPUs
    return subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=600)


def test_two_ranks_train_each_candidate_together_and_score_it_once(tmp_path: Path) -> None:
    data = make_textures(tmp_path / "textures", per_class=16, val_per_class=VAL_PER_CLASS)
    storage = tmp_path / "ddp.db"
    done = torchrun(tmp_path, "--data", str(data), "--epochs", "2", "--batch", "16",
                    "--storage", str(storage))
    assert done.returncode == 0, done.stderr
    # rank 0 alone prints the table (rank 1 returns the same result, silently)
    assert done.stdout.count("study tiny in") == 1 and "2 of 2 scored" in done.stdout
    # each epoch's top-1 counts all 15 validation images: both shards, summed
    epochs = EPOCH_LINE.findall(done.stderr)
    assert len(epochs) == 2 * 2, done.stderr  # two candidates, two epochs, reported once
    assert {(int(seen)) for _, _, _, seen in epochs} == {3 * VAL_PER_CLASS}
    for _, top1, right, seen in epochs:
        assert float(top1) == pytest.approx(int(right) / int(seen), abs=5e-5)
    scored = dict(SCORED_LINE.findall(done.stderr))
    last = [right for number, _, right, _ in epochs if number == "2"]
    # the score recorded is the last epoch's global count over 15
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{storage}")
    trials = study.get_trials()
    assert len(trials) == 2  # each candidate one trial: scored exactly once
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert sorted(t.params["candidate"] for t in trials) == [
        "alpha=1.0,beta=1.0,gamma=1.0", "alpha=1.0,beta=1.0,gamma=1.1"]
    values = sorted(t.value for t in trials)
    assert values == sorted(int(r) / 15 for r in last)
    assert sorted(float(v) for v in scored.values()) == pytest.approx(values, abs=5e-6)


def test_the_other_rank_stops_when_rank_0_cannot_open_the_storage(tmp_path: Path) -> None:
    data = make_textures(tmp_path / "textures", per_class=4, val_per_class=1)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a storage")
    done = torchrun(tmp_path, "--data", str(data), "--storage", str(notes))
    assert done.returncode != 0
    assert f"error: {notes}: not an SQLite database; left untouched" in done.stderr
    assert "error: rank 1 stops with rank 0: " in done.stderr  # told, rather than left waiting
    assert notes.read_text() == "not a storage"
