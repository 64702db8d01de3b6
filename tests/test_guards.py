"""Resource guards: absurd networks are refused quickly, without allocating, from every entry point.

Each guard has a spec that only it stops (parameters, MACs, activation memory, block count, the
φ bounds), so each test fails if its guard is removed. Numeric overflow, NaN and infinity in
spec text, CLI flags and API arguments are errors, never crashes.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import effdsl
from effdsl.cli import main
from effdsl.errors import EffError, LimitError, ScalingError
from effdsl.limits import Limits, check_plan
from effdsl.plan import MAX_BLOCKS, lower
from effdsl.scaling import multipliers

from .conftest import SPECS

FAST = 1.0  # seconds: a refusal must come well within this

SPEC = """\
network absurd {{
  input size={size}
  stem conv k3 s2 c{stem}
  stage {stage}
  head conv k1 c{head}
  classifier classes=10
}}
"""

#: Specs that exactly one guard refuses, the message it gives (limit and figure), and the flag.
ABSURD = {
    # 10^6 channels (the language's bound): 10^12 parameters
    "channels": (
        SPEC.format(size=32, stem=16, stage="conv k3 s1 c1000000 x1", head=1_000_000),
        r"needs 1,000,158,000,474 parameters, more than the limit of 2,000,000,000",
        "--max-params",
    ),
    # a 31×31 conv at 2048 px: few parameters, 1.6·10^13 MACs
    "macs": (
        SPEC.format(size=4096, stem=64, stage="conv k31 s1 c64 x1", head=64),
        r"needs 16,\d{3},\d{3},\d{3},\d{3} MACs per image, more than the limit of "
        r"5,000,000,000,000",
        "--max-macs",
    ),
    # resolution 10^5 (the language's bound): 400 GB of activations per image
    "resolution": (
        SPEC.format(size=100_000, stem=8, stage="mbconv e1 k3 s1 c8 x1", head=16),
        r"needs 400,\d{3},\d{3},\d{3} bytes of activations per image, more than the limit of "
        r"16,000,000,000",
        "--max-activations",
    ),
    # repeats 10^5 (the language's bound): refused before a single block is lowered
    "repeats": (
        SPEC.format(size=32, stem=8, stage="mbconv e1 k3 s1 c8 x100000", head=16),
        rf"has 100,000 blocks, more than the limit of {MAX_BLOCKS:,}",
        None,
    ),
}


def write(tmp_path: Path, text: str, name: str = "absurd.eff") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def cli(*args: str) -> tuple[int, str]:
    """Run the CLI in this process; the exit code and what it printed on stderr."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(list(args), stderr=err)
        except SystemExit as exit_:  # argparse's usage errors
            code = int(exit_.code or 0)
    return code, err.getvalue()


@contextlib.contextmanager
def quick_and_small(seconds: float = FAST, megabytes: float = 20) -> Iterator[None]:
    """The block must finish within `seconds` and allocate at most `megabytes` at its peak."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        _now, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert elapsed < seconds, f"took {elapsed:.2f} s"
    assert peak < megabytes * 2**20, f"allocated {peak / 2**20:.0f} MB"


# ---- every entry point refuses each absurd spec --------------------------------------------


@pytest.mark.parametrize("case", ABSURD, ids=ABSURD)
@pytest.mark.parametrize(
    "command",
    [
        ["compile", "--json"],
        ["compile", "--dry-run"],
        ["compile", "-o", "{out}/model.py"],
        ["render", "-o", "{out}/model.dot"],
        ["render", "--detail", "layer", "-o", "{out}/model.svg"],
    ],
    ids=["compile-json", "compile-dry-run", "compile-py", "render-dot", "render-svg"],
)
def test_cli_refuses_absurd_specs(tmp_path: Path, case: str, command: list[str]) -> None:
    text, message, flag = ABSURD[case]
    spec = write(tmp_path, text)
    args = [part.format(out=tmp_path) for part in command]
    start = time.perf_counter()
    code, stderr = cli(args[0], spec, *args[1:])
    assert time.perf_counter() - start < FAST
    assert code == 1, stderr
    assert stderr.startswith("error: "), stderr
    assert re.search(message, stderr), stderr
    if flag is not None:
        assert f"raise it with {flag}" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["absurd.eff"]  # nothing written


@pytest.mark.parametrize("case", ABSURD, ids=ABSURD)
def test_library_refuses_without_allocating(case: str) -> None:
    text, message, _flag = ABSURD[case]
    network = effdsl.parse(text)
    with quick_and_small(), pytest.raises(LimitError, match=message):
        check_plan(lower(network))


def test_phi_1000_is_refused_with_the_figure_and_the_bound() -> None:
    network = effdsl.load(SPECS / "b0.eff")
    with (
        quick_and_small(),
        pytest.raises(
            ScalingError,
            match=r"phi=1000 gives a width multiplier"
            r" of 2\.47e\+41, outside \(0, 1000\]",
        ),
    ):
        multipliers(network, phi=1000)
    code, stderr = cli("compile", str(SPECS / "b0.eff"), "--phi", "1000", "--json")
    assert code == 1 and "outside (0, 1000]" in stderr


def test_phi_cannot_push_the_resolution_past_the_language_bound() -> None:
    network = effdsl.load(SPECS / "b0.eff")
    with pytest.raises(ScalingError, match=r"resolution of 214,015 px, outside \[8, 100,000\]"):
        multipliers(network, phi=9.9, gamma=2.0)
    with pytest.raises(ScalingError, match=r"resolution of 3 px"):
        multipliers(network, phi=-30)


def test_raising_a_limit_admits_the_network(tmp_path: Path) -> None:
    text, _message, _flag = ABSURD["macs"]
    spec = write(tmp_path, text)
    assert cli("compile", spec, "--json")[0] == 1
    code, stderr = cli("compile", spec, "--json", "--max-macs", "20T")
    assert code == 0, stderr
    network = effdsl.parse(text)
    check_plan(lower(network), Limits(macs=2e13))


def test_the_defaults_admit_efficientnet_l2() -> None:
    network = effdsl.load(SPECS / "b0.eff")
    factors = multipliers(network, preset="l2")
    check_plan(lower(effdsl.scale(network, preset="l2"), factors))


# ---- the Python build ----------------------------------------------------------------------


def _build_on_meta(network: effdsl.Network) -> Any:
    # on the meta device nothing is allocated even if a guard is missing
    with torch.device("meta"):
        return effdsl.build(network)


def test_build_refuses_too_many_blocks() -> None:
    text, message, _flag = ABSURD["repeats"]
    start = time.perf_counter()
    with pytest.raises(LimitError, match=message):
        _build_on_meta(effdsl.parse(text))
    assert time.perf_counter() - start < FAST


@pytest.mark.parametrize("case", ["channels", "macs", "resolution"])
def test_build_refuses_absurd_costs(case: str) -> None:
    text, message, _flag = ABSURD[case]
    start = time.perf_counter()
    with pytest.raises(LimitError, match=message):
        _build_on_meta(effdsl.parse(text))
    assert time.perf_counter() - start < FAST


def test_build_takes_raised_limits() -> None:
    text, _message, _flag = ABSURD["macs"]
    with torch.device("meta"):
        model = effdsl.build(effdsl.parse(text), limits=Limits(macs=2e13))
    assert sum(p.numel() for p in model.parameters()) < 10**7


# ---- NaN, infinity and overflow are errors --------------------------------------------------

BASE = (
    "network t {\n  input size=32\n  stem conv k3 s2 c8\n  stage mbconv e6 k3 s1 c16 x1\n"
    "  head conv k1 c16\n  classifier classes=10\n}\n"
)
ODD_NUMBERS = ["nan", "inf", "-inf", "1e309", "-1e309", "1e999999", "9" * 400, "1e-400", "-0"]
FIELDS = [
    ("input size=32", "input size={}"),
    ("input size=32", "input size=32 channels={}"),
    ("stem conv k3 s2 c8", "stem conv k3 s2 c8\n  scaling alpha={}"),
    ("stem conv k3 s2 c8", "stem conv k3 s2 c8\n  scaling divisor={}"),
    ("stem conv k3 s2 c8", "stem conv k3 s2 c8\n  defaults se={}"),
    ("stem conv k3 s2 c8", "stem conv k3 s2 c8\n  defaults bn_eps={}"),
    ("stem conv k3 s2 c8", "stem conv k3 s2 c8\n  defaults drop_path={}"),
    ("stem conv k3 s2 c8", "stem conv k3 s2 c8\n  preset p width={}"),
    ("stem conv k3 s2 c8", "stem conv k3 s2 c8\n  preset p resolution={}"),
    ("x1", "x1 expand={}"),
    ("x1", "x1 se={}"),
    ("x1", "x1 bn_momentum={}"),
    ("x1", "repeats={}"),
    ("classes=10", "classes={}"),
    ("classes=10", "classes=10 dropout={}"),
]


@pytest.mark.parametrize("number", ODD_NUMBERS)
@pytest.mark.parametrize(("old", "new"), FIELDS, ids=[new.split("\n")[-1] for _o, new in FIELDS])
def test_odd_numbers_in_a_spec_are_located_errors(number: str, old: str, new: str) -> None:
    text = BASE.replace(old, new.format(number), 1)
    try:
        effdsl.parse(text, "odd.eff")
    except EffError as error:
        errors = getattr(error, "errors", (error,))
        assert all(e.span is not None and e.span.file == "odd.eff" for e in errors)
        assert "Traceback" not in error.render()
    # else: a value like -0 or 1e-400 (= 0.0) that the field accepts is fine too


API_CALLS: dict[str, Callable[[effdsl.Network], Any]] = {
    "phi=nan": lambda n: multipliers(n, phi=math.nan),
    "phi=inf": lambda n: multipliers(n, phi=math.inf),
    "phi=10**400": lambda n: multipliers(n, phi=10**400),
    "phi=1e308": lambda n: multipliers(n, phi=1e308),
    "phi=-1e308": lambda n: multipliers(n, phi=-1e308),
    "phi='3'": lambda n: multipliers(n, phi="3"),  # type: ignore[arg-type]
    "width=nan": lambda n: multipliers(n, width=math.nan),
    "width=-inf": lambda n: multipliers(n, width=-math.inf),
    "width=10**400": lambda n: multipliers(n, width=10**400),
    "depth=0": lambda n: multipliers(n, depth=0.0),
    "alpha=1e308 phi=3": lambda n: multipliers(n, phi=3.0, alpha=1e308),
    "gamma=inf phi=1": lambda n: multipliers(n, phi=1.0, gamma=math.inf),
    "resolution=224.5": lambda n: multipliers(n, resolution=224.5),  # type: ignore[arg-type]
    "resolution=nan": lambda n: multipliers(n, resolution=math.nan),  # type: ignore[arg-type]
    "resolution=10**400": lambda n: multipliers(n, resolution=10**400),
    "resolution=10**5000": lambda n: multipliers(n, resolution=10**5000),
    "phi=10**5000": lambda n: multipliers(n, phi=10**5000),
    "resolution=True": lambda n: multipliers(n, resolution=True),
    "scale phi=nan": lambda n: effdsl.scale(n, phi=math.nan),
    "Limits params=nan": lambda n: Limits(params=math.nan),
    "Limits macs=inf": lambda n: Limits(macs=math.inf),
    "Limits activation_bytes=-1": lambda n: Limits(activation_bytes=-1),
    "Limits params='2e9'": lambda n: Limits(params="2e9"),  # type: ignore[arg-type]
    "lower max_blocks=nan": lambda n: lower(n, max_blocks=math.nan),  # type: ignore[arg-type]
    "build num_classes=nan": lambda n: _build_on_meta_with(n, num_classes=math.nan),
    "build in_channels=10**400": lambda n: _build_on_meta_with(n, in_channels=10**400),
}


def _build_on_meta_with(network: effdsl.Network, **options: Any) -> Any:
    with torch.device("meta"):
        return effdsl.build(network, **options)


@pytest.mark.parametrize("call", API_CALLS.values(), ids=API_CALLS.keys())
def test_odd_api_arguments_are_eff_errors(call: Callable[[effdsl.Network], Any]) -> None:
    network = effdsl.parse(BASE)
    with pytest.raises(EffError):
        call(network)


CLI_FLAGS = [
    ["--phi", "nan"],
    ["--phi", "inf"],
    ["--phi", "1e999"],
    ["--phi", "1e308"],
    ["--phi", "-1e308"],
    ["--width", "nan"],
    ["--width", "1e309"],
    ["--depth", "-1"],
    ["--resolution", "nan"],
    ["--resolution", "1e999"],
    ["--resolution", "99999999999999999999999999"],
    ["--resolution", "-5"],
    ["--alpha", "1e308", "--phi", "3"],
    ["--gamma", "2", "--phi", "10"],
    ["--macs", "nan"],
    ["--params", "1e999"],
    ["--macs", "1e-300"],
    ["--max-params", "nan"],
    ["--max-macs", "inf"],
    ["--max-activations", "1e999"],
    ["--max-params", "0"],
]


@pytest.mark.parametrize("flags", CLI_FLAGS, ids=[" ".join(f) for f in CLI_FLAGS])
def test_odd_cli_flags_are_errors_not_crashes(flags: list[str]) -> None:
    code, stderr = cli("compile", str(SPECS / "b0.eff"), "--json", *flags)
    assert code in (1, 2), stderr  # 1: an EffError, 2: argparse refused the value; 3 is a bug
    assert "internal error" not in stderr and "Traceback" not in stderr
