"""Small promises of the public API: what `plan.blocks()` gives, what the JSON Schema shows,
where the version lives."""

from __future__ import annotations

import ast as pyast
import json
from typing import Any

import effdsl
from effdsl.ast import TRIVIA

from .conftest import ROOT, SPECS


def test_plan_blocks_is_an_indexable_tuple_in_forward_order() -> None:
    plan = effdsl.lower(effdsl.load(SPECS / "b0.eff"))
    blocks = plan.blocks()
    assert isinstance(blocks, tuple) and len(blocks) == plan.block_count == 16
    assert blocks[0].path == "stages.0.blocks.0" and blocks[-1].path == "stages.6.blocks.0"
    assert [b.number for b in blocks] == list(range(16))


def _property_names(schema: Any) -> set[str]:
    """Every property name anywhere in a JSON Schema (the root and all `$defs`)."""
    names: set[str] = set()
    if isinstance(schema, dict):
        names.update(schema.get("properties", {}))
        for value in schema.values():
            names |= _property_names(value)
    elif isinstance(schema, list):
        for value in schema:
            names |= _property_names(value)
    return names


def test_schema_describes_the_language_not_the_parsers_bookkeeping() -> None:
    schema = effdsl.Network.model_json_schema()
    names = _property_names(schema)
    assert not names & TRIVIA
    assert "Span" not in schema.get("$defs", {})
    assert {"stages", "kernel", "expand", "channels", "alpha", "size"} <= names
    json.dumps(schema)  # still plain JSON


def test_trivia_still_ride_along_on_parsed_nodes() -> None:
    network = effdsl.load(SPECS / "b0.eff")
    assert network.stem.span is not None and network.stem.span.line > 1
    assert network.comments  # the file's leading comment


def test_lower_modules_read_the_version_from_effdsl_version() -> None:
    for path in sorted((ROOT / "effdsl").glob("*.py")):
        if path.name == "__init__.py":
            continue
        for node in pyast.walk(pyast.parse(path.read_text())):
            if isinstance(node, pyast.ImportFrom) and node.module == "effdsl":
                names = {alias.name for alias in node.names}
                assert "__version__" not in names, f"{path.name} imports the package's face"
    from effdsl.version import __version__

    assert effdsl.__version__ == __version__
