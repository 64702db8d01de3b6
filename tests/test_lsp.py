"""The language server, driven over stdio by pygls's own client, as an editor drives it.

Every test starts `effdsl lsp` in a subprocess with torch made unimportable (so a torch import
anywhere on the server's paths fails the test), speaks JSON-RPC to it and checks what comes
back against the library: diagnostics at the exact ranges of the errors, hover costs equal to
the cost model's, completion lists equal to the AST's tables, formatting equal to `effdsl fmt`.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest

pytest.importorskip("pygls")

from lsprotocol import types as lsp
from pygls.lsp.client import LanguageClient

import effdsl
from effdsl import fuzz
from effdsl.editor import vocabulary
from effdsl.parser import MAX_SPEC_CHARS

from .conftest import ROOT, SPECS, fuzz_long

T = TypeVar("T")

#: `effdsl lsp` with torch blocked: `import torch` raises ImportError in the server.
SERVER = (
    "import sys; sys.modules['torch'] = None; from effdsl.cli import main; sys.exit(main(['lsp']))"
)
TIMEOUT = 30.0
LSP_FUZZ_CASES = 2_000 if fuzz_long() else 80


class Client:
    """A pygls client connected to a server process, collecting published diagnostics."""

    def __init__(self, client: LanguageClient) -> None:
        self.lsp = client
        self.diagnostics: dict[str, list[lsp.Diagnostic]] = {}
        self.versions: dict[str, int] = {}
        self.arrived = asyncio.Condition()

        @client.feature(lsp.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
        async def published(params: lsp.PublishDiagnosticsParams) -> None:
            async with self.arrived:
                self.diagnostics[params.uri] = list(params.diagnostics)
                self.versions[params.uri] = params.version or 0
                self.arrived.notify_all()

    async def wait_for(self, uri: str, version: int) -> list[lsp.Diagnostic]:
        """The diagnostics published for `uri` at `version` (or later)."""

        async def ready() -> None:
            async with self.arrived:
                await self.arrived.wait_for(lambda: self.versions.get(uri, -1) >= version)

        await asyncio.wait_for(ready(), TIMEOUT)
        return self.diagnostics[uri]

    def open(self, uri: str, text: str, version: int = 1) -> None:
        self.lsp.text_document_did_open(
            lsp.DidOpenTextDocumentParams(
                text_document=lsp.TextDocumentItem(
                    uri=uri, language_id="eff", version=version, text=text
                )
            )
        )

    def change(self, uri: str, version: int, new: str, where: lsp.Range | None = None) -> None:
        event: lsp.TextDocumentContentChangeEvent
        if where is None:
            event = lsp.TextDocumentContentChangeWholeDocument(text=new)
        else:
            event = lsp.TextDocumentContentChangePartial(range=where, text=new)
        self.lsp.text_document_did_change(
            lsp.DidChangeTextDocumentParams(
                text_document=lsp.VersionedTextDocumentIdentifier(uri=uri, version=version),
                content_changes=[event],
            )
        )

    async def hover(self, uri: str, line: int, character: int) -> lsp.Hover | None:
        return await self.lsp.text_document_hover_async(
            lsp.HoverParams(
                text_document=lsp.TextDocumentIdentifier(uri=uri),
                position=lsp.Position(line=line, character=character),
            )
        )

    async def complete(self, uri: str, line: int, character: int) -> list[lsp.CompletionItem]:
        result = await self.lsp.text_document_completion_async(
            lsp.CompletionParams(
                text_document=lsp.TextDocumentIdentifier(uri=uri),
                position=lsp.Position(line=line, character=character),
            )
        )
        if result is None:
            return []
        return list(result.items if isinstance(result, lsp.CompletionList) else result)

    async def format(self, uri: str) -> list[lsp.TextEdit] | None:
        return await self.lsp.text_document_formatting_async(
            lsp.DocumentFormattingParams(
                text_document=lsp.TextDocumentIdentifier(uri=uri),
                options=lsp.FormattingOptions(tab_size=2, insert_spaces=True),
            )
        )

    async def symbols(self, uri: str) -> list[Any]:
        result = await self.lsp.text_document_document_symbol_async(
            lsp.DocumentSymbolParams(text_document=lsp.TextDocumentIdentifier(uri=uri))
        )
        return list(result or [])

    async def inlay_hints(self, uri: str, lines: int) -> list[lsp.InlayHint]:
        result = await self.lsp.text_document_inlay_hint_async(
            lsp.InlayHintParams(
                text_document=lsp.TextDocumentIdentifier(uri=uri),
                range=lsp.Range(
                    start=lsp.Position(line=0, character=0),
                    end=lsp.Position(line=lines, character=0),
                ),
            )
        )
        return list(result or [])


@asynccontextmanager
async def session(*command: str) -> AsyncIterator[Client]:
    """A server started by `command` (default: `effdsl lsp` without torch), initialised."""
    client = Client(LanguageClient("effdsl-tests", "1"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = command or (sys.executable, "-c", SERVER)
    await client.lsp.start_io(*args, env=env)
    result = await asyncio.wait_for(
        client.lsp.initialize_async(
            lsp.InitializeParams(
                capabilities=lsp.ClientCapabilities(),
                process_id=os.getpid(),
                client_info=lsp.ClientInfo(name="effdsl-tests"),
            )
        ),
        TIMEOUT,
    )
    assert result.server_info is not None and result.server_info.name == "effdsl"
    offered = result.capabilities
    assert offered.hover_provider and offered.document_formatting_provider
    assert offered.document_symbol_provider and offered.inlay_hint_provider
    assert offered.completion_provider is not None
    assert list(offered.completion_provider.trigger_characters or ()) == [" ", "="]
    client.lsp.initialized(lsp.InitializedParams())
    try:
        yield client
    finally:
        await asyncio.wait_for(client.lsp.shutdown_async(None), TIMEOUT)
        client.lsp.exit(None)
        await client.lsp.stop()


def run(test: Callable[[Client], Awaitable[T]], *command: str) -> T:
    async def main() -> T:
        async with session(*command) as client:
            return await test(client)

    return asyncio.run(main())


def position(text: str, needle: str, occurrence: int = 0) -> lsp.Position:
    """The protocol position (UTF-16) of the `occurrence`-th `needle` in `text`."""
    offset = -1
    for _ in range(occurrence + 1):
        offset = text.index(needle, offset + 1)
    line = text.count("\n", 0, offset)
    start = text.rfind("\n", 0, offset) + 1
    return lsp.Position(line=line, character=len(text[start:offset].encode("utf-16-le")) // 2)


def span_of(text: str, needle: str, occurrence: int = 0) -> lsp.Range:
    start = position(text, needle, occurrence)
    end = lsp.Position(line=start.line, character=start.character + len(needle))
    return lsp.Range(start=start, end=end)


THREE_ERRORS = """\
network t {
  input size=224
  stem conv k3 s2 c32
  stage mbconv e6 k4 s2 c24 x2
  stage mbconv e6 k3 s2 c40 x2 act=qqq
  stage mbconv e6 k3 s1 c40 x1 kernal=3
  head conv k1 c1280
  classifier classes=1000
}
"""
URI = "file:///work/t.eff"


# ---- initialize, diagnostics -------------------------------------------------------------------


def test_three_errors_then_two_after_a_fix() -> None:
    async def test(client: Client) -> tuple[list[lsp.Diagnostic], list[lsp.Diagnostic]]:
        client.open(URI, THREE_ERRORS)
        first = await client.wait_for(URI, 1)
        client.change(URI, 2, "k5", span_of(THREE_ERRORS, "k4"))
        return first, await client.wait_for(URI, 2)

    first, second = run(test)
    expected = [
        ("kernel must be odd, got 4", span_of(THREE_ERRORS, "k4"), None),
        ("unknown act `qqq`", span_of(THREE_ERRORS, "qqq"), "hint: one of `silu`"),
        (
            "unknown attribute `kernal` in `stage`",
            span_of(THREE_ERRORS, "kernal"),
            "hint: did you mean `kernel`?",
        ),
    ]
    assert [(d.message, d.range) for d in first] == [(m, r) for m, r, _ in expected]
    for diagnostic, (_, where, hint) in zip(first, expected, strict=True):
        assert diagnostic.severity == lsp.DiagnosticSeverity.Error
        assert diagnostic.source == "effdsl"
        if hint is None:
            assert not diagnostic.related_information
        else:
            (related,) = diagnostic.related_information or []
            assert related.message.startswith(hint)
            assert related.location.uri == URI and related.location.range == where
    assert [d.message for d in second] == [m for m, _, _ in expected[1:]]


def test_a_valid_spec_has_no_diagnostics_and_warnings_are_warnings() -> None:
    tiny = THREE_ERRORS.replace("k4", "k3").replace(" act=qqq", "").replace(" kernal=3", "")
    small = tiny.replace("size=224", "size=16").replace("k3 s1 c40", "k5 s1 c40")

    async def test(client: Client) -> tuple[list[lsp.Diagnostic], list[lsp.Diagnostic]]:
        client.open("file:///a.eff", tiny)
        client.open("file:///b.eff", small)
        return await client.wait_for("file:///a.eff", 1), await client.wait_for("file:///b.eff", 1)

    clean, warned = run(test)
    assert clean == []
    (warning,) = warned
    assert warning.severity == lsp.DiagnosticSeverity.Warning
    assert warning.message == (
        "feature maps collapse: stage 1 (`stage1`) runs a 3×3 conv on 2×2 maps (input 16 px)"
    )
    assert warning.range == span_of(small, "16")  # where `effdsl check` points: the input size


def test_positions_are_utf16_code_units() -> None:
    text = THREE_ERRORS.replace(" kernal=3", ' name="😀" kernal=3')

    async def test(client: Client) -> list[lsp.Diagnostic]:
        client.open(URI, text)
        return await client.wait_for(URI, 1)

    diagnostics = run(test)
    assert diagnostics[-1].range == span_of(text, "kernal")  # the emoji counts two units


# ---- hover, completion, formatting, outline, hints ---------------------------------------------


def test_hover_reads_the_cost_model() -> None:
    text = (SPECS / "b0.eff").read_text()
    network = effdsl.load(SPECS / "b0.eff")
    report = effdsl.cost(effdsl.lower(network))
    b3 = effdsl.cost(effdsl.lower(effdsl.scale(network, preset="b3")))

    async def test(client: Client) -> list[lsp.Hover | None]:
        client.open(URI, text)
        stage = position(text, "stage mbconv e6 k3 s2 c24")
        preset = position(text, "preset b3")
        kernel = position(text, "k3 s2 c24")
        return [
            await client.hover(URI, stage.line, stage.character),
            await client.hover(URI, preset.line, preset.character),
            await client.hover(URI, kernel.line, kernel.character + 1),
            await client.hover(URI, 0, 3),  # a comment
        ]

    stage, preset, kernel, comment = run(test)
    assert stage is not None and isinstance(stage.contents, lsp.MarkupContent)
    assert stage.contents.kind == lsp.MarkupKind.Markdown
    shown = stage.contents.value
    assert f"**params** {report.stages[1].params:,} (" in shown
    assert f"**MACs** {report.stages[1].macs:,} (" in shown
    assert f"of {report.params:,}" in shown
    assert "| 0 | 16 → 24 | 96 | 4 | 2 | 56×56×24 |" in shown  # expanded 96, SE 4, stride 2
    assert preset is not None and isinstance(preset.contents, lsp.MarkupContent)
    assert f"**params** {b3.params:,}" in preset.contents.value
    assert "| stage1 | MBConv6 k3 | 2 → 3 | 24 → 32 | 75×75 |" in preset.contents.value
    assert kernel is not None and isinstance(kernel.contents, lsp.MarkupContent)
    assert "Kernel size" in kernel.contents.value and "0 … 99" in kernel.contents.value
    assert comment is None


def test_completion_after_stage_offers_the_block_kinds() -> None:
    text = "network t {\n  stage \n  stage mbconv k3 act=\n  stage mbconv k3 act=relu \n  \n}\n"

    async def test(client: Client) -> list[list[lsp.CompletionItem]]:
        client.open(URI, text)
        return [
            await client.complete(URI, 1, 8),
            await client.complete(URI, 2, 22),
            await client.complete(URI, 4, 2),
            await client.complete(URI, 3, 27),
        ]

    kinds, values, keywords, attributes = run(test)
    assert [item.label for item in kinds] == list(vocabulary.block_kinds())
    assert [item.label for item in kinds] == list(effdsl.ast.BLOCK_KINDS)
    assert all(item.kind == lsp.CompletionItemKind.Class for item in kinds)
    documentation = kinds[1].documentation
    assert isinstance(documentation, lsp.MarkupContent) and "depthwise" in documentation.value
    assert [item.label for item in values] == list(effdsl.ast.ACTIVATIONS)
    assert [item.label for item in keywords] == list(vocabulary.statements())
    labels = [item.label for item in attributes]
    assert "kernel" not in labels and "act" not in labels  # given as k3 and act=
    assert {"channels", "repeats", "se", "name"} <= set(labels)
    assert all(item.insert_text == item.label + "=" for item in attributes)


def test_formatting_is_effdsl_fmt_and_keeps_comments() -> None:
    messy = (
        (SPECS / "b0.eff")
        .read_text()
        .replace("  stage mbconv e6 k5 s2 c40   x2", "stage mbconv   k5 e6 x2 s2  c40 # forty")
    )

    async def test(client: Client) -> tuple[list[lsp.TextEdit] | None, list[lsp.TextEdit] | None]:
        client.open(URI, messy)
        client.open("file:///bad.eff", THREE_ERRORS)
        return await client.format(URI), await client.format("file:///bad.eff")

    edits, refused = run(test)
    assert edits is not None and len(edits) == 1
    assert edits[0].new_text == effdsl.format(effdsl.parse(messy))
    assert "# forty" in edits[0].new_text and "# Official scalings" in edits[0].new_text
    assert edits[0].range.start == lsp.Position(line=0, character=0)
    assert edits[0].range.end.line == messy.count("\n")
    assert not refused  # a spec with errors is left alone


def test_outline_and_inlay_hints() -> None:
    text = (SPECS / "efficientnetv2-s.eff").read_text()
    plan = effdsl.lower(effdsl.parse(text))

    async def test(client: Client) -> tuple[list[Any], list[lsp.InlayHint]]:
        client.open(URI, text)
        return await client.symbols(URI), await client.inlay_hints(URI, text.count("\n"))

    symbols, hints = run(test)
    (network,) = symbols
    assert network.name == "efficientnetv2_s"
    names = [child.name for child in network.children]
    assert names == [
        "input",
        "defaults",
        "stem",
        *(s.name for s in plan.stages),
        "head",
        "classifier",
    ]
    stage = network.children[3]
    assert stage.detail == "fused_mbconv e1 k3 s1 c24 x2"
    assert stage.range.start == position(text, "stage fused_mbconv e1")
    shapes = [f"→ {s.out_size}×{s.out_size}×{s.out_channels}" for s in plan.stages]
    assert [h.label for h in hints] == [
        f"→ {plan.stem.out_size}×{plan.stem.out_size}×{plan.stem.out_channels}",
        *shapes,
        f"→ {plan.head.out_size}×{plan.head.out_size}×{plan.head.out_channels}",
    ]
    last_stage = text.splitlines()[hints[-2].position.line]
    assert hints[-2].position.character == len(last_stage.rstrip())


# ---- robustness ----------------------------------------------------------------------------------


def test_the_console_command_serves() -> None:
    """`python -m effdsl lsp --stdio` (what editors run) answers initialize and shutdown."""

    async def test(client: Client) -> list[lsp.Diagnostic]:
        client.open(URI, THREE_ERRORS)
        return await client.wait_for(URI, 1)

    assert len(run(test, sys.executable, "-m", "effdsl", "lsp", "--stdio")) == 3


def test_a_256_kib_document_is_answered_quickly() -> None:
    body = (SPECS / "b0.eff").read_text()
    filler = ("  # " + "x" * 996 + "\n") * ((MAX_SPEC_CHARS - len(body)) // 1001)
    valid = body.replace("  stem ", filler + "  stem ", 1)
    assert MAX_SPEC_CHARS - 1001 < len(valid) <= MAX_SPEC_CHARS
    too_long = valid + "#" * (MAX_SPEC_CHARS - len(valid) + 1)

    async def test(client: Client) -> list[tuple[float, list[lsp.Diagnostic]]]:
        timed = []
        for index, text in enumerate((valid, too_long)):
            uri = f"file:///big{index}.eff"
            start = time.perf_counter()
            client.open(uri, text)
            found = await client.wait_for(uri, 1)
            stage = position(text, "stage mbconv e6 k3 s2 c24")
            await client.hover(uri, stage.line, stage.character)
            timed.append((time.perf_counter() - start, found))
        return timed

    (seconds, found), (seconds_long, found_long) = run(test)
    assert found == []
    assert [d.message for d in found_long] == [
        f"the spec is {len(too_long):,} characters long, more than the limit of {MAX_SPEC_CHARS:,}"
    ]
    # wall time through JSON-RPC on a shared machine; the CPU bound is in test_editor.py
    assert seconds < 5.0 and seconds_long < 5.0


def test_the_fuzzers_cases_never_crash_the_server() -> None:
    """The project's fuzzer's cases (mutated specs, bytes decoded as an editor would, huge and
    broken texts) opened, hovered, completed, outlined and formatted through the protocol: every
    request gets an answer, never an error, and the server is still there at the end."""
    cases = list(fuzz.generate(LSP_FUZZ_CASES, seed=20261130))

    async def test(client: Client) -> int:
        rng = random.Random(5)
        for index, (_source, data) in enumerate(cases):
            text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
            uri = f"file:///fuzz/{index}.eff"
            client.open(uri, text)
            await client.wait_for(uri, 1)
            lines = text.split("\n")
            for _ in range(3):
                line = rng.randrange(len(lines))
                character = rng.randint(0, len(lines[line]) + 1)
                await client.hover(uri, line, character)
                await client.complete(uri, line, character)
            await client.symbols(uri)
            await client.inlay_hints(uri, len(lines))
            await client.format(uri)
            client.lsp.text_document_did_close(
                lsp.DidCloseTextDocumentParams(text_document=lsp.TextDocumentIdentifier(uri=uri))
            )
        client.open("file:///after.eff", THREE_ERRORS)
        return len(await client.wait_for("file:///after.eff", 1))

    assert run(test) == 3
