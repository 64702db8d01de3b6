"""Budget solving: the largest φ whose scaled network fits a MACs or parameter budget.

    phi = solve_phi(net, macs=2e9)      # e.g. 2.99 for B0: the B3-sized net of the φ family

The cost of a φ-scaled net is exact (it goes through the rounding rules), so it is a step
function of φ; with α, β, γ ≥ 1 it never decreases as φ grows, which is what makes bisection
correct. The answer is the largest φ on a 1e-4 grid whose net fits.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from decimal import Decimal

from effdsl import ast
from effdsl.arguments import checked
from effdsl.cost import network_cost
from effdsl.errors import EffError, ScalingError
from effdsl.scaling import Multipliers, apply, multipliers

PHI_RANGE = (-10.0, 30.0)
PRECISION = 1e-4
_SUFFIXES = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def parse_amount(text: str) -> float:
    """`2G`, `385.8M`, `10m`, `5e6`, `1500k` → a number (k, M, G, T are powers of 1000)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtT]?)\s*", text)
    if match is None:
        raise ValueError(f"not an amount: {text!r} (write e.g. 2G, 385M, 10M, 5e6)")
    value = float(match.group(1)) * _SUFFIXES[match.group(2).lower()]
    if not math.isfinite(value) or value < 1:
        # parameters, MACs and bytes are counted whole: `1e-9` would read as a limit of 0
        raise ValueError(f"not an amount of at least 1: {text!r}")
    return value


def _whole(value: float) -> str:
    """`3,371,744`, or `-1E+400` where the digits would run on: a budget as written in an
    error, however large (a Python int need not fit a float)."""
    if abs(value) < 10**15:
        return f"{value:,.0f}"
    return format(Decimal(value), ".4G")


def _measure(
    network: ast.Network, factors: Callable[[float], Multipliers], phi: float, what: str
) -> float | None:
    """MACs or params of the φ-scaled net, or None when φ is out of the language's bounds."""
    try:
        report = network_cost(apply(network, factors(phi)))
    except EffError:
        return None
    return float(report.macs if what == "macs" else report.params)


@checked
def solve_phi(
    network: ast.Network,
    *,
    macs: float | None = None,
    params: float | None = None,
    alpha: float | None = None,
    beta: float | None = None,
    gamma: float | None = None,
) -> Multipliers:
    """The multipliers of the largest φ whose scaled `network` has at most `macs`/`params`."""
    if (macs is None) == (params is None):
        raise ScalingError("give exactly one budget: --macs or --params")
    what, limit = ("macs", macs) if macs is not None else ("params", params)
    assert limit is not None

    def at(phi: float) -> Multipliers:
        return multipliers(network, phi=phi, alpha=alpha, beta=beta, gamma=gamma)

    scaling = network.scaling
    bases = [
        value if value is not None else default
        for value, default in zip(
            (alpha, beta, gamma), (scaling.alpha, scaling.beta, scaling.gamma), strict=True
        )
    ]
    if min(bases) < 1.0:
        raise ScalingError(
            "budget solving needs alpha, beta and gamma ≥ 1 (cost must grow with phi)"
        )

    def fits(phi: float) -> bool:
        value = _measure(network, at, phi, what)
        return value is not None and value <= limit

    low, high = PHI_RANGE
    if not fits(low):
        smallest = _measure(network, at, low, what)
        raise ScalingError(
            f"no phi ≥ {low:g} fits {what} ≤ {_whole(limit)}"
            + (f" (phi={low:g} needs {smallest:,.0f})" if smallest is not None else "")
        )
    if fits(high):
        return at(high)
    # invariant: fits(low) and not fits(high)
    steps_low, steps_high = round(low / PRECISION), round(high / PRECISION)
    while steps_high - steps_low > 1:
        middle = (steps_low + steps_high) // 2
        if fits(middle * PRECISION):
            steps_low = middle
        else:
            steps_high = middle
    phi = round(steps_low * PRECISION, 4)
    return at(phi)
