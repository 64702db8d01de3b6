"""Property tests: every AST survives format → parse unchanged, and fmt is idempotent."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from effdsl import ast
from effdsl.fmt import format as format_network
from effdsl.parser import parse

from .strategies import networks


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(networks())
def test_parse_of_format_is_identity(network: ast.Network) -> None:
    text = format_network(network)
    assert parse(text) == network


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(networks())
def test_format_is_idempotent(network: ast.Network) -> None:
    once = format_network(network)
    assert format_network(parse(once)) == once
