"""The VS Code extension in editors/vscode: its manifest, its grammar under VS Code's own
tokenizer, and its packaging into a .vsix.

The grammar test runs `node editors/vscode/test/grammar.test.js` (vscode-textmate on
vscode-oniguruma, installed by tools/system-deps.sh with `npm ci`); without node or those
packages it is skipped, except in CI, where it fails. Packaging needs @vscode/vsce (`npm ci` in
editors/vscode, 140 MB): it runs where that is installed and is skipped elsewhere, CI included.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from effdsl.cli import build_parser

from .conftest import ROOT

EXTENSION = ROOT / "editors" / "vscode"


def _manifest() -> dict[str, object]:
    data = json.loads((EXTENSION / "package.json").read_text())
    assert isinstance(data, dict)
    return data


def _missing(what: str) -> None:
    message = f"{what} is not installed (bash tools/system-deps.sh installs it)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def test_the_manifest_ties_eff_files_to_the_grammar_and_the_server() -> None:
    manifest = _manifest()
    contributes = manifest["contributes"]
    assert isinstance(contributes, dict)
    (language,) = contributes["languages"]
    assert language["id"] == "eff" and language["extensions"] == [".eff"]
    configuration = json.loads((EXTENSION / language["configuration"]).read_text())
    assert configuration["comments"]["lineComment"] == "#"
    assert ["{", "}"] in configuration["brackets"]
    (grammar,) = contributes["grammars"]
    syntax = json.loads((EXTENSION / grammar["path"]).read_text())
    assert grammar["language"] == "eff" and grammar["scopeName"] == syntax["scopeName"]
    settings = contributes["configuration"]["properties"]
    command = settings["effdsl.server.command"]["default"]
    args = settings["effdsl.server.args"]["default"]
    assert command == "effdsl" and args == ["lsp"]
    parsed = build_parser().parse_args(args)  # the server command exists in the CLI
    assert parsed.command == "lsp"
    assert (EXTENSION / str(manifest["main"])).is_file()


def test_the_grammar_gives_every_token_class_its_scope() -> None:
    node = shutil.which("node")
    if node is None:
        _missing("node")
    assert node is not None
    if not (EXTENSION / "test" / "node_modules" / "vscode-textmate").is_dir():
        _missing("editors/vscode/test/node_modules (vscode-textmate)")
    run = subprocess.run(
        [node, str(EXTENSION / "test" / "grammar.test.js")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert ", 0 wrong: " in run.stdout
    counts = dict(
        (cls, int(n))
        for cls, n in (part.rsplit(" ", 1) for part in run.stdout.split(": ", 1)[1].split(", "))
    )
    assert min(counts.values()) > 0 and len(counts) == 14


def test_the_extension_packages_into_a_vsix(tmp_path: Path) -> None:
    vsce = EXTENSION / "node_modules" / ".bin" / "vsce"
    if not vsce.exists():
        pytest.skip("@vscode/vsce is not installed (npm ci in editors/vscode)")
    out = tmp_path / "effdsl.vsix"
    subprocess.run(
        [str(vsce), "package", "--out", str(out)],
        cwd=EXTENSION,
        check=True,
        capture_output=True,
        timeout=300,
    )
    names = zipfile.ZipFile(out).namelist()
    for needed in (
        "extension/package.json",
        "extension/extension.js",
        "extension/language-configuration.json",
        "extension/syntaxes/eff.tmLanguage.json",
        "extension/node_modules/vscode-languageclient/node.js",
    ):
        assert needed in names
    assert not any(name.startswith("extension/test/") for name in names)
