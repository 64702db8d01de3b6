"""Editor support in-process: the vocabulary read from the AST, the analysis behind the language
server (on the shipped specs and on the fuzzer's cases), and the Pygments lexer.

The server over stdio is tested in test_lsp.py; the VS Code grammar in test_vscode.py.
"""

from __future__ import annotations

import gc
import itertools
import os
import random
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import get_args

import pytest

from effdsl import ast, fuzz
from effdsl.check import check_text
from effdsl.editor import vocabulary
from effdsl.editor.analysis import Analysis
from effdsl.errors import EffError, EffWarning
from effdsl.fmt import format as format_network
from effdsl.parser import MAX_SPEC_CHARS, STATEMENTS, attributes, parse

from .conftest import ROOT, SPECS, fuzz_long

SHIPPED = sorted(SPECS.glob("*.eff"))
FUZZ_CASES = 4_000 if fuzz_long() else 300

# ---- the vocabulary comes from the parser's and the AST's tables -----------------------------


def test_statements_and_attributes_are_the_parsers() -> None:
    assert list(vocabulary.statements()) == list(STATEMENTS)
    for keyword, node_type in STATEMENTS.items():
        assert list(vocabulary.attribute_table(keyword)) == attributes(node_type)


def test_enumerated_values_are_the_asts() -> None:
    assert vocabulary.block_kinds() == ast.BLOCK_KINDS
    stage = vocabulary.attribute_table("stage")
    assert stage["act"].values == ast.ACTIVATIONS
    assert stage["padding"].values == ast.PADDINGS
    assert stage["fix"].values == ast.FIXES
    assert stage["skip"].values == ("yes", "no")
    assert stage["se"].values[0] == "none"
    # every Literal field of every statement offers its values
    for keyword, node_type in STATEMENTS.items():
        table = vocabulary.attribute_table(keyword)
        for name in attributes(node_type):
            annotation = node_type.model_fields[name].annotation
            literals = [a for a in _flatten(annotation) if getattr(a, "__origin__", None) is None]
            for arg in literals:
                if isinstance(arg, str):
                    assert arg in table[name].values, (keyword, name, arg)


def _flatten(annotation: object) -> list[object]:
    args = get_args(annotation)
    if not args:
        return [annotation]
    return [leaf for arg in args for leaf in _flatten(arg)]


@pytest.mark.parametrize("keyword", list(STATEMENTS))
def test_every_attribute_is_documented_with_its_bounds(keyword: str) -> None:
    for name, info in vocabulary.attribute_table(keyword).items():
        text = vocabulary.attribute_markdown(keyword, name)
        assert info.description and info.description in text
        field = STATEMENTS[keyword].model_fields[name]
        if field.is_required():
            assert "required" in text
    kernel = vocabulary.attribute_markdown("stage", "kernel")
    assert "Kernel size (k), odd." in kernel and "0 … 99" in kernel and "(`kN`)" in kernel
    drop = vocabulary.attribute_markdown("stage", "drop_path")
    assert "inherited from `defaults` (0)" in drop and "≥ 0, < 1" in drop


def test_attribute_docs_agree_with_the_language_reference() -> None:
    """Every attribute that completion offers has a row in docs/language.md's tables."""
    reference = (ROOT / "docs" / "language.md").read_text()
    row = r"^\|(?: `[a-z]N` \|)? `([a-z_][a-z0-9_]*)(?:=N)?` \|"  # `s2d`: digits too
    documented = set(re.findall(row, reference, re.M))
    offered = {name for k in STATEMENTS for name in vocabulary.attribute_table(k)}
    assert offered <= documented


# ---- the analysis on the shipped specs ---------------------------------------------------------


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_specs_have_no_problems_and_a_hover_on_every_block(path: Path) -> None:
    text = path.read_text()
    analysis = Analysis(text, path.name)
    assert analysis.problems() == []
    assert analysis.formatted() == format_network(parse(text))
    network = analysis.network
    assert network is not None and analysis.costs is not None
    for block in (network.stem, *network.stages, network.head):
        assert block.span is not None
        hover = analysis.hover(block.span.line, block.span.column)
        if isinstance(block, ast.NoHead):  # `head none`: what it means, and no costs
            assert hover is not None and hover.markdown.startswith("`head none`: no head conv")
            continue
        assert hover is not None and "**params** " in hover.markdown
    heads = 1 if isinstance(network.head, ast.Head) else 0
    assert len(analysis.inlay_hints()) == len(network.stages) + 1 + heads
    (outline,) = analysis.symbols()
    assert len(outline.children) >= len(network.stages) + 4


def test_hover_shares_add_up() -> None:
    text = (SPECS / "mobilenetv2.eff").read_text()
    analysis = Analysis(text)
    network, costs = analysis.network, analysis.costs
    assert network is not None and costs is not None
    total = 0
    for block in (network.stem, *network.stages, network.head):
        assert block.span is not None
        hover = analysis.hover(block.span.line, 3)
        assert hover is not None
        match = re.search(r"\*\*params\*\* ([0-9,]+) \(", hover.markdown)
        assert match is not None
        total += int(match.group(1).replace(",", ""))
    assert total == costs.params - costs.classifier.params


def test_hover_rows_group_blocks_of_the_same_shape() -> None:
    text = (SPECS / "b0.eff").read_text()
    line = text[: text.index("  stage mbconv e6 k3 s2 c80   x3")].count("\n") + 1
    hover = Analysis(text).hover(line, 3)
    assert hover is not None
    rows = [row for row in hover.markdown.splitlines() if row[2:3].isdigit()]
    assert [row.split(" | ")[0] for row in rows] == ["| 0", "| 1–2"]
    assert rows[0].startswith("| 0 | 40 → 80 | 240 | 10 | 2 | 14×14×80 |")
    assert rows[1].startswith("| 1–2 | 80 → 80 | 480 | 20 | 1 | 14×14×80 + skip |")


def test_a_spec_with_errors_still_answers() -> None:
    text = (SPECS / "b0.eff").read_text().replace("k5 s2 c40", "k4 s2 c40")
    analysis = Analysis(text)
    (problem,) = analysis.problems()
    assert problem.message == "kernel must be odd, got 4" and problem.severity == "error"
    line = problem.span.line
    hover = analysis.hover(line, 3)
    assert hover is not None and "no errors (1 now)" in hover.markdown
    assert analysis.hover(line, problem.span.column) is not None  # `k4`: the kernel's docs
    assert analysis.formatted() is None and analysis.symbols() == []
    assert [c.label for c in analysis.completions(line, 9)] == list(ast.BLOCK_KINDS)


def test_warnings_for_collapsing_feature_maps_under_a_preset() -> None:
    text = (
        (SPECS / "b0.eff")
        .read_text()
        .replace(
            "preset b1 width=1   depth=1.1 resolution=240",
            "preset b1 width=1   depth=1.1 resolution=24",
        )
    )
    problems = Analysis(text).problems()
    assert [(p.severity, p.span.line) for p in problems] == [("warning", 11)]
    assert problems[0].message.startswith("under preset `b1`: feature maps collapse: stage ")


def test_a_256_kib_document_is_analysed_within_checks_bound() -> None:
    """The same CPU bound as `check`'s regressions (tests/test_fuzz.py): one second."""
    body = (SPECS / "b0.eff").read_text()
    filler = ("  # " + "x" * 996 + "\n") * ((MAX_SPEC_CHARS - len(body)) // 1001)
    text = body.replace("  stem ", filler + "  stem ", 1)
    start = time.process_time()
    analysis = Analysis(text)
    assert analysis.problems() == []
    line = text[: text.index("stage mbconv e6 k3 s2")].count("\n") + 1
    assert analysis.hover(line, 3) is not None
    analysis.symbols()
    analysis.inlay_hints()
    analysis.completions(line, 9)
    assert analysis.formatted() is not None
    assert time.process_time() - start < 1.0


# ---- fuzzing the analysis with the project's fuzzer ----------------------------------------


def _editor_text(data: fuzz.Case) -> str:
    """What an editor would hold: bytes decoded as VS Code does, with replacement characters."""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def exercise(text: str, rng: random.Random) -> None:
    """Every question the server asks, at random places; only an exception fails."""
    analysis = Analysis(text, "<fuzz>")
    for problem in analysis.problems():
        assert problem.span.line >= 1 and problem.span.column >= 1
    analysis.symbols()
    analysis.inlay_hints()
    analysis.formatted()
    lines = max(len(analysis.lines), 1)
    for _ in range(6):
        line = rng.randint(1, lines)
        column = rng.randint(1, len(analysis.line(line)) + 2)
        analysis.hover(line, column)
        analysis.completions(line, column)


def test_problems_are_what_check_reports() -> None:
    """The server's diagnostics are `effdsl.check_text`'s, plus warnings under presets."""
    for _source, data in fuzz.generate(150, seed=11):
        text = _editor_text(data)
        analysis = Analysis(text, "<fuzz>")
        own = [
            (p.message, p.span, p.severity)
            for p in analysis.problems()
            if not p.message.startswith("under preset")
        ]
        checked = check_text(text, "<fuzz>")
        fallback = analysis._whole_line(1)
        if analysis.network is not None and analysis.network.span is not None:
            fallback = analysis.network.span
        assert own == [
            (e.message, e.span or fallback, "warning" if isinstance(e, EffWarning) else "error")
            for e in checked
        ]


def test_the_fuzzers_cases_never_break_the_analysis() -> None:
    """Each case within the fuzzer's CPU bound per case (its garbage collector paused, as
    `fuzz.run_case` does: a collection walks the whole test session's heap)."""
    rng = random.Random(7)
    slowest = (0.0, "")
    for source, data in fuzz.generate(FUZZ_CASES, seed=20261130):
        gc.disable()
        start = time.process_time()
        try:
            exercise(_editor_text(data), rng)
        except EffError as error:  # pragma: no cover - the analysis catches the library's errors
            pytest.fail(f"{source}: EffError escaped the analysis: {error}")
        finally:
            seconds = time.process_time() - start
            gc.enable()
        slowest = max(slowest, (seconds, f"{source}, {len(data):,} long"))
    assert slowest[0] < fuzz.SLOW_SECONDS, slowest


# ---- no torch ------------------------------------------------------------------------------


def test_the_server_and_the_lexer_never_import_torch() -> None:
    pytest.importorskip("pygls")
    pytest.importorskip("pygments")
    code = (
        "import sys\n"
        "import effdsl.editor.server, effdsl.editor.lexer\n"
        "from effdsl.editor.analysis import Analysis\n"
        "a = Analysis(open('specs/b0.eff').read())\n"
        "a.problems(); a.symbols(); a.inlay_hints(); a.formatted()\n"
        "[a.hover(n, 3) for n in range(1, 32)]; a.completions(23, 9)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env=_env())


def test_lsp_without_pygls_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['pygls'] = sys.modules['lsprotocol'] = None\n"
        "from effdsl.cli import main; sys.exit(main(['lsp']))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True
    )
    assert run.returncode == 1
    assert "error: the language server needs pygls" in run.stderr
    assert "hint: pip install 'effdsl[lsp]'" in run.stderr
    assert "Traceback" not in run.stderr


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


# ---- the Pygments lexer ----------------------------------------------------------------------


def _lex(text: str) -> list[tuple[str, str]]:
    pygments = pytest.importorskip("pygments")
    del pygments
    from effdsl.editor.lexer import EffLexer

    return [(str(kind), value) for kind, value in EffLexer().get_tokens(text)]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_lexer_classes_on_the_shipped_specs(path: Path) -> None:
    text = path.read_text()
    found = _lex(text)
    assert "".join(value for _, value in found) == text  # nothing lost, nothing added
    kinds = {value: kind for kind, value in found}
    network = parse(text)
    assert kinds["network"] == "Token.Keyword.Declaration"
    assert kinds[network.name] == "Token.Name.Class"
    for keyword in ("input", "stem", "stage", "head", "classifier"):
        assert kinds[keyword] == "Token.Keyword"
    for block in (network.stem, *network.stages, network.head):
        if isinstance(block, ast.Block):  # not `head none`
            assert kinds[block.kind] == "Token.Name.Builtin"
    for preset in network.presets:
        assert kinds[preset.name] == "Token.Name.Constant"
    assert kinds["="] == "Token.Operator"
    for kind, value in found:
        assert kind not in ("Token.Error", "Token.Name"), (kind, value)
        if value.startswith("#"):
            assert kind == "Token.Comment.Single"
    pairs = list(itertools.pairwise(found))
    shorthands = [
        (a[1], b[1])
        for a, b in pairs
        if a[0] == "Token.Name.Attribute" and b[0] == "Token.Literal.Number"
    ]
    assert ("k", "3") in shorthands and ("c", str(network.stem.channels)) in shorthands


def test_lexer_strings_values_and_errors() -> None:
    text = 'network "b 0" {\n  stage mbconv e1.5 k3 c8 act=silu name="a b" skip=no # x\n}\n'
    found = [(k, v) for k, v in _lex(text) if k != "Token.Text.Whitespace"]
    assert found == [
        ("Token.Keyword.Declaration", "network"),
        ("Token.Literal.String.Double", '"b 0"'),
        ("Token.Punctuation", "{"),
        ("Token.Keyword", "stage"),
        ("Token.Name.Builtin", "mbconv"),
        ("Token.Name.Attribute", "e"),
        ("Token.Literal.Number", "1.5"),
        ("Token.Name.Attribute", "k"),
        ("Token.Literal.Number", "3"),
        ("Token.Name.Attribute", "c"),
        ("Token.Literal.Number", "8"),
        ("Token.Name.Attribute", "act"),
        ("Token.Operator", "="),
        ("Token.Name.Constant", "silu"),
        ("Token.Name.Attribute", "name"),
        ("Token.Operator", "="),
        ("Token.Literal.String.Double", '"a b"'),
        ("Token.Name.Attribute", "skip"),
        ("Token.Operator", "="),
        ("Token.Name.Constant", "no"),
        ("Token.Comment.Single", "# x"),
        ("Token.Punctuation", "}"),
    ]


def test_docs_examples_are_highlighted_as_eff() -> None:
    """Every ```eff block of docs/ and README lexes into known token classes only."""
    blocks = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        blocks += re.findall(r"^```eff\n(.*?)^```", path.read_text(), re.S | re.M)
    assert len(blocks) >= 3
    for block in blocks:
        assert all(kind not in ("Token.Error",) for kind, _ in _lex(block))


def test_docs_show_the_hover_the_server_sends() -> None:
    text = (SPECS / "b0.eff").read_text()
    analysis = Analysis(text)
    doc = (ROOT / "docs" / "editors.md").read_text()
    for start in ("  stage mbconv e6 k3 s2 c24", "  preset b3"):
        line = text[: text.index(start)].count("\n") + 1
        hover = analysis.hover(line, 3)
        assert hover is not None
        assert f"```\n{hover.markdown}\n```" in doc


def test_pygments_finds_the_lexer_through_the_entry_point() -> None:
    """After `pip install -e .` (as CI does), Pygments knows `eff` and `*.eff`."""
    pytest.importorskip("pygments")
    from pygments.lexers import get_lexer_by_name, get_lexer_for_filename

    points = [p for p in metadata.entry_points(group="pygments.lexers") if p.name == "eff"]
    if not points:
        message = "effdsl is installed without its pygments entry point (pip install -e .)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    assert points[0].value == "effdsl.editor.lexer:EffLexer"
    assert type(get_lexer_by_name("eff")).__name__ == "EffLexer"
    assert type(get_lexer_for_filename("b0.eff")).__name__ == "EffLexer"
