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

from effdsl.cost import cost
from effdsl.errors import LimitError
from effdsl.plan import Plan


@dataclass(frozen=True)
class Limits:
    """The most a network may cost; raise one to build something bigger."""

    params: float = 2e9
    macs: float = 5e12
    activation_bytes: float = 64e9  # per image, fp32

    def __post_init__(self) -> None:
        # a NaN limit would compare false against every figure and silently let anything pass
        for name in ("params", "macs", "activation_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise LimitError(f"the {name} limit must be a number, got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise LimitError(f"the {name} limit must be a positive finite number, got {value}")


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
