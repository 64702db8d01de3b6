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
    logits = model.eval()(torch.zeros(1, 3, resolution, resolution))
    return -float(logits.abs().mean())
