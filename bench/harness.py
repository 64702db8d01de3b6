"""What the benchmarks share: interleaved timing with medians, the machine's description, output.

    times = interleave({"a": run_a, "b": run_b}, rounds=7)   # seconds per call, one per round
    median(times["a"]) / median(times["b"])                  # the ratio the tables report

Other processes share the machine, so cases are never timed in blocks: every round runs each
case once (or `inner` times), starting from a different case each round, and the tables report
the median over rounds. Nothing here imports torch; `machine()` reports its version only when
the caller has imported it.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def interleave(
    cases: Mapping[str, Callable[[], object]],
    *,
    rounds: int,
    inner: int = 1,
    warmup: int = 1,
    sync: Callable[[], None] = lambda: None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds per call of each case, one figure per round (the mean of `inner` calls).

    Each case first runs `warmup` times. Round r starts with case r mod len(cases), so no case
    always follows the same neighbour; `sync` (e.g. `torch.cuda.synchronize`) closes each timing.
    """
    names = list(cases)
    for name in names:
        for _ in range(warmup):
            cases[name]()
        sync()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            sync()
            start = clock()
            for _ in range(inner):
                cases[name]()
            sync()
            times[name].append((clock() - start) / inner)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float]) -> float:
    """Half the interquartile range relative to the median: a rough ± for a table."""
    if len(values) < 4:
        return float("nan")
    q1, _, q3 = statistics.quantiles(values, n=4)
    return (q3 - q1) / 2 / statistics.median(values)


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "effdsl", "bench"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return done.stdout.strip() + ("+changes" if dirty else "")


def machine() -> dict[str, Any]:
    """The machine and software the figures come from; the load is sampled now."""
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "commit": git_commit(),
        "load_start": load_average(),
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch"] = torch.__version__
        info["threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
            info["cuda"] = torch.version.cuda
    for name in ("torchvision", "timm"):
        module = sys.modules.get(name)
        if module is not None:
            info[name] = module.__version__
    return info


def write_json(name: str, payload: Mapping[str, Any]) -> Path:
    """Write `bench/results/NAME.json` (sorted keys, trailing newline); return its path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    temp = path.with_suffix(".json.tmp")
    temp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    temp.replace(path)
    return path


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table with columns padded to line up in a terminal too."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])
