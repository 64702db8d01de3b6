"""The fuzzer's cases beyond spec text: the command line and the public Python API.

    case = cli_case(rng, fixture)      # argv over every subcommand, flag and file kind
    run_cli_case(case, fixture)        # main(argv) in this process, or in a capped child
    case = api_case(rng, fixture)      # one exported function or type, odd arguments
    run_api_case(case)

**CLI cases** draw a subcommand and flags (valid values, edge values, garbage, unknown flags)
and give them paths from a fixture directory holding every kind of file: a spec, a broken
spec, a FIFO without a writer, `/dev/zero`, a directory, a symlink, a dangling symlink, a
2 GB sparse file, a read-only output, a spec named like an output (`net.dot`, `net.py`), odd
names (escape sequences, bidirectional controls). The properties: the exit code is 0, 1 or 2
(never 3, never a traceback); all that is printed is printable (`str.isprintable`, lines and
tabs aside); no input file changed (bytes and mode); no temporary file left. One case in
`CHILD_EVERY` runs as `python -m effdsl` in a child capped at `CHILD_MEMORY_GB` of address
space, which must end within `CHILD_TIMEOUT` seconds the same way.

**API cases** call a function or type that `effdsl` exports (and the `ast` nodes'
`model_copy`) with arguments drawn from a pool of right and wrong values (NaN, ±inf, 10**400,
NUL in a path, bytes, None, the wrong node); any exception but an `EffError` is a bug. Calls
that do not bind to the signature are not made: that is Python's `TypeError`, not effdsl's.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import math
import os
import random
import resource
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from effdsl import ast
from effdsl.errors import EffError

#: One CLI case in this many runs in a child process under a memory cap.
CHILD_EVERY = 40
CHILD_MEMORY_GB = 2.0
CHILD_TIMEOUT = 30.0

_SPEC = """\
network fixture {
  input size=32
  preset small width=0.5 depth=1 resolution=32
  stem conv k3 s2 c8
  stage mbconv e4 k3 s2 c16 x2 se=0.25
  head conv k1 c32
  classifier classes=10
}
"""
NASTY = "\x1b]0;t\x07\u202e\u2066\u2028\x0c"


class SurfaceFailure(Exception):
    """A CLI or API case broke a property (an exit code, printed text, a changed input)."""


# ---- the fixture: a directory with every kind of file ----------------------------------------


@dataclass
class Fixture:
    """Files the cases point at, and what the inputs held before each case."""

    root: Path
    inputs: dict[str, Path]  # role -> path that must never change
    outputs: dict[str, Path]  # role -> path a case may write
    others: dict[str, str]  # role -> a path of an odd kind (FIFO, device, ...)

    def snapshot(self) -> dict[Path, tuple[bytes, int]]:
        return {
            path: (path.read_bytes(), stat.S_IMODE(path.stat().st_mode))
            for path in self.inputs.values()
        }

    def read_by(self, argv: tuple[str, ...]) -> set[Path]:
        """The fixture's inputs that `argv` reads (any argument but an output's), through
        symlinks."""
        named = set()
        for index, argument in enumerate(argv):
            if index and argv[index - 1] in ("-o", "--output"):
                continue
            with contextlib.suppress(OSError, ValueError):
                named.add(Path(argument.removeprefix("--output=")).resolve())
        return {path for path in self.inputs.values() if path.resolve() in named}

    def restore(self, snapshot: dict[Path, tuple[bytes, int]]) -> None:
        """Put back inputs that a case was allowed to change (an output named like one)."""
        for path, (data, mode) in snapshot.items():
            if not path.exists() or path.read_bytes() != data:
                path.unlink(missing_ok=True)
                path.write_bytes(data)
            path.chmod(mode)

    def reset_outputs(self) -> None:
        """Remove what the last case wrote (the read-only output is recreated as it was)."""
        for role, path in self.outputs.items():
            with contextlib.suppress(FileNotFoundError):
                path.chmod(0o644)
                path.unlink()
            if role == "readonly":
                path.write_text("old\n")
                path.chmod(0o444)
        for leftover in self.root.iterdir():
            if leftover.is_file() and leftover.name.startswith(".") and "effdsl" in leftover.name:
                leftover.unlink()


def make_fixture(root: Path) -> Fixture:
    """Write the fixture's files into `root` (an empty directory)."""
    root.mkdir(parents=True, exist_ok=True)
    spec = root / "spec.eff"
    spec.write_text(_SPEC)
    broken = root / "broken.eff"
    broken.write_text(_SPEC.replace("k3 s2 c16", "k4 s3 c0 bogus=1"))
    as_dot = root / "net.dot"
    as_dot.write_text(_SPEC)
    as_py = root / "net.py"
    as_py.write_text(_SPEC)
    weights = root / "w.pt"
    weights.write_bytes(b"not a checkpoint")
    odd = root / f"odd{NASTY}.eff"
    odd.write_text(_SPEC.replace("network fixture", f'network "{NASTY}"'))
    fifo = root / "fifo.eff"
    with contextlib.suppress(OSError, AttributeError):
        os.mkfifo(fifo)
    directory = root / "dir.eff"
    directory.mkdir(exist_ok=True)
    link = root / "link.eff"
    with contextlib.suppress(OSError):
        link.symlink_to(spec)
    dangling = root / "dangling.eff"
    with contextlib.suppress(OSError):
        dangling.symlink_to(root / "missing.eff")
    huge = root / "huge.eff"
    with huge.open("wb") as handle:
        handle.truncate(2 * 2**30)  # 2 GB of holes: no disk used
    readonly = root / "readonly.py"
    readonly.write_text("old\n")
    readonly.chmod(0o444)
    inputs = {"spec": spec, "broken": broken, "as_dot": as_dot, "as_py": as_py,
              "weights": weights, "odd": odd}
    outputs = {name: root / name for name in (
        "out.py", "out.eff", "out.dot", "out.svg", "out.json", "out.pt", f"out{NASTY}.py",
        "spec_small.py", "spec_phi1.py", "spec.py", "fmt.eff", "plot.svg",
    )}
    outputs["readonly"] = readonly
    others = {"fifo": str(fifo), "device": "/dev/zero", "null": "/dev/null",
              "directory": str(directory), "link": str(link), "dangling": str(dangling),
              "huge": str(huge), "missing": str(root / "missing.eff"), "nul": "a\0b.eff",
              "stdin": "-"}
    return Fixture(root, inputs, outputs, others)


# ---- CLI cases ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CliCase:
    """`effdsl ARGV`, in this process or in a capped child."""

    argv: tuple[str, ...]
    child: bool = False

    def __str__(self) -> str:
        return "effdsl " + " ".join(repr(a) if not a.isprintable() or " " in a else a
                                    for a in self.argv)


_NUMBERS = ("1", "0", "-1", "0.5", "3", "1e999", "-inf", "inf", "nan", "1_0", "\u0663", "1e-9",
            "10" * 30, "", "x", "2G", "5M", "-2:8", "0:1", "8:-2")
_FLAGS: dict[str, tuple[str, ...]] = {
    "--phi": _NUMBERS,
    "--preset": ("small", "b3", "", NASTY),
    "--width": _NUMBERS,
    "--depth": _NUMBERS,
    "--resolution": ("32", "8", "7", "100001", "224.5", "1_0", "\u0663"),
    "--alpha": _NUMBERS,
    "--beta": _NUMBERS,
    "--gamma": _NUMBERS,
    "--macs": _NUMBERS,
    "--params": _NUMBERS,
    "--max-params": _NUMBERS,
    "--max-macs": _NUMBERS,
    "--max-activations": _NUMBERS,
}
_COMMANDS = ("check", "fmt", "schema", "compile", "render", "plot", "search", "nosuch")


def _path(rng: random.Random, fixture: Fixture, good: float = 0.5) -> str:
    if rng.random() < good:
        return rng.choice((str(fixture.inputs["spec"]), fixture.others["link"]))
    pool = [*map(str, fixture.inputs.values()), *fixture.others.values()]
    return rng.choice(pool)


def _output(rng: random.Random, fixture: Fixture, suffixes: tuple[str, ...]) -> str:
    roll = rng.random()
    if roll < 0.15:  # an input, however spelt
        path = rng.choice(list(fixture.inputs.values()))
        return rng.choice((str(path), f"{path.parent}/./{path.name}"))
    if roll < 0.25:
        return rng.choice((str(fixture.outputs["readonly"]), fixture.others["directory"],
                           fixture.others["device"], fixture.others["link"], "-",
                           str(fixture.root / "nodir" / "x.py")))
    candidates = [p for p in fixture.outputs.values() if p.suffix in suffixes]
    return str(rng.choice(candidates or list(fixture.outputs.values())))


def _scaling_flags(rng: random.Random, budgets: bool) -> list[str]:
    flags = [f for f in _FLAGS if budgets or f not in ("--macs", "--params")]
    out: list[str] = []
    for flag in rng.sample(flags, rng.choice((0, 0, 1, 1, 2, 3))):
        value = rng.choice(_FLAGS[flag])
        if flag in ("--phi", "--width", "--depth") and rng.random() < 0.6:
            value = rng.choice(("0.5", "1", "-1", "0"))  # mostly nets that fit in a second
        out += [f"{flag}={value}"] if rng.random() < 0.3 else [flag, value]
    return out


def cli_case(rng: random.Random, fixture: Fixture) -> CliCase:
    """A random command line over every subcommand, flag and file kind."""
    command = rng.choice(_COMMANDS)
    argv: list[str] = [command]
    if command == "check":
        argv += [_path(rng, fixture) for _ in range(rng.randint(1, 3))]
        argv += rng.choice(([], ["-q"]))
    elif command == "fmt":
        spec = _path(rng, fixture, good=0.3)
        mode = rng.choice(([], ["--check"], ["--write"]))
        if mode == ["--write"]:  # it rewrites its input: a copy, or a file of an odd kind
            copy = fixture.outputs["fmt.eff"]
            copy.write_text(_SPEC.replace("  input", "input  "))
            # not the symlink: `fmt --write` through it rewrites the file it names, the input
            # spec, as it should (tests/test_reliability.py checks that on its own)
            odd = [path for role, path in fixture.others.items() if role != "link"]
            spec = str(copy) if rng.random() < 0.7 else rng.choice(odd)
        argv += [*mode, spec]
    elif command == "compile":
        argv.append(_path(rng, fixture))
        argv += _scaling_flags(rng, budgets=True)
        if rng.random() < 0.8:
            argv += ["-o", _output(rng, fixture, (".py", ".eff", ".json", ".pt"))]
        argv += rng.choice(([], [], ["--json"], ["-n"], ["--inference"],
                            ["--weights", str(fixture.inputs["weights"])],
                            ["--weights", _path(rng, fixture, good=0)]))
        if any(a.endswith(".pt") for a in argv) and "-n" not in argv:
            # a graph export builds and runs the net (seconds): only where it is refused early
            argv += ["--weights", argv[argv.index("-o") + 1] if "-o" in argv else "-"]
    elif command == "render":
        argv.append(_path(rng, fixture))
        argv += _scaling_flags(rng, budgets=True)
        argv += ["-o", _output(rng, fixture, (".dot", ".svg"))]
        argv += rng.choice(([], ["--detail", "block"], ["--detail", "layer"], ["--compare"],
                            ["--rankdir", "LR"], ["--detail", "nope"]))
    elif command == "plot":
        argv.append(_path(rng, fixture))
        argv += ["-o", _output(rng, fixture, (".svg",))]
        argv += rng.choice(([], ["--phi-range", "0:1"], ["--phi-range", "8:-2"],
                            ["--phi-range=-30:30"], ["--phi-range", "a:b"]))
    elif command == "search":
        # a search trains networks for minutes: only the ways it fails at once
        argv.append(rng.choice([str(fixture.inputs["broken"]), *fixture.others.values()]))
    if rng.random() < 0.1:
        argv.insert(rng.randint(1, len(argv)), rng.choice(("--nope", "--phy", "-x", "--", NASTY)))
    return CliCase(tuple(argv), child=rng.randrange(CHILD_EVERY) == 0)


def _printable(text: str) -> bool:
    return all(c.isprintable() or c in "\n\t" for c in text)


def run_cli_case(case: CliCase, fixture: Fixture) -> int:
    """Run `case` and return its exit code; raise `SurfaceFailure` if a property breaks (see
    the module docstring)."""
    from effdsl.cli import main

    before = fixture.snapshot()
    try:
        if case.child:
            code, out, err = _run_child(case)
        else:
            out_buffer, err_buffer = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out_buffer), contextlib.redirect_stderr(err_buffer), \
                    _stdin(io.BytesIO(_SPEC.encode())):
                try:
                    code = main(list(case.argv), stderr=err_buffer)
                except SystemExit as exit_:  # argparse: usage errors and --help
                    code = exit_.code if isinstance(exit_.code, int) else 2
            out, err = out_buffer.getvalue(), err_buffer.getvalue()
        if code not in (0, 1, 2):
            raise SurfaceFailure(f"exit {code}: {err[-500:]}")
        if "Traceback" in err or "internal error" in err:
            raise SurfaceFailure(f"a traceback: {err[-500:]}")
        document = case.argv[0] == "fmt" or "-" in case.argv or "--json" in case.argv
        if not _printable(err) or (not document and not _printable(out)):
            raise SurfaceFailure(f"non-printable output: {(out + err)[-300:]!r}")
        after = fixture.snapshot()
        changed = [str(p) for p in fixture.read_by(case.argv) if before[p] != after[p]]
        if changed:
            raise SurfaceFailure(f"an input changed: {changed}")
        leftovers = [p.name for p in fixture.root.iterdir() if p.name.endswith(".tmp")]
        if leftovers:
            raise SurfaceFailure(f"temporary files left: {leftovers}")
        return code
    finally:
        fixture.reset_outputs()
        fixture.restore(before)


@contextlib.contextmanager
def _stdin(data: io.BytesIO) -> Iterator[None]:
    """Standard input replaced by `data` (`fmt -`, `check -`)."""
    previous = sys.stdin
    sys.stdin = io.TextIOWrapper(data, encoding="utf-8")
    try:
        yield
    finally:
        sys.stdin = previous


def _run_child(case: CliCase) -> tuple[int, str, str]:
    def cap() -> None:
        limit = int(CHILD_MEMORY_GB * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    package = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": f"{package}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OPENBLAS_NUM_THREADS": "1"}
    argv = [a for a in case.argv if "\0" not in a]  # a NUL cannot cross exec
    try:
        result = subprocess.run(
            [sys.executable, "-m", "effdsl", *argv], stdin=subprocess.DEVNULL,
            capture_output=True, timeout=CHILD_TIMEOUT, preexec_fn=cap, env=env, check=False,
        )
    except subprocess.TimeoutExpired:
        raise SurfaceFailure(f"still running after {CHILD_TIMEOUT:g} s") from None
    out, err = (data.decode("utf-8", "replace") for data in (result.stdout, result.stderr))
    return result.returncode, out, err


# ---- API cases -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiCase:
    """A call of a public function or type with the given arguments."""

    name: str
    function: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...]

    def __str__(self) -> str:
        shown = [_short(a) for a in self.args] + [f"{k}={_short(v)}" for k, v in self.kwargs]
        return f"{self.name}({', '.join(shown)})"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def api_functions() -> dict[str, Callable[..., Any]]:
    """Every function and type `effdsl` exports (torch's backends aside: importing torch takes
    seconds), the limits, the plot, and `model_copy` of each node type."""
    import effdsl
    from effdsl import budget, limits, plot, scaling, summary

    found: dict[str, Callable[..., Any]] = {}
    for name in effdsl.__all__:
        if name in ("build", "optimize_for_inference", "EffError", "EffErrors"):
            continue
        value = getattr(effdsl, name)
        if callable(value):
            found[f"effdsl.{name}"] = value
    found.update({
        "effdsl.limits.Limits": limits.Limits,
        "effdsl.limits.check_plan": limits.check_plan,
        "effdsl.scaling.apply": scaling.apply,
        "effdsl.summary.summarize": summary.summarize,
        "effdsl.summary.to_json": summary.to_json,
        "effdsl.summary.to_text": summary.to_text,
        "effdsl.budget.solve_phi": budget.solve_phi,
        "effdsl.plot.scaling_curves": plot.scaling_curves,
        "effdsl.plot.to_svg": plot.to_svg,
    })
    for node_type in (ast.Network, ast.Input, ast.Scaling, ast.Defaults, ast.Preset, ast.Stem,
                      ast.Stage, ast.Head, ast.Classifier):
        found[f"{node_type.__name__}.model_copy"] = _copier(node_type)
    return found


def _copier(node_type: type[ast.Node]) -> Callable[..., Any]:
    def model_copy(node: Any, update: Any = None) -> Any:
        if not isinstance(node, node_type):
            raise EffError("not this node")  # the pool's other values: nothing to call
        return node.model_copy(update=update)

    model_copy.__name__ = f"{node_type.__name__}.model_copy"
    return model_copy


def value_pool(fixture: Fixture) -> list[Any]:
    """Right and wrong values for any parameter."""
    import effdsl
    from effdsl.limits import Limits
    from effdsl.scaling import Multipliers

    network = effdsl.load(fixture.inputs["spec"])
    plan = effdsl.lower(network)
    return [
        network, network.stages[0], network.input, network.presets[0], plan, Multipliers(),
        Limits(), effdsl.cost(plan), None, True, 0, -1, 1, 3, 0.5, 2.5, math.nan, math.inf,
        -math.inf, 10**400, -(10**400), 1e308, "", "b3", "small", "timm", "stage", "layer",
        "TB", NASTY, "a\0b", str(fixture.inputs["spec"]), fixture.others["fifo"],
        fixture.others["device"], fixture.others["huge"], str(fixture.outputs["out.dot"]),
        str(fixture.outputs["readonly"]), b"network", [], (), {}, {"kernel": 4},
        {"channels": 10**9}, {"name": ""}, {"stages": ()}, {"bogus": 1}, {"size": 4},
        (0.0, 1.0), (1.0, 0.0), (math.nan, 1.0), object(),
    ]


def api_case(rng: random.Random, functions: dict[str, Callable[..., Any]],
             pool: list[Any]) -> ApiCase | None:
    """A call of a random public function with random arguments that bind to its signature."""
    name = rng.choice(sorted(functions))
    function = functions[name]
    try:
        parameters = list(inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        return None
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for parameter in parameters:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        required = parameter.default is parameter.empty
        if not required and rng.random() < 0.6:
            continue
        value = rng.choice(pool)
        by_name = not required and rng.random() < 0.5
        keyword = parameter.kind == parameter.KEYWORD_ONLY or by_name
        if keyword or kwargs:  # a positional after a keyword would not bind
            kwargs[parameter.name] = value
        else:
            args.append(value)
    return ApiCase(name, function, tuple(args), tuple(kwargs.items()))


def run_api_case(case: ApiCase, workdir: Path) -> None:
    """Call it; only a result or an `EffError` may come back (`render` writes in `workdir`)."""
    previous = Path.cwd()
    os.chdir(workdir)  # relative paths a call writes land in the scratch directory
    try:
        case.function(*case.args, **dict(case.kwargs))
    finally:
        os.chdir(previous)
        for leftover in workdir.iterdir():
            if leftover.is_file() and leftover.suffix in (".dot", ".svg", ".py", ".eff"):
                leftover.unlink()
            elif leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
