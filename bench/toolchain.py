"""Benchmark: how long the `effdsl` commands take, beside `import torch`, and how parsing scales.

    python bench/toolchain.py            # 9 interleaved rounds of every command, then parsing
    python bench/toolchain.py --quick    # 3 rounds, parsing up to 1,000 stages

Commands run as `sys.executable -m effdsl ...` (no pyenv shim or entry-point wrapper adds its
own start-up), interleaved with `sys.executable -c "import torch"` in the same rounds; each
command's target is at most 0.2× the torch import's median. Then synthetic specs of 10, 100,
1,000 and 10,000 stages are parsed in this process (`effdsl.parse`, median of a few runs) and
the time per stage is reported: it must stay flat (linear cost). Each size is also parsed with
Python's cyclic garbage collector switched off, which shows what the collector adds.

The parser refuses specs over `effdsl.parser.MAX_SPEC_CHARS` characters or `MAX_TOKENS` tokens
before parsing; a 10,000-stage spec is over both, so this process raises the two module
constants (and only here) to fit the largest spec, and says so in its output.

Results go to bench/results/toolchain.json.
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import ROOT, interleave, load_average, machine, median, spread, table, write_json

TARGET = 0.2  # each command's time ÷ the torch import's


def commands(out: Path) -> dict[str, list[str]]:
    """The timed commands by label; `out` is a scratch directory for written files."""
    effdsl = [sys.executable, "-m", "effdsl"]
    b0 = str(ROOT / "specs" / "b0.eff")
    b7 = ["--preset", "b7"]
    return {
        "import torch": [sys.executable, "-c", "import torch"],
        "python -c pass": [sys.executable, "-c", "pass"],
        "check b0.eff": [*effdsl, "check", b0],
        "compile b0.eff --phi 3 --json": [*effdsl, "compile", b0, "--phi", "3", "--json"],
        "compile b0.eff --preset b7 --json": [*effdsl, "compile", b0, *b7, "--json"],
        "compile b0.eff -o b0.py": [*effdsl, "compile", b0, "-o", str(out / "b0.py")],
        "compile b0.eff --preset b7 -o b7.py": [
            *effdsl,
            "compile",
            b0,
            *b7,
            "-o",
            str(out / "b7.py"),
        ],
        "render b0.eff -o b0.dot": [*effdsl, "render", b0, "-o", str(out / "b0.dot")],
        "render b0.eff --preset b7 -o b7.dot": [
            *effdsl,
            "render",
            b0,
            *b7,
            "-o",
            str(out / "b7.dot"),
        ],
    }


def runner(argv: list[str]) -> Any:
    def run() -> None:
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr.decode()}")

    return run


def command_rows(rounds: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as scratch:
        cases = {label: runner(argv) for label, argv in commands(Path(scratch)).items()}
        times = interleave(cases, rounds=rounds, warmup=1)
    torch_time = median(times["import torch"])
    rows = []
    for label, seconds in times.items():
        ratio = median(seconds) / torch_time
        rows.append(
            {
                "command": label,
                "median_s": median(seconds),
                "spread": spread(seconds),
                "ratio_to_import_torch": ratio,
                "met": None if label in ("import torch", "python -c pass") else ratio <= TARGET,
                "seconds": seconds,
            }
        )
    return rows


# ---- parsing --------------------------------------------------------------------------------


def synthetic_spec(stages: int) -> str:
    """A valid spec with `stages` stage statements, a few kinds, kernels and widths."""
    lines = ["network synthetic {", "  input size=224 channels=3", "  stem conv k3 s2 c32"]
    shapes = ["mbconv e6 k3 s1 c24 x1", "mbconv e4 k5 s1 c40 x2", "fused_mbconv e4 k3 s1 c48 x1"]
    lines += [f"  stage {shapes[i % len(shapes)]}" for i in range(stages)]
    lines += ["  head conv k1 c1280", "  classifier dropout=0.2 classes=1000", "}", ""]
    return "\n".join(lines)


def parse_rows(sizes: list[int]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    import effdsl
    from effdsl import parser

    texts = {n: synthetic_spec(n) for n in sizes}
    biggest = max(texts.values(), key=len)
    default = {"MAX_SPEC_CHARS": parser.MAX_SPEC_CHARS, "MAX_TOKENS": parser.MAX_TOKENS}
    # the size guard refuses the biggest specs by default: raise it in this process only
    parser.MAX_SPEC_CHARS = max(parser.MAX_SPEC_CHARS, len(biggest) + 1)
    parser.MAX_TOKENS = max(parser.MAX_TOKENS, 4 * len(biggest.split()) + 100)
    raised = {"MAX_SPEC_CHARS": parser.MAX_SPEC_CHARS, "MAX_TOKENS": parser.MAX_TOKENS}
    effdsl.parse(texts[sizes[0]])  # build (or load the cached) Lark parser first
    rows = []
    for stages, text in texts.items():
        runs = 3 if stages >= 10_000 else 7
        seconds: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(runs):
            for collect in (True, False):  # Python's cyclic garbage collector on, then off
                gc.collect()
                if not collect:
                    gc.disable()
                start = time.perf_counter()
                network = effdsl.parse(text)
                seconds[collect].append(time.perf_counter() - start)
                gc.enable()
        if len(network.stages) != stages:
            raise SystemExit(f"parsed {len(network.stages)} stages of {stages}")
        rows.append(
            {
                "stages": stages,
                "characters": len(text),
                "median_s": median(seconds[True]),
                "us_per_stage": median(seconds[True]) / stages * 1e6,
                "us_per_stage_gc_off": median(seconds[False]) / stages * 1e6,
                "seconds": seconds[True],
            }
        )
    return rows, {**{f"default {k}": v for k, v in default.items()}, **raised}


# ---- report ---------------------------------------------------------------------------------


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    options.add_argument("--rounds", type=int, default=9)
    options.add_argument("--quick", action="store_true", help="3 rounds, up to 1,000 stages")
    options.add_argument("--no-json", dest="json", action="store_false")
    args = options.parse_args()
    rounds = 3 if args.quick else args.rounds
    sizes = [10, 100, 1_000] if args.quick else [10, 100, 1_000, 10_000]

    started = machine()
    started["torch"] = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    rows = command_rows(rounds)
    parsing, guards = parse_rows(sizes)

    print(
        f"\n## Commands ({started['cpu']}, {started['cores']} cores, torch {started['torch']}, "
        f"load {started['load_start']} → {load_average()}, {rounds} rounds)\n"
    )
    lines = [
        [
            r["command"],
            f"{r['median_s'] * 1e3:,.0f}",
            f"±{r['spread']:.0%}" if len(r["seconds"]) >= 4 else "",
            f"{r['ratio_to_import_torch']:.2f}×",
            "" if r["met"] is None else ("met" if r["met"] else "MISSED"),
        ]
        for r in rows
    ]
    print(table(["command", "median ms", "spread", "÷ import torch", f"≤ {TARGET}×"], lines))
    print(
        "\n## Parsing (in process; guards raised here only: "
        + ", ".join(f"{k}={v:,}" for k, v in guards.items())
        + ")\n"
    )
    lines = [
        [
            f"{r['stages']:,}",
            f"{r['characters']:,}",
            f"{r['median_s'] * 1e3:,.1f}",
            f"{r['us_per_stage']:.0f}",
            f"{r['us_per_stage_gc_off']:.0f}",
        ]
        for r in parsing
    ]
    header = ["stages", "characters", "median ms", "µs per stage", "µs per stage, gc off"]
    print(table(header, lines))
    if args.json:
        payload = {
            "machine": {**started, "load_end": load_average(), "rounds": rounds},
            "commands": rows,
            "parsing": parsing,
            "parser_guards": guards,
        }
        print(f"wrote {write_json('toolchain', payload).relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
