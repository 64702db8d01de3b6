"""`Network` → canonical `.eff` text: the formatter behind `effdsl fmt` and `compile -o x.eff`.

The canonical form puts statements in a fixed order (input, scaling, defaults; presets; stem,
stages, each followed by its `block` lines, head, classifier), aligns the stage table and the
presets in columns so that the spec reads like the paper's Table 1, writes shapes as
shorthands (`e6 k3 s2 c24 x2`) and every other attribute as `key=value`, and keeps comments
with the statement they belong to.

`format(parse(text))` is idempotent and `parse(format(network)) == network`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

from effdsl import ast
from effdsl.arguments import checked

INDENT = "  "
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*\Z")
_RESERVED = frozenset({"network"})


def format_number(value: float | int) -> str:
    """The shortest text that parses back to `value` (`6.0` → `6`, `1e-05` stays)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def quote(text: str) -> str:
    """A name as a bare word when it is one, else a double-quoted string with escapes."""
    if _WORD.match(text) and text not in _RESERVED:
        return text
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif char == "\r":
            out.append("\\r")
        elif char.isprintable() and not 0xD800 <= ord(char) <= 0xDFFF:
            out.append(char)
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'


def _value(name: str, value: object) -> str:
    if name in ("se", "layer_scale") and value == 0.0:
        return "none"
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, bool | int | float):
        return format_number(value)
    raise TypeError(f"cannot format {name}={value!r}")  # pragma: no cover


def _is_shown(node: ast.Node, name: str) -> bool:
    """Show a field the source wrote, or one that differs from its default."""
    info = type(node).model_fields[name]
    value = getattr(node, name)
    if value is None:
        return False
    return (
        name in node.model_fields_set
        or info.is_required()
        or value != info.get_default(call_default_factory=True)
    )


def _named(node: ast.Node, skip: Iterable[str] = ()) -> list[str]:
    skipped = set(skip) | ast.TRIVIA
    return [
        f"{name}={_value(name, getattr(node, name))}"
        for name in type(node).model_fields
        if name not in skipped and _is_shown(node, name)
    ]


# ---- statements as rows of cells -----------------------------------------------------------

_SHAPE = ("kind", "expand", "kernel", "stride", "channels", "repeats", "lines")


def _block_cells(block: ast.Block | ast.NoHead) -> list[str]:
    """keyword, kind, e, k, s, c, x, then the named attributes as one cell.

    A line that gives its expanded width (`mid=`) has no ratio to show; `head none` is two.
    """
    if isinstance(block, ast.NoHead):
        return [block.keyword, "none"]
    ratio = block.kind in ast.UNEXPANDED or (
        isinstance(block, ast.Line) and block.mid is not None
    )
    expand = "" if ratio else f"e{format_number(block.expand)}"
    repeats = f"x{block.repeats}" if isinstance(block, ast.Line) else ""
    named = " ".join(_named(block, skip=_SHAPE))
    return [
        block.keyword,
        block.kind,
        expand,
        f"k{ast.kernel_text(block.kernel)}",
        f"s{block.stride}",
        f"c{block.channels}",
        repeats,
        named,
    ]


def _preset_cells(preset: ast.Preset) -> list[str]:
    fields = ("width", "depth", "resolution", "dropout")
    return [
        "preset",
        quote(preset.name),
        *(f"{f}={_value(f, getattr(preset, f))}" if _is_shown(preset, f) else "" for f in fields),
    ]


def _plain_cells(node: ast.Node) -> list[str]:
    return [node.keyword, " ".join(_named(node))]


def statement(node: ast.Node) -> str:
    """One statement in canonical form, unaligned: `stage mbconv e6 k3 s2 c24 x2`."""
    if isinstance(node, ast.Block | ast.NoHead):
        cells = _block_cells(node)
    elif isinstance(node, ast.Preset):
        cells = _preset_cells(node)
    else:
        cells = _plain_cells(node)
    return " ".join(cell for cell in cells if cell)


def _align(rows: Sequence[list[str]]) -> list[str]:
    """Join each row's cells, padding every column to its widest cell; empty columns vanish."""
    columns = max(len(row) for row in rows)
    padded = [row + [""] * (columns - len(row)) for row in rows]
    widths = [max(len(row[i]) for row in padded) for i in range(columns)]
    lines = []
    for row in padded:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True) if width]
        lines.append(" ".join(cells).rstrip())
    return lines


def _emit(nodes: Sequence[ast.Node], rows: Sequence[list[str]], out: list[str]) -> None:
    for node, line in zip(nodes, _align(rows), strict=True):
        out.extend(INDENT + comment for comment in node.comments)
        trailing = f"  {node.trailing_comment}" if node.trailing_comment else ""
        out.append(INDENT + line + trailing)


@checked
def format(network: ast.Network) -> str:
    """The canonical text of `network`, ending with a newline."""
    out: list[str] = list(network.comments)
    trailing = f"  {network.trailing_comment}" if network.trailing_comment else ""
    out.append(f"network {quote(network.name)} {{{trailing}")

    header: list[ast.Node] = [network.input]
    for name in ("scaling", "defaults"):
        node = getattr(network, name)
        if name in network.model_fields_set and (_named(node) or node.comments):
            header.append(node)
    groups: list[tuple[Sequence[ast.Node], list[list[str]]]] = [
        (header, [_plain_cells(n) for n in header]),
    ]
    if network.presets:
        groups.append((network.presets, [_preset_cells(p) for p in network.presets]))
    body: list[ast.Block | ast.NoHead] = [
        network.stem,
        *(line for stage in network.stages for line in stage.all_lines()),
        network.head,
    ]
    groups.append(
        (
            [*body, network.classifier],
            [*(_block_cells(b) for b in body), _plain_cells(network.classifier)],
        )
    )
    for index, (nodes, rows) in enumerate(groups):
        if index:
            out.append("")
        if nodes is groups[-1][0]:
            # the classifier is not part of the block table: align the blocks alone
            _emit(nodes[:-1], rows[:-1], out)
            _emit(nodes[-1:], rows[-1:], out)
        else:
            _emit(nodes, rows, out)
    out.extend(INDENT + comment for comment in network.closing_comments)
    out.append("}")
    return "\n".join(out) + "\n"
