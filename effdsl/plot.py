"""`effdsl plot`: parameters, MACs and input resolution against φ, with the spec's presets, as SVG.

    curves = scaling_curves(net, phi_range=(-2, 8))
    svg = to_svg(curves)                          # same spec, byte-identical SVG
    effdsl plot specs/b0.eff -o scaling.svg --phi-range -2:8

Three panels share the φ axis. The solid line is the φ-scaled net through the rounding rules
(exact, hence steps); the dashed line is what the formulas promise without rounding:
MACs · (α·β²·γ²)^φ, params · (α·β²)^φ, resolution · γ^φ. Each preset of the spec is a dot at the
φ where the exact MACs curve reaches the preset's MACs (between the two samples around it, so
the dot sits on the drawn curve), and the other two panels show how the preset spends those
MACs differently from pure φ scaling: the official B1–B7 against φ = 1…7, at a glance. A
preset beyond the range is named in a footnote with its φ (`effdsl.budget.solve_phi`).

The SVG is written by hand (no plotting library): fixed layout, fixed number formatting.
No torch.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from effdsl import ast
from effdsl.arguments import checked
from effdsl.budget import solve_phi
from effdsl.cost import network_cost
from effdsl.errors import EffError, OutputError, ScalingError
from effdsl.files import atomic_write, refuse_inputs, same_file
from effdsl.scaling import apply, multipliers, scale
from effdsl.summary import human
from effdsl.text import markup, printable

DEFAULT_RANGE = (-2.0, 8.0)
SAMPLES = 201  # points per curve, whatever the range: the cost of a plot stays bounded
MAX_SPAN = 40.0  # widest φ range; beyond it the nets leave the language's bounds anyway


# ---- the data ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """The exact size of the network scaled by one φ."""

    phi: float
    params: int
    macs: int
    resolution: int


@dataclass(frozen=True)
class PresetMark:
    """A preset of the spec, placed at the φ of equal MACs (`phi` None: it could not be;
    ±inf: beyond the range, not searched for)."""

    name: str
    phi: float | None
    params: int
    macs: int
    resolution: int


@dataclass(frozen=True)
class ScalingCurves:
    """What the plot shows: exact samples along φ, the nominal growth rates, the presets."""

    network: str
    alpha: float
    beta: float
    gamma: float
    phi_range: tuple[float, float]
    samples: tuple[Sample, ...]
    base: Sample  # φ = 0
    presets: tuple[PresetMark, ...]

    def nominal(self, quantity: str, phi: float) -> float:
        """The unrounded promise of the formulas at `phi` for `params`, `macs` or `resolution`."""
        rate = {
            "params": self.alpha * self.beta**2,  # depth × width²: weights grow with c_in·c_out
            "macs": self.alpha * self.beta**2 * self.gamma**2,
            "resolution": self.gamma,
        }[quantity]
        start = float(getattr(self.base, quantity))
        return start * math.pow(rate, phi)


def parse_phi_range(text: str) -> tuple[float, float]:
    """`-2:8` → (-2.0, 8.0)."""
    low_text, colon, high_text = text.partition(":")
    try:
        low, high = float(low_text), float(high_text)
    except ValueError:
        raise ScalingError(f"--phi-range {text!r} is not LOW:HIGH", hint="e.g. -2:8") from None
    if not colon or not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ScalingError(
            f"--phi-range {text!r} is not LOW:HIGH with LOW < HIGH", hint="e.g. -2:8"
        )
    if high - low > MAX_SPAN:
        raise ScalingError(f"--phi-range {text!r} spans more than {MAX_SPAN:g}")
    return low, high


def _sample(network: ast.Network, phi: float) -> Sample:
    try:
        scaled = apply(network, multipliers(network, phi=phi))
        report = network_cost(scaled)
    except EffError as error:
        raise ScalingError(f"at φ={phi:g}: {error.message}", hint="narrow --phi-range") from None
    return Sample(phi, report.params, report.macs, scaled.input.size)


#: Presets outside the φ range whose φ is still found exactly, for the footnote; each costs a
#: budget search, and a spec may have hundreds of presets.
MAX_SOLVED_OUTSIDE = 10


def _preset_mark(
    network: ast.Network, preset: ast.Preset, samples: Sequence[Sample], solve: bool
) -> PresetMark:
    report = network_cost(scale(network, preset=preset.name))
    resolution = preset.resolution or network.input.size
    return PresetMark(
        preset.name, _phi_of(network, report.macs, samples, solve), report.params, report.macs,
        resolution,
    )


def _phi_of(
    network: ast.Network, macs: int, samples: Sequence[Sample], solve: bool
) -> float | None:
    """Where the MACs curve reaches `macs`: between the two samples around it, on the drawn
    line (log-linear), at no extra cost; outside the samples, by `solve_phi` when `solve`."""
    scaling = network.scaling
    if min(scaling.alpha, scaling.beta, scaling.gamma) < 1.0:
        return None  # the curve may fall as φ grows: no single φ matches
    for left, right in pairwise(samples):
        if left.macs <= macs <= right.macs:
            if right.macs == left.macs:
                return left.phi
            share = math.log(macs / left.macs) / math.log(right.macs / left.macs)
            return round(left.phi + share * (right.phi - left.phi), 4)
    if not solve:
        return math.inf if macs > samples[-1].macs else -math.inf
    try:
        return solve_phi(network, macs=macs).phi
    except EffError:
        return None  # MACs beyond what φ in solve_phi's range reaches


@checked
def scaling_curves(
    network: ast.Network, phi_range: tuple[float, float] = DEFAULT_RANGE
) -> ScalingCurves:
    """Sample the φ-scaled network across `phi_range` and place the spec's presets.

    The cost grows with the samples and the presets, not with blocks × presets: each net is
    costed by `network_cost`, and a preset is placed on the sampled curve.
    """
    low, high = phi_range
    phis = [round(low + (high - low) * i / (SAMPLES - 1), 6) for i in range(SAMPLES)]
    scaling = network.scaling
    samples = tuple(_sample(network, phi) for phi in phis)
    presets = []
    solved = 0
    for preset in network.presets:
        mark = _preset_mark(network, preset, samples, solve=solved < MAX_SOLVED_OUTSIDE)
        solved += mark.phi is not None and not low <= mark.phi <= high
        presets.append(mark)
    return ScalingCurves(
        network=network.name,
        alpha=scaling.alpha,
        beta=scaling.beta,
        gamma=scaling.gamma,
        phi_range=phi_range,
        samples=samples,
        base=_sample(network, 0.0),
        presets=tuple(presets),
    )


# ---- drawing -----------------------------------------------------------------------------------

WIDTH = 760
LEFT, RIGHT = 78, 28
TOP = 78  # title and legend
PANEL_HEIGHT = 170
GAP = 34
BOTTOM = 50
INK, GRID, EXACT, NOMINAL, MARK = "#222222", "#dddddd", "#1f5fa8", "#d9822b", "#c0392b"


@dataclass(frozen=True)
class Axis:
    """A linear or logarithmic map from data to pixels, and its ticks."""

    low: float
    high: float
    start: float  # pixel of `low`
    end: float  # pixel of `high`
    log: bool = False
    most: int = 6  # ticks, at most

    def __call__(self, value: float) -> float:
        def f(v: float) -> float:
            return math.log10(v) if self.log else v

        share = (f(value) - f(self.low)) / (f(self.high) - f(self.low))
        return self.start + share * (self.end - self.start)

    def ticks(self) -> list[float]:
        if self.log:
            return _log_ticks(self.low, self.high)
        return _linear_ticks(self.low, self.high, self.most)


def _linear_ticks(low: float, high: float, most: int = 6) -> list[float]:
    """Round values from `low` to `high`, at the smallest 1-2-2.5-5 step giving ≤ `most`."""
    raw = (high - low) / most
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(low / step)
    return [k * step for k in range(first, math.floor(high / step) + 1)]


def _log_ticks(low: float, high: float) -> list[float]:
    """1, 2, 5 × powers of ten between `low` and `high`; only the powers when they are many."""
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    mantissas = (1, 2, 5) if math.log10(high / low) <= 3 else (1,)
    return [m * 10.0**d for d in decades for m in mantissas if low <= m * 10.0**d <= high]


def _tick_label(value: float) -> str:
    """`2G`, `500M`, `2.5M`, `260`: `summary.human` without trailing zeros."""
    text = human(value)
    return re.sub(r"\.?0+(?=[kMGT]$)", "", text) if "." in text else text


def _phi_label(value: float) -> str:
    return f"{value:g}".replace("-", "−")


def _fmt(value: float) -> str:
    """A pixel coordinate, fixed to 2 decimals so that output is byte-stable."""
    return f"{value:.2f}"


def _padded(values: Sequence[float], log: bool) -> tuple[float, float]:
    """The data range of a panel with 8% headroom either side (room for the preset labels)."""
    low, high = min(values), max(values)
    if log:
        ratio = (high / low) ** 0.08 if high > low else 1.5
        return low / ratio, high * ratio
    pad = (high - low) * 0.08 if high > low else max(abs(high) * 0.1, 1.0)
    return low - pad, high + pad


def _polyline(points: Sequence[tuple[float, float]], colour: str, dashed: bool = False) -> str:
    coordinates = " ".join(f"{_fmt(x)},{_fmt(y)}" for x, y in points)
    dash = ' stroke-dasharray="6 4"' if dashed else ""
    return (
        f'<polyline points="{coordinates}" fill="none" stroke="{colour}" stroke-width="1.8"'
        f'{dash}/>'
    )


def _text(x: float, y: float, text: str, anchor: str = "start", **attributes: str) -> str:
    extra = "".join(f' {name.replace("_", "-")}="{value}"' for name, value in attributes.items())
    return (
        f'<text x="{_fmt(x)}" y="{_fmt(y)}" text-anchor="{anchor}"{extra}>{markup(text)}</text>'
    )


def _panel(
    curves: ScalingCurves, quantity: str, title: str, top: float, x: Axis, log: bool
) -> list[str]:
    """One panel: frame, grid, ticks, the exact and nominal curves, the preset dots."""
    bottom = top + PANEL_HEIGHT
    value: Callable[[Any], float] = lambda item: float(getattr(item, quantity))  # noqa: E731
    low, high = curves.phi_range
    marks = [(m, m.phi) for m in curves.presets if m.phi is not None and low <= m.phi <= high]
    nominal = [(s.phi, curves.nominal(quantity, s.phi)) for s in curves.samples]
    data = [value(s) for s in curves.samples] + [v for _, v in nominal]
    data += [value(m) for m, _ in marks]
    y = Axis(*_padded(data, log), start=bottom, end=top, log=log)
    out = [f'<g id="panel-{quantity}">']
    for tick in x.ticks():
        out.append(_line(x(tick), top, x(tick), bottom, GRID))
    for tick in y.ticks():
        out.append(_line(LEFT, y(tick), WIDTH - RIGHT, y(tick), GRID))
        out.append(_text(LEFT - 6, y(tick) + 4, _tick_label(tick), "end"))
    out.append(
        f'<rect x="{LEFT}" y="{_fmt(top)}" width="{WIDTH - LEFT - RIGHT}" '
        f'height="{PANEL_HEIGHT}" fill="none" stroke="{INK}"/>'
    )
    out.append(_text(LEFT + 8, top + 16, title, font_weight="bold"))
    out.append(_polyline([(x(phi), y(v)) for phi, v in nominal], NOMINAL, dashed=True))
    out.append(_polyline([(x(s.phi), y(value(s))) for s in curves.samples], EXACT))
    for mark, phi in marks:
        cx, cy = x(phi), y(value(mark))
        out.append(
            f'<circle cx="{_fmt(cx)}" cy="{_fmt(cy)}" r="3.5" fill="{MARK}" stroke="white"/>'
        )
        out.append(_text(cx, cy - 7, mark.name, "middle", fill=MARK))
    out.append("</g>")
    return out


def _line(x1: float, y1: float, x2: float, y2: float, colour: str) -> str:
    return (
        f'<line x1="{_fmt(x1)}" y1="{_fmt(y1)}" x2="{_fmt(x2)}" y2="{_fmt(y2)}" '
        f'stroke="{colour}"/>'
    )


def _legend(top: float) -> list[str]:
    x = LEFT
    return [
        _polyline([(x, top), (x + 28, top)], EXACT),
        _text(x + 34, top + 4, "exact: φ-scaled through the rounding rules"),
        _polyline([(x + 300, top), (x + 328, top)], NOMINAL, dashed=True),
        _text(x + 334, top + 4, "nominal: no rounding"),
        f'<circle cx="{_fmt(x + 480)}" cy="{_fmt(top)}" r="3.5" fill="{MARK}"/>',
        _text(x + 488, top + 4, "preset, at the φ of equal MACs"),
    ]


def _footnote(curves: ScalingCurves) -> str:
    """Presets the plot cannot show, and why."""
    parts = []
    for mark in curves.presets:
        if mark.phi is None:
            parts.append(f"{mark.name} (no φ matches its MACs)")
        elif math.isinf(mark.phi):
            side = "above" if mark.phi > 0 else "below"
            parts.append(f"{mark.name} (φ {side} the range)")
        elif not curves.phi_range[0] <= mark.phi <= curves.phi_range[1]:
            parts.append(f"{mark.name} (φ ≈ {_phi_label(round(mark.phi, 2))})")
    return "not shown, outside the range: " + ", ".join(parts) if parts else ""


@checked
def to_svg(curves: ScalingCurves) -> str:
    """The plot as an SVG document (deterministic text)."""
    panels = (
        ("params", "parameters (log scale)", True),
        ("macs", "MACs per image (log scale)", True),
        ("resolution", "input resolution (px)", False),
    )
    height = TOP + len(panels) * PANEL_HEIGHT + (len(panels) - 1) * GAP + BOTTOM
    low, high = curves.phi_range
    x = Axis(low, high, start=LEFT, end=WIDTH - RIGHT, most=12)  # every integer φ up to 12
    constant = curves.alpha * curves.beta**2 * curves.gamma**2
    title = (
        f"{curves.network}: compound scaling with α={curves.alpha:g}, β={curves.beta:g}, "
        f"γ={curves.gamma:g} (α·β²·γ² = {constant:.4f})"
    )
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11" fill="{INK}">',
        f"<title>{markup(title)}</title>",
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        _text(LEFT, 24, title, font_size="14", font_weight="bold"),
        *_legend(50),
    ]
    for index, (quantity, label, log) in enumerate(panels):
        top = TOP + index * (PANEL_HEIGHT + GAP)
        out += _panel(curves, quantity, label, top, x, log)
    axis_y = TOP + len(panels) * PANEL_HEIGHT + (len(panels) - 1) * GAP
    for tick in x.ticks():
        out.append(_text(x(tick), axis_y + 16, _phi_label(tick), "middle"))
    out.append(_text((LEFT + WIDTH - RIGHT) / 2, axis_y + 34, "compound coefficient φ", "middle"))
    footnote = _footnote(curves)
    if footnote:
        out.append(_text(WIDTH - RIGHT, axis_y + 34, footnote, "end", font_size="10"))
    out.append("</svg>")
    return "\n".join(out) + "\n"


@checked
def plot(
    network: ast.Network, path: str | Path, phi_range: tuple[float, float] = DEFAULT_RANGE
) -> None:
    """Write the scaling plot of `network` to `path` (SVG), atomically."""
    atomic_write(path, to_svg(scaling_curves(network, phi_range)))


# ---- the command -------------------------------------------------------------------------------

# argparse takes `-2:8` for an option because it starts with a dash and is not a plain negative
# number; this wider pattern lets `--phi-range -2:8` through (`--phi-range=-2:8` works anyway).
_NEGATIVE_ARGUMENT = re.compile(r"^-\d+$|^-\d*\.\d+$|^-[\d.]+:[-\d.]+$")


def register_plot(subparsers: Any) -> None:
    """Add `effdsl plot` to the CLI's subparsers."""
    parser = subparsers.add_parser(
        "plot",
        help="plot params, MACs and resolution against φ, with the presets (SVG)",
        description="Draw how SPEC grows with φ (its α, β, γ): parameters, MACs and input "
        "resolution, exact and nominal, with the spec's presets marked at the φ of equal MACs.",
    )
    parser._negative_number_matcher = _NEGATIVE_ARGUMENT
    parser.add_argument("spec", metavar="SPEC", nargs="?", help="the spec (not with --study)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="the SVG file")
    parser.add_argument(
        "--phi-range", default="-2:8", metavar="LOW:HIGH", help="the φ axis (default -2:8)"
    )
    parser.add_argument(
        "--study", metavar="NAME",
        help="instead of SPEC: a scored search's score against MACs, Pareto front and the "
        "spec's own α, β, γ (see docs/search.md)",
    )
    parser.add_argument("--storage", metavar="URL",
                        help="the study's storage (default effdsl-search.db)")
    parser.set_defaults(run=run_plot)


def run_plot(args: argparse.Namespace) -> int:
    """`effdsl plot`: write the SVG and say where."""
    from effdsl.parser import load

    if Path(args.output).suffix.lower() != ".svg":
        raise OutputError(f"{args.output}: the plot is SVG; name the output *.svg")
    if args.study is not None or args.storage is not None:
        return _run_study_plot(args)
    if args.spec is None:
        raise EffError("no SPEC given", hint="effdsl plot SPEC -o OUT.svg, or --study NAME")
    refuse_inputs(args.output, args.spec)
    phi_range = parse_phi_range(args.phi_range)
    plot(load(args.spec), args.output, phi_range)
    print(f"wrote {printable(args.output)}")
    return 0


def _run_study_plot(args: argparse.Namespace) -> int:
    from effdsl.search import status
    from effdsl.study import DEFAULT_STORAGE, parse_storage
    from effdsl.study_plot import study_svg

    if args.spec is not None:
        raise EffError("give SPEC or --study, not both")
    storage = args.storage or DEFAULT_STORAGE
    ref = parse_storage(storage)
    if ref.kind != "url" and same_file(args.output, ref.text):
        raise OutputError(f"{args.output}: refusing to overwrite the study's storage")
    atomic_write(args.output, study_svg(status(storage, args.study)))
    print(f"wrote {printable(args.output)}")
    return 0
