"""The .eff language: grammar, parser, diagnostics and formatter, tested as data."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import lark
import pytest

import effdsl
from effdsl import ast
from effdsl.errors import EffError, EffErrors, EffSemanticError
from effdsl.fmt import format as format_network
from effdsl.parser import lark_parser, parse

from .conftest import SPECS

DATA = Path(__file__).parent / "data"
ALL_SPECS = sorted(SPECS.glob("*.eff"))

BODY_HEAD = "network t {\n  input size=32\n  stem conv k3 s2 c8\n"
BODY_TAIL = "  head conv k1 c16\n  classifier classes=10\n}\n"


@dataclass(frozen=True)
class Case:
    title: str
    text: str
    expected: tuple[str, ...]


def read_cases(path: Path) -> list[Case]:
    """`=== title`, spec text, `---`, expected `LINE:COL: message` lines (see the file)."""
    cases = []
    chunks = re.split(r"^=== (.+)$", path.read_text(), flags=re.MULTILINE)
    for title, chunk in zip(chunks[1::2], chunks[2::2], strict=True):
        text, expected = chunk.split("\n---\n")
        text = text.strip("\n") + "\n"
        if not text.startswith("network"):
            body = "".join(f"  {line}\n" for line in text.splitlines())
            if not any(line.strip().startswith("stage") for line in text.splitlines()):
                body += "  stage mbconv e1 k3 s1 c8 x1\n"
            text = BODY_HEAD + body + BODY_TAIL
        lines = tuple(line for line in expected.strip().splitlines() if line)
        cases.append(Case(title.strip(), text, lines))
    return cases


MALFORMED = read_cases(DATA / "malformed.txt")


def errors_of(text: str) -> list[EffError]:
    with pytest.raises(EffError) as caught:
        parse(text, filename="t.eff")
    error = caught.value
    return list(error.errors) if isinstance(error, EffErrors) else [error]


def test_there_are_at_least_25_malformed_cases() -> None:
    assert len(MALFORMED) >= 25


@pytest.mark.parametrize("case", MALFORMED, ids=[c.title for c in MALFORMED])
def test_malformed_spec_reports_exact_location_and_message(case: Case) -> None:
    found = [f"{e.span.line}:{e.span.column}: {e.message}" for e in errors_of(case.text) if e.span]
    assert found == list(case.expected)


@pytest.mark.parametrize("case", MALFORMED, ids=[c.title for c in MALFORMED])
def test_rendered_errors_have_file_line_caret(case: Case) -> None:
    for error in errors_of(case.text):
        rendered = error.render()
        first, *rest = rendered.splitlines()
        assert re.match(r"t\.eff:\d+:\d+: error: ", first)
        assert rest and "^" in rest[1], rendered
        assert "__ANON" not in rendered and "Token(" not in rendered


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("stge mbconv e6 k3 s2 c24 x2", "did you mean `stage`?"),
        ("stage mbconv e6 k3 s2 c24 x2 kernal=3", "did you mean `kernel`?"),
        ("stage mbcnv e6 k3 s2 c24 x2", "did you mean `mbconv`?"),
        ("stage mbconv e6 k3 s2 c24 x2 act=hardswsh", "did you mean `hardswish`?"),
        ("stage mbconv e6 k3 s2 c24 x2 act=tanh", "one of `silu`, `relu`"),
        ("stage mbconv e6 k3 s2 c24 x2 se=0", "write `se=none`"),
        ("stage mbconv e6 k3 s2 c24 r2", "repeats are written x2"),
    ],
)
def test_hints(text: str, hint: str) -> None:
    case = read_cases_from_text(text)
    (error,) = errors_of(case)
    assert error.hint is not None and hint in error.hint


def read_cases_from_text(body: str) -> str:
    """A whole spec around one body line (with a stage appended when it has none)."""
    stage = "" if body.startswith("stage") else "  stage mbconv e1 k3 s1 c8 x1\n"
    return BODY_HEAD + f"  {body}\n" + stage + BODY_TAIL


def test_syntax_error_names_expected_tokens_in_plain_words() -> None:
    (error,) = errors_of("network t {\n  input size=\n}\n")
    assert error.hint is not None
    assert "a number" in error.hint and "a word" in error.hint


# ---- the shipped specs ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ALL_SPECS, ids=[p.name for p in ALL_SPECS])
def test_shipped_spec_checks_clean_and_is_canonical(path: Path) -> None:
    text = path.read_text()
    network = parse(text, filename=str(path))
    formatted = format_network(network)
    assert formatted == text, "run `effdsl fmt --write specs/*.eff`"
    assert parse(formatted) == network


def test_format_keeps_comments_and_is_idempotent() -> None:
    text = (
        "# lead\n"
        "network  t   {   # header\n"
        "  classifier classes=10   # trailing\n"
        "  # before stem\n"
        "  stem conv k3 s2 c8\n"
        "  input size=32\n"
        "  stage mbconv e1 k3 s1 c8 x1\n"
        "  head conv k1 c16\n"
        "  # closing\n"
        "}\n"
        "# after\n"
    )
    once = format_network(parse(text))
    assert format_network(parse(once)) == once
    for comment in ("# lead", "# header", "# trailing", "# before stem", "# closing", "# after"):
        assert comment in once
    assert once.index("# before stem") < once.index("stem  conv")
    assert parse(once) == parse(text)


def test_names_are_quoted_when_they_are_not_words() -> None:
    network = parse(read_cases_from_text("stage mbconv e1 k3 s1 c8 x1"))
    hostile = 'a "b"\n\\c\t"""é\u2028'
    renamed = network.model_copy(update={"name": hostile})
    assert parse(format_network(renamed)).name == hostile


def test_equality_ignores_positions_and_comments() -> None:
    one = parse(read_cases_from_text("stage mbconv e1 k3 s1 c8 x1  # hi"))
    two = parse("\n\n" + read_cases_from_text("stage   mbconv e1 k3 s1 c8 x1"))
    assert one == two and hash(one) == hash(two)
    assert one.stages[0].span != two.stages[0].span


def test_nodes_are_immutable_and_validated() -> None:
    network = effdsl.load(SPECS / "b0.eff")
    with pytest.raises(Exception, match="frozen"):
        network.stages[0].channels = 3  # type: ignore[misc]
    with pytest.raises(EffError, match="kernel must be odd"):  # an EffError, like all others
        ast.Stage(kind="mbconv", kernel=4, channels=8)
    with pytest.raises(EffError, match=r"(?i)extra"):
        ast.Input(size=32, colour="red")  # type: ignore[call-arg]


def test_grammar_is_lalr_without_conflicts_in_strict_mode() -> None:
    grammar = (Path(effdsl.__file__).parent / "grammar.lark").read_text()
    strict = lark.Lark(grammar, parser="lalr", strict=True, propagate_positions=True)
    assert strict.parse("network t {\n}\n")
    assert lark_parser().options.parser == "lalr"


def test_long_and_short_attribute_forms_are_equal() -> None:
    short = parse(read_cases_from_text("stage mbconv e6 k5 s2 c40 x2"))
    long = parse(
        read_cases_from_text("stage mbconv expand=6 kernel=5 stride=2 channels=40 repeats=2")
    )
    assert short == long


def test_stage_options_and_opt_outs_parse() -> None:
    text = read_cases_from_text(
        'stage fused_mbconv e4 k3 s2 c48 x4 se=none act=relu6 skip=no name="early" fix=depth'
    )
    stage = parse(text).stages[0]
    assert (stage.se, stage.act, stage.skip, stage.name, stage.fix) == (
        0.0,
        "relu6",
        False,
        "early",
        "depth",
    )
    assert stage.scales_width and not stage.scales_depth


def test_semantic_errors_are_one_family() -> None:
    errors = errors_of(read_cases_from_text("stage mbconv e6 k4 s3 c24 x2"))
    assert len(errors) == 2
    assert all(isinstance(e, EffSemanticError) for e in errors)


def test_load_reports_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(EffError, match="no such file"):
        effdsl.load(tmp_path / "missing.eff")
    binary = tmp_path / "bin.eff"
    binary.write_bytes(b"network t {\n\xff\xfe}\n")
    with pytest.raises(EffError, match="not valid UTF-8") as caught:
        effdsl.load(binary)
    assert caught.value.span is not None and caught.value.span.line == 2


@pytest.mark.parametrize(
    "text",
    [
        'network "evil\\u001b]0;title\\u0007" {\n}\n',  # the name, in "has no input" errors
        "network t {\n  input size=32\u0000\u001b[2J\n}\n",  # raw control bytes in the line
    ],
)
def test_rendered_errors_send_no_control_characters_to_a_terminal(text: str) -> None:
    with pytest.raises(EffError) as caught:
        parse(text, filename="t.eff")
    rendered = caught.value.render()
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", rendered), repr(rendered)


def test_numbers_are_ascii_digits_only() -> None:
    (error,) = errors_of("network t {\n  input size=\u0663\u0662\n}\n")
    assert "unexpected character" in error.message
