"""The `effdsl` command: parse arguments, call the library, print, choose the exit code.

Exit codes: 0 success, 1 an error in the user's input or environment (printed as
`FILE:LINE:COL: error: ...`), 2 bad command-line usage, 3 an internal error (a bug in effdsl).
Subcommands that do not produce PyTorch artefacts never import torch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import traceback
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from effdsl.errors import SHOWN_ERRORS, EffError, OutputError
from effdsl.files import command_scope, refuse_inputs
from effdsl.text import printable
from effdsl.version import __version__

ISSUES_URL = "https://github.com/effdsl/effdsl/issues"


# ---- scaling flags, shared by compile, render, plot -----------------------------------------


def _amount(text: str) -> float:
    from effdsl.budget import parse_amount

    try:
        return parse_amount(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


#: A number as the language writes one: ASCII digits, no `_` separators (`float` takes `1_0`
#: and `٣`, which a spec would refuse), `inf` and `nan` so that they get a clear refusal.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:inf|nan)",
                     re.IGNORECASE)
#: What argparse must take for a value, not an option, after a flag: `-3`, `-.5`, `-inf`.
_NEGATIVE_VALUE = re.compile(r"^-(?:[0-9]|\.[0-9]|inf|nan)", re.IGNORECASE)


def _finite_float(text: str) -> float:
    if not _NUMBER.fullmatch(text):
        raise argparse.ArgumentTypeError(f"not a number: {printable(repr(text))}")
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _whole(text: str) -> int:
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise argparse.ArgumentTypeError(f"not a whole number: {printable(repr(text))}")
    return int(text)


def _add_scaling_flags(parser: argparse.ArgumentParser, *, budgets: bool = True) -> None:
    parser._negative_number_matcher = _NEGATIVE_VALUE  # `--phi -inf` is a value, refused clearly
    group = parser.add_argument_group("scaling (choose one of --phi, --preset, --width/--depth)")
    group.add_argument("--phi", type=_finite_float, help="compound coefficient φ (any real)")
    group.add_argument("--preset", metavar="NAME", help="a preset of the spec, e.g. b3")
    group.add_argument("--width", type=_finite_float, metavar="W", help="width multiplier")
    group.add_argument("--depth", type=_finite_float, metavar="D", help="depth multiplier")
    group.add_argument(
        "--resolution",
        type=_whole,
        metavar="PX",
        help="input resolution; overrides a preset's or φ's",
    )
    group.add_argument("--alpha", type=_finite_float, help="override the spec's depth base α")
    group.add_argument("--beta", type=_finite_float, help="override the spec's width base β")
    group.add_argument("--gamma", type=_finite_float, help="override the spec's resolution base γ")
    if budgets:
        group.add_argument(
            "--macs", type=_amount, metavar="N", help="largest φ within N MACs (e.g. 2G)"
        )
        group.add_argument(
            "--params", type=_amount, metavar="N", help="largest φ within N params (e.g. 10M)"
        )


def _factors(network: Any, args: argparse.Namespace) -> Any:
    """The multipliers asked for on the command line (a budget picks φ)."""
    from effdsl.budget import solve_phi
    from effdsl.errors import ScalingError
    from effdsl.scaling import multipliers

    macs, params = getattr(args, "macs", None), getattr(args, "params", None)
    coefficients = {"alpha": args.alpha, "beta": args.beta, "gamma": args.gamma}
    if macs is not None or params is not None:
        if any(v is not None for v in (args.phi, args.preset, args.width, args.depth)):
            raise ScalingError("a budget (--macs/--params) chooses φ itself; drop the other flags")
        chosen = solve_phi(network, macs=macs, params=params, **coefficients)
        if args.resolution is not None:
            chosen = multipliers(
                network, phi=chosen.phi, resolution=args.resolution, **coefficients
            )
        budget = f"{macs:,.0f} MACs" if macs is not None else f"{params:,.0f} params"
        print(f"budget {budget}: chose phi={chosen.phi:g}", file=sys.stderr)
        return chosen
    return multipliers(
        network,
        phi=args.phi,
        preset=args.preset,
        width=args.width,
        depth=args.depth,
        resolution=args.resolution,
        **coefficients,
    )


# ---- commands --------------------------------------------------------------------------------


def _spec_files(paths: Sequence[str]) -> list[str]:
    """The files to check: each FILE as given, each directory's `*.eff` files (recursively)."""
    files: list[str] = []
    for path in paths:
        if Path(path).is_dir():
            found = sorted(str(p) for p in Path(path).rglob("*.eff") if p.is_file())
            if not found:
                raise EffError(f"{path}: no .eff files in this directory")
            files += found
        else:
            files.append(path)
    return files


def cmd_check(args: argparse.Namespace) -> int:
    from effdsl.check import check_file
    from effdsl.errors import EffWarning

    files = _spec_files(args.files)
    failed = errors = warnings = 0
    for path in files:
        problems = check_file(path)
        for problem in problems[:SHOWN_ERRORS]:
            print(problem.render(), file=sys.stderr)
        hidden = len(problems) - SHOWN_ERRORS
        if hidden > 0:  # a garbage file has hundreds: the first ones say what is wrong
            print(f"{printable(path)}: and {hidden:,} more not shown", file=sys.stderr)
        found = sum(1 for p in problems if not isinstance(p, EffWarning))
        warnings += len(problems) - found
        errors += found
        failed += found > 0
    noun = "file" if len(files) == 1 else "files"
    also = f", {warnings} warning{'s' if warnings != 1 else ''}" if warnings else ""
    if failed:
        print(
            f"{errors} error{'s' if errors != 1 else ''}{also} in {failed} of {len(files)} {noun}",
            file=sys.stderr,
        )
        return 1
    if not args.quiet:
        print(f"{len(files)} {noun} ok{also}")
    return 0


def _warn_if_collapsed(plan: Any) -> None:
    """Print the collapsing-feature-map warning of a scaled plan to stderr (never fails)."""
    from effdsl.check import collapse_warnings

    for warning in collapse_warnings(plan):
        print(warning.render(), file=sys.stderr)


def cmd_fmt(args: argparse.Namespace) -> int:
    from effdsl.files import atomic_write
    from effdsl.fmt import format as format_network
    from effdsl.parser import parse, read_spec

    status = 0
    for path in args.files:
        try:
            text = read_spec(path)  # `-` is standard input, read up to the same limit
            formatted = format_network(parse(text, filename="<stdin>" if path == "-" else path))
        except EffError as error:
            print(error.render(), file=sys.stderr)
            status = 1
            continue
        if args.check:
            if formatted != text:
                print(f"{printable(path)}: not formatted", file=sys.stderr)
                status = max(status, 1)
        elif args.write and path != "-":
            if formatted != text:
                atomic_write(path, formatted, replace_input=True)
                print(f"formatted {printable(path)}", file=sys.stderr)
        else:
            sys.stdout.write(formatted)
    return status


def cmd_schema(args: argparse.Namespace) -> int:
    from effdsl.ast import Network

    print(json.dumps(Network.model_json_schema(), indent=2, sort_keys=True))
    return 0


def cmd_lsp(args: argparse.Namespace) -> int:
    try:
        from effdsl.editor.server import main as serve
    except ImportError as error:
        from effdsl.errors import ToolMissingError

        raise ToolMissingError(
            f"the language server needs pygls ({error.name or error} is not installed)",
            hint="pip install 'effdsl[lsp]'",
        ) from None
    serve()
    return 0


def _load_scaled(args: argparse.Namespace) -> tuple[Any, Any, str]:
    from effdsl.parser import parse, read_spec

    text = read_spec(args.spec)
    network = parse(text, filename=args.spec)
    return network, _factors(network, args), text


def _limits(args: argparse.Namespace) -> Any:
    """`effdsl.limits.Limits` with `--max-params/--max-macs/--max-activations` applied."""
    from effdsl.limits import Limits

    default = Limits()
    return Limits(
        params=args.max_params or default.params,
        macs=args.max_macs or default.macs,
        activation_bytes=args.max_activations or default.activation_bytes,
    )


def cmd_compile(args: argparse.Namespace) -> int:
    from effdsl.export import output_format
    from effdsl.limits import check_plan
    from effdsl.scaling import apply
    from effdsl.summary import summarize, to_json, to_text

    output = args.output
    if output is not None and output != "-":
        output_format(output)  # an unknown extension fails before any work is done
        refuse_inputs(output, args.spec, args.weights)
    if (args.weights or args.inference) and output in (None, "-"):
        raise OutputError("--weights and --inference need an output file (-o)")
    network, factors, text = _load_scaled(args)
    summary = summarize(network, factors)
    check_plan(summary.scaled, _limits(args))
    _warn_if_collapsed(summary.scaled)
    if args.dry_run:
        output = None  # the checks above still ran: a dry run reports what a real one would
    if output == "-":
        from effdsl.codegen import to_python

        sys.stdout.write(to_python(summary.scaled, source_name=args.spec, spec_text=text))
        return 0
    if args.json:
        print(json.dumps(to_json(summary), indent=2))
    else:
        sys.stdout.write(to_text(summary))
    if output is not None:
        from effdsl.export import write_output

        written = write_output(
            output,
            apply(network, factors),
            summary.scaled,
            weights=args.weights,
            inference=args.inference,
            spec_text=text,
            source_name=args.spec,
        )
        print(f"wrote {printable(str(written))}", file=sys.stderr if args.json else sys.stdout)
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from effdsl.limits import check_plan
    from effdsl.plan import lower
    from effdsl.render import render
    from effdsl.scaling import apply

    refuse_inputs(args.output, args.spec)
    network, factors, _text = _load_scaled(args)
    scaled = lower(apply(network, factors), factors)
    check_plan(scaled, _limits(args))
    _warn_if_collapsed(scaled)
    base = lower(network) if args.compare else None
    written = render(
        scaled,
        args.output,
        base=base,
        detail=args.detail,
        rankdir=args.rankdir,
        columns=args.columns,
        dpi=args.dpi,
        size=args.size,
        spec=network,
    )
    print(f"wrote {printable(str(written))}")
    return 0


# ---- the parser ----------------------------------------------------------------------------


def _add_limit_flags(parser: argparse.ArgumentParser) -> None:
    from effdsl.limits import Limits

    group = parser.add_argument_group("resource limits (refuse absurd networks before building)")
    defaults = Limits()
    group.add_argument(
        "--max-params",
        type=_amount,
        metavar="N",
        help=f"most parameters allowed (default {defaults.params:,.0f})",
    )
    group.add_argument(
        "--max-macs",
        type=_amount,
        metavar="N",
        help=f"most MACs per image allowed (default {defaults.macs:,.0f})",
    )
    group.add_argument(
        "--max-activations",
        type=_amount,
        metavar="BYTES",
        help=f"most activation bytes per image (default {defaults.activation_bytes:,.0f})",
    )


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors quote the command line printably (an argument
    can hold a terminal escape)."""

    def error(self, message: str) -> typing.NoReturn:
        super().error(printable(message, newlines=True))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="effdsl",
        description="A declarative architecture language for EfficientNet-family networks.",
        epilog="Run `effdsl COMMAND --help` for a command's options. Docs: docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"effdsl {__version__}")
    commands = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )

    check = commands.add_parser(
        "check",
        help="check specs and report every error",
        description="Report every error and warning of each spec, sorted by position. A "
        "directory stands for every *.eff file under it. Exit 1 when any file has an error "
        "(warnings alone exit 0).",
    )
    check.add_argument("files", nargs="+", metavar="FILE", help="spec files or directories")
    check.add_argument("-q", "--quiet", action="store_true", help="print nothing when all is well")
    check.set_defaults(run=cmd_check)

    fmt = commands.add_parser("fmt", help="print specs in canonical form")
    fmt.add_argument("files", nargs="+", metavar="FILE", help="spec files, or - for stdin")
    mode = fmt.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite files in place (atomically)")
    mode.add_argument("--check", action="store_true", help="exit 1 if a file is not canonical")
    fmt.set_defaults(run=cmd_fmt)

    schema = commands.add_parser("schema", help="print the JSON Schema of a spec's AST")
    schema.set_defaults(run=cmd_schema)

    lsp = commands.add_parser(
        "lsp",
        help="run the language server (for editors) on stdin/stdout",
        description="Serve the Language Server Protocol over stdin and stdout: diagnostics, "
        "hover with costs, completion, formatting, outline and inlay hints for .eff files. "
        "Editors start it; see docs/editors.md. Needs the `lsp` extra (pygls).",
    )
    lsp.add_argument(
        "--stdio", action="store_true", help="use stdin/stdout (the default and only transport)"
    )
    lsp.set_defaults(run=cmd_lsp)

    compile_ = commands.add_parser(
        "compile",
        help="scale a spec, print its summary, write a model with -o",
        description="Scale SPEC and print a summary (stages, params, MACs); with -o OUT also "
        "write the model (without -o nothing is written). The output format follows the "
        "extension: .py (standalone PyTorch source), .eff (the scaled spec), .pt2 "
        "(torch.export), .onnx, .pt (TorchScript); -o - prints the .py to stdout.",
    )
    compile_.add_argument("spec", metavar="SPEC")
    _add_scaling_flags(compile_)
    compile_.add_argument("-o", "--output", metavar="OUT", help="output file (see above)")
    compile_.add_argument("--json", action="store_true", help="print the summary as JSON")
    compile_.add_argument(
        "-n",
        "--dry-run",
        action="store_true",
        help="check -o's path and print the summary, but write nothing",
    )
    compile_.add_argument(
        "--weights", metavar="FILE", help="a state_dict to embed in .pt2/.onnx/.pt outputs"
    )
    compile_.add_argument(
        "--inference",
        action="store_true",
        help="fold batch norm into convs and use channels_last before exporting",
    )
    _add_limit_flags(compile_)
    compile_.set_defaults(run=cmd_compile)

    render = commands.add_parser(
        "render",
        help="draw a (scaled) architecture with graphviz",
        description="Draw SPEC, scaled by the flags, to OUT (.svg, .png, .pdf or .dot).",
    )
    render.add_argument("spec", metavar="SPEC")
    _add_scaling_flags(render, budgets=True)
    render.add_argument("-o", "--output", required=True, metavar="OUT")
    render.add_argument(
        "--detail",
        choices=("stage", "block", "layer"),
        default="stage",
        help="one node per stage, per block, or per layer (default stage)",
    )
    render.add_argument(
        "--compare",
        action="store_true",
        help="draw the unscaled spec beside the scaled one (at any --detail)",
    )
    render.add_argument("--rankdir", choices=("TB", "LR"), default="TB", help="graph direction")
    render.add_argument(
        "--columns",
        type=int,
        metavar="N",
        help="wrap the path into N columns (rows with LR); default: enough to keep a long "
        "drawing about square, 1 for a short one",
    )
    render.add_argument(
        "--dpi", type=int, metavar="N", help="PNG resolution in dots per inch (default 96)"
    )
    render.add_argument(
        "--size",
        type=int,
        metavar="PX",
        help="PNG: scale the drawing down to fit within PX×PX pixels (default 2500; an "
        "explicit --dpi alone lifts it)",
    )
    _add_limit_flags(render)
    render.set_defaults(run=cmd_render)

    from effdsl.importers.command import register_import
    from effdsl.plot import register_plot
    from effdsl.search import register_search

    register_search(commands)
    register_plot(commands)
    register_import(commands)
    return parser


def _unrecognized(parser: argparse.ArgumentParser, command: str, extra: list[str]) -> None:
    """Report unknown arguments with the subcommand's usage and a "did you mean" (exits 2)."""
    import difflib

    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub: argparse.ArgumentParser = subparsers.choices[command]
    options = [o for action in sub._actions for o in action.option_strings]
    message = f"unrecognized arguments: {' '.join(extra)}"
    flag = next((word for word in extra if word.startswith("--")), None)
    if flag is not None:
        close = difflib.get_close_matches(flag.split("=")[0], options, n=1)
        if close:
            message += f" (did you mean {close[0]}?)"
    sub.error(message)


def _unknown_command(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """Refuse a misspelt subcommand with "did you mean" (exits 2), before argparse's message."""
    import difflib

    word = next((a for a in argv if not a.startswith("-")), None)
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands = list(subparsers.choices)
    if word is None or word in commands:
        return
    close = difflib.get_close_matches(word, commands, n=1)
    hint = f" (did you mean `{close[0]}`?)" if close else f"; commands: {', '.join(commands)}"
    parser.error(f"unknown command `{word}`{hint}")


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised where the program is, so that every clean-up runs."""

    def __init__(self, number: int) -> None:
        super().__init__(number)
        self.signal = number


def _raise_terminated(number: int, _frame: Any) -> None:
    raise Terminated(number)


@contextlib.contextmanager
def _terminate_cleanly() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into `Terminated` for the block: temporary files are removed and
    child processes (graphviz's `dot`) killed on the way out, as for Ctrl-C."""
    previous: dict[int, Any] = {}
    try:
        for number in (int(signal.SIGTERM), int(signal.SIGHUP)):
            previous[number] = signal.signal(number, _raise_terminated)
    except ValueError:  # not the main thread: signals cannot be handled here
        pass
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _out_of_memory(error: BaseException) -> str | None:
    """A one-line message for an allocation that failed (Python's or torch's), else None."""
    if isinstance(error, MemoryError):
        return "out of memory" + (f": {error}" if str(error) else "")
    text = str(error)
    match = re.search(r"tried to allocate (\d+) bytes", text)
    if "DefaultCPUAllocator" in text or "out of memory" in text.lower():
        figure = f" ({int(match.group(1)):,} bytes in one allocation)" if match else ""
        return f"out of memory{figure}"
    return None


def main(argv: Sequence[str] | None = None, *, stderr: TextIO | None = None) -> int:
    """Run the CLI; return the exit code."""
    parser = build_parser()
    _unknown_command(parser, sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    if extra:
        _unrecognized(parser, args.command, extra)
    err = stderr or sys.stderr
    try:
        with _terminate_cleanly(), command_scope():
            return int(args.run(args))
    except EffError as error:
        print(error.render(), file=err)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=err)
        return 130
    except Terminated as signalled:
        print(f"terminated by signal {signalled.signal}", file=err)
        return 128 + signalled.signal
    except BrokenPipeError:
        # the reader went away (e.g. `| head`); stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as error:
        memory = _out_of_memory(error)
        if memory is not None:
            print(f"error: {memory}", file=err)
            print("  hint: lower the resolution or the scaling, or use a machine with more "
                  "memory", file=err)
            return 1
        if os.environ.get("EFFDSL_DEBUG"):
            traceback.print_exc(file=err)
        print(
            f"internal error: {type(error).__name__}: {error}\n"
            f"This is a bug in effdsl. Please report it at {ISSUES_URL} with the input that "
            "caused it (set EFFDSL_DEBUG=1 to see the traceback).",
            file=err,
        )
        return 3
