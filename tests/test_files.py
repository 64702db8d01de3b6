"""Outputs appear whole or not at all; inputs are never overwritten; checkpoints never run code.

Each writer is made to fail in the middle of writing (a full disk, a crashing exporter, a
`dot` that dies): the target must keep its old content and no temporary file may remain.
"""

from __future__ import annotations

import ast as pyast
import errno
import os
import pathlib
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import effdsl
from effdsl import export
from effdsl.errors import CheckpointError, OutputError
from effdsl.files import atomic_write
from effdsl.plan import lower

from .conftest import ROOT
from .test_guards import cli

TINY = """\
network tiny {
  input size=32
  stem  conv         k3 s2 c8
  stage mbconv    e4 k3 s2 c16 x2 se=0.25
  head  conv         k1 c32
  classifier classes=10
}
"""
OLD = "old content\n"


def tiny_spec(directory: Path, name: str = "tiny.eff") -> Path:
    path = directory / name
    path.write_text(TINY)
    return path


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def full_disk_after_half(original: Callable[..., Any]) -> Callable[..., Any]:
    """A `Path.write_text`/`write_bytes` that writes half of the data, then finds the disk full."""

    def write(self: Path, data: Any, *args: Any, **kwargs: Any) -> Any:
        original(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return write


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Call it, once the test's own files are written, to make every later write fail."""

    def arm() -> None:
        monkeypatch.setattr(pathlib.Path, "write_text", full_disk_after_half(Path.write_text))
        monkeypatch.setattr(pathlib.Path, "write_bytes", full_disk_after_half(Path.write_bytes))

    return arm


# ---- atomic_write ---------------------------------------------------------------------------


def test_atomic_write_writes_text_and_bytes(tmp_path: Path) -> None:
    atomic_write(tmp_path / "a.txt", "é\n")
    atomic_write(tmp_path / "b.bin", b"\x00\xff")
    assert (tmp_path / "a.txt").read_bytes() == "é\n".encode()
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    assert listing(tmp_path) == ["a.txt", "b.bin"]
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


@pytest.mark.parametrize("mode", [0o600, 0o755])
def test_atomic_write_keeps_the_targets_mode(tmp_path: Path, mode: int) -> None:
    target = tmp_path / "t.py"
    target.write_text(OLD)
    target.chmod(mode)
    atomic_write(target, "new\n")
    assert target.read_text() == "new\n" and stat.S_IMODE(target.stat().st_mode) == mode


@pytest.mark.parametrize("data", ["new text\n" * 100, b"new bytes" * 100], ids=["text", "bytes"])
def test_a_full_disk_mid_write_leaves_the_target_alone(
    tmp_path: Path, full_disk: Callable[[], None], data: str | bytes
) -> None:
    target = tmp_path / "out.py"
    target.write_text(OLD)
    full_disk()
    with pytest.raises(OutputError, match="cannot write: No space left on device"):
        atomic_write(target, data)
    assert target.read_text() == OLD
    assert listing(tmp_path) == ["out.py"]


def test_any_exception_mid_write_leaves_the_target_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(self: Path, data: str, *args: Any, **kwargs: Any) -> int:
        Path.write_bytes(self, data[:3].encode())
        raise KeyboardInterrupt

    target = tmp_path / "out.py"
    target.write_text(OLD)
    monkeypatch.setattr(pathlib.Path, "write_text", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, "new\n")
    assert target.read_text() == OLD and listing(tmp_path) == ["out.py"]


def test_a_failed_rename_leaves_the_target_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(source: Any, target: Any) -> None:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    target = tmp_path / "out.py"
    target.write_text(OLD)
    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OutputError, match="cannot write"):
        atomic_write(target, "new\n")
    assert target.read_text() == OLD and listing(tmp_path) == ["out.py"]


def test_atomic_write_refuses_bad_targets(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="does not exist"):
        atomic_write(tmp_path / "missing" / "x.py", "x")
    (tmp_path / "dir.py").mkdir()
    with pytest.raises(OutputError, match="is a directory"):
        atomic_write(tmp_path / "dir.py", "x")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_directory_is_an_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="cannot write"):
            atomic_write(locked / "x.py", "x")
    finally:
        locked.chmod(0o700)


# ---- every writer of the CLI ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["model.py", "model.eff", "model.dot"])
def test_cli_outputs_survive_a_full_disk(
    tmp_path: Path, full_disk: Callable[[], None], name: str
) -> None:
    spec = tiny_spec(tmp_path)
    target = tmp_path / name
    target.write_text(OLD)
    command = "render" if name.endswith(".dot") else "compile"
    full_disk()
    code, stderr = cli(command, str(spec), "-o", str(target))
    assert code == 1 and "No space left on device" in stderr, stderr
    assert target.read_text() == OLD
    assert listing(tmp_path) == sorted([spec.name, name])


@pytest.mark.parametrize("name", ["model.py", "model.eff", "model.dot"])
def test_cli_outputs_are_written_whole(tmp_path: Path, name: str) -> None:
    spec = tiny_spec(tmp_path)
    command = "render" if name.endswith(".dot") else "compile"
    code, stderr = cli(command, str(spec), "-o", str(tmp_path / name))
    assert code == 0, stderr
    assert listing(tmp_path) == sorted([spec.name, name])
    text = (tmp_path / name).read_text()
    if name.endswith(".py"):
        pyast.parse(text)
    elif name.endswith(".eff"):
        assert effdsl.parse(text) == effdsl.parse(TINY)
    else:
        assert text.startswith("digraph") and text.rstrip().endswith("}")


def test_a_crashing_exporter_leaves_the_target_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(model: torch.nn.Module, example: torch.Tensor, temp: Path) -> None:
        temp.write_bytes(b"PK\x03\x04 half an archive")
        raise RuntimeError("exporter crashed")

    _save, load = export._GRAPH_FORMATS[".pt"]
    monkeypatch.setitem(export._GRAPH_FORMATS, ".pt", (crash, load))
    spec = tiny_spec(tmp_path)
    target = tmp_path / "model.pt"
    target.write_bytes(b"old model")
    code, stderr = cli("compile", str(spec), "-o", str(target))
    assert code == 1 and "exporter crashed" in stderr, stderr
    assert target.read_bytes() == b"old model"
    assert listing(tmp_path) == ["model.pt", "tiny.eff"]


def test_a_graph_that_does_not_verify_is_not_moved_into_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save, _load = export._GRAPH_FORMATS[".pt"]

    def wrong(temp: Path) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda x: torch.zeros(x.shape[0], 10)

    monkeypatch.setitem(export._GRAPH_FORMATS, ".pt", (save, wrong))
    spec = tiny_spec(tmp_path)
    code, stderr = cli("compile", str(spec), "-o", str(tmp_path / "model.pt"))
    assert code == 1 and "outputs differ from the module's" in stderr, stderr
    assert listing(tmp_path) == ["tiny.eff"]


@pytest.mark.skipif(os.name != "posix", reason="the fake dot is a shell script")
def test_a_dot_that_dies_mid_drawing_leaves_the_target_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "bin" / "dot"
    fake.parent.mkdir()
    # `dot -Tsvg -o OUT`: write half a picture, then crash
    fake.write_text('#!/bin/sh\nprintf "<svg half" > "$3"\necho "dot: out of memory" >&2\nexit 1\n')
    fake.chmod(0o755)
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda n: str(fake) if n == "dot" else real_which(n))
    spec = tiny_spec(tmp_path / "bin", "tiny.eff")
    target = tmp_path / "model.svg"
    target.write_text(OLD)
    code, stderr = cli("render", str(spec), "-o", str(target))
    assert code == 1 and "out of memory" in stderr, stderr
    assert target.read_text() == OLD
    assert listing(tmp_path) == ["bin", "model.svg"]


# ---- compile never overwrites its input ----------------------------------------------------


def _same_path_spellings(spec: Path) -> dict[str, str]:
    link = spec.with_name("link.eff")
    link.symlink_to(spec.name)
    (spec.parent / "sub").mkdir()
    return {
        "same": str(spec),
        "dotted": str(spec.parent / "sub" / ".." / spec.name),
        "symlink": str(link),
    }


@pytest.mark.parametrize("spelling", ["same", "dotted", "symlink"])
def test_compile_refuses_to_overwrite_its_input(tmp_path: Path, spelling: str) -> None:
    spec = tiny_spec(tmp_path, "tiny.eff")
    output = _same_path_spellings(spec)[spelling]
    code, stderr = cli("compile", str(spec), "-o", output)
    assert code == 1 and "refusing to overwrite the input" in stderr, stderr
    assert spec.read_text() == TINY


@pytest.mark.parametrize("scaling", [[], ["--phi", "1"], ["--preset", "b3"]])
def test_compile_without_output_writes_nothing(tmp_path: Path, scaling: list[str]) -> None:
    spec = tmp_path / "b0.eff"
    spec.write_text((ROOT / "specs" / "b0.eff").read_text())
    code, stderr = cli("compile", str(spec), *scaling)
    assert code == 0, stderr
    assert listing(tmp_path) == ["b0.eff"]


def test_render_refuses_to_overwrite_its_input(tmp_path: Path) -> None:
    spec = tiny_spec(tmp_path, "tiny.dot")
    code, _stderr = cli("render", str(spec), "-o", str(spec))
    assert spec.read_text() == TINY
    assert code == 1


# ---- fmt --write ----------------------------------------------------------------------------

MESSY = TINY.replace("  stem  conv         k3 s2 c8", "stem conv k3   s2 c8  # keep me")


def test_fmt_write_rewrites_in_place_and_keeps_the_mode(tmp_path: Path) -> None:
    spec = tmp_path / "messy.eff"
    spec.write_text(MESSY)
    spec.chmod(0o640)
    assert cli("fmt", "--write", str(spec))[0] == 0
    assert (
        spec.read_text() == effdsl.format(effdsl.parse(MESSY)) and "# keep me" in spec.read_text()
    )
    assert stat.S_IMODE(spec.stat().st_mode) == 0o640
    assert listing(tmp_path) == ["messy.eff"]


def test_fmt_write_keeps_files_with_errors_and_formats_the_rest(tmp_path: Path) -> None:
    broken = tmp_path / "broken.eff"
    broken.write_text(MESSY.replace("k3   s2", "k4 s2"))
    good = tmp_path / "good.eff"
    good.write_text(MESSY)
    code, stderr = cli("fmt", "--write", str(broken), str(good))
    assert code == 1 and "kernel must be odd" in stderr
    assert broken.read_text() == MESSY.replace("k3   s2", "k4 s2")
    assert good.read_text() == effdsl.format(effdsl.parse(MESSY))
    assert listing(tmp_path) == ["broken.eff", "good.eff"]


def test_fmt_write_keeps_the_original_when_the_disk_fills(
    tmp_path: Path, full_disk: Callable[[], None]
) -> None:
    spec = tmp_path / "messy.eff"
    spec.write_bytes(MESSY.encode())
    full_disk()
    code, stderr = cli("fmt", "--write", str(spec))
    assert code == 1 and "No space left on device" in stderr
    assert spec.read_bytes() == MESSY.encode() and listing(tmp_path) == ["messy.eff"]


# ---- checkpoints are loaded with weights_only=True -----------------------------------------


def test_every_torch_load_in_effdsl_is_weights_only() -> None:
    calls = []
    for path in sorted((ROOT / "effdsl").glob("*.py")):
        for node in pyast.walk(pyast.parse(path.read_text(), str(path))):
            if isinstance(node, pyast.Call) and pyast.unparse(node.func) == "torch.load":
                weights_only = [k for k in node.keywords if k.arg == "weights_only"]
                where = f"{path.name}:{node.lineno}"
                assert weights_only, f"{where}: torch.load without weights_only=True"
                value = weights_only[0].value
                assert isinstance(value, pyast.Constant) and value.value is True, where
                calls.append(where)
            if isinstance(node, pyast.Import | pyast.ImportFrom):
                modules = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not {"pickle", "dill", "cloudpickle"} & set(modules), path.name
    assert calls, "no torch.load found: has checkpoint loading moved?"


class _Payload:
    """Unpickling this touches a file: what a malicious checkpoint could do instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


@pytest.fixture
def evil_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "owned"
    path = tmp_path / "evil.pt"
    model = effdsl.build(effdsl.parse(TINY))
    state: dict[str, Any] = dict(model.state_dict())
    state["payload"] = _Payload(marker)
    torch.save(state, path)
    torch.load(path, weights_only=False)  # the payload works when code may run...
    assert marker.exists()
    marker.unlink()
    return path, marker


def test_a_malicious_checkpoint_runs_no_code(evil_checkpoint: tuple[Path, Path]) -> None:
    path, marker = evil_checkpoint
    model = effdsl.build(effdsl.parse(TINY))
    with pytest.raises(CheckpointError, match="weights_only=True"):
        export.load_weights(model, path)
    assert not marker.exists()


def test_compile_with_a_malicious_checkpoint_runs_no_code(
    tmp_path: Path, evil_checkpoint: tuple[Path, Path]
) -> None:
    path, marker = evil_checkpoint
    spec = tiny_spec(tmp_path)
    target = tmp_path / "model.pt"
    code, stderr = cli("compile", str(spec), "-o", str(target), "--weights", str(path))
    assert code == 1 and "cannot read it" in stderr, stderr
    assert not marker.exists() and not target.exists()


def test_a_real_checkpoint_still_loads(tmp_path: Path) -> None:
    network = effdsl.parse(TINY)
    source = effdsl.build(network)
    torch.save(source.state_dict(), tmp_path / "good.pt")
    target = effdsl.build(lower(network))
    export.load_weights(target, tmp_path / "good.pt")
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key
