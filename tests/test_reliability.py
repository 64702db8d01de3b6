"""Regressions of the second reliability round (issue 13): each test is one way the guarantees
of docs/reliability.md broke under attack, and fails without its fix.

Reads are bounded and only of regular files; every write refuses inputs, read-only files and
unasked replacements, honours the umask and symlinks, and leaves nothing behind on SIGTERM or
after a SIGKILL; odd checkpoints, machines too small and huge drawings are `EffError`s; what is
printed is printable; API misuse raises `EffError`.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

import effdsl
from effdsl import files
from effdsl.errors import CheckpointError, EffError, OutputError
from effdsl.limits import Limits
from effdsl.scaling import Multipliers, apply

from .conftest import ROOT, SPECS
from .strategies import networks
from .test_files import OLD, TINY, listing, tiny_spec
from .test_guards import cli

B0 = SPECS / "b0.eff"


def run_cli(
    *args: str,
    stdin: Any = subprocess.DEVNULL,
    memory_gb: float = 3,
    timeout: float = 60,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`python -m effdsl ARGS` in a child capped at `memory_gb` of address space."""

    def cap() -> None:
        limit = int(memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", "effdsl", *args],
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=cap,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        check=False,
    )


def one_error(result: subprocess.CompletedProcess[str]) -> str:
    """The child failed cleanly: exit 1 or 2, an `error:` line, no traceback."""
    assert result.returncode in (1, 2), (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert "error:" in result.stderr
    return result.stderr


# ---- 1. reads are bounded, and only of regular files ----------------------------------------


def test_a_device_is_refused_without_reading_it() -> None:
    stderr = one_error(run_cli("check", "/dev/zero", memory_gb=1.5, timeout=30))
    assert "/dev/zero: is a device, not a spec" in stderr


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "f.eff"
    os.mkfifo(fifo)
    start = time.monotonic()
    stderr = one_error(run_cli("check", str(fifo), timeout=30))
    assert "is a FIFO, not a spec" in stderr and time.monotonic() - start < 20


def test_a_directory_and_a_symlink(tmp_path: Path) -> None:
    with pytest.raises(EffError, match="is a directory, not a spec"):
        effdsl.load(tmp_path)
    directory = tmp_path / "dir.eff"
    directory.mkdir()
    code, stderr = cli("compile", str(directory), "-n")
    assert code == 1 and "is a directory, not a spec" in stderr
    link = tmp_path / "link.eff"
    link.symlink_to(B0)
    assert cli("check", str(link))[0] == 0  # a link to a spec is read as the spec


def test_a_huge_sparse_file_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "big.eff"
    with big.open("wb") as handle:
        handle.truncate(1200 * 2**20)  # 1.2 GB of holes
    # capped at 1 GB of address space: reading the file would be a MemoryError (exit 3)
    result = run_cli("check", str(big), memory_gb=1, timeout=30)
    assert "1,258,291,200 bytes is too large for a spec" in one_error(result)


def test_standard_input_is_read_up_to_the_limit_only() -> None:
    with open("/dev/zero", "rb") as endless:  # an input that never ends
        result = run_cli("fmt", "-", stdin=endless, memory_gb=1.5, timeout=30)
    assert "is too large for a spec" in one_error(result)


def test_a_nul_in_a_path_is_an_error() -> None:
    with pytest.raises(EffError, match="not a valid path"):
        effdsl.load("a\0b")


def test_a_byte_order_mark_and_an_escaped_surrogate_pair_are_read(tmp_path: Path) -> None:
    spec = tmp_path / "bom.eff"
    spec.write_bytes(b"\xef\xbb\xbf" + B0.read_bytes())
    assert effdsl.load(spec) == effdsl.load(B0)
    named = TINY.replace("network tiny", 'network "\\ud83d\\ude00"')
    assert effdsl.parse(named).name == "\U0001f600"
    with pytest.raises(EffError):  # a lone surrogate is still refused
        effdsl.parse(TINY.replace("network tiny", 'network "\\ud83d"'))


# ---- 2, 4. nothing a command reads is overwritten, by any path it writes --------------------


def test_render_fallback_never_overwrites_the_spec_or_an_existing_dot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.modules["effdsl.render"].shutil, "which", lambda name: None)
    spec = tmp_path / "net.dot"
    spec.write_text(TINY)
    code, stderr = cli("render", str(spec), "-o", str(tmp_path / "net.svg"))
    assert code == 1 and "was not written either" in stderr
    assert spec.read_text() == TINY
    other = tiny_spec(tmp_path, "other.eff")
    (tmp_path / "x.dot").write_text(OLD)
    code, stderr = cli("render", str(other), "-o", str(tmp_path / "x.svg"))
    assert code == 1 and (tmp_path / "x.dot").read_text() == OLD
    assert listing(tmp_path) == ["net.dot", "other.eff", "x.dot"]


def test_compile_never_overwrites_its_weights(tmp_path: Path) -> None:
    spec = tiny_spec(tmp_path)
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"checkpoint")
    code, stderr = cli("compile", str(spec), "-o", str(weights), "--weights", str(weights))
    assert code == 1 and "refusing to overwrite the input" in stderr
    os.link(weights, tmp_path / "hard.pt")  # another name of the same file
    code, stderr = cli("compile", str(spec), "-o", str(tmp_path / "hard.pt"), "--weights",
                       str(weights))
    assert code == 1 and "refusing to overwrite the input" in stderr
    assert weights.read_bytes() == b"checkpoint"


def test_no_write_of_a_command_replaces_a_file_it_read(tmp_path: Path) -> None:
    """The check sits in `atomic_path` itself, so every writer (and future ones) has it."""
    spec = tiny_spec(tmp_path)
    with files.command_scope():
        effdsl.load(spec)
        with pytest.raises(OutputError, match="an input of this command"):
            files.atomic_write(spec, "x")
        files.atomic_write(spec, TINY + "\n", replace_input=True)  # fmt --write may
    files.atomic_write(tmp_path / "new.py", "x")  # outside a command nothing is tracked


# ---- writes: modes, symlinks, read-only files -----------------------------------------------


def test_new_files_honour_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o077)
    try:
        files.atomic_write(tmp_path / "private.py", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "private.py").stat().st_mode) == 0o600


def test_fmt_write_through_a_symlink_formats_the_real_file(tmp_path: Path) -> None:
    real = tmp_path / "real.eff"
    real.write_text(TINY.replace("  input size=32", "input   size=32"))
    link = tmp_path / "link.eff"
    link.symlink_to(real)
    code, _ = cli("fmt", "--write", str(link))
    assert code == 0 and link.is_symlink()
    assert real.read_text() == effdsl.format(effdsl.parse(TINY))


def test_a_read_only_output_is_not_replaced(tmp_path: Path) -> None:
    target = tmp_path / "out.py"
    target.write_text(OLD)
    target.chmod(0o444)
    code, stderr = cli("compile", str(tiny_spec(tmp_path)), "-o", str(target))
    assert code == 1 and "is read-only" in stderr and target.read_text() == OLD


# ---- 9, 7. SIGTERM and SIGKILL leave nothing behind ------------------------------------------


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = tmp_path / ".out.py.effdsl-99999999-abc.tmp"  # beyond any pid
    alive = tmp_path / f".out.py.effdsl-{os.getppid()}-abc.tmp"  # a running process
    theirs = tmp_path / ".out.py.xyz.tmp"  # not effdsl's naming
    for path in (dead, alive, theirs):
        path.write_text("half")
    files.atomic_write(tmp_path / "out.py", "x")
    assert listing(tmp_path) == sorted([alive.name, theirs.name, "out.py"])


FAKE_DOT = """#!{python}
import os, sys, time
open(sys.argv[-1], "w").write("half")
open({pidfile!r}, "w").write(str(os.getpid()))
time.sleep(120)
"""


def test_sigterm_kills_dot_and_removes_the_temporary_file(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    pidfile = tmp_path / "dot.pid"
    dot = bin_dir / "dot"
    dot.write_text(FAKE_DOT.format(python=sys.executable, pidfile=str(pidfile)))
    dot.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    spec = tiny_spec(tmp_path)
    child = subprocess.Popen(
        [sys.executable, "-m", "effdsl", "render", str(spec), "-o", str(out / "x.svg")],
        env={**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not pidfile.exists() or not pidfile.read_text():
        assert time.monotonic() < deadline and child.poll() is None, "dot never started"
        time.sleep(0.05)
    dot_pid = int(pidfile.read_text())
    assert listing(out), "the temporary file exists while dot runs"
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=30)
    assert child.returncode == 128 + signal.SIGTERM and "terminated" in stderr
    assert listing(out) == []
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):
        os.kill(dot_pid, 0)


def test_a_drawing_too_big_for_graphviz_is_refused_quickly(tmp_path: Path) -> None:
    spec = tmp_path / "long.eff"
    spec.write_text(TINY.replace("x2", "x400"))
    start = time.monotonic()
    code, stderr = cli("render", str(spec), "--detail", "layer", "-o", str(tmp_path / "l.svg"))
    assert code == 1 and "nodes, more than graphviz lays out in seconds" in stderr
    assert time.monotonic() - start < 5 and listing(tmp_path) == ["long.eff"]


# ---- 5. odd checkpoints ---------------------------------------------------------------------


def _checkpoint_cases() -> dict[str, Callable[[Any], Any]]:
    import torch

    return {
        "meta": lambda t: torch.empty_like(t, device="meta"),
        "sparse": lambda t: t.to_sparse(),
        "quantized": lambda t: torch.quantize_per_tensor(t, 0.1, 0, torch.qint8),
        "complex": lambda t: t.to(torch.complex64),
        "nan": lambda t: torch.full_like(t, math.nan),
        "inf": lambda t: torch.full_like(t, math.inf),
        "int": lambda t: t.to(torch.int64),
    }


@pytest.mark.parametrize("case", list(_checkpoint_cases()))
def test_odd_checkpoints_are_checkpoint_errors_naming_the_key(tmp_path: Path, case: str) -> None:
    import torch

    from effdsl.export import load_weights

    model = effdsl.build(effdsl.parse(TINY))
    state = model.state_dict()
    key = "stem.conv.weight"
    state[key] = _checkpoint_cases()[case](state[key])
    path = tmp_path / "w.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=re.escape(f"`{key}`")):
        load_weights(effdsl.build(effdsl.parse(TINY)), path)


def test_a_checkpoint_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    from effdsl.export import load_weights

    os.mkfifo(tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="is a FIFO"):
        load_weights(effdsl.build(effdsl.parse(TINY)), tmp_path / "w.pt")


# ---- 6. what cannot be built is refused, and a failed allocation is an error -----------------

HUGE = """\
network huge {
  input size=2048
  stem conv k3 s2 c64
  stage mbconv e6 k3 s1 c64 x6
  head conv k1 c64
  classifier classes=10
}
"""


def test_the_default_activation_limit_refuses_a_net_no_machine_here_can_run(
    tmp_path: Path,
) -> None:
    spec = tmp_path / "huge.eff"
    spec.write_text(HUGE)
    code, stderr = cli("compile", str(spec), "--dry-run")  # it reports what a real run does
    assert code == 1 and "bytes of activations per image, more than the limit" in stderr
    assert Limits().activation_bytes <= 16e9


def test_export_checks_the_memory_the_machine_has(tmp_path: Path) -> None:
    spec = tmp_path / "huge.eff"
    spec.write_text(HUGE)
    # within raised limits, but not within 6 GB of address space (nor, at 30 GB, this machine)
    result = run_cli("compile", str(spec), "-o", str(tmp_path / "x.pt"), "--max-activations",
                     "1T", memory_gb=6, timeout=120, env={"OPENBLAS_NUM_THREADS": "1"})
    assert "bytes of memory, more than the" in one_error(result)
    assert listing(tmp_path) == ["huge.eff"]


@pytest.mark.parametrize(
    "failure",
    [MemoryError(), RuntimeError("[enforce fail at alloc_cpu.cpp:116] . DefaultCPUAllocator: "
                                 "can't allocate memory: you tried to allocate 123456 bytes.")],
    ids=["python", "torch"],
)
def test_an_allocation_failure_anywhere_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    import effdsl.cli

    def fail(args: Any) -> int:
        raise failure

    monkeypatch.setattr(effdsl.cli, "cmd_check", fail)
    code, stderr = cli("check", str(B0))
    assert code == 1 and stderr.startswith("error: out of memory") and "internal" not in stderr
    if isinstance(failure, RuntimeError):
        assert "123,456 bytes" in stderr


# ---- 8. plot's cost does not grow with presets × blocks --------------------------------------


def test_plot_of_many_presets_on_many_blocks_takes_seconds(tmp_path: Path) -> None:
    presets = "\n".join(f"  preset p{i} width={1 + i / 50:.2f} resolution={224 + i}"
                        for i in range(60))
    spec = tmp_path / "big.eff"
    spec.write_text(
        f"network big {{\n  input size=224\n{presets}\n  stem conv k3 s2 c32\n"
        "  stage mbconv e6 k3 s1 c16 x950\n  stage mbconv e6 k3 s2 c24 x950\n"
        "  head conv k1 c1280\n  classifier classes=10\n}\n"
    )
    start = time.process_time()
    code, stderr = cli("plot", str(spec), "-o", str(tmp_path / "p.svg"), "--phi-range", "-2:0.2")
    assert code == 0, stderr
    assert time.process_time() - start < 5  # it took 54 s


def test_network_cost_equals_the_lowered_cost_on_every_shipped_spec() -> None:
    from effdsl.cost import cost, network_cost

    for path in sorted(SPECS.glob("*.eff")):
        network = effdsl.load(path)
        for scaled in [network, *(effdsl.scale(network, preset=p.name) for p in network.presets)]:
            assert network_cost(scaled) == cost(effdsl.lower(scaled)), path


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(network=networks(max_stages=4))
def test_network_cost_equals_the_lowered_cost_on_any_network(network: effdsl.Network) -> None:
    """The shortcut (at most three blocks a line) holds for stages of several block lines."""
    from effdsl.cost import cost, network_cost

    try:
        lowered = cost(effdsl.lower(network))
    except EffError:
        return  # a network the plan refuses (e.g. a MixConv slice left empty)
    assert network_cost(network) == lowered


# ---- 10, 11, 12. what is printed or drawn is printable, and bounded --------------------------

NASTY = "a\x1b]0;pwned\x07\x00\x0c\uffff\u202e\u2066\u200f\u2028b"


def test_plot_svg_is_xml_whatever_the_name(tmp_path: Path) -> None:
    import xml.etree.ElementTree as ET

    from effdsl.plot import plot

    network = effdsl.parse(TINY).model_copy(update={"name": NASTY})
    plot(network, tmp_path / "p.svg", (0.0, 1.0))
    root = ET.parse(tmp_path / "p.svg").getroot()
    title = root.findtext("{http://www.w3.org/2000/svg}title") or ""
    assert title.startswith("a\\x1b]0;pwned\\x07\\x00\\x0c\\uffff\\u202e\\u2066\\u200f\\u2028b")


def test_bidi_and_separators_never_reach_the_terminal(tmp_path: Path) -> None:
    spec = tmp_path / "n.eff"
    spec.write_text(TINY.replace("network tiny", f"network {json.dumps(NASTY)}"))  # escaped
    summary = run_cli("compile", str(spec), "-n", timeout=60)  # the name in the summary
    assert summary.returncode == 0, summary.stderr
    preset = NASTY.replace("\0", "")  # a NUL cannot be an argument
    refused = run_cli("compile", str(spec), "--preset", preset, timeout=60)  # and in an error
    assert "has no preset" in one_error(refused)
    for char in "\x1b\x00\x0c\uffff\u202e\u2066\u200f\u2028":
        for text in (summary.stdout, summary.stderr, refused.stdout, refused.stderr):
            assert char not in text, (char, text)


def test_wrote_path_is_printable(tmp_path: Path) -> None:
    spec = tiny_spec(tmp_path)
    out = tmp_path / "evil\x1b[31m\u202e.py"
    result = run_cli("compile", str(spec), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\u202e" not in result.stdout
    assert "evil\\x1b[31m\\u202e.py" in result.stdout


def test_an_error_flood_prints_a_bounded_report(tmp_path: Path) -> None:
    line = " ".join(["stage mbconv k4 c8"] * 101)  # 101 errors, each a kernel of 4
    line += " " + "#" * (255_000 - len(line))
    spec = tmp_path / "flood.eff"
    spec.write_text(f"network f {{ input size=32\n{line}\n}}\n")
    start = time.process_time()
    code, stderr = cli("check", str(spec))
    assert code == 1 and time.process_time() - start < 1.0
    assert len(stderr) < 20_000, len(stderr)  # 25.9 MB before


# ---- 13. API misuse raises EffError ---------------------------------------------------------


def _misuse() -> dict[str, Callable[[], object]]:
    net = effdsl.load(B0)
    return {
        "Limits(params=10**400)": lambda: Limits(params=10**400),
        "apply(width=nan)": lambda: apply(net, Multipliers(width=math.nan)),
        "apply(depth=inf)": lambda: apply(net, Multipliers(depth=math.inf)),
        "Multipliers(width=-1)": lambda: Multipliers(width=-1),
        "Multipliers(resolution=2.5)": lambda: Multipliers(resolution=2.5),  # type: ignore[arg-type]
        "load(NUL)": lambda: effdsl.load("a\0b"),
        "load(int)": lambda: effdsl.load(3),  # type: ignore[arg-type]
        "parse(bytes)": lambda: effdsl.parse(b"network"),  # type: ignore[arg-type]
        "lower(max_blocks=None)": lambda: effdsl.lower(net, max_blocks=None),  # type: ignore[arg-type]
        "lower(str)": lambda: effdsl.lower("net"),  # type: ignore[arg-type]
        "apply(str)": lambda: apply("net", Multipliers()),  # type: ignore[arg-type]
        "model_copy(kernel=4)": lambda: net.stages[0].model_copy(update={"kernel": 4}),
        "model_copy(stages=())": lambda: net.model_copy(update={"stages": ()}),
        "model_copy(unknown)": lambda: net.model_copy(update={"colour": "red"}),
        "model_copy(name=1)": lambda: net.model_copy(update={"name": 1}),
    }


@pytest.mark.parametrize("call", list(_misuse()))
def test_api_misuse_raises_eff_error(call: str) -> None:
    with pytest.raises(EffError):
        _misuse()[call]()


def test_model_copy_validates_every_field_including_new_ones() -> None:
    """The validation is general: it takes the node's own fields, so attributes added to the
    language later are checked too (no list of fields to keep up to date)."""
    net = effdsl.load(B0)
    for node in (net, net.input, net.scaling, net.defaults, net.stem, net.stages[0], net.head,
                 net.classifier, *net.presets):
        for name, field in type(node).model_fields.items():
            if field.exclude:
                continue
            with pytest.raises(EffError):
                node.model_copy(update={name: object()})
    same = net.model_copy(update={"name": "other"})
    assert same.name == "other" and same.stages == net.stages
