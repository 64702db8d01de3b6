"""A fuzzer for effdsl: every input must give a result or an `EffError`, never a crash or a hang.

    python -m effdsl.fuzz --cases 10000 --seed 1          # counts, the slowest case, failures
    report = effdsl.fuzz.run(cases=300, seed=0)           # the same from Python (the tests)

Each case is a spec text (a `str`, parsed as the API would) or the bytes of a spec file (read
as `effdsl check FILE` would). Cases come from two sources:

- **mutation** of a corpus (the shipped `specs/*.eff` and generated specs) by the mutators in
  `MUTATORS`: byte and bit flips, truncation, token deletion / duplication / swap, huge and odd
  numbers, unicode and NUL characters, CRLF and lone CR, tabs, deep nesting and very long
  inputs, splicing two specs;
- **generation** of random specs that follow the grammar (`random_spec`), with random layout,
  random names (any text, quoted), and numbers at and beyond the language's bounds.

Besides spec text, a share of the cases (`SURFACE_SHARE`) are **command lines** over every
subcommand, flag and kind of file (a FIFO, a device, a directory, a symlink, a 2 GB sparse file,
a read-only output; some run in a child under a memory cap) and **calls of the public API**
with odd arguments: see `effdsl.fuzz_surface` for what they check.

Every spec case goes through what the CLI does with a spec (`pipeline`): parse, the formatter's
round trip (`parse(format(net)) == net`, `format` idempotent), the compile summary and its JSON,
the resource limits, the DOT drawing and the generated Python (which must compile). The outcome
is **ok**, **error** (an `EffError`; those from reading the text must carry a source span), or
**other** (any other exception, an error without a span, a broken round trip: each one a bug).
Each case is timed in CPU seconds of this process, which other load on the machine does not
inflate, with the garbage collector paused; more than `SLOW_SECONDS` is a bug too. A case
still running after `HANG_SECONDS` of wall-clock time is stopped (where `SIGALRM` exists) and
counted as other.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import random
import re
import signal
import sys
import tempfile
import threading
import time
import traceback
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from effdsl import ast
from effdsl.codegen import to_python
from effdsl.errors import EffError, EffErrors
from effdsl.fmt import format as format_network
from effdsl.fmt import quote
from effdsl.fuzz_surface import (
    CHILD_TIMEOUT,
    ApiCase,
    CliCase,
    Fixture,
    api_case,
    api_functions,
    cli_case,
    make_fixture,
    run_api_case,
    run_cli_case,
    value_pool,
)
from effdsl.limits import check_plan
from effdsl.parser import load, parse
from effdsl.plan import Plan
from effdsl.render import to_dot
from effdsl.scaling import Multipliers, multipliers
from effdsl.summary import summarize, to_json

#: A case that takes more CPU seconds than this is a bug.
SLOW_SECONDS = 1.0
#: A case still running after this long is stopped and counted as other (a hang).
HANG_SECONDS = 10.0

Case = str | bytes
#: Any case: spec text or bytes, a command line, an API call.
AnyCase = str | bytes | CliCase | ApiCase
#: The share of command-line and of API cases among all cases.
SURFACE_SHARE = {"cli": 0.1, "api": 0.1}

#: Used when no corpus is given and `specs/` is not beside the package.
SEED_SPEC = """\
# a small spec: every statement once
network tiny {
  input    size=64 channels=3
  scaling  alpha=1.2 beta=1.1 gamma=1.15 divisor=8
  defaults act=silu se=0.25 drop_path=0.2 padding=symmetric

  preset small width=0.5 depth=0.5 resolution=32 dropout=0.1
  preset "big one" width=2 depth=2

  stem  conv            k3 s2 c16
  stage fused_mbconv e1 k3 s1 c16 x1 se=none
  stage mbconv       e6 k5 s2 c24 x2 name=down act=relu6 skip=no
  stage mbconv       e1.5 k3 s1 c24 x2 fix=width bn_eps=0.001 bn_momentum=0.01
  stage mixconv      e3 k3.5.7 s2 c32 x2 expand_groups=2 project_groups=2
  stage condconv     e4 k5 s1 c32 x1 experts=4
  stage mbconv       e4 k3 s1 c32 x1 group_size=8 norm=group norm_group_size=8
  stage uir          e4 k0 s2 c32 x2 dw_start=5 dw_end=3 layer_scale=1e-5 aa=blurpc
  block mqa          k3 s1 c32 x1 heads=2 key_dim=16 kv_stride=2
  head  conv            k1 s1 c64
  classifier dropout=0.2 classes=10
}
"""


# ---- mutators ---------------------------------------------------------------------------------

TextMutator = Callable[[str, random.Random], str]
ByteMutator = Callable[[bytes, random.Random], bytes]

# A rough token split of spec text that keeps every character: strings, comments, words and
# numbers, runs of blanks, line breaks, and any other single character.
_PIECES = re.compile(r'"(?:[^"\\\n]|\\.)*"?|#[^\n]*|[A-Za-z0-9_.+\-]+|[ \t]+|\r?\n|.', re.S)
_DIGITS = re.compile(r"\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")

# fmt: off
NUMBERS = (
    "0", "-0", "1", "-1", "2", "+3", ".5", "1.", "00000000000000000001", "0.0000001", "1e-400",
    "1e308", "1e309", "-1e309", "1e999999", "4294967297", "9223372036854775808",
    "1" * 39, "1" * 41, "9" * 400, "1000000", "1000001", "100000", "100001", "99", "101", "1000",
    "1000.0000001", "10000000", "2147483648", "0.9999999999999999", "1e-320", "5e-324",
)
WORDS = (
    "network", "input", "scaling", "defaults", "preset", "stem", "stage", "head", "classifier",
    "conv", "mbconv", "fused_mbconv", "mixconv", "condconv", "separable", "k3.5.7",
    "k3.5.7.9.11.13.15.17", "k3.5.", "k.3", "k3..5", "k1.0.1", "e6.5.7", "experts=4", "experts=1",
    "experts=65",
    "uir", "k0", "dw_start=3", "dw_end=5", "dw_start=0", "layer_scale=1e-5", "layer_scale=none",
    "mqa", "heads=4", "key_dim=64", "value_dim=32", "kv_stride=2", "heads=0",
    "s2d=yes", "s2d=no", "s2d=2",
    "aa=avg", "aa=blur", "aa=blurpc", "aa=none", "aa=max",
    "expand_groups=2", "project_groups=64", "project_groups=0", "kernel=3.5",
    "group_size=8", "group_size=0", "group_size=5", "norm=group", "norm=evonorm", "norm=layer",
    "norm_group_size=8", "norm_group_size=3", "norm_group_size=4097",
    "{", "}", "=", '"', "#", "\\", "se=none", "se=0",
    "name=x", 'name="a b"', "skip=maybe", "fix=all", "act=tanh", "padding=same", "kernel=3",
    "x100000", "c1000000", "k99", "k100", "e1000", "e0.5", "s3", "x0", "phi=3", "size=1e9",
    "stage mbconv e6 k3 s1 c8 x1", "stage conv k3 s1 c8 se=0.5", "input size=32", "head none",
    "network n {", '"\\u0000"', '"\\ud800"', '"\\N{BULLET}"', '"\\x"', '"\\', "nan", "inf",
    "-inf", "true", "yes", "None", "__import__", '"""', "'", "`", "$", ";", ",", "(", ")",
    "[", "]", "<", ">", "&",
)
UNICODE = (
    "\x00", "\x01", "\x0b", "\x0c", "\x1b", "\x7f", "\x85", "\xa0", "\u00e9", "e\u0301",
    "\u200b", "\u200d", "\u2028", "\u2029", "\u202e", "\ufeff", "\ufffd", "\uffff",
    "\U0001f600", "\U0010ffff", "\ud800", "\udfff", "\uff11", "\u0663", "\u00b2", "\u2167",
    "\u0131", "\u212a", "\u017f", "\u0391", "\u0430",
)
# fmt: on


def _pieces(text: str) -> list[str]:
    return _PIECES.findall(text)


def _nonblank(pieces: Sequence[str]) -> list[int]:
    return [i for i, p in enumerate(pieces) if p.strip()]


def truncate(text: str, rng: random.Random) -> str:
    """Cut the text at a random point."""
    return text[: rng.randrange(len(text) + 1)]


def delete_token(text: str, rng: random.Random) -> str:
    """Remove one token."""
    pieces = _pieces(text)
    if not (indices := _nonblank(pieces)):
        return text
    del pieces[rng.choice(indices)]
    return "".join(pieces)


def duplicate_token(text: str, rng: random.Random) -> str:
    """Repeat one token, with a space or without."""
    pieces = _pieces(text)
    if not (indices := _nonblank(pieces)):
        return text
    i = rng.choice(indices)
    pieces.insert(i, pieces[i] + rng.choice(("", " ")))
    return "".join(pieces)


def swap_tokens(text: str, rng: random.Random) -> str:
    """Exchange two tokens."""
    pieces = _pieces(text)
    indices = _nonblank(pieces)
    if len(indices) < 2:
        return text
    i, j = rng.sample(indices, 2)
    pieces[i], pieces[j] = pieces[j], pieces[i]
    return "".join(pieces)


def insert_word(text: str, rng: random.Random) -> str:
    """Insert a keyword, attribute, brace or other word of the language's vocabulary."""
    pieces = _pieces(text)
    word = rng.choice(WORDS)
    pieces.insert(rng.randrange(len(pieces) + 1), rng.choice((word, f" {word} ", f"\n{word}\n")))
    return "".join(pieces)


def odd_number(text: str, rng: random.Random) -> str:
    """Replace one number (or the digits of a shorthand) by a huge, tiny or odd one."""
    matches = list(_DIGITS.finditer(text))
    if not matches:
        return text
    match = rng.choice(matches)
    return text[: match.start()] + rng.choice(NUMBERS) + text[match.end() :]


def insert_unicode(text: str, rng: random.Random) -> str:
    """Insert NUL, control, invisible, bidirectional, surrogate or look-alike characters."""
    at = rng.randrange(len(text) + 1)
    chars = "".join(rng.choice(UNICODE) for _ in range(rng.randint(1, 3)))
    return text[:at] + chars + text[at:]


def line_endings(text: str, rng: random.Random) -> str:
    """CRLF everywhere, CRLF in places, a lone CR, or no final newline."""
    choice = rng.randrange(4)
    if choice == 0:
        return text.replace("\n", "\r\n")
    if choice == 1:
        return "".join(c + ("\r" if c == "\n" and rng.random() < 0.3 else "") for c in text)
    if choice == 2:
        return text.replace("\n", "\r", 1 + rng.randrange(3))
    return text.rstrip("\n")


def tabs(text: str, rng: random.Random) -> str:
    """Blanks become tabs (or form feeds), everywhere or once."""
    blank = rng.choice(("\t", "\t\t", "\f", "\v"))
    return text.replace(" ", blank) if rng.random() < 0.5 else text.replace(" ", blank, 3)


def nest(text: str, rng: random.Random) -> str:
    """Deep nesting: runs of braces, quotes, `network x {` headers or `=` signs."""
    unit = rng.choice(("{", "}", '"', "network n {\n", "=", "{\n", "\\"))
    at = rng.randrange(len(text) + 1)
    return text[:at] + unit * rng.choice((2, 100, 10_000, 100_000)) + text[at:]


def very_long(text: str, rng: random.Random) -> str:
    """A very long input: a repeated line, a huge token, comment, string or blank run."""
    lines = text.split("\n")
    i = rng.randrange(len(lines))
    count = rng.choice((10, 1_000, 5_000, 20_000))
    choice = rng.randrange(5)
    if choice == 0:
        lines[i:i] = [lines[i]] * count
    elif choice == 1:
        lines[i:i] = ["  stage mbconv e6 k3 s1 c8 x1"] * count
    elif choice == 2:
        lines[i] += " " + rng.choice(("a", "1", "#", '"', " ", "\\")) * (count * 50)
    elif choice == 3:
        lines[i:i] = [""] * count
    else:
        lines[i] += ' name="' + "x" * (count * 50) + '"'
    return "\n".join(lines)


def splice(text: str, rng: random.Random, other: str = SEED_SPEC) -> str:
    """The start of one spec and the end of another."""
    return text[: rng.randrange(len(text) + 1)] + other[rng.randrange(len(other) + 1) :]


def case_flip(text: str, rng: random.Random) -> str:
    """Upper-case one word (`Stage`, `MBCONV`)."""
    pieces = _pieces(text)
    if not (indices := _nonblank(pieces)):
        return text
    i = rng.choice(indices)
    pieces[i] = pieces[i].upper() if rng.random() < 0.5 else pieces[i].capitalize()
    return "".join(pieces)


def flip_bits(data: bytes, rng: random.Random) -> bytes:
    """Flip 1 to 8 random bits."""
    if not data:
        return data
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def set_bytes(data: bytes, rng: random.Random) -> bytes:
    """Overwrite or insert bytes that are invalid or special in UTF-8 (NUL, 0xFF, a BOM...)."""
    # fmt: off
    special = (b"\x00", b"\xff", b"\x80", b"\xc0", b"\xc3", b"\xed\xa0\x80", b"\xef\xbb\xbf",
               b"\xf4\x90\x80\x80", b"\r", b"\n", b"\t", b"\x1a")
    # fmt: on
    out = bytearray(data)
    at = rng.randrange(len(out) + 1)
    chunk = rng.choice(special)
    if rng.random() < 0.5 or at == len(out):
        out[at:at] = chunk
    else:
        out[at : at + len(chunk)] = chunk
    return bytes(out)


def cut_bytes(data: bytes, rng: random.Random) -> bytes:
    """Truncate the bytes, possibly inside a multi-byte character."""
    return data[: rng.randrange(len(data) + 1)]


TEXT_MUTATORS: dict[str, TextMutator] = {
    "truncate": truncate,
    "delete_token": delete_token,
    "duplicate_token": duplicate_token,
    "swap_tokens": swap_tokens,
    "insert_word": insert_word,
    "odd_number": odd_number,
    "insert_unicode": insert_unicode,
    "line_endings": line_endings,
    "tabs": tabs,
    "nest": nest,
    "very_long": very_long,
    "splice": splice,
    "case_flip": case_flip,
}
BYTE_MUTATORS: dict[str, ByteMutator] = {
    "flip_bits": flip_bits,
    "set_bytes": set_bytes,
    "cut_bytes": cut_bytes,
}
MUTATORS: tuple[str, ...] = (*TEXT_MUTATORS, *BYTE_MUTATORS)


#: Mutations stop growing a case here: beyond the parser's size limit, but not by much.
MAX_CASE_CHARS = 600_000


def mutate(text: str, rng: random.Random, corpus: Sequence[str] = (SEED_SPEC,)) -> tuple[Case, str]:
    """`text` after one to three random mutations, and their names joined by `+`.

    A case never grows past `MAX_CASE_CHARS` (characters or bytes): longer ones are cut.
    """
    data: Case = text
    names = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        name = rng.choice(MUTATORS)
        names.append(name)
        if name in BYTE_MUTATORS:
            raw = data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")
            data = BYTE_MUTATORS[name](raw, rng)
        elif isinstance(data, bytes):
            text_of = data.decode("utf-8", "surrogateescape")
            data = _to_bytes(_text_mutation(name, text_of, rng, corpus))
        else:
            data = _text_mutation(name, data, rng, corpus)
        data = data[:MAX_CASE_CHARS]
    return data, "+".join(names)


def _to_bytes(text: str) -> bytes:
    """Bytes of text decoded with `surrogateescape`, where new surrogates pass as they are."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _text_mutation(name: str, text: str, rng: random.Random, corpus: Sequence[str]) -> str:
    if name == "splice":
        return splice(text, rng, rng.choice(corpus))
    return TEXT_MUTATORS[name](text, rng)


# ---- generation ------------------------------------------------------------------------------

_NAME_CHARS = "ab_Z09 \"\\\n\t{}<>&'#=\u00e9\u2028\U0001f600\x00"


def random_name(rng: random.Random) -> str:
    """A name as written in a spec: a word, a Python keyword, or a quoted string of any text."""
    kind = rng.randrange(4)
    if kind == 0:
        return rng.choice(("b0", "net", "_x", "class", "def", "import", "None", "a.b", "e6"))
    if kind == 1:
        return quote("".join(rng.choice(_NAME_CHARS) for _ in range(rng.randint(1, 12))))
    if kind == 2:
        return rng.choice(('"network"', '"a\\"b"', '"\\u00e9"', '"""', '"\\\\"', '"x\\ny"'))
    return rng.choice(("x", "stage1", "b7", "l2"))


class _Generator(random.Random):
    """A random source that also knows how often this spec picks an edge value."""

    edge_rate = 0.0


def _pick(rng: random.Random, usual: Sequence[object], edge: Sequence[object]) -> str:
    rate = rng.edge_rate if isinstance(rng, _Generator) else 0.05
    value = rng.choice(edge) if rng.random() < rate else rng.choice(usual)
    return str(value)


def _bounds(metadata: Sequence[object]) -> list[float]:
    """The numbers a field's constraints name (`ge=1, le=99` → 1, 99), and one beyond each."""
    found: list[float] = []
    for constraint in metadata:
        for name in ("ge", "gt", "le", "lt"):
            bound = getattr(constraint, name, None)
            if isinstance(bound, int | float) and not isinstance(bound, bool):
                found += [bound, bound + 1 if name in ("le", "lt") else bound - 1]
    return found


def random_value(rng: random.Random, annotation: object, metadata: Sequence[object] = ()) -> str:
    """A value for an AST field, read from its type: a `Literal`'s choices (or a near miss),
    yes/no, numbers at and beyond its bounds, any name. New fields get values unasked."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        return random_value(rng, rng.choice(options), metadata) if options else "none"
    if origin is typing.Annotated:
        inner, *extra = typing.get_args(annotation)
        return random_value(rng, inner, [*metadata, *extra])
    if origin is tuple:  # a kernel list, `3.5.7`
        item = typing.get_args(annotation)[0]
        return ".".join(random_value(rng, item, metadata) for _ in range(rng.randint(2, 4)))
    if origin is typing.Literal:
        choices = [str(c) for c in typing.get_args(annotation)]
        return rng.choice(choices) if rng.random() < 0.9 else rng.choice(choices) + "x"
    if annotation is bool:
        return rng.choice(("yes", "no", "on", "off", "maybe"))
    if annotation in (int, float):
        edges = _bounds(metadata) or [0, -1, 10**9]
        usual = [1, 2, 3] if annotation is int else [0.1, 0.5, 1.5]
        return str(rng.choice(edges) if rng.random() < 0.3 else rng.choice(usual))
    if annotation is str:
        return random_name(rng)
    return rng.choice(("1", "x", '"x"', "1,2", "[1]"))  # a type the language may add later


def random_attribute(rng: random.Random, node_type: type[ast.Node]) -> str:
    """`name=value` for any attribute the statement accepts, from the AST itself."""
    from effdsl.parser import attributes

    name = rng.choice(attributes(node_type))
    field_info = node_type.model_fields[name]
    return f"{name}={random_value(rng, field_info.annotation, field_info.metadata)}"


_BLOCK_TYPES: dict[str, type[ast.Node]] = {
    "stem": ast.Stem,
    "stage": ast.Stage,
    "block": ast.BlockLine,
    "head": ast.Head,
}


def random_block(rng: random.Random, keyword: str) -> str:
    """A stem, stage, block or head line, with shorthands or attributes in any order.

    The kind is any of the language's block kinds, and now and then an attribute is drawn
    from the AST's fields, so that kinds and attributes added to the language are fuzzed too.
    """
    lines = ("stage", "block")
    others = [k for k in ast.BLOCK_KINDS if k != "conv"]
    plain = keyword not in lines or rng.random() < 0.2 or not others
    kind = "conv" if plain else rng.choice(others)
    shape = [kind]
    pooled = keyword == "head" and rng.random() < 0.15  # `pool=first`
    # conv, separable and mqa have no expansion (random_attribute still gives them one now
    # and then)
    expanded = kind not in ast.UNEXPANDED
    mid = keyword in lines and expanded and rng.random() < 0.1
    if expanded and not mid:
        shape.append("e" + _pick(rng, (1, 1.5, 4, 6), (0.5, 1000, 1001)))
    if kind == "mixconv" and rng.random() < 0.7:  # a kernel list, now and then a bad one
        kernels = rng.sample((1, 3, 5, 7, 9, 11), rng.randint(2, 4))
        shape.append("k" + _pick(rng, (".".join(map(str, kernels)),), ("3.4", "3." * 17 + "3")))
    elif pooled:  # a head after the pool is 1×1, stride 1 (else an error, now and then)
        shape.append("k" + _pick(rng, (1,), (3,)))
    else:
        shape.append("k" + _pick(rng, (1, 3, 5), (0, 2, 99, 101)))
    shape.append("s" + _pick(rng, (1,) if pooled or kind == "mqa" else (1, 2), (0, 3)))
    shape.append("c" + _pick(rng, (8, 16, 24, 40), (1, 1_000_000, 1_000_001)))
    if keyword in lines:
        shape.append("x" + _pick(rng, (1, 2, 3), (0, 2_000, 10_000, 100_000, 100_001)))
    extra = []
    if kind == "mixconv" and rng.random() < 0.5:
        extra.append("expand_groups=" + _pick(rng, (1, 2, 3), (0, 64, 65)))
    if kind == "mixconv" and rng.random() < 0.5:
        extra.append("project_groups=" + _pick(rng, (1, 2), (0, 100)))
    if kind == "uir":
        for attribute in ("dw_start", "dw_end"):
            if rng.random() < 0.5:
                extra.append(f"{attribute}=" + _pick(rng, (3, 5), (0, 2, 101)))
        if rng.random() < 0.3 and (extra or "s1" in shape):  # no middle depthwise conv
            shape = [part if not part.startswith("k") else "k0" for part in shape]
    if kind == "mqa":
        for attribute, good, bad, rate in (
            ("heads", (1, 4, 8), (0, 1025), 0.98),  # required
            ("key_dim", (16, 64), (0,), 0.98),  # required
            ("value_dim", (16, 64), (0,), 0.3),
            ("kv_stride", (1, 2), (0, 9), 0.5),
        ):
            if rng.random() < rate:
                extra.append(f"{attribute}=" + _pick(rng, good, bad))
    if kind in ast.LAYER_SCALED and rng.random() < 0.3:
        extra.append("layer_scale=" + _pick(rng, (1e-5, "none", 0.1), (-1, 1001)))
    if keyword in lines and "s2" in shape and rng.random() < 0.2:  # anti-aliased downsampling
        extra.append("aa=" + _pick(rng, ast.ANTI_ALIASES, ("max",)))
    if rng.random() < 0.01:  # an option of another kind: an error at the option
        extra.append(
            rng.choice(("dw_start=3", "heads=2", "kv_stride=2", "layer_scale=0.1", "s2d=yes"))
        )
    if kind == "condconv" or rng.random() < 0.005:  # required there, an error elsewhere
        extra.append("experts=" + _pick(rng, (2, 4, 8), (1, 64, 65)))
    if kind not in ("conv", "mqa") and rng.random() < 0.4:
        extra.append("se=" + _pick(rng, (0.25, "none", 0.5), (0, 1, 1.5)))
        extra += _squeeze_kind(rng, 0.3)
    if rng.random() < 0.2:
        extra.append("act=" + rng.choice((*ast.ACTIVATIONS, *ast.ALIASES)))
    extra += _squeeze_options(rng, 0.1)
    if rng.random() < 0.1:
        norm = rng.choice(ast.NORMS)
        extra.append("norm=" + norm)
        if norm in ast.GROUPED_NORMS and rng.random() < 0.8:  # else an error: it needs a size
            extra.append("norm_group_size=" + _pick(rng, (1, 4, 8), (0, 3, 4097)))
    if keyword in lines and kind not in ("mixconv", "condconv") and rng.random() < 0.1:
        extra.append("group_size=" + _pick(rng, (1, 4, 8, 16), (0, 3, 4097)))
    if mid:
        extra.append("mid=" + _pick(rng, (16, 24, 100), (0, 1_000_001)))
    if keyword in lines and kind in ("mbconv", "fused_mbconv") and rng.random() < 0.1:
        extra.append("full=" + rng.choice(("yes", "no")))
    # space-to-depth: on a stride-1 mbconv or separable line; elsewhere an error at the option
    if keyword in lines and kind in ast.SPACE_TO_DEPTH and "s1" in shape and rng.random() < 0.1:
        extra.append("s2d=" + _pick(rng, ("yes", "no"), ("maybe",)))
    if pooled:
        extra.append("pool=first")
    elif keyword == "head" and rng.random() < 0.2:
        extra.append("pool=" + _pick(rng, ("last",), ("middle",)))
    if keyword == "head" and rng.random() < 0.1:
        extra.append("shrink=" + rng.choice(("no", "yes")))
    if keyword == "head" and rng.random() < 0.1:  # an error unless the head has `norm=none`
        extra.append("bias=" + rng.choice(("no", "yes")))
    if rng.random() < 0.1:
        extra.append("fix=" + rng.choice(ast.FIXES))
    if keyword == "stage" and rng.random() < 0.3:
        extra.append("name=" + random_name(rng))
    if keyword == "stage" and rng.random() < 0.1:
        extra.append("skip=" + rng.choice(("no", "yes", "off")))
    if rng.random() < 0.1:
        extra.append("drop_path=" + _pick(rng, (0.1, 0.2), (1, -0.1)))
    if rng.random() < 0.15:
        extra.append(random_attribute(rng, _BLOCK_TYPES[keyword]))
    words = [shape[0], *rng.sample(shape[1:], len(shape) - 1), *extra]
    if keyword == "head" and rng.random() < 0.08:  # no head conv, now and then with leftovers
        words = ["none", *rng.sample(words[1:], rng.choice((0, 0, 0, 1)))]
    return " ".join([keyword, *words])


def _squeeze_options(rng: random.Random, rate: float) -> list[str]:
    """Squeeze-and-excitation options, each with probability `rate`."""
    options = []
    if rng.random() < rate:
        options.append("se_from=" + _pick(rng, ("input", "expanded"), ("output",)))
    if rng.random() < rate:
        options.append("se_divisor=" + _pick(rng, (1, 8), (0, 1025)))
    if rng.random() < rate:
        options.append("se_act=" + rng.choice((*ast.ACTIVATIONS, "swish")))
    if rng.random() < rate:
        options.append("se_gate=" + _pick(rng, ast.GATES, ("hswish",)))
    return options


def _squeeze_kind(rng: random.Random, rate: float) -> list[str]:
    """`se_kind`, with probability `rate`: where SE is (an error on a line without it)."""
    if rng.random() < rate:
        return ["se_kind=" + _pick(rng, ast.SQUEEZE_KINDS, ("global", "GC"))]
    return []


def random_spec(rng: random.Random) -> str:
    """A spec that follows the grammar, often valid, with random layout and values.

    A third of the specs use only ordinary values, the others pick edge values (at and beyond
    the language's bounds) now and then.
    """
    generator = _Generator(rng.getrandbits(64))
    generator.edge_rate = rng.choice((0.0, 0.02, 0.1))
    return _spec(generator)


def _spec(rng: random.Random) -> str:
    header = [
        "input size="
        + _pick(rng, (32, 64, 224), (7, 8, 100_000, 100_001))
        + rng.choice(("", " channels=3", " channels=1")),
    ]
    if rng.random() < 0.5:
        header.append(
            "scaling alpha="
            + _pick(rng, (1.2, 1, 2), (1000, 0))
            + " beta="
            + _pick(rng, (1.1, 1), (1000, 1e-9))
            + " gamma="
            + _pick(rng, (1.15, 1), (1000,))
            + " divisor="
            + _pick(rng, (8, 1, 16), (1024, 0))
            + rng.choice(("", " round_limit=0", " round_limit=0.9"))
            + _pick(rng, ("",), (" round_limit=2",))
            + rng.choice(("", " depth_round=up", " depth_round=nearest"))
        )
    if rng.random() < 0.5:
        header.append(
            "defaults act="
            + rng.choice(ast.ACTIVATIONS)
            + " se="
            + _pick(rng, (0.25, "none"), (2,))
            + " padding="
            + rng.choice(ast.PADDINGS)
            + " drop_path="
            + _pick(rng, (0, 0.2), (0.99,))
            + "".join(" " + option for option in _squeeze_options(rng, 0.3))
            + "".join(" " + option for option in _squeeze_kind(rng, 0.3))
            + rng.choice(
                ("", " norm=group norm_group_size=8", " norm=evonorm norm_group_size=1",
                 " norm=layer", " norm=evonorm")
            )
            + rng.choice(("", "", " group_size=8", " group_size=" + _pick(rng, (4,), (7,))))
            + rng.choice(("", "", " aa=" + _pick(rng, ast.ANTI_ALIASES, ("max",))))
        )
    for _ in range(rng.choice((0, 0, 1, 2))):
        header.append(
            f"preset {random_name(rng)} width="
            + _pick(rng, (1, 1.2, 2), (1000, 0.001))
            + " depth="
            + _pick(rng, (1, 1.4, 0.5), (1000,))
            + rng.choice(("", " resolution=" + _pick(rng, (32, 48), (8, 100_000))))
            + rng.choice(("", " dropout=0.3"))
        )
    from effdsl.parser import STATEMENTS, attributes

    # statements the language has beyond these (a newer construct): a line of random attributes
    for keyword, node_type in STATEMENTS.items():
        known = keyword in ("input", "scaling", "defaults", "preset", *_BLOCK_TYPES, "classifier")
        if not known and attributes(node_type) and rng.random() < 0.3:
            count = rng.randint(1, 3)
            header.append(" ".join([keyword, *(random_attribute(rng, node_type)
                                               for _ in range(count))]))
    # a stage and its `block` lines are one unit, which a shuffle moves whole
    body = [[random_block(rng, "stem")]]
    for _ in range(rng.randint(1, 6)):
        body.append([random_block(rng, "stage")])
        body[-1] += [random_block(rng, "block") for _ in range(rng.choice((0, 0, 0, 1, 2)))]
    if rng.random() < 0.05:  # a block line with no stage above it
        body.insert(1, [random_block(rng, "block")])
    classifier = "classifier classes=" + _pick(rng, (10, 1000), (10**7,))
    body += [[random_block(rng, "head")], [classifier]]
    units = [[statement] for statement in header] + body
    if rng.random() < 0.2:
        rng.shuffle(units)
    lines = [f"network {random_name(rng)} {{"]
    for statement in (statement for unit in units for statement in unit):
        if rng.random() < 0.1:
            lines.append("  # " + random_name(rng))
        lines.append("  " + statement + rng.choice(("", "", "  # note")))
    lines.append("}")
    return "\n".join(lines) + "\n"


# ---- the pipeline -----------------------------------------------------------------------------


class FuzzFailure(Exception):
    """A case broke a property that is not an exception of its own (round trip, spans)."""


def pipeline(data: Case, rng: random.Random | None = None, *, workdir: Path | None = None) -> None:
    """Everything the CLI does with a spec; raises `EffError` for a bad spec, else a bug.

    Text is parsed as `effdsl.parse` would; bytes are written to a file in `workdir` and read
    as `effdsl check FILE` would. Then: the formatter's round trip, the compile summary (base
    and scaled by a random preset or φ) and its JSON, the resource limits, the stage drawing
    and the generated Python.
    """
    rng = rng or random.Random(0)
    network = _read(data, workdir)
    text = format_network(network)
    try:
        again = parse(text, "<formatted>")
    except EffError as error:
        if error.message.startswith("the spec has more than"):
            return  # near the size limit, the canonical layout's blank lines can cross it
        raise FuzzFailure(f"the formatted spec does not parse: {error}") from error
    if again != network:
        raise FuzzFailure("parse(format(network)) != network")
    if format_network(again) != text:
        raise FuzzFailure("format is not idempotent")
    for factors in _scalings(network, rng):
        summary = summarize(network, factors)
        check_plan(summary.scaled)
        document = json.dumps(to_json(summary), allow_nan=False)
        if json.loads(document)["name"] != network.name:
            raise FuzzFailure("the JSON summary does not round-trip the name")
        _backends(summary.scaled, text)


def _read(data: Case, workdir: Path | None) -> ast.Network:
    if isinstance(data, str):
        return _parse_checked(data, "<fuzz>")
    directory = workdir or Path(tempfile.gettempdir())
    path = directory / "case.eff"
    path.write_bytes(data)
    try:
        return load(path)
    except EffError as error:
        _require_spans(error)
        raise


def _parse_checked(text: str, name: str) -> ast.Network:
    try:
        return parse(text, name)
    except EffError as error:
        _require_spans(error)
        raise


def _require_spans(error: EffError) -> None:
    """Errors about the text of a spec must point into it, and render."""
    errors = error.errors if isinstance(error, EffErrors) else (error,)
    for one in errors:
        if one.span is None:
            raise FuzzFailure(f"error without a location: {one.message}") from error
    error.render()


def _scalings(network: ast.Network, rng: random.Random) -> Iterator[Multipliers]:
    yield multipliers(network)
    if network.presets and rng.random() < 0.5:
        yield multipliers(network, preset=rng.choice(network.presets).name)
    elif rng.random() < 0.3:
        yield multipliers(network, phi=rng.choice((-3.0, 0.5, 1.0, 3.0, 40.0, 1000.0)))


def _backends(plan: Plan, text: str) -> None:
    """The stage drawing and the generated Python (which must compile), as UTF-8."""
    to_dot(plan).encode("utf-8")
    source = to_python(plan, source_name="<fuzz>", spec_text=text)
    source.encode("utf-8")
    compile(source, "<generated>", "exec", dont_inherit=True)


# ---- the driver -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """A case that ended in something other than success or an `EffError`."""

    source: str  # how the case was made: `b0.eff:truncate+tabs`, `generated`, `cli`, `api`
    data: AnyCase
    error: str  # `TypeError: ...`, the last lines of the traceback
    seconds: float


@dataclass
class Report:
    """What `run` found: outcome counts, CPU time per case, and the failing cases."""

    cases: int = 0
    ok: int = 0
    errors: int = 0
    other: int = 0
    slow: int = 0
    max_seconds: float = 0.0
    slowest: str = ""
    total_seconds: float = 0.0
    failures: list[Failure] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.cases} cases, {self.total_seconds:.1f} s CPU: ok {self.ok}, "
            f"EffError {self.errors}, other exceptions {self.other}, "
            f"over {SLOW_SECONDS:g} s {self.slow}, max {self.max_seconds:.3f} s CPU "
            f"({self.slowest})"
        )


class _Hang(Exception):
    """Raised by the alarm when a case runs past `HANG_SECONDS`."""


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    """Interrupt the block after `seconds` where the platform and thread allow it."""
    usable = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def stop(_signum: int, _frame: FrameType | None) -> None:
        raise _Hang(f"still running after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def default_corpus() -> dict[str, str]:
    """The shipped specs (`specs/*.eff` beside the package), else the built-in seed spec."""
    specs = Path(__file__).resolve().parent.parent / "specs"
    found = {path.name: path.read_text(encoding="utf-8") for path in sorted(specs.glob("*.eff"))}
    return found or {"seed.eff": SEED_SPEC}


def generate(
    cases: int, seed: int, corpus: dict[str, str] | None = None, fixture: Fixture | None = None
) -> Iterator[tuple[str, AnyCase]]:
    """`cases` inputs: with a `fixture`, a share of command lines and API calls; of the rest a
    quarter generated specs, the others mutations of the corpus or of generated specs."""
    rng = random.Random(seed)
    corpus = corpus or default_corpus()
    names = sorted(corpus)
    texts = [corpus[n] for n in names]
    functions = api_functions() if fixture is not None else {}
    pool = value_pool(fixture) if fixture is not None else []
    made = 0
    while made < cases:
        roll = rng.random()
        if fixture is not None and roll < SURFACE_SHARE["cli"]:
            yield "cli", cli_case(rng, fixture)
        elif fixture is not None and roll < SURFACE_SHARE["cli"] + SURFACE_SHARE["api"]:
            call = api_case(rng, functions, pool)
            if call is None:
                continue
            yield "api", call
        else:
            roll = rng.random()
            if roll < 0.25:
                yield "generated", random_spec(rng)
            elif roll < 0.4:
                data, how = mutate(random_spec(rng), rng, texts)
                yield f"generated:{how}", data
            else:
                name = rng.choice(names)
                data, how = mutate(corpus[name], rng, texts)
                yield f"{name}:{how}", data
        made += 1


def run_case(
    source: str,
    data: AnyCase,
    report: Report,
    rng: random.Random,
    workdir: Path,
    fixture: Fixture | None = None,
) -> None:
    """Run one case through `pipeline` and record its outcome and time in `report`.

    The garbage collector waits while the case runs: a collection walks the whole process's
    heap (a test session's can take a second), which is not the case's work; the objects the
    case left behind are collected as soon as it is re-enabled.
    """
    collecting = gc.isenabled()
    gc.disable()
    start = time.process_time()
    outcome = "ok"
    detail = ""
    try:
        # a child process starts a Python of its own; it has its own time-out
        with _alarm(CHILD_TIMEOUT + HANG_SECONDS if isinstance(data, CliCase) else HANG_SECONDS):
            if isinstance(data, CliCase):
                assert fixture is not None
                if run_cli_case(data, fixture) != 0:
                    raise EffError("the command failed cleanly (exit 1 or 2)")
            elif isinstance(data, ApiCase):
                run_api_case(data, workdir)
            else:
                pipeline(data, rng, workdir=workdir)
    except EffError:
        outcome = "error"
    except Exception as error:  # every other exception is what we look for
        outcome = "other"
        lines = traceback.format_exception(error)
        detail = "".join(lines[-4:]).strip()
    finally:
        seconds = time.process_time() - start
        if collecting:
            gc.enable()
    report.cases += 1
    report.total_seconds += seconds
    if outcome == "ok":
        report.ok += 1
    elif outcome == "error":
        report.errors += 1
    else:
        report.other += 1
    if seconds > report.max_seconds:
        report.max_seconds, report.slowest = seconds, f"{source}, {_size(data)}"
    if seconds > SLOW_SECONDS:
        report.slow += 1
        detail = detail or f"took {seconds:.2f} s"
    if detail:
        report.failures.append(Failure(source, data, detail, seconds))


def run(
    cases: int = 1000,
    seed: int = 0,
    corpus: dict[str, str] | None = None,
    *,
    progress: Callable[[Report], None] | None = None,
    surface: bool = True,
) -> Report:
    """Fuzz `cases` inputs from `seed`; `progress` is called every 1,000 cases.

    `surface=False` leaves out the command-line and API cases (spec text only).
    """
    report = Report()
    rng = random.Random(seed ^ 0x5EED)
    with tempfile.TemporaryDirectory(prefix="effdsl-fuzz-") as workdir:
        fixture = make_fixture(Path(workdir) / "fixture") if surface else None
        scratch = Path(workdir) / "scratch"
        scratch.mkdir()
        for index, (source, data) in enumerate(generate(cases, seed, corpus, fixture), 1):
            run_case(source, data, report, rng, scratch, fixture)
            if progress is not None and index % 1000 == 0:
                progress(report)
    return report


def _size(data: AnyCase) -> str:
    if isinstance(data, CliCase | ApiCase):
        return str(data)[:200]
    unit = "bytes" if isinstance(data, bytes) else "chars"
    return f"{len(data):,} {unit}"


def save_failures(report: Report, directory: Path) -> list[Path]:
    """Write each failing case to `directory` (`case-N.eff`, plus `case-N.txt` saying why)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for number, failure in enumerate(report.failures):
        path = directory / f"case-{number}.eff"
        data = failure.data
        if isinstance(data, CliCase | ApiCase):
            data = str(data)  # the command line or the call, to run by hand
        path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))
        path.with_suffix(".txt").write_text(
            f"{failure.source}\n{failure.seconds:.3f} s\n{failure.error}\n", encoding="utf-8"
        )
        written.append(path)
    return written


def _limit_memory(gigabytes: float) -> None:
    """Cap this process's address space, so that a runaway case is a MemoryError, not an OOM."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return
    limit = int(gigabytes * 2**30)
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m effdsl.fuzz`: run the fuzzer, print the counts; exit 1 if it found a bug."""
    parser = argparse.ArgumentParser(
        prog="python -m effdsl.fuzz",
        description="Fuzz effdsl with mutated and generated specs; print outcome counts.",
    )
    parser.add_argument("--cases", type=int, default=10_000, help="how many inputs (10000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument(
        "--corpus", nargs="*", metavar="SPEC", help="specs to mutate (default: specs/*.eff)"
    )
    parser.add_argument("--save", metavar="DIR", help="write failing cases to DIR")
    parser.add_argument(
        "--specs-only", action="store_true", help="spec text only: no command lines, no API calls"
    )
    parser.add_argument(
        "--max-memory",
        type=float,
        default=8.0,
        metavar="GB",
        help="address-space cap for this process, in GiB (8; 0 for none)",
    )
    args = parser.parse_args(argv)
    if args.cases < 1:
        parser.error("--cases must be at least 1")
    if args.max_memory and math.isfinite(args.max_memory) and args.max_memory > 0:
        _limit_memory(args.max_memory)
    corpus = None
    if args.corpus:
        corpus = {Path(p).name: Path(p).read_text(encoding="utf-8") for p in args.corpus}

    def progress(report: Report) -> None:
        print(f"... {report.summary()}", file=sys.stderr, flush=True)

    report = run(args.cases, args.seed, corpus, progress=progress, surface=not args.specs_only)
    print(f"seed {args.seed}: {report.summary()}")
    for failure in report.failures[:20]:
        print(f"\n--- {failure.source} ({_size(failure.data)}, {failure.seconds:.3f} s)")
        data = failure.data
        print(str(data) if isinstance(data, CliCase | ApiCase) else repr(data[:300]))
        print(failure.error)
    if args.save and report.failures:
        written = save_failures(report, Path(args.save))
        print(f"\nwrote {len(written)} failing cases to {args.save}")
    return 1 if report.other or report.slow else 0


if __name__ == "__main__":
    sys.exit(main())
