"""Resource guards: refuse absurd networks before anything is allocated.

A spec can ask for 10^6 channels, 10^5 repeats or φ = 1000; every number is within the
language's bounds, yet building it would exhaust the machine. `effdsl.lower` refuses more
than `MAX_BLOCKS` blocks (lowering allocates per block); before building or rendering, the cost
model's parameters, MACs and activation memory are checked (`check_plan`). Each refusal names
the limit, the figure, and the flag that raises it. The defaults admit EfficientNet-L2 at
800 px (480 M params, 476 G MACs, 9.8 GB of fp32 activations per image) with room to spare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from effdsl.arguments import checked
from effdsl.cost import cost
from effdsl.errors import LimitError
from effdsl.plan import Plan


@dataclass(frozen=True)
class Limits:
    """The most a network may cost; raise one to build something bigger."""

    params: float = 2e9
    macs: float = 5e12
    # per image, fp32: L2 at 800 px needs 9.8 GB; 16 GB stays well under the memory of a
    # machine that can train such a net, and `check_memory` also asks the machine itself
    activation_bytes: float = 16e9

    def __post_init__(self) -> None:
        # a NaN limit would compare false against every figure and silently let anything pass
        for name in ("params", "macs", "activation_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise LimitError(f"the {name} limit must be a number, got {value!r}")
            try:
                finite = math.isfinite(value)
            except OverflowError:  # an int beyond a float's range
                finite = False
            if not (finite and value > 0):
                small = isinstance(value, float) or abs(value) < 10**30
                shown = f"{value}" if small else "a huge number"
                raise LimitError(f"the {name} limit must be a positive finite number, got {shown}")


@checked
def check_plan(plan: Plan, limits: Limits | None = None) -> None:
    """Refuse a plan whose parameters, MACs or activation memory exceed `limits`."""
    limits = limits or Limits()
    report = cost(plan)
    checks = (
        ("parameters", report.params, limits.params, "--max-params"),
        ("MACs per image", report.macs, limits.macs, "--max-macs"),
        (
            "bytes of activations per image",
            report.activation_bytes,
            limits.activation_bytes,
            "--max-activations",
        ),
    )
    for what, figure, limit, flag in checks:
        if figure > limit:
            raise LimitError(
                f"`{plan.name}` needs {figure:,.0f} {what}, more than the limit of {limit:,.0f}",
                hint=f"raise it with {flag} if you mean it",
            )


def available_memory() -> int | None:
    """Bytes this process can still allocate: the machine's available memory, capped by the
    address-space limit (`ulimit -v`) less what is mapped already; None where unknown."""
    import resource

    figures = []
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    figures.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        try:
            with open("/proc/self/statm", encoding="ascii") as statm:
                mapped = int(statm.read().split()[0]) * resource.getpagesize()
        except OSError:
            mapped = 0
        figures.append(max(0, soft - mapped))
    return min(figures) if figures else None


@checked
def check_memory(plan: Plan, images: int = 1, doing: str = "run") -> None:
    """Refuse to `doing` a network whose weights and activations for `images` images would not
    fit in the memory this process can get, with both figures, before anything is allocated.

    The estimate is an upper bound of an inference pass: every weight twice (the module and
    the exported copy) and every activation of `images` images.
    """
    report = cost(plan)
    needed = 2 * 4 * report.params + images * report.activation_bytes
    available = available_memory()
    if available is not None and needed > available:
        raise LimitError(
            f"to {doing} `{plan.name}` needs up to {needed:,} bytes of memory, more than the "
            f"{available:,} available",
            hint="lower the resolution or the scaling, or use a machine with more memory",
        )
