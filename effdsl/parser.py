"""Text → `Network`: the Lark parser, and the reading of each statement into a typed AST node.

The grammar (`grammar.lark`) fixes only the shape `keyword word... key=value...`; this module
knows the statements. For each keyword it reads positional words (the block kind, the shorthands
`e6 k3 s2 c24 x2`, a preset's name) and named attributes, converts their values to the types the
AST declares, and builds the node. Every problem becomes an `EffError` at the offending token,
and all of a file's problems are reported together.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import re
import threading
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import lark

from effdsl import ast
from effdsl.arguments import checked
from effdsl.errors import EffError, EffErrors, EffSemanticError, EffSyntaxError, Span
from effdsl.files import read_input, read_stdin

# ---- the Lark parser, built once ----------------------------------------------------------

_comments = threading.local()


def _collect_comment(token: lark.Token) -> lark.Token:
    _comments.tokens.append(token)
    return token


@functools.cache
def lark_parser() -> lark.Lark:
    """The LALR parser of `grammar.lark`, with positions; comments are collected on the side.

    `cache=True` keeps Lark's grammar analysis in a file in the temp directory (keyed by the
    grammar's hash), which makes every later start of `effdsl` several times faster.
    """
    grammar = resources.files("effdsl").joinpath("grammar.lark").read_text(encoding="utf-8")
    return lark.Lark(
        grammar,
        parser="lalr",
        propagate_positions=True,
        maybe_placeholders=False,
        lexer_callbacks={"COMMENT": _collect_comment},
        cache=True,
    )


# ---- plain words for Lark's terminal names ------------------------------------------------

TERMINAL_WORDS = {
    "WORD": "a word",
    "NUMBER": "a number",
    "STRING": "a quoted string",
    "LBRACE": "`{`",
    "RBRACE": "`}`",
    "EQUAL": "`=`",
    "_NL": "a line break",
    "NETWORK": "`network`",
    "$END": "the end of the file",
}


def _plain(expected: Iterable[str]) -> str:
    words = sorted({TERMINAL_WORDS.get(name, name.lower()) for name in expected})
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " or " + words[-1]


# ---- statements as read from the tree ------------------------------------------------------


@dataclass(frozen=True)
class Word:
    """A positional word or value: its text, token type and span."""

    text: str
    type: str
    span: Span


@dataclass(frozen=True)
class Attribute:
    """A `key=value` attribute."""

    key: Word
    value: Word


@dataclass
class RawStatement:
    keyword: Word
    positional: list[Word] = field(default_factory=list)
    named: list[Attribute] = field(default_factory=list)
    span: Span | None = None


def _span(filename: str, token: lark.Token) -> Span:
    return Span(
        filename,
        token.line or 1,
        token.column or 1,
        token.end_line or token.line or 1,
        token.end_column or (token.column or 1) + len(token),
    )


def _word(filename: str, token: lark.Token) -> Word:
    return Word(str(token), token.type, _span(filename, token))


def _read_tree(tree: lark.Tree[lark.Token], filename: str) -> tuple[Word, list[RawStatement], Span]:
    """The network's name, its statements in order, and the span of its header."""
    network = tree.children[0]
    assert isinstance(network, lark.Tree)
    keyword, name_tree, *_rest = network.children
    assert isinstance(keyword, lark.Token) and isinstance(name_tree, lark.Tree)
    name_token = name_tree.children[0]
    assert isinstance(name_token, lark.Token)
    statements = []
    for body in network.find_data("body"):
        for node in body.children:
            if isinstance(node, lark.Tree) and node.data == "statement":
                statements.append(_read_statement(node, filename))
    header = _span(filename, keyword)
    return _word(filename, name_token), statements, header


def _read_statement(node: lark.Tree[lark.Token], filename: str) -> RawStatement:
    head, *arguments = node.children
    assert isinstance(head, lark.Token)
    raw = RawStatement(_word(filename, head))
    last = head
    for argument in arguments:
        if isinstance(argument, lark.Token):  # a lone value (inlined by `?argument`)
            raw.positional.append(_word(filename, argument))
            last = argument
        elif argument.data == "named":
            key, _equal, value = argument.children
            assert isinstance(key, lark.Token) and isinstance(value, lark.Token)
            raw.named.append(Attribute(_word(filename, key), _word(filename, value)))
            last = value
        else:  # `positional` with one token child
            token = argument.children[0]
            assert isinstance(token, lark.Token)
            raw.positional.append(_word(filename, token))
            last = token
    start, end = raw.keyword.span, _span(filename, last)
    raw.span = Span(filename, start.line, start.column, end.end_line, end.end_column)
    return raw


# ---- converting words to typed values ------------------------------------------------------


class _Bad(Exception):
    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


TRUE_WORDS = ("yes", "true", "on")
FALSE_WORDS = ("no", "false", "off")
_NUMBER_DIGITS_LIMIT = 40


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """`did you mean `x`?` for the closest candidate, if one is close enough."""
    matches = difflib.get_close_matches(word.lower(), list(candidates), n=1, cutoff=0.6)
    return f"did you mean `{matches[0]}`?" if matches else None


def _one_of(values: Iterable[object]) -> str:
    return ", ".join(f"`{v}`" for v in values)


def unescape(text: str) -> str:
    """The value of a STRING token: quotes removed, backslash escapes decoded."""
    body = text[1:-1]
    try:
        value = body.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as error:
        raise _Bad(f"invalid escape in string: {error.reason}") from None
    # `\ud83d\ude00` (a UTF-16 surrogate pair, as JSON writes it) is one character; a lone
    # surrogate stays one and is refused as not a valid string
    return _SURROGATE_PAIR.sub(lambda m: _join_pair(m.group()), value)


_SURROGATE_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")


def _join_pair(pair: str) -> str:
    high, low = ord(pair[0]) - 0xD800, ord(pair[1]) - 0xDC00
    return chr(0x10000 + (high << 10) + low)


def _number(word: Word) -> float:
    if word.type != "NUMBER":
        raise _Bad(f"expected a number, got `{word.text}`")
    if len(word.text) > _NUMBER_DIGITS_LIMIT:
        raise _Bad(f"number `{word.text[:20]}...` is too long")
    value = float(word.text)
    if not math.isfinite(value):
        raise _Bad(f"number `{word.text}` is out of range")
    return value


def _integer(word: Word) -> int:
    value = _number(word)
    if not re.fullmatch(r"[+-]?[0-9]+", word.text):
        raise _Bad(f"expected a whole number, got `{word.text}`")
    return int(value)


def _kernel(word: Word) -> ast.Kernel:
    """A kernel size (`3`), or a list of them, one per channel slice (`3.5.7`)."""
    parts = word.text.split(".")
    if word.type != "NUMBER" or not all(re.fullmatch(r"[+-]?[0-9]{1,9}", part) for part in parts):
        raise _Bad(
            f"expected a kernel size or a list like 3.5.7, got `{word.text}`",
            "kernels are whole numbers; a mixconv lists one per channel slice: k3.5.7",
        )
    sizes = tuple(int(part) for part in parts)
    return sizes[0] if len(sizes) == 1 else sizes


def _unwrap_optional(annotation: Any) -> Any:
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    if origin is typing.Annotated:
        return get_args(annotation)[0]
    return annotation


def convert(field_name: str, annotation: Any, word: Word, shown: str | None = None) -> Any:
    """Turn one word into the value the AST field `annotation` expects, or raise `_Bad`.

    `shown` is how the field is called in messages (`block kind` for `kind`).
    """
    kind = _unwrap_optional(annotation)
    if get_origin(kind) is typing.Annotated:
        kind = get_args(kind)[0]
    if field_name == "se":
        if word.text == "none":
            return 0.0
        value = _number(word)
        if value == 0:
            raise _Bad("se must be > 0", "write `se=none` to turn squeeze-and-excitation off")
        return value
    if field_name == "layer_scale" and word.text == "none":
        return 0.0
    if field_name == "kernel":
        return _kernel(word)
    if get_origin(kind) is Literal:
        choices = get_args(kind)
        alias = ast.ALIASES.get(word.text)
        if alias in choices and word.type == "WORD":
            return alias
        if word.text not in choices:
            hint = did_you_mean(word.text, choices) or f"one of {_one_of(choices)}"
            raise _Bad(f"unknown {shown or field_name} `{word.text}`", hint)
        return word.text
    if kind is bool:
        if word.text.lower() in TRUE_WORDS:
            return True
        if word.text.lower() in FALSE_WORDS:
            return False
        raise _Bad(f"expected yes or no, got `{word.text}`")
    if kind is int:
        return _integer(word)
    if kind is float:
        return _number(word)
    if kind is str:
        if word.type == "STRING":
            return unescape(word.text)
        if word.type == "WORD":
            return word.text
        raise _Bad(f"expected a name, got `{word.text}`", "quote names that are not words")
    raise AssertionError(f"no conversion for {field_name}: {annotation}")  # pragma: no cover


# ---- the statements ------------------------------------------------------------------------

#: Shorthand letters of block shapes: `e6 k3 s2 c24 x2`.
SHORTHANDS = {"e": "expand", "k": "kernel", "s": "stride", "c": "channels", "x": "repeats"}
# A kernel list (`k3.5.7`) has several dotted parts; other shorthands at most one.
_SHORTHAND = re.compile(r"([a-z])([+-]?[0-9]+(?:\.[0-9]+)*)$")

STATEMENTS: dict[str, type[ast.Node]] = {
    "input": ast.Input,
    "scaling": ast.Scaling,
    "defaults": ast.Defaults,
    "preset": ast.Preset,
    "stem": ast.Stem,
    "stage": ast.Stage,
    "block": ast.BlockLine,
    "head": ast.Head,
    "classifier": ast.Classifier,
}
#: What `head none` followed by anything gets.
_NO_HEAD_HINT = "`head none` stands alone; a head conv is written `head conv k1 c1280 ...`"
SINGLETONS = ("input", "scaling", "defaults", "stem", "head", "classifier")
REQUIRED = ("input", "stem", "head", "classifier")


def attributes(node_type: type[ast.Node]) -> list[str]:
    """The attributes a statement accepts as `key=value`, in the AST's field order."""
    names = [n for n in node_type.model_fields if n not in ast.TRIVIA]
    if node_type is ast.Stage:
        names.remove("lines")  # its `block` statements
    if issubclass(node_type, ast.Block):
        names.remove("kind")
        shape = [n for n in SHORTHANDS.values() if n in names]
        names = shape + [n for n in names if n not in shape]
    if node_type is ast.Preset:
        names.remove("name")
    return names


def _signed_shorthands(words: list[Word]) -> list[Word]:
    """`c-80` lexes as the word `c` and the number `-80`; join such pairs back into one word.

    The joined word keeps the sign so that the AST's bound gives the real message ("channels
    must be ≥ 1, got -80") rather than two "unexpected" errors.
    """
    joined: list[Word] = []
    for word in words:
        previous = joined[-1] if joined else None
        if (
            previous is not None
            and word.type == "NUMBER"
            and word.text[0] in "+-"
            and previous.type == "WORD"
            and previous.text in SHORTHANDS
            and previous.span.end_line == word.span.line
            and previous.span.end_column == word.span.column
        ):
            span = Span(
                word.span.file,
                previous.span.line,
                previous.span.column,
                word.span.end_line,
                word.span.end_column,
            )
            joined[-1] = Word(previous.text + word.text, "SIGNED", span)
        else:
            joined.append(word)
    return joined


class _Reader:
    """Reads the raw statements of one file into nodes, collecting every error."""

    def __init__(self) -> None:
        self.errors: list[EffError] = []
        self.failed: set[str] = set()  # fields of the current statement with a bad value

    def error(self, message: str, span: Span | None, hint: str | None = None) -> None:
        self.errors.append(EffSemanticError(message, span, hint=hint))

    def statement(self, raw: RawStatement) -> ast.Node | None:
        keyword = raw.keyword.text
        node_type = STATEMENTS.get(keyword)
        if node_type is None:
            hint = did_you_mean(keyword, STATEMENTS) or f"statements are {_one_of(STATEMENTS)}"
            self.error(f"unknown statement `{keyword}`", raw.keyword.span, hint)
            return None
        if node_type is ast.Head and raw.positional and raw.positional[0].text == "none":
            # `head none`: no head conv at all (MobileNetV1)
            node_type = ast.NoHead
            raw = replace(raw, positional=raw.positional[1:])
        values: dict[str, Any] = {}
        spans: dict[str, Span] = {}
        self.failed = set()
        reported = len(self.errors)
        self._positional(raw, node_type, values, spans)
        self._named(raw, node_type, values, spans)
        return self._build(raw, node_type, values, spans, reported)

    def _set(
        self,
        node_type: type[ast.Node],
        name: str,
        word: Word,
        values: dict[str, Any],
        spans: dict[str, Span],
        shown: str,
        where: Span | None = None,
    ) -> None:
        """Convert `word` into field `name`; `where` is the span a duplicate is reported at."""
        if name in values or name in self.failed:
            self.error(f"`{shown}` given twice", where or word.span, "remove one of them")
            return
        annotation = node_type.model_fields[name].annotation
        try:
            values[name] = convert(name, annotation, word, shown)
        except _Bad as bad:
            self.failed.add(name)
            self.error(bad.message, word.span, bad.hint)
            return
        spans[name] = word.span

    def _positional(
        self,
        raw: RawStatement,
        node_type: type[ast.Node],
        values: dict[str, Any],
        spans: dict[str, Span],
    ) -> None:
        words = list(raw.positional)
        keyword = raw.keyword.text
        if issubclass(node_type, ast.Block):
            if not words:
                self.error(
                    f"`{keyword}` needs a block kind",
                    raw.keyword.span,
                    f"one of {_one_of(ast.BLOCK_KINDS)}, e.g. `{keyword} mbconv e6 k3 s2 c24`"
                    + (", or `head none`" if node_type is ast.Head else ""),
                )
                return
            self._set(node_type, "kind", words.pop(0), values, spans, "block kind")
            for word in _signed_shorthands(words):
                self._shorthand(node_type, word, values, spans)
            return
        if node_type is ast.Preset:
            if not words:
                self.error("`preset` needs a name", raw.keyword.span, "e.g. `preset b3 width=1.2`")
                return
            self._set(node_type, "name", words.pop(0), values, spans, "name")
        for word in words:
            self.error(
                f"unexpected `{word.text}` in `{keyword}`",
                word.span,
                _NO_HEAD_HINT
                if node_type is ast.NoHead
                else f"`{keyword}` takes attributes: "
                + " ".join(f"{a}=..." for a in attributes(node_type)),
            )

    def _shorthand(
        self,
        node_type: type[ast.Node],
        word: Word,
        values: dict[str, Any],
        spans: dict[str, Span],
    ) -> None:
        allowed = {
            letter: name for letter, name in SHORTHANDS.items() if name in node_type.model_fields
        }
        match = _SHORTHAND.match(word.text) if word.type in ("WORD", "SIGNED") else None
        if match is None or match.group(1) not in allowed:
            shown = " ".join(f"{letter}N" for letter in allowed)
            hint = f"shapes are written {shown} (e.g. e6 k3 s2 c24 x2)"
            if word.type == "WORD" and word.text in attributes(node_type):
                hint = f"write `{word.text}=VALUE`"
            elif match and match.group(1) in ("r", "n") and "repeats" in allowed.values():
                hint = f"repeats are written x{match.group(2)}"
            elif word.type == "WORD" and (close := did_you_mean(word.text, ast.BLOCK_KINDS)):
                hint = close
            self.error(f"unexpected `{word.text}` in `{node_type.keyword}`", word.span, hint)
            return
        letter, number = match.groups()
        if number.count(".") > 1 and letter != "k":
            self.error(
                f"unexpected `{word.text}` in `{node_type.keyword}`",
                word.span,
                "only a kernel (k) takes a dotted list, as in k3.5.7",
            )
            return
        value = Word(number, "NUMBER", word.span)
        self._set(node_type, allowed[letter], value, values, spans, letter)

    def _named(
        self,
        raw: RawStatement,
        node_type: type[ast.Node],
        values: dict[str, Any],
        spans: dict[str, Span],
    ) -> None:
        allowed = attributes(node_type)
        for attribute in raw.named:
            key = attribute.key.text
            if key not in allowed:
                hint = did_you_mean(key, allowed) or f"`{node_type.keyword}` takes " + _one_of(
                    allowed
                )
                if node_type is ast.NoHead:
                    hint = _NO_HEAD_HINT
                self.error(
                    f"unknown attribute `{key}` in `{node_type.keyword}`", attribute.key.span, hint
                )
                continue
            self._set(node_type, key, attribute.value, values, spans, key, attribute.key.span)

    def _build(
        self,
        raw: RawStatement,
        node_type: type[ast.Node],
        values: dict[str, Any],
        spans: dict[str, Span],
        reported: int,
    ) -> ast.Node | None:
        """Build the node; report missing fields and the AST's own validation errors.

        `reported` is the error count before this statement: when the statement already had
        errors, "missing" is not reported again, but the values that did convert are still
        validated so that one run shows every problem.
        """
        had_errors = len(self.errors) > reported
        missing = [
            name
            for name, info in node_type.model_fields.items()
            if info.is_required() and name not in values and name not in self.failed
        ]
        if missing and not had_errors:
            letters = {v: k for k, v in SHORTHANDS.items()}
            shown = ", ".join(f"{n} ({letters[n]}N)" if n in letters else n for n in missing)
            self.error(f"`{raw.keyword.text}` is missing {shown}", raw.span)
        try:
            node = node_type(**values, span=raw.span, attr_spans=tuple(spans.items()))
        except ast.InvalidNode as error:
            for detail in error.errors():
                if detail["type"] == "missing":
                    continue
                where = str(detail["loc"][0]) if detail["loc"] else ""
                self.error(_pydantic_message(where, detail), spans.get(where, raw.span))
            return None
        return None if len(self.errors) > reported else node


def _pydantic_message(field_name: str, detail: Any) -> str:
    """Our wording for a pydantic validation error on one field."""
    ctx = detail.get("ctx", {})
    words = {
        "greater_than_equal": ("≥", "ge"),
        "greater_than": (">", "gt"),
        "less_than_equal": ("≤", "le"),
        "less_than": ("<", "lt"),
    }
    kind = detail["type"]
    if field_name == "stride" and kind in words:
        return f"stride must be 1 or 2, got {detail['input']}"
    if kind in words:
        symbol, key = words[kind]
        return f"{field_name} must be {symbol} {ctx[key]}, got {detail['input']}"
    message = str(detail["msg"]).removeprefix("Value error, ")
    if kind in ("string_too_long", "string_too_short"):
        return f"{field_name}: {message.lower()}"
    return message


# ---- assembling the network ----------------------------------------------------------------

FIELD_OF_KEYWORD = {
    "input": "input",
    "scaling": "scaling",
    "defaults": "defaults",
    "stem": "stem",
    "head": "head",
    "classifier": "classifier",
}


def _attach_comments(
    nodes: list[ast.Node], comments: list[lark.Token], header_line: int, end_line: int
) -> tuple[list[ast.Node], dict[str, Any]]:
    """Give each comment to a statement: trailing if on its last line, else leading the next.

    Comments before `network` lead the network, one on its header line trails it, and those
    after the last statement are kept as the network's closing comments.
    """

    def start(i: int) -> int:
        span = nodes[i].span
        return span.line if span else 0

    by_start = sorted(range(len(nodes)), key=start)
    leading: dict[int, list[str]] = {i: [] for i in range(len(nodes))}
    trailing: dict[int, str] = {}
    network: dict[str, Any] = {"comments": [], "trailing_comment": None, "closing_comments": []}
    for token in comments:
        text = str(token).rstrip()
        line = token.line or 0
        if line < header_line:
            network["comments"].append(text)
            continue
        if line == header_line:
            network["trailing_comment"] = text
            continue
        owner = next(
            (i for i in by_start if (span := nodes[i].span) and span.end_line == line), None
        )
        if owner is not None:
            trailing[owner] = text
            continue
        following = next(
            (i for i in by_start if (span := nodes[i].span) and span.line > line), None
        )
        if following is not None and line < end_line:
            leading[following].append(text)
        else:
            network["closing_comments"].append(text)
    updated = [
        node.model_copy(update={"comments": tuple(leading[i]), "trailing_comment": trailing.get(i)})
        for i, node in enumerate(nodes)
    ]
    network["comments"] = tuple(network["comments"])
    network["closing_comments"] = tuple(network["closing_comments"])
    return updated, network


def _assemble(
    name: Word,
    header: Span,
    statements: list[RawStatement],
    comments: list[lark.Token],
    end_line: int,
    reader: _Reader,
) -> ast.Network | None:
    nodes: list[ast.Node] = []
    first: dict[str, RawStatement] = {}
    kept: list[RawStatement] = []
    for raw in statements:
        keyword = raw.keyword.text
        if keyword in SINGLETONS and keyword in first:
            where = first[keyword].keyword.span
            reader.error(
                f"duplicate `{keyword}` statement",
                raw.keyword.span,
                f"the first is at line {where.line}; a network has one `{keyword}`",
            )
            continue
        first.setdefault(keyword, raw)
        node = reader.statement(raw)
        if node is not None:
            nodes.append(node)
            kept.append(raw)
    for keyword in REQUIRED:
        if keyword not in first:
            example = {
                "input": "input size=224 channels=3",
                "stem": "stem conv k3 s2 c32",
                "head": "head conv k1 c1280",
                "classifier": "classifier dropout=0.2 classes=1000",
            }[keyword]
            reader.error(f"network `{name.text}` has no `{keyword}`", name.span, f"add `{example}`")
    if not any(raw.keyword.text == "stage" for raw in statements):
        reader.error(
            f"network `{name.text}` has no stages",
            name.span,
            "add at least one line like `stage mbconv e6 k3 s2 c24 x2`",
        )
    if reader.errors:
        # the whole-network rules still run over the statements that did build, so one run
        # reports every error a compiler could find
        reader.errors.extend(_validate_partial(nodes))
        return None
    nodes, network_trivia = _attach_comments(nodes, comments, header.line, end_line)
    fields: dict[str, Any] = {"presets": [], "stages": []}
    lines: list[list[ast.BlockLine]] = []  # the `block` lines of each stage
    open_stage = False  # the statement above is a stage or one of its block lines
    for node in nodes:
        if isinstance(node, ast.Preset):
            fields["presets"].append(node)
        elif isinstance(node, ast.Stage):
            fields["stages"].append(node)
            lines.append([])
        elif isinstance(node, ast.BlockLine):
            if not open_stage:
                reader.error(
                    "a `block` line continues the stage right above it, and there is none",
                    node.span,
                    hint="put it under a `stage` line, or write it as a `stage` of its own",
                )
            elif len(lines[-1]) + 1 >= ast.MAX_LINES:
                reader.error(
                    f"a stage has at most {ast.MAX_LINES} block lines", node.span,
                    hint="split the stage in two",
                )
            else:
                lines[-1].append(node)
        else:
            fields[FIELD_OF_KEYWORD[node.keyword]] = node
        open_stage = isinstance(node, ast.Stage) or (open_stage and isinstance(node, ast.BlockLine))
    if reader.errors:
        return None
    fields["presets"] = tuple(fields["presets"])
    fields["stages"] = tuple(
        stage.model_copy(update={"lines": tuple(more)}) if more else stage
        for stage, more in zip(fields["stages"], lines, strict=True)
    )
    try:
        network_name = convert("name", str, name)
    except _Bad as bad:
        reader.error(bad.message, name.span, bad.hint)
        return None
    try:
        return ast.Network(
            name=network_name,
            span=name.span,
            attr_spans=(("name", name.span),),
            **fields,
            **network_trivia,
        )
    except ast.InvalidNode as error:
        for detail in error.errors():
            reader.error(_pydantic_message("name", detail), name.span)
        return None


def _validate_partial(nodes: list[ast.Node]) -> list[EffError]:
    """The global rules (`effdsl.validate`) over the nodes of a file that had other errors."""
    from effdsl.validate import validate_parts

    return validate_parts(
        stages=[n for n in nodes if isinstance(n, ast.Stage)],
        presets=[n for n in nodes if isinstance(n, ast.Preset)],
        ends=[n for n in nodes if isinstance(n, (ast.Stem, ast.Head))],
        lines=[n for n in nodes if isinstance(n, ast.BlockLine)],
    )


# ---- Lark errors in our words --------------------------------------------------------------


def _syntax_error(error: lark.exceptions.UnexpectedInput, filename: str) -> EffSyntaxError:
    line, column = max(error.line, 1), max(error.column, 1)
    if isinstance(error, lark.exceptions.UnexpectedCharacters):
        character = error.char
        span = Span(filename, line, column, line, column + 1)
        hint = "attributes are separated by spaces, e.g. `se=0.25 act=silu`"
        if character in "\"'":
            hint = "strings are written in double quotes on one line"
        return EffSyntaxError(f"unexpected character {character!r}", span, hint=hint)
    if isinstance(error, lark.exceptions.UnexpectedToken):
        token = error.token
        expected = _plain(error.expected)
        if token.type == "$END":
            span = Span(filename, line, column, line, column + 1)
            if "RBRACE" in error.expected:
                return EffSyntaxError(
                    "unexpected end of file: the network's `{` is never closed",
                    span,
                    hint="add `}` on a line of its own after the last statement",
                )
            return EffSyntaxError("unexpected end of file", span, hint=f"expected {expected}")
        span = _span(filename, token)
        shown = "a line break" if token.type == "_NL" else f"`{token}`"
        hint = f"expected {expected}"
        if token.type == "EQUAL":
            hint = "`=` goes between an attribute name and its value, e.g. `se=0.25`"
        elif token.type == "LBRACE":
            hint = "the network needs a name before `{`, e.g. `network efficientnet_b0 {`"
        elif token.type == "NETWORK":
            hint = "`network` is a keyword; quote it to use it as a name"
        elif token.type == "_NL" and "EQUAL" not in error.expected and "WORD" in error.expected:
            hint = f"expected {expected} before the line ends"
        return EffSyntaxError(f"unexpected {shown}", span, hint=hint)
    span = Span(filename, line, column, line, column + 1)
    return EffSyntaxError("unexpected end of file", span)


# ---- the public entry points ---------------------------------------------------------------


#: Bounds on the work one spec can cause. Real specs are a few kilobytes and a few hundred
#: tokens; parsing costs tens of microseconds a token, so these keep any input well under a
#: second, and reporting at most `MAX_ERRORS` errors keeps a garbage file's report readable.
MAX_SPEC_CHARS = 256 * 1024
MAX_TOKENS = 4_000
MAX_ERRORS = 100

# About as many matches as Lark has tokens (a string with escaped quotes counts more, a run
# like `1a` fewer): comments, strings, runs of other non-blank characters, `=`, braces, breaks.
_ROUGH_TOKEN = re.compile(r'#[^\r\n]*|"[^"\r\n]*"?|[^\s#"={}]+|[={}]|\n')


def _position(text: str, offset: int, filename: str) -> Span:
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return Span(filename, line, column, line, column + 1)


def _check_size(text: str, filename: str) -> None:
    """Refuse, before parsing, a text too long or with too many tokens to be a spec."""
    if len(text) > MAX_SPEC_CHARS:
        raise EffSyntaxError(
            f"the spec is {len(text):,} characters long, more than the limit of {MAX_SPEC_CHARS:,}",
            _position(text, MAX_SPEC_CHARS, filename),
            hint="a spec is a few kilobytes; is this the right file?",
        )
    for count, match in enumerate(_ROUGH_TOKEN.finditer(text), 1):
        if count > MAX_TOKENS:
            raise EffSyntaxError(
                f"the spec has more than {MAX_TOKENS:,} tokens; effdsl stops reading here",
                _position(text, match.start(), filename),
                hint="a spec has a few hundred; write repeated blocks as one stage with xN",
            )


def _at_most(errors: list[EffError]) -> list[EffError]:
    """The first `MAX_ERRORS` errors, and one saying how many more there were."""
    if len(errors) <= MAX_ERRORS:
        return errors
    rest = errors[MAX_ERRORS]
    more = EffSemanticError(
        f"too many errors: {len(errors) - MAX_ERRORS:,} more not shown", rest.span
    )
    return [*errors[:MAX_ERRORS], more]


@checked
def parse(text: str, filename: str = "<string>") -> ast.Network:
    """Parse the text of a `.eff` spec into a `Network`; raise `EffError` on any problem."""
    from effdsl.validate import validate  # the global rules need the assembled network

    if not isinstance(text, str):
        raise EffError(f"parse() takes the spec's text as a str, not {type(text).__name__}")
    if not isinstance(filename, str):
        raise EffError(f"parse()'s filename must be a str, not {type(filename).__name__}")
    text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
    try:
        _check_size(text, filename)
    except EffError as error:
        raise error.with_source(text) from None
    _comments.tokens = []
    try:
        tree = lark_parser().parse(text)
    except lark.exceptions.UnexpectedInput as error:
        raise _syntax_error(error, filename).with_source(text) from None
    finally:
        comments, _comments.tokens = _comments.tokens, []
    name, statements, header = _read_tree(tree, filename)
    end_line = _closing_line(tree)
    reader = _Reader()
    network = _assemble(name, header, statements, comments, end_line, reader)
    if network is not None:
        reader.errors.extend(validate(network))
    if reader.errors:
        reader.errors.sort(key=lambda e: (e.span.line, e.span.column) if e.span else (0, 0))
        raise EffErrors(_at_most(reader.errors)).with_source(text)
    assert network is not None
    return network


def _closing_line(tree: lark.Tree[lark.Token]) -> int:
    network = tree.children[0]
    assert isinstance(network, lark.Tree)
    closing = network.children[-1]
    return closing.line if isinstance(closing, lark.Token) and closing.line else 10**9


#: The most bytes read from a spec file: a UTF-8 character is at most 4 bytes, so a longer
#: file is certainly over `MAX_SPEC_CHARS`; nothing beyond this (and one byte) is ever read.
MAX_SPEC_BYTES = 4 * MAX_SPEC_CHARS


def read_spec(path: str | Path) -> str:
    """The text of a spec file, as UTF-8; unreadable, odd or huge files become `EffError`.

    Only a regular file is read (a FIFO, a device or a directory is refused without waiting),
    and never more than `MAX_SPEC_BYTES` + 1 bytes of it. `-` reads standard input.
    """
    if str(path) == "-":
        return decode_spec(read_stdin(MAX_SPEC_BYTES, "spec"), "<stdin>")
    return decode_spec(read_input(path, MAX_SPEC_BYTES, "spec"), str(path))


def decode_spec(data: bytes, filename: str) -> str:
    """Spec bytes as text: UTF-8 (a leading byte-order mark is dropped), or a located error."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        span = Span(filename, line, column, line, column + 1)
        raise EffSyntaxError("the file is not valid UTF-8", span) from None


def load(path: str | Path) -> ast.Network:
    """Read and parse a `.eff` file."""
    if not isinstance(path, str | os.PathLike):
        raise EffError(f"load() takes a path, not {type(path).__name__}")
    return parse(read_spec(path), filename=str(path))
