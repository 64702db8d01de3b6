"""The stored reference figures (tests/data/reference) still match the installed libraries.

Other tests compare effdsl against the stored copy, so they need neither network access nor a
rebuild of 13 reference models; this test rebuilds each file from the installed torchvision and
timm (on the `meta` device) and fails, naming the file, when an upgrade changed it.
"""

from __future__ import annotations

import importlib.util

import pytest

from .conftest import REFERENCE


def _make_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("reference_make", REFERENCE / "make.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKE = _make_module()


@pytest.mark.parametrize("name", sorted(MAKE.expected_files()))
def test_stored_reference_matches_the_installed_libraries(name: str) -> None:
    stored = (REFERENCE / name).read_text()
    assert stored == MAKE.expected_files()[name](), (
        f"tests/data/reference/{name} is stale: run `python tests/data/reference/make.py`"
    )


def test_every_stored_file_is_produced_by_the_script() -> None:
    stored = {path.name for path in REFERENCE.iterdir() if path.suffix in (".jsonl", ".tsv")}
    assert stored == set(MAKE.expected_files())
