"""Making user text safe to show: names from specs can hold control characters.

A spec string can carry `\\x1b]0;...\\x07` (a terminal escape), NUL, tabs or lone surrogates.
Printed raw, they would rewrite a terminal's title, break `file:line:col` lines, or make
graphviz and XML refuse a label. `printable` spells them as escapes instead.
"""

from __future__ import annotations

import unicodedata


def printable(text: str, *, newlines: bool = False) -> str:
    """`text` with control characters and non-characters spelled as escapes, never raw.

    With `newlines=True` a newline stays a newline (a label's line break); otherwise it is
    written `\\n`, so one message stays on one line.
    """
    out = []
    for char in text:
        code = ord(char)
        if char == "\n" and newlines:
            out.append(char)
        elif char in "\t\r\n":
            out.append(repr(char)[1:-1])
        elif unicodedata.category(char) == "Cc":
            out.append(f"\\x{code:02x}")
        elif unicodedata.category(char) == "Cs" or code in (0xFFFE, 0xFFFF):
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)
