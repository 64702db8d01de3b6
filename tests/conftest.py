"""Shared fixtures: the shipped specs and the reference figures in tests/data/reference.

The reference figures (torchvision's counts, torchvision's and timm's state_dict layouts) are
stored in the repository so a fresh clone runs every test; `tests/data/reference/make.py`
regenerates them and `tests/test_reference_data.py` checks they match the installed libraries.
"""

from __future__ import annotations

import csv
import json
import os
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
REFERENCE = ROOT / "tests" / "data" / "reference"

#: spec file, preset (or None), torchvision model name, for the 13 reference networks
REFERENCE_NETS = [
    *[("b0.eff", f"b{i}", f"efficientnet_b{i}") for i in range(8)],
    ("efficientnetv2-s.eff", None, "efficientnet_v2_s"),
    ("efficientnetv2-m.eff", None, "efficientnet_v2_m"),
    ("efficientnetv2-l.eff", None, "efficientnet_v2_l"),
    ("mobilenetv2.eff", None, "mobilenet_v2"),
    ("mnasnet.eff", None, "mnasnet1_0"),
]


@cache
def reference_counts() -> dict[str, dict[str, int]]:
    """torchvision's parameters and MACs of each reference model, by model name."""
    path = REFERENCE / "torchvision-counts.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["model"]: row for row in rows}


@cache
def reference_layout(name: str) -> list[tuple[str, str]]:
    """(key, shape) rows of a reference state_dict layout, e.g. `torchvision-efficientnet_b0`."""
    path = REFERENCE / f"{name}.tsv"
    with path.open() as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    return [(key, shape) for key, shape in rows[1:]]


@pytest.fixture
def specs_dir() -> Path:
    return SPECS


# ---- long fuzzing (tests/test_fuzz.py, tests/test_injection.py) --------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fuzz-long",
        action="store_true",
        help="run the fuzz and property tests with many more cases (same as EFFDSL_FUZZ_LONG=1)",
    )


def pytest_configure(config: pytest.Config) -> None:
    # test modules size their hypothesis settings at import, so the option travels as the env
    if config.getoption("--fuzz-long", default=False):
        os.environ["EFFDSL_FUZZ_LONG"] = "1"


def fuzz_long() -> bool:
    """Whether to fuzz long: `--fuzz-long` or `EFFDSL_FUZZ_LONG=1` (read when a module loads)."""
    return os.environ.get("EFFDSL_FUZZ_LONG", "") not in ("", "0")
