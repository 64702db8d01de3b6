"""Fuzzing: valid generated specs pass every stage; mutated ones give a result or an EffError.

The default run is a few seconds. `EFFDSL_FUZZ_LONG=1` (or `pytest --fuzz-long`) runs 20,000
mutated cases and 2,000 generated networks; `EFFDSL_FUZZ_SEED=N` picks the mutation seed.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from effdsl import ast, fuzz
from effdsl import fuzz_surface as surface
from effdsl.codegen import to_python
from effdsl.errors import EffError, EffErrors, EffSemanticError, LimitError, ScalingError
from effdsl.fmt import format as format_network
from effdsl.limits import check_plan
from effdsl.parser import MAX_TOKENS, parse
from effdsl.render import to_dot
from effdsl.scaling import multipliers
from effdsl.summary import summarize, to_json

from .conftest import ROOT, SPECS, fuzz_long
from .strategies import networks

LONG = fuzz_long()
MUTATED_CASES = 20_000 if LONG else 500
SEED = int(os.environ.get("EFFDSL_FUZZ_SEED", "20261126"))
PROPERTY = settings(
    max_examples=2_000 if LONG else 40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---- generated valid specs ------------------------------------------------------------------


@PROPERTY
@given(networks())
def test_every_stage_accepts_a_generated_spec(network: ast.Network) -> None:
    """check, fmt, compile --json, render and compile -o .py all succeed on a valid spec."""
    text = format_network(network)
    assert parse(text) == network  # check, and the round trip of fmt
    assert format_network(parse(text)) == text
    scalings = [multipliers(network)] + [
        multipliers(network, preset=p.name) for p in network.presets
    ]
    for factors in scalings:
        try:
            summary = summarize(network, factors)
        except EffSemanticError as error:
            # a narrowing preset can leave a MixConv slice empty, a preset's widths need not be
            # multiples of a norm's or a conv's group size, and a preset's smaller resolution
            # can leave an `aa=avg|blur` pool a 1×1 map, which PyTorch cannot pool
            expected = ("slices", "group_size", "needs maps of at least")
            assert factors.preset is not None and any(w in str(error) for w in expected), error
            continue
        try:
            check_plan(summary.scaled)
        except LimitError:  # a preset of width 4 and depth 4 at 1024 px can pass 5 T MACs
            assert factors.preset is not None  # the unscaled strategies stay well inside
            continue
        document = json.loads(json.dumps(to_json(summary), allow_nan=False))
        assert document["name"] == network.name
        assert len(document["stages"]) == len(network.stages)
        for detail in ("stage", "block", "layer"):
            assert to_dot(summary.scaled, detail=detail).startswith("digraph")
        source = to_python(summary.scaled, spec_text=text)
        compile(source, "<generated>", "exec", dont_inherit=True)


@PROPERTY
@given(networks())
def test_generated_specs_survive_the_fuzz_pipeline(network: ast.Network) -> None:
    # the scaling it picks (a costly preset, a large φ) may be refused; nothing else may fail
    with contextlib.suppress(LimitError, ScalingError):
        fuzz.pipeline(format_network(network), random.Random(0))


# ---- mutation fuzzing of the shipped specs ------------------------------------------------


def test_mutated_and_generated_specs_never_crash_or_hang() -> None:
    report = fuzz.run(MUTATED_CASES, SEED)
    shown = "\n\n".join(
        f"{f.source} ({f.seconds:.2f} s): {fuzz._size(f.data)}\n{f.error}"
        for f in report.failures[:5]
    )
    assert report.other == 0, f"{report.summary()}\n{shown}"
    assert report.slow == 0, f"{report.summary()}\n{shown}"
    assert report.cases == MUTATED_CASES
    assert report.ok and report.errors  # both outcomes are reached


@pytest.mark.parametrize("name", fuzz.MUTATORS)
def test_each_mutator_is_deterministic_and_changes_the_spec(name: str) -> None:
    text = (SPECS / "b0.eff").read_text()
    outputs = set()
    for seed in range(20):
        first = _apply(name, text, random.Random(seed))
        assert first == _apply(name, text, random.Random(seed))
        outputs.add(first)
    assert any(out not in (text, text.encode()) for out in outputs)


def _apply(name: str, text: str, rng: random.Random) -> str | bytes:
    if name in fuzz.BYTE_MUTATORS:
        return fuzz.BYTE_MUTATORS[name](text.encode(), rng)
    return fuzz.TEXT_MUTATORS[name](text, rng)


def test_mutations_stay_bounded() -> None:
    rng = random.Random(1)
    for _ in range(300):
        data, _how = fuzz.mutate(fuzz.SEED_SPEC, rng)
        assert len(data) <= fuzz.MAX_CASE_CHARS


def test_random_specs_are_often_valid() -> None:
    # 500 specs: about a fifth are valid (seeds 2-11: 87 to 114 of 500, 98 on average), so the
    # bound is 15%, below the seed-to-seed spread, and the test fails only where the generator
    # loses a good part of its valid specs
    rng = random.Random(2)
    valid = 0
    for _ in range(500):
        try:
            parse(fuzz.random_spec(rng))
        except EffError:
            continue
        valid += 1
    assert 15 * 5 <= valid <= 95 * 5


def test_a_bug_is_counted_as_other(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(data: fuzz.Case, workdir: Path | None) -> ast.Network:
        raise KeyError("boom")

    monkeypatch.setattr(fuzz, "_read", broken)
    report = fuzz.run(5, 0, surface=False)
    assert report.other == 5 and len(report.failures) == 5
    assert "KeyError" in report.failures[0].error


# ---- the command line and the API -----------------------------------------------------------


def _surface_report(cases: int, seed: int, kind: str) -> fuzz.Report:
    """`cases` command lines or API calls only, through the fuzzer's driver."""
    report = fuzz.Report()
    with tempfile.TemporaryDirectory() as workdir:
        fixture = surface.make_fixture(Path(workdir) / "fixture")
        scratch = Path(workdir) / "scratch"
        scratch.mkdir()
        rng = random.Random(seed)
        functions, pool = surface.api_functions(), surface.value_pool(fixture)
        made = 0
        while made < cases:
            case = (surface.cli_case(rng, fixture) if kind == "cli"
                    else surface.api_case(rng, functions, pool))
            if case is None:
                continue
            fuzz.run_case(kind, case, report, rng, scratch, fixture)
            made += 1
    return report


@pytest.mark.parametrize(("kind", "cases"), [("cli", 200), ("api", 400)])
def test_command_lines_and_api_calls_give_a_result_or_an_eff_error(kind: str, cases: int) -> None:
    report = _surface_report(cases * (10 if LONG else 1), SEED, kind)
    shown = "\n\n".join(f"{f.data}\n{f.error}" for f in report.failures[:5])
    assert report.other == 0 and report.slow == 0, f"{report.summary()}\n{shown}"
    assert report.ok and report.errors


def test_the_surface_fuzzer_finds_a_planted_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    """Broken on purpose (errors printed raw; a function that raises KeyError), it reports."""
    import effdsl.errors

    monkeypatch.setattr(effdsl.errors, "printable", lambda text, newlines=False: text)
    cli_report = _surface_report(200, 1, "cli")
    assert cli_report.other and any("non-printable" in f.error for f in cli_report.failures)
    monkeypatch.undo()

    def boom(plan: object) -> None:
        raise KeyError("boom")

    monkeypatch.setattr(effdsl, "to_dot", boom)
    api_report = _surface_report(400, 1, "api")
    assert any("KeyError" in f.error for f in api_report.failures)


def test_generated_specs_draw_kinds_and_attributes_from_the_ast() -> None:
    """A kind or attribute added to the AST is fuzzed without touching the fuzzer."""
    rng = random.Random(0)
    lines = [fuzz.random_block(rng, "stage") for _ in range(400)]
    for kind in ast.BLOCK_KINDS:
        assert any(line.split()[1] == kind for line in lines), kind
    from effdsl.parser import attributes

    drawn = {fuzz.random_attribute(rng, ast.Stage).split("=")[0] for _ in range(2000)}
    assert drawn == set(attributes(ast.Stage))


# ---- inputs that were slow or broke something before (see docs/reliability.md) -------------

HEADER = "network t {\n  input size=32\n  stem conv k3 s2 c8\n"
FOOTER = "  stage mbconv e6 k3 s1 c16 x1\n  head conv k1 c16\n  classifier classes=10\n}\n"
REGRESSIONS = {
    # tens of thousands of statements took seconds to minutes to parse and report
    "repeated stages": HEADER + "  stage mbconv e6 k3 s1 c16 x1\n" * 20_000 + FOOTER,
    "unknown statements": HEADER + "a\n" * 50_000 + FOOTER,
    "a word repeated": HEADER + "  stage mbconv " + "e6 " * 100_000 + "\n" + FOOTER,
    "blank lines": HEADER + "\n" * 300_000 + FOOTER,
    "braces": "{" * 1_000_000,
    "quotes": "network t {\n" + '"' * 100_000,
    "long unterminated string": 'network "' + "a" * 250_000,
    "huge unterminated string": 'network "' + "a" * 5_000_000,
    "long string name": 'network "' + "a" * 250_000 + '" {\n' + FOOTER,
    "long comment and many errors": HEADER + "#" + "x" * 200_000 + "\n" + "a\n" * 1_500 + FOOTER,
    "a megabyte of spaces": " " * 1_000_000,
    "10,000 blocks": HEADER + "  stage fused_mbconv e6 k3 s2 c40 x10000\n" + FOOTER,
    "a near-limit spec": HEADER + "  stage mbconv e6 k3 s1 c16 x4\n" * (MAX_TOKENS // 9) + FOOTER,
    "NUL bytes": HEADER.replace(" ", "\x00") + FOOTER,
    "CR line breaks": (HEADER + FOOTER).replace("\n", "\r"),
    "lone surrogate": HEADER + '  stage mbconv e6 k3 s1 c16 x1 name="\\ud800"\n' + FOOTER,
    "raw surrogate": HEADER + "  \ud800\n" + FOOTER,
}


@pytest.mark.parametrize("text", REGRESSIONS.values(), ids=REGRESSIONS.keys())
def test_regressions_are_fast_and_clean(text: str) -> None:
    # CPU time, so that other processes on a busy machine do not make the test flaky. The
    # slowest of these (a spec at both the token and the block limit) takes 0.8-0.9 s since
    # every whole-network rule runs beside the per-line errors, and 2.1 s was seen on a machine
    # at load 8 (CPU time still grows with contention). The bound guards against what these
    # inputs once cost, seconds to minutes, not the speed itself (bench/ measures that), so
    # it is 10 s. The fuzzer's own cases keep the 1 s bound (docs/reliability.md).
    start = time.process_time()
    try:
        fuzz.pipeline(text)
    except EffErrors as errors:
        assert all(error.span is not None for error in errors.errors)
        assert len(errors.errors) <= 101
        errors.render()
    except EffError as error:
        error.render()
    assert time.process_time() - start < 10.0


def test_too_many_tokens_names_the_limit_and_where() -> None:
    text = HEADER + "a\n" * 5_000 + FOOTER
    with pytest.raises(EffError, match=f"more than {MAX_TOKENS:,} tokens") as caught:
        parse(text, "big.eff")
    span = caught.value.span
    assert span is not None and span.file == "big.eff" and span.line > 1000


def test_too_long_names_the_limit() -> None:
    with pytest.raises(EffError, match=r"is 300,001 characters long, more than the limit of"):
        parse("#" * 300_001)


def test_error_reports_are_capped() -> None:
    with pytest.raises(EffErrors) as caught:
        parse(HEADER + "a\n" * 1_000 + FOOTER)
    errors = caught.value.errors
    assert len(errors) == 101
    assert errors[-1].message == "too many errors: 900 more not shown"


# ---- the command ---------------------------------------------------------------------------


def test_fuzz_command_prints_the_counts(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "effdsl.fuzz", "--cases", "40", "--seed", "3"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    line = result.stdout.splitlines()[0]
    assert line.startswith("seed 3: 40 cases, ")
    for word in ("ok ", "EffError ", "other exceptions 0", "over 1 s 0", "max "):
        assert word in line
