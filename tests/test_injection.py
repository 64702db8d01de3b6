"""Injection: names holding any text never escape into generated Python, DOT or JSON.

Network, stage and preset names may hold quotes, newlines, `\"\"\"`, backslashes, braces, markup,
NUL, control and bidirectional characters and Python keywords (a lone surrogate is refused when
the spec is read). For every such network:

- `to_python` gives a module that parses, defines exactly the names `top_level_names` lists,
  imports only torch and the standard library, and has the same syntax tree as the module of
  a plainly named network once string constants and the class name are blanked: the names
  only ever land inside string literals and comments;
- `to_dot` gives DOT whose tokens are those of a plainly named network's DOT (no quote or `>`
  ends a label early), whose HTML-like labels are well-formed XML, and which graphviz's `dot`
  lays out into a well-formed SVG;
- `to_json` round-trips through `json.dumps(allow_nan=False)` and `json.loads`.
"""

from __future__ import annotations

import ast as pyast
import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import effdsl
from effdsl import ast
from effdsl.codegen import class_name, to_python, top_level_names
from effdsl.export import scaled_spec
from effdsl.plan import Plan, lower
from effdsl.render import to_dot
from effdsl.scaling import multipliers
from effdsl.summary import summarize, to_json, to_text

from .conftest import fuzz_long

PROPERTY = settings(
    max_examples=1_000 if fuzz_long() else 40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

NASTY = [
    '"', '"""', "'''", "\\", '\\"', "\\n", "\n", "\r\n", "\r", "\t", "\x0b", "\x0c",
    '"; import os; os.system("echo owned")  #', "'); exec('x') #", '"""; import os; """',
    "{}", "{0}", "{{x}}", "%s", "${x}", "`id`", "<b>x</b>", "<>&", "&amp;", "&#0;", "&nbsp;",
    "]", "]]>", "<!--", "-->", '"]; evil [label="x', "\\N{BULLET}", "\\u0041", "\x00", "\x1b[31m",
    "\ufeff", "\u2028", "\u2029", "\u202e", "\x85", "\ufffe", "\uffff", "é",
    "e\u0301", "\U0001f642", "\U0010ffff", "class", "def", "None", "import", "__import__",
    "lambda", "if", "print", "nn", "torch", "Stage", "ACTIVATIONS", "1x", "-", ".", "_",
    "label", "digraph", "node", "subgraph", "edge", "graph", "strict", "x" * 200,
]  # fmt: skip

# any character a spec can hold: a lone surrogate is refused when the spec is read
characters = st.characters(codec="utf-8")
names = st.one_of(
    st.sampled_from(NASTY),
    st.lists(st.one_of(st.sampled_from(NASTY), characters), min_size=1, max_size=6).map("".join),
    st.text(characters, min_size=1, max_size=30),
).map(lambda name: name[:200])

BASE = effdsl.parse(
    """\
network base {
  input size=32
  defaults se=0.25 drop_path=0.1
  preset p width=1.25 depth=1.5 resolution=48 dropout=0.3
  stem  conv            k3 s2 c8
  stage fused_mbconv e1 k3 s1 c8  x1
  stage mbconv       e4 k3 s2 c16 x2
  stage conv            k3 s1 c16 x1
  head  conv            k1 c32
  classifier dropout=0.2 classes=10
}
"""
)


def named(network_name: str, stage_names: Sequence[str | None], preset_name: str) -> ast.Network:
    """BASE with these names, read back through its canonical text as a user would write it."""
    stages = tuple(
        stage.model_copy(update={"name": name})
        for stage, name in zip(BASE.stages, stage_names, strict=True)
    )
    preset = BASE.presets[0].model_copy(update={"name": preset_name})
    network = BASE.model_copy(update={"name": network_name, "stages": stages, "presets": (preset,)})
    again = effdsl.parse(effdsl.format(network))
    assert again == network
    return again


@st.composite
def named_networks(draw: st.DrawFn) -> ast.Network:
    stage_names = draw(st.lists(st.one_of(st.none(), names), min_size=3, max_size=3))
    seen: set[str] = set()
    unique = []
    for name in stage_names:
        unique.append(None if name is None or name in seen else name)
        seen.add(name or "")
    return named(draw(names), unique, draw(names))


PLAIN = named("plain", ["a", "b", "c"], "q")


def plans(network: ast.Network) -> tuple[Plan, Plan]:
    """The network unscaled, and scaled by its (oddly named) preset."""
    preset = network.presets[0].name
    factors = multipliers(network, preset=preset)
    return lower(network), lower(effdsl.scale(network, preset=preset), factors)


# ---- Python ----------------------------------------------------------------------------------

STANDARD_LIBRARY = set(sys.stdlib_module_names) | {"__future__"}


def defined_names(tree: pyast.Module) -> set[str]:
    """Every name a module's top-level statements bind."""
    bound: set[str] = set()
    for node in tree.body:
        if isinstance(node, pyast.FunctionDef | pyast.AsyncFunctionDef | pyast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, pyast.Import | pyast.ImportFrom):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, pyast.Assign | pyast.AnnAssign | pyast.AugAssign):
            targets = node.targets if isinstance(node, pyast.Assign) else [node.target]
            for target in targets:
                bound.update(n.id for n in pyast.walk(target) if isinstance(n, pyast.Name))
        elif isinstance(node, pyast.Expr) and isinstance(node.value, pyast.Constant):
            continue  # the docstring
        elif pyast.unparse(node) == "if __name__ == '__main__':\n    main()":
            continue  # run as a script; binds nothing
        else:
            raise AssertionError(f"unexpected top-level statement: {pyast.dump(node)[:200]}")
    return bound


def imported_modules(tree: pyast.Module) -> Iterator[str]:
    for node in pyast.walk(tree):
        if isinstance(node, pyast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, pyast.ImportFrom):
            assert node.level == 0 and node.module is not None
            yield node.module.split(".")[0]


class _Blank(pyast.NodeTransformer):
    """Blank every string constant and rename the model class, to compare module shapes."""

    def __init__(self, model: str) -> None:
        self.model = model

    def visit_Constant(self, node: pyast.Constant) -> pyast.Constant:
        return pyast.Constant("") if isinstance(node.value, str) else node

    def visit_Name(self, node: pyast.Name) -> pyast.Name:
        return pyast.Name("MODEL", node.ctx) if node.id == self.model else node

    def visit_ClassDef(self, node: pyast.ClassDef) -> pyast.ClassDef:
        self.generic_visit(node)
        if node.name == self.model:
            node.name = "MODEL"
        return node


def shape_of(source: str, plan: Plan) -> str:
    tree = _Blank(class_name(plan)).visit(pyast.parse(source))
    return pyast.dump(tree)


def check_python(plan: Plan, plain: Plan, spec_text: str) -> None:
    source = to_python(plan, source_name=f"{plan.name}.eff", spec_text=spec_text)
    source.encode("utf-8")  # it is written to a file
    tree = pyast.parse(source)
    expected = top_level_names(plan)
    assert defined_names(tree) == expected
    fixed = top_level_names(plain) - {class_name(plain)}
    assert expected - {class_name(plan)} == fixed
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", class_name(plan))
    assert set(imported_modules(tree)) <= STANDARD_LIBRARY | {"torch"}
    plain_source = to_python(plain, source_name="plain.eff", spec_text="network plain {}")
    assert shape_of(source, plan) == shape_of(plain_source, plain)


def test_a_lone_surrogate_in_a_name_is_a_located_error() -> None:
    text = effdsl.format(PLAIN).replace("name=a", 'name="x\\ud800"')
    with pytest.raises(effdsl.EffError) as caught:
        effdsl.parse(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "ud800" in t)
    assert caught.value.span is not None and caught.value.span.line == line


def test_the_generated_module_defines_what_it_says() -> None:
    network = named('x"""\n{}', ['";import os', None, "\\"], "é\n")
    _base, plan = plans(network)
    namespace: dict[str, Any] = {}
    exec(compile(to_python(plan), "<generated>", "exec"), namespace)  # only torch is imported
    assert set(namespace) - {"__builtins__", "__doc__"} == top_level_names(plan)
    model = namespace[class_name(plan)]()
    assert model.network == network.name  # the name survives as data, not code


# ---- DOT ---------------------------------------------------------------------------------

_DOT = re.compile(
    r"""(?P<space>\s+)
      | (?P<comment>//[^\n]*|/\*.*?\*/)
      | (?P<string>"(?:\\.|[^"\\])*")
      | (?P<html><)
      | (?P<edge>->|--)
      | (?P<punct>[{}\[\];,=:])
      | (?P<id>[A-Za-z_\x80-\U0010ffff][A-Za-z_0-9\x80-\U0010ffff]*|-?(?:\.\d+|\d+(?:\.\d*)?))
    """,
    re.X | re.S,
)


def dot_tokens(text: str) -> list[tuple[str, str]]:
    """(kind, text) tokens as graphviz's scanner reads them; HTML strings by `<>` nesting."""
    tokens = []
    at = 0
    while at < len(text):
        match = _DOT.match(text, at)
        assert match is not None, f"DOT cannot scan {text[at : at + 40]!r}"
        kind = match.lastgroup or ""
        if kind == "html":
            depth, end = 0, at
            while True:
                assert end < len(text), "an HTML string never closes"
                depth += {"<": 1, ">": -1}.get(text[end], 0)
                end += 1
                if depth == 0:
                    break
            tokens.append(("html", text[at:end]))
            at = end
            continue
        if kind not in ("space", "comment"):
            tokens.append((kind, match.group()))
        at = match.end()
    return tokens


def html_shape(label: str) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    """The elements of an HTML-like label (expat parses them as XML); line breaks left out."""
    root = ET.fromstring(f"<root>{label[1:-1]}</root>")
    return [(e.tag, tuple(sorted(e.attrib.items()))) for e in root.iter() if e.tag != "BR"]


def dot_shape(text: str) -> list[object]:
    shape: list[object] = []
    for kind, token in dot_tokens(text):
        if kind == "string":
            shape.append("STRING")
        elif kind == "html":
            shape.append(html_shape(token))
        else:
            shape.append(token)
    return shape


def check_dot(plan: Plan, base: Plan, plain: Plan, plain_base: Plan) -> list[str]:
    drawings = []
    for detail in ("stage", "block", "layer"):
        text = to_dot(plan, detail=detail)
        assert dot_shape(text) == dot_shape(to_dot(plain, detail=detail)), detail
        drawings.append(text)
    text = to_dot(plan, base=base)
    assert dot_shape(text) == dot_shape(to_dot(plain, base=plain_base))
    drawings.append(text)
    return drawings


# ---- JSON --------------------------------------------------------------------------------


def check_json(network: ast.Network) -> None:
    for factors in (multipliers(network), multipliers(network, preset=network.presets[0].name)):
        document = to_json(summarize(network, factors))
        again = json.loads(json.dumps(document, allow_nan=False))
        assert again == document
        assert again["name"] == network.name
        assert [s["name"] for s in again["stages"]] == [
            s.name or f"stage{i}" for i, s in enumerate(network.stages)
        ]
        if factors.preset is not None:
            assert again["preset"] == network.presets[0].name


# ---- the properties ------------------------------------------------------------------------


@PROPERTY
@given(named_networks())
def test_names_never_escape_into_python(network: ast.Network) -> None:
    plain_base, plain = plans(PLAIN)
    base, plan = plans(network)
    check_python(base, plain_base, effdsl.format(network))
    check_python(plan, plain, effdsl.format(network))


@PROPERTY
@given(named_networks())
def test_names_never_escape_into_dot(network: ast.Network) -> None:
    plain_base, plain = plans(PLAIN)
    base, plan = plans(network)
    check_dot(plan, base, plain, plain_base)


@PROPERTY
@given(named_networks())
def test_names_round_trip_through_json_and_the_scaled_spec(network: ast.Network) -> None:
    check_json(network)
    factors = multipliers(network, preset=network.presets[0].name)
    text = scaled_spec(effdsl.scale(network, preset=network.presets[0].name), factors, "x\n.eff")
    assert effdsl.parse(text).name == network.name


def test_the_text_summary_sends_no_control_characters_to_a_terminal() -> None:
    network = named("evil\x1b[2J", ["a", "b", "c"], "p\x1b]0;title\x07")
    text = to_text(summarize(network, multipliers(network, preset=network.presets[0].name)))
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", text), repr(text[:200])


def _nasty_networks() -> list[ast.Network]:
    """Every NASTY string in some network: as the network's, a stage's and the preset's name."""
    groups = [NASTY[i : i + 3] for i in range(0, len(NASTY), 3)]
    return [
        named(group[0], [*group[1:], None, None, None][:3], group[-1][:199] + "p")
        for group in groups
        if len(set(group)) == len(group)
    ]


@pytest.mark.parametrize("network", _nasty_networks(), ids=lambda n: ascii(n.name)[:30])
def test_every_nasty_name_in_every_output(network: ast.Network) -> None:
    plain_base, plain = plans(PLAIN)
    base, plan = plans(network)
    check_python(plan, plain, effdsl.format(network))
    check_dot(plan, base, plain, plain_base)
    check_json(network)


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot is not installed")
def test_graphviz_reads_every_nasty_drawing() -> None:
    plain_base, plain = plans(PLAIN)
    sources = []
    for network in _nasty_networks():
        base, plan = plans(network)
        sources += check_dot(plan, base, plain, plain_base)[::3]  # stage detail and compare
    # one `dot` run lays out every graph: they are concatenated, and it writes one SVG each
    result = subprocess.run(
        ["dot", "-Tsvg"],
        input="\n".join(sources).encode("utf-8"),
        capture_output=True,
        timeout=300,
        check=False,
    )
    errors = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 0, errors
    assert "syntax error" not in errors and "Error" not in errors, errors
    svgs = re.split(rb"(?=<\?xml )", result.stdout)[1:]
    assert len(svgs) == len(sources)
    for svg in svgs:
        ET.fromstring(svg)  # well-formed XML: no raw control characters, no broken markup
