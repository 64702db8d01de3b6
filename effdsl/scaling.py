"""Compound scaling (Tan & Le, 2019) as pure transforms `Network -> Network`.

    scale(net, phi=3)                 width β^φ, depth α^φ, resolution γ^φ (α, β, γ from the spec)
    scale(net, preset="b3")           the spec's named preset (width, depth, resolution, dropout)
    scale(net, width=1.2, depth=1.4)  explicit multipliers; `resolution=` in pixels overrides any

The result is an ordinary `Network` with the scaled channels, repeats, input size and dropout
written into its nodes, and no presets (they described the unscaled net). `Scaled.multipliers`
records what was applied. No torch here.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from effdsl import ast
from effdsl.arguments import checked
from effdsl.errors import ScalingError

# ---- the reference rounding rules ----------------------------------------------------------


def make_divisible(value: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """`value` rounded to the nearest multiple of `divisor`, but never below `round_limit` of it.

    Multiples of 8 keep tensor-core and vector kernels efficient; rounding to the nearest (not
    down) keeps the net close to the intended width, and adding one divisor back when the
    result lost more than 10% stops small layers from shrinking too far (TF reference
    `round_filters`, torchvision `_make_divisible`, timm `make_divisible`, whose `round_limit`
    this is: timm's EfficientNetV2-B3 turns the rule off with 0).
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < round_limit * value:
        rounded += divisor
    return int(rounded)


def round_channels(channels: int, width: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """Scale a channel count by `width`, to a multiple of `divisor` (see `make_divisible`)."""
    return make_divisible(channels * width, divisor, round_limit)


def round_repeats(repeats: int, depth: float, rounding: str = "up") -> int:
    """Scale a stage's block count by `depth`: `up` so no stage ever loses a block
    (EfficientNet), or to the `nearest` count, half to even as Python rounds (TinyNet).

    Products that are integers in decimal (5 × 1.4 = 7) can land a hair above the integer in
    binary floating point; rounding to 9 decimals first keeps `ceil` from adding a block there.
    """
    if rounding == "nearest":
        return max(1, round(repeats * depth))
    return max(1, math.ceil(round(repeats * depth, 9)))


def split_repeats(repeats: Sequence[int], total: int) -> list[int]:
    """Share a stage's scaled block count `total` among its lines in proportion to `repeats`.

    timm's rule: from the last line back, each gets its share rounded (half to even) and at
    least one, so the first line, usually the one that changes the stride or the width, is
    the least likely to be repeated. One line gets `total`.
    """
    left, left_total = sum(repeats), total
    shares = []
    for count in reversed(repeats):
        share = max(1, round(count / left * left_total))
        shares.append(share)
        left -= count
        left_total -= share
    return shares[::-1]


def round_resolution(resolution: int, factor: float) -> int:
    """Scale an input resolution by `factor`, to the nearest pixel (224 · 1.15 → 258)."""
    return max(1, math.floor(resolution * factor + 0.5))


# ---- what was applied -----------------------------------------------------------------------


@dataclass(frozen=True)
class Multipliers:
    """The scaling applied to a network: how it was asked for and the resulting factors."""

    width: float = 1.0
    depth: float = 1.0
    resolution: int | None = None  # pixels; None keeps the spec's
    dropout: float | None = None  # None keeps the spec's
    phi: float | None = None
    preset: str | None = None
    alpha: float | None = None
    beta: float | None = None
    gamma: float | None = None

    def __post_init__(self) -> None:
        # built by hand (not by `multipliers`), the factors must still make sense
        for name in ("width", "depth"):
            value = _real(name, getattr(self, name))
            if not 0 < value <= ast.MAX_MULTIPLIER:
                raise ScalingError(f"{name} must be in (0, {ast.MAX_MULTIPLIER:g}], got {value}")
        for name in ("alpha", "beta", "gamma"):
            value = getattr(self, name)
            if value is not None and not 0 < _real(name, value) <= ast.MAX_MULTIPLIER:
                raise ScalingError(f"{name} must be in (0, {ast.MAX_MULTIPLIER:g}], got {value}")
        if self.phi is not None:
            _real("phi", self.phi)
        if self.resolution is not None:
            _pixels(self.resolution)
        if self.dropout is not None and not 0 <= _real("dropout", self.dropout) < 1:
            raise ScalingError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.preset is not None and not isinstance(self.preset, str):
            raise ScalingError(f"preset must be a name, got {self.preset!r}")

    @property
    def is_identity(self) -> bool:
        return self.width == 1.0 and self.depth == 1.0 and self.resolution is None

    def describe(self) -> str:
        """A short label: `phi=3`, `preset b3`, `width=1.2 depth=1.4`, plus `res=300`."""
        parts = []
        if self.preset is not None:
            parts.append(f"preset {self.preset}")
        elif self.phi is not None:
            parts.append(f"phi={self.phi:g}")
        elif self.width != 1.0 or self.depth != 1.0:
            parts.append(f"width={self.width:g} depth={self.depth:g}")
        if self.resolution is not None and self.preset is None and self.phi is None:
            parts.append(f"resolution={self.resolution}")
        return " ".join(parts) or "unscaled"


def multipliers(
    network: ast.Network,
    *,
    phi: float | None = None,
    preset: str | None = None,
    width: float | None = None,
    depth: float | None = None,
    resolution: int | None = None,
    alpha: float | None = None,
    beta: float | None = None,
    gamma: float | None = None,
) -> Multipliers:
    """Resolve a scaling request against `network` into concrete multipliers."""
    _require(network, ast.Network, "network")
    if preset is not None and not isinstance(preset, str):
        raise ScalingError(f"preset must be a name, got {preset!r}")
    chosen = [n for n, v in (("phi", phi), ("preset", preset)) if v is not None]
    if width is not None or depth is not None:
        chosen.append("width/depth")
    if len(chosen) > 1:
        raise ScalingError(
            f"choose one way to scale, not {' and '.join(chosen)}",
            hint="use --phi, --preset, or --width/--depth; --resolution combines with any",
        )
    for name, value in (
        ("width", width),
        ("depth", depth),
        ("alpha", alpha),
        ("beta", beta),
        ("gamma", gamma),
    ):
        if value is not None and not 0 < _real(name, value) <= ast.MAX_MULTIPLIER:
            raise ScalingError(
                f"{name} must be a number in (0, {ast.MAX_MULTIPLIER:g}], got {value}"
            )
    if resolution is not None:
        resolution = _pixels(resolution)
    if phi is not None:
        return _from_phi(network, _real("phi", phi), resolution, alpha, beta, gamma)
    if preset is not None:
        found = network.preset(preset)
        if found is None:
            from effdsl.parser import did_you_mean

            names = [p.name for p in network.presets]
            hint = f"its presets: {', '.join(names) or 'none'}"
            close = did_you_mean(preset, names)
            raise ScalingError(
                f"network `{network.name}` has no preset `{preset}`",
                hint=f"{close} ({hint})" if close else hint,
            )
        return Multipliers(
            width=found.width,
            depth=found.depth,
            resolution=resolution if resolution is not None else found.resolution,
            dropout=found.dropout,
            preset=preset,
        )
    return Multipliers(
        width=1.0 if width is None else width,
        depth=1.0 if depth is None else depth,
        resolution=resolution,
    )


def _require(value: object, kind: type, name: str) -> None:
    if not isinstance(value, kind):
        raise ScalingError(f"{name} must be a {kind.__name__}, not {type(value).__name__}")


def _real(name: str, value: object) -> float:
    """`value` as a finite float; a non-number, NaN, ±inf or an int too big for a float fails."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ScalingError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ScalingError(f"{name} must be a finite number, got {number}")
    return number


def _pixels(resolution: object) -> int:
    """An input resolution: a whole number of pixels within the language's bounds."""
    try:
        pixels = operator.index(resolution)  # type: ignore[arg-type]
    except TypeError:
        raise ScalingError(
            f"resolution must be a whole number of pixels, got {resolution!r}"
        ) from None
    if not 8 <= pixels <= ast.MAX_RESOLUTION:
        shown = f"{pixels:,}" if abs(pixels) < 10**18 else "a far larger number"
        raise ScalingError(f"resolution must be in [8, {ast.MAX_RESOLUTION:,}], got {shown}")
    return pixels


def _from_phi(
    network: ast.Network,
    phi: float,
    resolution: int | None,
    alpha: float | None,
    beta: float | None,
    gamma: float | None,
) -> Multipliers:
    a = network.scaling.alpha if alpha is None else alpha
    b = network.scaling.beta if beta is None else beta
    g = network.scaling.gamma if gamma is None else gamma
    try:
        width, depth, res_factor = b**phi, a**phi, g**phi
    except OverflowError:
        raise ScalingError(
            f"phi={phi:g} overflows the multipliers", hint="use a smaller phi"
        ) from None
    for name, value in (("width", width), ("depth", depth), ("resolution", res_factor)):
        if not (math.isfinite(value) and value > 0) or value > ast.MAX_MULTIPLIER:
            raise ScalingError(
                f"phi={phi:g} gives a {name} multiplier of {value:.4g}, outside "
                f"(0, {ast.MAX_MULTIPLIER:g}]",
                hint="use a smaller phi",
            )
    if resolution is None:
        resolution = round_resolution(network.input.size, res_factor)
        if not 8 <= resolution <= ast.MAX_RESOLUTION:
            raise ScalingError(
                f"phi={phi:g} gives an input resolution of {resolution:,} px, outside "
                f"[8, {ast.MAX_RESOLUTION:,}]",
                hint="use a smaller phi, or give the resolution",
            )
    return Multipliers(
        width=width, depth=depth, resolution=resolution, phi=phi, alpha=a, beta=b, gamma=g
    )


# ---- the transforms -------------------------------------------------------------------------


def scale_block(block: Any, factors: Multipliers, scaling: ast.Scaling) -> Any:
    """One block with its channels (and expanded width) scaled, unless it opts out."""
    update: dict[str, Any] = {}
    if block.scales_width and factors.width != 1.0:
        width = round_channels(block.channels, factors.width, scaling.divisor, scaling.round_limit)
        if isinstance(block, ast.Head) and not block.shrink:
            width = max(width, block.channels)  # never narrower than written
        update["channels"] = width
        if isinstance(block, ast.Line) and block.mid is not None:
            update["mid"] = round_channels(
                block.mid, factors.width, scaling.divisor, scaling.round_limit
            )
    _check_bounds(block, update)
    return block.model_copy(update=update) if update else block


def _check_bounds(block: ast.Node, update: dict[str, Any]) -> None:
    for name, bound in (
        ("channels", ast.MAX_CHANNELS),
        ("mid", ast.MAX_CHANNELS),
        ("repeats", ast.MAX_REPEATS),
    ):
        if update.get(name, 0) > bound:
            raise ScalingError(
                f"scaling gives {update[name]} {name} in `{block.keyword}`, beyond the "
                f"language's bound of {bound}",
                block.span,
            )


def scale_stage(stage: ast.Stage, factors: Multipliers, scaling: ast.Scaling) -> ast.Stage:
    """A stage with every line's width scaled and its block count scaled as a whole.

    The lines that scale their depth share the stage's scaled count (`split_repeats`), so a
    stage of several lines grows as timm's builder grows it; a one-line stage gets
    `round_repeats`.
    """
    lines = [scale_block(line, factors, scaling) for line in stage.all_lines()]
    scaled = [i for i, line in enumerate(lines) if line.scales_depth]
    if scaled and factors.depth != 1.0:
        counts = [lines[i].repeats for i in scaled]
        total = round_repeats(sum(counts), factors.depth, scaling.depth_round)
        for i, count in zip(scaled, split_repeats(counts, total), strict=True):
            update = {"repeats": count}
            _check_bounds(lines[i], update)
            lines[i] = lines[i].model_copy(update=update)
    first, *rest = lines
    assert isinstance(first, ast.Stage)
    return first.model_copy(update={"lines": tuple(rest)}) if rest else first


def apply(network: ast.Network, factors: Multipliers) -> ast.Network:
    """The network with `factors` baked in: channels, repeats, input size, dropout."""
    _require(network, ast.Network, "network")
    _require(factors, Multipliers, "factors")
    scaling = network.scaling
    update: dict[str, Any] = {
        "stem": scale_block(network.stem, factors, scaling),
        "stages": tuple(scale_stage(s, factors, scaling) for s in network.stages),
        "head": (
            scale_block(network.head, factors, scaling)
            if isinstance(network.head, ast.Head)
            else network.head  # `head none`: nothing to scale
        ),
        "presets": (),
    }
    if factors.resolution is not None and factors.resolution != network.input.size:
        update["input"] = network.input.model_copy(update={"size": factors.resolution})
    if factors.dropout is not None and factors.dropout != network.classifier.dropout:
        update["classifier"] = network.classifier.model_copy(update={"dropout": factors.dropout})
    return network.model_copy(update=update)


@checked
def scale(
    network: ast.Network,
    *,
    phi: float | None = None,
    preset: str | None = None,
    width: float | None = None,
    depth: float | None = None,
    resolution: int | None = None,
    alpha: float | None = None,
    beta: float | None = None,
    gamma: float | None = None,
) -> ast.Network:
    """Scale `network` by φ, a named preset, or explicit multipliers (see module docstring)."""
    factors = multipliers(
        network,
        phi=phi,
        preset=preset,
        width=width,
        depth=depth,
        resolution=resolution,
        alpha=alpha,
        beta=beta,
        gamma=gamma,
    )
    return apply(network, factors)
