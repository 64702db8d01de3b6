"""`effdsl lsp`: the language server, a thin pygls adapter over `effdsl.editor.analysis`.

One small function per LSP feature translates between protocol types and the analysis of the
document's text: problems become diagnostics (published on open at once, and on each change
after `DEBOUNCE_SECONDS` of quiet), hover, completion, formatting, document symbols and inlay
hints. No language logic lives here.

Positions: effdsl counts lines by `\\n` and columns in code points from 1; the protocol counts
from 0 in the negotiated encoding (UTF-16 unless the client offers another). `_Lines` converts
between the two on the text the analysis saw. Needs the `lsp` extra (pygls); never imports torch.
"""

from __future__ import annotations

import asyncio
import logging

from lsprotocol import types as lsp
from pygls.lsp.server import LanguageServer

from effdsl.editor.analysis import Analysis, Problem, Symbol, analyse
from effdsl.errors import Span
from effdsl.text import printable
from effdsl.version import __version__

#: How long a document must stay unchanged before it is checked again while being typed.
DEBOUNCE_SECONDS = 0.25

logger = logging.getLogger(__name__)


class _Lines:
    """Converts between effdsl's spans and protocol positions over one text."""

    def __init__(self, server: LanguageServer, analysis: Analysis) -> None:
        self.units = server.workspace.position_codec.client_num_units
        self.lines = analysis.lines

    def _line(self, index: int) -> str:
        return self.lines[index] if 0 <= index < len(self.lines) else ""

    def position(self, line: int, column: int) -> lsp.Position:
        """1-based line and code-point column → a protocol position (clamped to the text)."""
        index = min(max(line - 1, 0), max(len(self.lines) - 1, 0))
        text = self._line(index)
        offset = min(max(column - 1, 0), len(text))
        return lsp.Position(line=index, character=self.units(text[:offset]))

    def range(self, span: Span) -> lsp.Range:
        return lsp.Range(
            start=self.position(span.line, span.column),
            end=self.position(span.end_line, span.end_column),
        )

    def from_client(self, position: lsp.Position) -> tuple[int, int]:
        """A protocol position → effdsl's 1-based line and code-point column."""
        text = self._line(position.line)
        units = 0
        for index, char in enumerate(text):
            if units >= position.character:
                return position.line + 1, index + 1
            units += self.units(char)
        return position.line + 1, len(text) + 1


def _analysis(server: LanguageServer, uri: str) -> Analysis:
    document = server.workspace.get_text_document(uri)
    return analyse(document.source, uri)


def _diagnostic(uri: str, lines: _Lines, problem: Problem) -> lsp.Diagnostic:
    where = lines.range(problem.span)
    related = None
    if problem.hint:
        related = [
            lsp.DiagnosticRelatedInformation(
                location=lsp.Location(uri=uri, range=where),
                message=f"hint: {printable(problem.hint)}",
            )
        ]
    severity = lsp.DiagnosticSeverity.Error
    if problem.severity == "warning":
        severity = lsp.DiagnosticSeverity.Warning
    return lsp.Diagnostic(
        range=where,
        message=printable(problem.message),
        severity=severity,
        source="effdsl",
        related_information=related,
    )


class EffLanguageServer(LanguageServer):
    """The server, with the pending diagnostics of each document being typed."""

    def __init__(self) -> None:
        super().__init__("effdsl", __version__)
        self.pending: dict[str, asyncio.TimerHandle] = {}

    def publish(self, uri: str) -> None:
        self.pending.pop(uri, None)
        document = self.workspace.get_text_document(uri)
        analysis = _analysis(self, uri)
        lines = _Lines(self, analysis)
        self.text_document_publish_diagnostics(
            lsp.PublishDiagnosticsParams(
                uri=uri,
                version=document.version,
                diagnostics=[_diagnostic(uri, lines, p) for p in analysis.problems()],
            )
        )

    def publish_later(self, uri: str) -> None:
        waiting = self.pending.pop(uri, None)
        if waiting is not None:
            waiting.cancel()
        loop = asyncio.get_running_loop()
        self.pending[uri] = loop.call_later(DEBOUNCE_SECONDS, self.publish, uri)


server = EffLanguageServer()


@server.feature(lsp.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: EffLanguageServer, params: lsp.DidOpenTextDocumentParams) -> None:
    ls.publish(params.text_document.uri)


@server.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)
async def did_change(ls: EffLanguageServer, params: lsp.DidChangeTextDocumentParams) -> None:
    ls.publish_later(params.text_document.uri)


@server.feature(lsp.TEXT_DOCUMENT_DID_SAVE)
def did_save(ls: EffLanguageServer, params: lsp.DidSaveTextDocumentParams) -> None:
    ls.publish(params.text_document.uri)


@server.feature(lsp.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: EffLanguageServer, params: lsp.DidCloseTextDocumentParams) -> None:
    uri = params.text_document.uri
    waiting = ls.pending.pop(uri, None)
    if waiting is not None:
        waiting.cancel()
    ls.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(uri=uri, diagnostics=[]))


@server.feature(lsp.TEXT_DOCUMENT_HOVER)
def hover(ls: EffLanguageServer, params: lsp.HoverParams) -> lsp.Hover | None:
    analysis = _analysis(ls, params.text_document.uri)
    lines = _Lines(ls, analysis)
    found = analysis.hover(*lines.from_client(params.position))
    if found is None:
        return None
    return lsp.Hover(
        contents=lsp.MarkupContent(kind=lsp.MarkupKind.Markdown, value=found.markdown),
        range=lines.range(found.span),
    )


_COMPLETION_KINDS = {
    "keyword": lsp.CompletionItemKind.Keyword,
    "kind": lsp.CompletionItemKind.Class,
    "attribute": lsp.CompletionItemKind.Property,
    "value": lsp.CompletionItemKind.EnumMember,
}


@server.feature(lsp.TEXT_DOCUMENT_COMPLETION, lsp.CompletionOptions(trigger_characters=[" ", "="]))
def completion(ls: EffLanguageServer, params: lsp.CompletionParams) -> lsp.CompletionList:
    analysis = _analysis(ls, params.text_document.uri)
    line, column = _Lines(ls, analysis).from_client(params.position)
    items = [
        lsp.CompletionItem(
            label=c.label,
            kind=_COMPLETION_KINDS[c.kind],
            detail=c.detail,
            documentation=lsp.MarkupContent(kind=lsp.MarkupKind.Markdown, value=c.documentation),
            insert_text=c.insert,
            sort_text=f"{index:03d}",  # the language's order, not the alphabet's
        )
        for index, c in enumerate(analysis.completions(line, column))
    ]
    return lsp.CompletionList(is_incomplete=False, items=items)


@server.feature(lsp.TEXT_DOCUMENT_FORMATTING)
def formatting(
    ls: EffLanguageServer, params: lsp.DocumentFormattingParams
) -> list[lsp.TextEdit] | None:
    analysis = _analysis(ls, params.text_document.uri)
    formatted = analysis.formatted()
    if formatted is None or formatted == analysis.text:
        return [] if formatted is not None else None
    lines = _Lines(ls, analysis)
    last = len(analysis.lines)
    whole = lsp.Range(start=lsp.Position(line=0, character=0), end=lines.position(last, 10**9))
    return [lsp.TextEdit(range=whole, new_text=formatted)]


_SYMBOL_KINDS = {
    "network": lsp.SymbolKind.Module,
    "statement": lsp.SymbolKind.Property,
    "preset": lsp.SymbolKind.Constant,
    "block": lsp.SymbolKind.Class,
}


def _symbol(lines: _Lines, symbol: Symbol) -> lsp.DocumentSymbol:
    return lsp.DocumentSymbol(
        name=printable(symbol.name) or "?",
        detail=printable(symbol.detail),
        kind=_SYMBOL_KINDS[symbol.kind],
        range=lines.range(symbol.span),
        selection_range=lines.range(symbol.selection),
        children=[_symbol(lines, child) for child in symbol.children],
    )


@server.feature(lsp.TEXT_DOCUMENT_DOCUMENT_SYMBOL)
def document_symbol(
    ls: EffLanguageServer, params: lsp.DocumentSymbolParams
) -> list[lsp.DocumentSymbol]:
    analysis = _analysis(ls, params.text_document.uri)
    lines = _Lines(ls, analysis)
    return [_symbol(lines, s) for s in analysis.symbols()]


@server.feature(lsp.TEXT_DOCUMENT_INLAY_HINT)
def inlay_hint(ls: EffLanguageServer, params: lsp.InlayHintParams) -> list[lsp.InlayHint]:
    analysis = _analysis(ls, params.text_document.uri)
    lines = _Lines(ls, analysis)
    first, last = params.range.start.line + 1, params.range.end.line + 1
    return [
        lsp.InlayHint(
            position=lines.position(hint.line, hint.column),
            label=hint.label,
            kind=lsp.InlayHintKind.Type,
            padding_left=True,
        )
        for hint in analysis.inlay_hints()
        if first <= hint.line <= last
    ]


def main() -> None:
    """Serve over stdin and stdout until the client says exit."""
    server.start_io()
