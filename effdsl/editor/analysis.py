"""One document's text, analysed for an editor: problems, hover, completion, outline, hints.

`analyse(text)` parses once and answers every question the language server asks about that
text, as plain data with effdsl's own 1-based `Span`s (the server translates them into protocol
types). Everything comes from the library: errors from `effdsl.parse`, costs from the lowered
plan and the cost model, scaled totals from `effdsl.summary`, the canonical text from
`effdsl.fmt`, and the words of the language from `effdsl.editor.vocabulary`.

    >>> a = analyse(open("specs/b0.eff").read())
    >>> a.hover(23, 4)          # the line `stage mbconv e6 k3 s2 c24 x2`
    '**stage `stage1`** — MBConv6 k3 s2, 2 blocks ...'

No torch.
"""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from effdsl import ast
from effdsl.check import collapse_warnings
from effdsl.cost import Cost, CostReport, cost
from effdsl.editor import vocabulary
from effdsl.errors import EffError, EffErrors, EffWarning, Span
from effdsl.fmt import format as format_network
from effdsl.parser import lark_parser, parse
from effdsl.plan import BlockPlan, ConvOp, Plan, StagePlan, lower
from effdsl.scaling import apply, multipliers
from effdsl.summary import block_label, human, summarize
from effdsl.text import printable

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """An error or a warning at a span, with its hint."""

    message: str
    span: Span
    severity: Severity
    hint: str | None = None


@dataclass(frozen=True)
class Completion:
    """One completion: the word, what kind of word it is, a short detail and its documentation."""

    label: str
    kind: Literal["keyword", "kind", "attribute", "value"]
    detail: str
    documentation: str
    insert: str


@dataclass(frozen=True)
class Symbol:
    """An entry of the outline: a statement (or the network, with its statements as children)."""

    name: str
    detail: str
    kind: Literal["network", "statement", "preset", "block"]
    span: Span
    selection: Span
    children: tuple[Symbol, ...] = ()


@dataclass(frozen=True)
class InlayHint:
    """A label shown after the text at `line`, `column` (1-based, the column after the end)."""

    line: int
    column: int
    label: str


@dataclass(frozen=True)
class Hover:
    markdown: str
    span: Span


# ---- tokens of one line ------------------------------------------------------------------------


@dataclass(frozen=True)
class Token:
    """A lexical token of one line; `start` and `end` are 0-based code-point offsets."""

    kind: Literal["comment", "string", "number", "word", "equal", "brace", "other"]
    text: str
    start: int
    end: int


@functools.cache
def _token_pattern() -> re.Pattern[str]:
    """The grammar's own terminals, in the order that gives Lark's longest matches on a line."""
    parser = lark_parser()
    terminal = {n: parser.get_terminal(n).pattern.to_regexp() for n in ("COMMENT", "STRING")}
    word, number = (parser.get_terminal(n).pattern.to_regexp() for n in ("WORD", "NUMBER"))
    return re.compile(
        f"(?P<comment>{terminal['COMMENT']})|(?P<string>{terminal['STRING']})"
        f"|(?P<word>{word})|(?P<number>{number})|(?P<equal>=)|(?P<brace>[{{}}])"
        r"|(?P<space>[ \t\f\r]+)|(?P<other>.)"
    )


def tokens(line: str) -> list[Token]:
    """The tokens of one line of a spec (spaces dropped; an unclosed string is `other`)."""
    found = []
    for match in _token_pattern().finditer(line):
        kind = match.lastgroup
        if kind is None or kind == "space":
            continue
        found.append(Token(kind, match.group(), match.start(), match.end()))  # type: ignore[arg-type]
    return found


_SHORTHAND = re.compile(r"([a-z])[0-9]+(\.[0-9]+)?")


def _shorthand(keyword: str, word: str) -> str | None:
    """The attribute a shorthand such as `k3` stands for in statement `keyword`, if any."""
    match = _SHORTHAND.fullmatch(word)
    if match is None:
        return None
    for info in vocabulary.attribute_table(keyword).values():
        if info.shorthand == match.group(1):
            return info.name
    return None


# ---- the analysis ------------------------------------------------------------------------------


class Analysis:
    """What effdsl knows about one text. Costs are computed on first use and kept."""

    def __init__(self, text: str, filename: str = "<document>") -> None:
        self.text = text
        self.filename = filename
        self.network: ast.Network | None = None
        self.errors: tuple[EffError, ...] = ()
        self.lower_error: EffError | None = None  # why `plan` is None for a parsed network
        try:
            self.network = parse(text, filename)
        except EffErrors as found:
            self.errors = found.errors
        except EffError as error:
            self.errors = (error,)

    @cached_property
    def lines(self) -> list[str]:
        return [line.rstrip("\r") for line in self.text.split("\n")]

    def line(self, number: int) -> str:
        return self.lines[number - 1] if 1 <= number <= len(self.lines) else ""

    def _whole_line(self, number: int) -> Span:
        return Span(self.filename, number, 1, number, len(self.line(number)) + 1)

    # ---- costs ---------------------------------------------------------------------------

    @cached_property
    def plan(self) -> Plan | None:
        """The unscaled network lowered, or None when it has errors or is too large to lower."""
        if self.network is None:
            return None
        try:
            return lower(self.network)
        except EffError as error:
            self.lower_error = error
            return None

    @cached_property
    def costs(self) -> CostReport | None:
        return cost(self.plan) if self.plan is not None else None

    # ---- diagnostics ---------------------------------------------------------------------

    def problems(self) -> list[Problem]:
        """What `effdsl check` reports (`effdsl.check_text`), and warnings under each preset.

        As `check_text` does: the errors of the text; else a network that cannot be lowered is
        an error; else the collapsing-feature-map warning of `effdsl.check`. The text is
        parsed once, here, for every question the editor asks.
        """
        network = self.network
        checked: list[EffError] = list(self.errors)
        if network is not None:
            plan = self.plan
            if plan is None and self.lower_error is not None:
                checked.append(self.lower_error)
            elif plan is not None:
                checked += collapse_warnings(plan, network.input)
        fallback = network.span if network is not None and network.span else self._whole_line(1)
        found = [
            Problem(
                error.message,
                error.span or fallback,
                "warning" if isinstance(error, EffWarning) else "error",
                error.hint,
            )
            for error in checked
        ]
        found += self._preset_warnings()
        return sorted(found, key=lambda p: (p.span.line, p.span.column))

    def _preset_warnings(self) -> list[Problem]:
        """`effdsl check`'s collapsing-feature-map warning for the network under each preset."""
        network = self.network
        if network is None or self.plan is None:
            return []
        warnings = []
        for preset in network.presets:
            try:
                factors = multipliers(network, preset=preset.name)
                found = collapse_warnings(lower(apply(network, factors), factors))
            except EffError:
                continue  # `compile --preset` reports it; as text the preset is fine
            for warning in found:
                if preset.span is not None:
                    message = f"under preset `{printable(preset.name)}`: {warning.message}"
                    warnings.append(Problem(message, preset.span, "warning", warning.hint))
        return warnings

    # ---- formatting ----------------------------------------------------------------------

    def formatted(self) -> str | None:
        """The canonical text (`effdsl fmt`, comments kept), or None when the text has errors."""
        return format_network(self.network) if self.network is not None else None

    # ---- what is on a line ---------------------------------------------------------------

    def _statement_at(self, line: int) -> ast.Node | None:
        network = self.network
        if network is None:
            return None
        nodes: list[ast.Node] = [
            network.input,
            network.scaling,
            network.defaults,
            *network.presets,
            network.stem,
            *network.stages,
            network.head,
            network.classifier,
        ]
        for node in nodes:
            if node.span is not None and node.span.line <= line <= node.span.end_line:
                return node
        return None

    # ---- hover ---------------------------------------------------------------------------

    def hover(self, line: int, column: int) -> Hover | None:
        """Markdown for the word at (line, column), both 1-based; None where there is nothing.

        An attribute (`kernel=`, `k3`, `act=silu`) gets its documentation; anything else on a
        stem, stage or head line gets that line's lowered blocks and costs; a preset line gets
        the scaled network's totals; the `network` line the whole network's.
        """
        words = tokens(self.line(line))
        index = next((i for i, t in enumerate(words) if t.start <= column - 1 < t.end), None)
        if index is None and words and column - 1 == words[-1].end:
            index = len(words) - 1  # just after the last word
        if not words or (index is not None and words[index].kind == "comment"):
            return None
        if index is None and column - 1 > words[-1].end:
            return None  # past the statement
        keyword = words[0].text if words[0].kind == "word" else ""
        if index is not None:
            token = words[index]
            span = Span(self.filename, line, token.start + 1, line, token.end + 1)
            documented = self._attribute_hover(keyword, words, index)
            if documented is not None:
                return Hover(documented, span)
        whole = self._whole_line(line)
        if keyword == "network":
            text = self._network_hover()
            return Hover(text, whole) if text else None
        if keyword not in vocabulary.statements():
            return None
        node = self._statement_at(line)
        if self.network is None:
            doc = vocabulary.statement_doc(keyword)
            if vocabulary.is_block(keyword) or keyword == "preset":
                count = len(self.errors)
                doc += f"\n\n*Costs appear when the spec has no errors ({count} now).*"
            return Hover(doc, whole)
        if isinstance(node, ast.Stage | ast.Stem | ast.Head):
            text = self._block_hover(node)
        elif isinstance(node, ast.Preset):
            text = self._preset_hover(node)
        elif isinstance(node, ast.NoHead):
            text = " ".join((ast.NoHead.__doc__ or "").split())
        else:
            text = vocabulary.statement_doc(keyword)
        return Hover(text, node.span if node is not None and node.span else whole)

    def _attribute_hover(self, keyword: str, words: list[Token], index: int) -> str | None:
        if keyword not in vocabulary.statements() or index == 0:
            return None
        table = vocabulary.attribute_table(keyword)
        token = words[index]
        following = words[index + 1] if index + 1 < len(words) else None
        if token.kind == "word" and following is not None and following.kind == "equal":
            name: str | None = token.text
        elif index >= 2 and words[index - 1].kind == "equal":
            name = words[index - 2].text
        elif token.kind == "equal" and index >= 1:
            name = words[index - 1].text
        elif vocabulary.is_block(keyword) and index >= 2 and token.kind == "word":
            name = _shorthand(keyword, token.text)
        else:
            name = None
        if name is None or name not in table:
            return None
        text = vocabulary.attribute_markdown(keyword, name)
        value = vocabulary.value_doc(name, token.text)
        if value is not None and words[index - 1].kind == "equal":
            text += f"\n\n`{token.text}`: {value}"
        return text

    def _network_hover(self) -> str | None:
        network, plan, costs = self.network, self.plan, self.costs
        if network is None or plan is None or costs is None:
            return None
        size = plan.resolution
        return "\n".join(
            [
                f"**network `{printable(network.name)}`** — {len(plan.stages)} stages, "
                f"{plan.block_count} blocks, {size}×{size}×{plan.in_channels} input",
                "",
                f"**params** {costs.params:,} ({human(costs.params)}) · "
                f"**MACs** {costs.macs:,} ({human(costs.macs)})",
            ]
        )

    def _block_hover(self, node: ast.Stem | ast.Stage | ast.Head) -> str:
        plan, costs, network = self.plan, self.costs, self.network
        if plan is None or costs is None or network is None:
            return (
                vocabulary.statement_doc(node.keyword) + "\n\n*The network is too large to lower.*"
            )
        if isinstance(node, ast.Stage):
            index = next(i for i, s in enumerate(network.stages) if s is node)
            body = _stage_table(plan.stages[index])
            spent = costs.stages[index]
        else:
            op = plan.stem if isinstance(node, ast.Stem) else plan.head
            if op is None:  # a `Head` node always lowers to a head conv; `head none` has none
                return vocabulary.statement_doc(node.keyword)
            spent = costs.stem if isinstance(node, ast.Stem) else costs.head
            body = _conv_table(node.keyword, op)
        return "\n".join([*body, "", _share(spent, costs.total)])

    def _preset_hover(self, preset: ast.Preset) -> str:
        network = self.network
        assert network is not None
        try:
            summary = summarize(network, multipliers(network, preset=preset.name))
        except EffError as error:
            name, message = printable(preset.name), printable(error.message)
            return f"**preset `{name}`** cannot be applied: {message}"
        scaled, base, total = summary.scaled, summary.base, summary.scaled_cost
        dropout = scaled.classifier.dropout
        lines = [
            f"**preset `{printable(preset.name)}`** — width ×{preset.width:g}, "
            f"depth ×{preset.depth:g}, "
            f"{scaled.resolution} px, dropout {dropout:g}",
            "",
            f"**params** {total.params:,} ({human(total.params)}, "
            f"{_ratio(total.params, summary.base_cost.params)} the spec) · "
            f"**MACs** {total.macs:,} ({human(total.macs)}, {summary.macs_ratio:.2f}×)",
            "",
            "| stage | block | depth | width | output |",
            "|---|---|--:|--:|--:|",
        ]
        for before, after in zip(base.stages, scaled.stages, strict=True):
            lines.append(
                f"| {printable(after.name)} | {block_label(after)} "
                f"k{ast.kernel_text(after.kernel)} "
                f"| {_arrow(before.repeats, after.repeats)} "
                f"| {_arrow(before.out_channels, after.out_channels)} "
                f"| {after.out_size}×{after.out_size} |"
            )
        return "\n".join(lines)

    # ---- completion ----------------------------------------------------------------------

    def completions(self, line: int, column: int) -> list[Completion]:
        """What may be typed at (line, column): keywords, block kinds, attributes or values."""
        before = self.line(line)[: max(column - 1, 0)]
        words = tokens(before)
        if words and words[-1].kind in ("comment", "string", "other"):
            return []
        typing = bool(words) and words[-1].end == len(before)  # the cursor ends a token
        done = words[:-1] if typing and words[-1].kind in ("word", "number") else words
        if not done:
            return _keyword_completions(first_line=self._before_network(line))
        keyword = done[0].text
        if keyword not in vocabulary.statements():
            return []
        table = vocabulary.attribute_table(keyword)
        if done[-1].kind == "equal":
            name = done[-2].text if len(done) >= 2 else ""
            return _value_completions(name, table[name]) if name in table else []
        if vocabulary.is_block(keyword) and len(done) == 1:
            return _kind_completions()
        if keyword == "preset" and len(done) == 1:
            return []  # the preset's name is the user's
        given = {w.text for w, n in itertools.pairwise(done) if n.kind == "equal"}
        given |= {s for w in done[1:] if (s := _shorthand(keyword, w.text))}
        return [
            Completion(
                label=name,
                kind="attribute",
                detail=f"{keyword} {name}=…" + (f" ({info.shorthand}N)" if info.shorthand else ""),
                documentation=vocabulary.attribute_markdown(keyword, name),
                insert=f"{name}=",
            )
            for name, info in table.items()
            if name not in given
        ]

    def _before_network(self, line: int) -> bool:
        """Whether `line` comes before the `network` header (or there is none)."""
        return self._header_line is None or line <= self._header_line

    @cached_property
    def _header_line(self) -> int | None:
        """The line of the `network` keyword, found once (documents can be 256 KiB)."""
        match = re.search(r"^[ \t\f]*network(?![A-Za-z0-9_.])", self.text, re.M)
        return None if match is None else self.text.count("\n", 0, match.start()) + 1

    # ---- outline and hints ---------------------------------------------------------------

    def symbols(self) -> list[Symbol]:
        """The outline: the network, with its statements (presets and stages by name)."""
        network = self.network
        if network is None or network.span is None:
            return []
        children = [
            symbol
            for node in (
                network.input,
                network.scaling,
                network.defaults,
                *network.presets,
                network.stem,
                *network.stages,
                network.head,
                network.classifier,
            )
            if (symbol := self._symbol(node)) is not None
        ]
        last = len(self.lines)
        whole = Span(self.filename, network.span.line, 1, last, len(self.line(last)) + 1)
        return [
            Symbol(
                name=network.name,
                detail=f"network, {len(network.stages)} stages",
                kind="network",
                span=whole,
                selection=network.span,
                children=tuple(children),
            )
        ]

    def _symbol(self, node: ast.Node) -> Symbol | None:
        span = node.span
        if span is None:
            return None  # a statement the spec leaves out (scaling, defaults)
        keyword = Span(
            self.filename, span.line, span.column, span.line, span.column + len(node.keyword)
        )
        text = self.line(span.line)[span.column - 1 :] if span.line == span.end_line else ""
        detail = " ".join(text[len(node.keyword) :].split("#")[0].split())
        if isinstance(node, ast.Preset):
            detail = detail.split(" ", 1)[1] if " " in detail else ""  # the name is the title
            return Symbol(
                f"preset {node.name}", detail, "preset", span, node.span_of("name") or keyword
            )
        if isinstance(node, ast.Stage):
            index = self.network.stages.index(node) if self.network is not None else 0
            name = node.name or f"stage{index}"
            return Symbol(name, detail, "block", span, keyword)
        if isinstance(node, ast.Block):
            return Symbol(node.keyword, detail, "block", span, keyword)
        return Symbol(node.keyword, detail, "statement", span, keyword)

    def inlay_hints(self) -> list[InlayHint]:
        """The output shape at the end of each stem, stage and head line."""
        network, plan = self.network, self.plan
        if network is None or plan is None:
            return []
        shaped: list[tuple[ast.Node, int, int]] = [
            (network.stem, plan.stem.out_size, plan.stem.out_channels),
            *(
                (s, p.out_size, p.out_channels)
                for s, p in zip(network.stages, plan.stages, strict=True)
            ),
        ]
        if plan.head is not None:
            shaped.append((network.head, plan.head.out_size, plan.head.out_channels))
        return [
            InlayHint(node.span.end_line, node.span.end_column, f"→ {size}×{size}×{channels}")
            for node, size, channels in shaped
            if node.span is not None
        ]


@functools.lru_cache(maxsize=8)
def analyse(text: str, filename: str = "<document>") -> Analysis:
    """The analysis of `text`, kept for the last few texts (a server asks many questions)."""
    return Analysis(text, filename)


# ---- pieces of hover text ----------------------------------------------------------------------


def _arrow(before: int, after: int) -> str:
    return f"{before}" if before == after else f"{before} → {after}"


def _ratio(part: int, whole: int) -> str:
    return f"{part / whole:.2f}×" if whole else "n/a"


def _share(part: Cost, total: Cost) -> str:
    def percent(a: int, b: int) -> str:
        if not b:
            return "n/a"
        share = 100 * a / b
        return f"{share:.1f}%" if share >= 0.1 or share == 0 else f"{share:.2g}%"

    return (
        f"**params** {part.params:,} ({percent(part.params, total.params)} of {total.params:,}) · "
        f"**MACs** {part.macs:,} ({percent(part.macs, total.macs)} of {total.macs:,})"
    )


def _stage_table(stage: StagePlan) -> list[str]:
    """The stage's blocks, a row per run of blocks of the same shape."""
    count = len(stage.blocks)
    noun = "block" if count == 1 else "blocks"
    lines = [
        f"**stage `{printable(stage.name)}`** — {block_label(stage)} "
        f"k{ast.kernel_text(stage.kernel)} s{stage.stride}, "
        f"{count} {noun}, {stage.in_size}×{stage.in_size} → {stage.out_size}×{stage.out_size}",
        "",
        "| block | in → out | expanded | SE | stride | output |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for first, last, block in _runs(stage.blocks):
        label = str(first) if first == last else f"{first}–{last}"
        residual = " + skip" if block.residual else ""
        lines.append(
            f"| {label} | {block.in_channels} → {block.out_channels} | {block.mid_channels} "
            f"| {block.se_channels or '–'} | {block.stride} "
            f"| {block.out_size}×{block.out_size}×{block.out_channels}{residual} |"
        )
    return lines


def _runs(blocks: tuple[BlockPlan, ...]) -> list[tuple[int, int, BlockPlan]]:
    """Runs of consecutive blocks of the same shape, as (first index, last index, block).

    A stage's repeats after the first are alike, so a stage is one or two rows; a stage of
    several block lines gets a row per change.
    """

    def shape(block: BlockPlan) -> tuple[object, ...]:
        return (
            block.kind,
            block.kernel,
            block.in_channels,
            block.out_channels,
            block.mid_channels,
            block.se_channels,
            block.stride,
            block.out_size,
            block.residual,
        )

    runs: list[tuple[int, int, BlockPlan]] = []
    for index, block in enumerate(blocks):
        if runs and shape(runs[-1][2]) == shape(block):
            runs[-1] = (runs[-1][0], index, runs[-1][2])
        else:
            runs.append((index, index, block))
    return runs


def _conv_table(keyword: str, op: ConvOp) -> list[str]:
    return [
        f"**{keyword}** — conv k{op.kernel} s{op.stride}, "
        f"{op.in_size}×{op.in_size} → {op.out_size}×{op.out_size}",
        "",
        "| in → out | stride | output |",
        "|--:|--:|--:|",
        f"| {op.in_channels} → {op.out_channels} | {op.stride} "
        f"| {op.out_size}×{op.out_size}×{op.out_channels} |",
    ]


# ---- completion lists --------------------------------------------------------------------------


def _keyword_completions(*, first_line: bool) -> list[Completion]:
    if first_line:
        return [
            Completion("network", "keyword", "network NAME { ... }", "The whole spec.", "network ")
        ]
    return [
        Completion(
            keyword,
            "keyword",
            f"{keyword} statement",
            vocabulary.statement_doc(keyword),
            keyword + " ",
        )
        for keyword in vocabulary.statements()
    ]


def _kind_completions() -> list[Completion]:
    return [
        Completion(
            kind,
            "kind",
            "block kind",
            vocabulary.value_doc("kind", kind) or "A block kind.",
            kind + " ",
        )
        for kind in vocabulary.block_kinds()
    ]


def _value_completions(name: str, info: vocabulary.Attribute) -> list[Completion]:
    return [
        Completion(
            value,
            "value",
            f"{name}={value}",
            vocabulary.value_doc(name, value) or info.description,
            value,
        )
        for value in info.values
    ]


__all__ = [
    "Analysis",
    "Completion",
    "Hover",
    "InlayHint",
    "Problem",
    "Symbol",
    "Token",
    "analyse",
    "tokens",
]
