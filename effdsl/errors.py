"""The one error family of effdsl: every user-facing failure is an `EffError` with a source span.

The CLI prints an error as::

    specs/b0.eff:7:18: error: kernel must be odd, got 4
      stage mbconv e6 k4 s2 c24 x2
                      ^^
      hint: use 1, 3, 5 or 7

Anything that is *not* an `EffError` reaching the CLI is a bug in effdsl, reported as such.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from effdsl.text import printable


@dataclass(frozen=True)
class Span:
    """A range in a source file; lines and columns are 1-based, `end_column` is exclusive."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class EffError(Exception):
    """Base class of every error effdsl reports to a user.

    `span` locates the offending text when there is one; `source` is the text of the file it
    points into, so that `render()` can show the line and a caret; `hint` is a suggestion.
    """

    kind = "error"

    def __init__(
        self,
        message: str,
        span: Span | None = None,
        *,
        hint: str | None = None,
        source: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint
        self.source = source

    def with_source(self, source: str) -> EffError:
        """Attach the file's text (kept when already set) and return self."""
        if self.source is None:
            self.source = source
        return self

    def render(self) -> str:
        """`FILE:LINE:COL: error: MESSAGE`, the source line, a caret and the hint.

        Control characters from the input (names can hold terminal escapes) are spelled as
        escapes, so the text is safe to print.
        """
        where = f"{self.span}: " if self.span else ""
        lines = [printable(f"{where}{self.kind}: {self.message}")]
        if self.span and self.source is not None:
            lines.extend(_excerpt(self.source, self.span))
        if self.hint:
            lines.append(printable(f"  hint: {self.hint}"))
        return "\n".join(lines)

    def __str__(self) -> str:
        where = f"{self.span}: " if self.span else ""
        return f"{where}{self.message}"


class EffWarning(EffError):
    """Not an error: something that works but is probably not what was meant.

    Printed as `FILE:LINE:COL: warning: ...`; a warning never changes an exit code.
    """

    kind = "warning"


class EffSyntaxError(EffError):
    """The text does not follow the grammar."""


class EffSemanticError(EffError):
    """The text parses but breaks a rule of the language (a bound, a duplicate, a typo)."""


class ScalingError(EffError):
    """A scaling request that cannot be applied (unknown preset, bad multiplier, overflow)."""


class LimitError(EffError):
    """A network whose cost exceeds a resource limit; raise the limit to proceed."""


class BuildError(EffError):
    """A plan that a backend cannot turn into a module, or an option it does not support."""


class CheckpointError(EffError):
    """A checkpoint that does not fit the network (missing keys, shape mismatches)."""


class OutputError(EffError):
    """An output path that cannot or must not be written."""


class UsageError(EffError):
    """A public function called with an argument of the wrong type (see `effdsl.arguments`)."""


class ImportRefused(EffError):
    """A model the importer cannot write exactly: names the model, the module and the feature.

    `feature` is the missing feature alone (no model, path or widths), for grouping refusals.
    """

    def __init__(self, message: str, *, feature: str | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.feature = feature or message


class ToolMissingError(EffError):
    """An external program (graphviz's `dot`) or optional package is not installed."""


class EffErrors(EffError):
    """Several errors found in one run (all semantic errors of a file are reported together)."""

    def __init__(self, errors: Sequence[EffError]) -> None:
        if not errors:
            raise ValueError("EffErrors needs at least one error")
        self.errors: tuple[EffError, ...] = tuple(_flatten(errors))
        first = self.errors[0]
        count = len(self.errors)
        suffix = f" (and {count - 1} more)" if count > 1 else ""
        super().__init__(first.message + suffix, first.span, hint=first.hint, source=first.source)

    def with_source(self, source: str) -> EffError:
        for error in self.errors:
            error.with_source(source)
        return super().with_source(source)

    def render(self) -> str:
        shown = [error.render() for error in self.errors[:SHOWN_ERRORS]]
        hidden = len(self.errors) - SHOWN_ERRORS
        if hidden > 0:
            shown.append(f"error: and {hidden:,} more error{'s' if hidden > 1 else ''} not shown")
        return "\n".join(shown)


#: The most errors printed for one file: after that a count (a garbage file has hundreds).
SHOWN_ERRORS = 20


def _flatten(errors: Iterable[EffError]) -> Iterable[EffError]:
    for error in errors:
        if isinstance(error, EffErrors):
            yield from error.errors
        else:
            yield error


def _line(source: str, number: int) -> str | None:
    """Line `number` (1-based) of `source`, found without splitting the whole text."""
    start = 0
    for _ in range(number - 1):
        start = source.find("\n", start) + 1
        if start == 0:
            return None
    end = source.find("\n", start)
    line = source[start:] if end == -1 else source[start:end]
    return line.rstrip("\r")


#: The widest excerpt shown: a longer line is cut to a window around the caret.
EXCERPT_WIDTH = 120


def _excerpt(source: str, span: Span) -> list[str]:
    """The offending line, indented, and carets under the span (clipped to that line).

    Non-printable characters in the line become `?`, one column each, so the caret stays
    aligned; a line wider than `EXCERPT_WIDTH` is shown as a window around the span, with `…`
    where it was cut, so a 255,000-character line prints 120 of them.
    """
    line = _line(source, span.line) if span.line >= 1 else None
    if line is None:
        return []
    start = max(span.column, 1)
    end = span.end_column if span.end_line == span.line else len(line) + 1
    end = max(min(end, len(line) + 1), start + 1)
    first = max(0, min(start - 1 - EXCERPT_WIDTH // 3, len(line) - EXCERPT_WIDTH))
    shown = line[first : first + EXCERPT_WIDTH]
    text = "".join(c if c.isprintable() else "?" for c in shown.replace("\t", " "))
    lead = "…" if first > 0 else ""
    tail = "…" if first + EXCERPT_WIDTH < len(line) else ""
    column = start - first + len(lead)
    width = max(1, min(end - start, len(text) + len(lead) + 1 - column + 1))
    return [f"  {lead}{text}{tail}", "  " + " " * (column - 1) + "^" * width]
