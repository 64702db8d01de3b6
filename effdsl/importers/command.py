"""`effdsl import`: the CLI shell over `effdsl.importers` (parse flags, call, print, write)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from effdsl.errors import ImportRefused, OutputError


def register_import(subparsers: Any) -> None:
    """Add `effdsl import` to the CLI's subparsers."""
    parser = subparsers.add_parser(
        "import",
        help="write a timm or torchvision mobile CNN as a .eff spec",
        description="Instantiate SOURCE:NAME on the meta device (no weights, no download), read "
        "its modules and print the spec a person would write, compiled back and checked against "
        "the model's parameter count. SOURCE is timm (EfficientNet-builder models), torchvision "
        "(efficientnet_*, mobilenet_v2/v3, mnasnet*) or module (a .py written by `effdsl "
        "compile -o`: module:PATH.py). A model using something the language cannot say is "
        "refused in one line naming the module and the missing feature.",
    )
    parser.add_argument("source", nargs="?", metavar="SOURCE:NAME")
    parser.add_argument("-o", "--output", metavar="OUT.eff", help="write the spec here")
    parser.add_argument(
        "--family",
        action="store_true",
        help="SOURCE:PATTERN (shell glob): one spec with a preset per variant sharing its "
        "structure; the variants that do not fit are listed on stderr",
    )
    parser.add_argument(
        "--list", metavar="SOURCE", help="list the model names SOURCE offers, then exit"
    )
    parser.set_defaults(run=run_import)


def run_import(args: argparse.Namespace) -> int:
    from effdsl.fmt import format
    from effdsl.importers import available, import_family, import_model

    if args.list:
        print("\n".join(available(args.list)))
        return 0
    if not args.source:
        raise ImportRefused(
            "give SOURCE:NAME", hint="e.g. effdsl import timm:mobilenetv3_large_100"
        )
    if args.output is not None and not args.output.endswith(".eff"):
        raise OutputError(f"{args.output}: the import writes a spec; name the output *.eff")
    if args.family:
        family = import_family(args.source)
        for name, why in family.misfits:
            print(f"not in the family: {name}: {why}", file=sys.stderr)
        if family.network is None:
            raise ImportRefused(f"{args.source}: no variant could be imported")
        network = family.network
    else:
        source: Any = args.source
        if args.source.startswith("module:"):
            from effdsl.importers.effdsl_modules import load_generated

            source = load_generated(args.source.partition(":")[2])
        network = import_model(source)
    text = format(network)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    from effdsl.files import atomic_write

    atomic_write(args.output, text)
    print(f"wrote {args.output}")
    return 0
