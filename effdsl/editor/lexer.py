"""The Pygments lexer of `.eff` specs, registered as `eff` (and `effdsl`) for `*.eff` files.

It highlights by position, as the grammar reads a spec, rather than from word lists, so a new
statement, block kind or attribute is highlighted without a change here:

- `network` (Keyword.Declaration) and the network's name (Name.Class);
- the first word of a line, the statement (Keyword); a preset's name (Name.Constant);
- the block kind, the second word of a statement when it is neither a shorthand nor a
  `key=` (Name.Builtin);
- shorthands `e6 k3 s2 c24 x2`: the letter (Name.Attribute) and its number (Number);
- `key=value`: the key (Name.Attribute), `=` (Operator), the value (Number, String.Double,
  or a word such as `silu`, Name.Constant);
- comments (Comment.Single), strings (String.Double), braces (Punctuation).

`pygmentize -l eff specs/b0.eff` uses it once effdsl is installed (the `pygments.lexers` entry
point); the VS Code grammar in editors/vscode/ follows the same rules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, cast

from pygments.lexer import RegexLexer, bygroups, default
from pygments.token import (
    Comment,
    Keyword,
    Name,
    Number,
    Operator,
    Punctuation,
    String,
    Whitespace,
)

# The terminals of effdsl/grammar.lark.
WORD = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*"
NUMBER = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
STRING = r'"(?:[^"\\\r\n]|\\[^\r\n])*"'
SHORTHAND = r"([a-z])([0-9]+(?:\.[0-9]+)?)(?![A-Za-z0-9_.])"
_SHORTHAND_AHEAD = r"[a-z][0-9]+(?:\.[0-9]+)?(?![A-Za-z0-9_.])"  # no groups: for lookaheads
_END = r"(?=[ \t]|#|\r?\n|$)"

groups = cast("Callable[..., Any]", bygroups)  # typeshed's stubs leave bygroups untyped

Rules = list[tuple[str, object] | tuple[str, object, str] | object]


class EffLexer(RegexLexer):
    """Lexer for effdsl's `.eff` architecture specs."""

    name = "effdsl"
    aliases: ClassVar[list[str]] = ["eff", "effdsl"]
    filenames: ClassVar[list[str]] = ["*.eff"]
    mimetypes: ClassVar[list[str]] = ["text/x-effdsl"]
    url = "https://github.com/effdsl/effdsl"

    tokens: ClassVar[dict[str, Rules]] = {
        "root": [
            (r"[ \t\f]*\r?\n", Whitespace),
            (r"[ \t\f]+", Whitespace),
            (r"#[^\r\n]*", Comment.Single),
            (r"(network)\b", Keyword.Declaration, "header"),
            (r"\}", Punctuation),
            (r"\{", Punctuation),
            (
                rf"(preset)([ \t]+)({WORD}|{STRING})",
                groups(Keyword, Whitespace, Name.Constant),
                "arguments",
            ),
            (
                rf"({WORD})([ \t]+)(?!{_SHORTHAND_AHEAD})({WORD}){_END}(?![ \t]*=)",
                groups(Keyword, Whitespace, Name.Builtin),
                "arguments",
            ),
            (WORD, Keyword, "arguments"),
            (r"[^\s]+", Name),  # a stray number or character: the checker reports it
        ],
        "header": [
            (r"[ \t]+", Whitespace),
            (WORD, Name.Class),
            (STRING, String.Double),
            (r"\{", Punctuation, "#pop"),
            (r"#[^\r\n]*", Comment.Single),
            default("#pop"),
        ],
        "arguments": [
            (r"\r?\n", Whitespace, "#pop"),
            (r"[ \t\f]+", Whitespace),
            (r"#[^\r\n]*", Comment.Single),
            (
                rf"({WORD})([ \t]*)(=)([ \t]*)",
                groups(Name.Attribute, Whitespace, Operator, Whitespace),
                "value",
            ),
            (SHORTHAND, groups(Name.Attribute, Number)),
            (NUMBER + _END, Number),
            (STRING, String.Double),
            (WORD, Name.Constant),
            (r"\}", Punctuation, "#pop"),
            (r'[^\s#"]+', Name),
            (r'"[^\r\n]*', String.Double),  # an unclosed string, to the end of the line
        ],
        "value": [
            (NUMBER + _END, Number, "#pop"),
            (STRING, String.Double, "#pop"),
            (WORD, Name.Constant, "#pop"),
            default("#pop"),
        ],
    }
