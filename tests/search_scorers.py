"""Scorers for tests/test_search.py, importable by the spawned worker processes as
`tests.search_scorers:NAME`. Each call appends a line to $EFFDSL_TEST_CALLS when it is set, so
that tests can count calls made in other processes."""

from __future__ import annotations

import os

from torch import nn


def _record(resolution: int) -> None:
    path = os.environ.get("EFFDSL_TEST_CALLS")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"{resolution}\n")


def fewest_params(model: nn.Module, resolution: int) -> float:
    """Higher is better: the smaller the net, the better it scores."""
    _record(resolution)
    return -float(sum(p.numel() for p in model.parameters()))


def fails_on_size(model: nn.Module, resolution: int) -> float:
    """Like `fewest_params`, but raises on the parameter count named by $EFFDSL_TEST_FAIL_AT."""
    params = sum(p.numel() for p in model.parameters())
    if str(params) == os.environ.get("EFFDSL_TEST_FAIL_AT"):
        raise ValueError(f"no score for {params} parameters")
    return fewest_params(model, resolution)


def not_a_number(model: nn.Module, resolution: int) -> object:
    return "excellent"


os_module = os  # not callable: `--score tests.search_scorers:os_module` is an error


def forward_loss(model: nn.Module, resolution: int) -> float:
    """A cheap check that the built module runs: the loss of one forward pass on zeros."""
    import torch

    _record(resolution)
    with torch.no_grad():
        logits = model.eval()(torch.zeros(1, 3, resolution, resolution))
    return -float(logits.abs().mean())


def slow_params(model: nn.Module, resolution: int) -> float:
    """Like `fewest_params`, after $EFFDSL_TEST_SLEEP seconds; it writes `PID PARAMS RESOLUTION`
    to $EFFDSL_TEST_LOG when it starts, and hangs for ever on the parameter count named by
    $EFFDSL_TEST_HANG_AT (for a worker to be killed mid-trial)."""
    import time

    params = sum(p.numel() for p in model.parameters())
    log = os.environ.get("EFFDSL_TEST_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"{os.getpid()} {params} {resolution}\n")
    if str(params) == os.environ.get("EFFDSL_TEST_HANG_AT"):
        time.sleep(3600)
    time.sleep(float(os.environ.get("EFFDSL_TEST_SLEEP", "0")))
    return -float(params)
