"""Making user text safe to show: names, paths and source lines can hold anything.

A spec string or a file name can carry `\\x1b]0;...\\x07` (a terminal escape), NUL, tabs,
lone surrogates, bidirectional overrides (U+202E, U+2066–U+2069) or a line separator (U+2028).
Printed raw, they would rewrite a terminal's title, make text read in another order than it
is, break `file:line:col` lines, or make graphviz and XML refuse a label. `printable` spells
every character Python does not call printable (`str.isprintable`: control, format, surrogate,
private-use, unassigned and separator characters other than the space) as an escape instead.
Everything effdsl prints or draws that came from a user goes through it.
"""

from __future__ import annotations


def printable(text: str, *, newlines: bool = False) -> str:
    """`text` with every non-printable character spelled as an escape, never raw.

    With `newlines=True` a newline stays a newline (a label's line break); otherwise it is
    written `\\n`, so one message stays on one line.
    """
    if text.isprintable():  # the common case, in one C call
        return text
    out = []
    for char in text:
        if char.isprintable() or (char == "\n" and newlines):
            out.append(char)
        else:
            out.append(escape(char))
    return "".join(out)


def escape(char: str) -> str:
    """One character as a Python-style escape: `\\n`, `\\x1b`, `\\u202e`, `\\U000e0001`."""
    code = ord(char)
    if char in "\t\r\n":
        return repr(char)[1:-1]
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def markup(text: str, *, newlines: bool = False) -> str:
    """`text` for XML/HTML (an SVG text node or attribute, a graphviz HTML-like label).

    Non-printable characters are escaped first (`printable`): XML 1.0 forbids most control
    characters even as character references, so ESC, NUL, form feed or U+FFFF would make the
    document unreadable. Then `&`, `<`, `>` and both quotes become entities.
    """
    return (
        printable(text, newlines=newlines)
        .replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&#39;")
    )
