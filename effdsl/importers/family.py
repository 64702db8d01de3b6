"""One spec for a family of scaled variants: a base network and one preset per variant.

    family = import_family("timm:mobilenetv3_large_*")
    family.network      # the base variant's spec, with a `preset` per variant that fits it
    family.misfits      # (name, why) for the variants that do not share its structure

A variant fits a base when `effdsl.scale(base, width=w, depth=d)` gives the variant's spec
exactly, under the language's own rounding rules (`round_channels`, `round_repeats`). The
multipliers are found, not looked up: each block's channels bound the width to an interval of
candidates, each stage's repeats bound the depth, and the shortest decimal that reproduces every
block is taken. A block that keeps its width while others scale is marked `fix=width`; where no
multiplier reproduces a variant, the family says so rather than writing an approximation.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from effdsl import ast
from effdsl.arguments import checked
from effdsl.errors import EffError, ImportRefused
from effdsl.plan import lower
from effdsl.scaling import round_channels, round_repeats, scale

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

#: Members preferred as the base: the unscaled variant of each family's naming scheme.
_BASE_NAMES = re.compile(r"(_100|_b0|1_0|_s|_small|_large)$")


@dataclass(frozen=True)
class Family:
    """A family's spec (base plus presets), and the variants it could not hold, with why."""

    network: ast.Network | None
    members: tuple[str, ...]
    misfits: tuple[tuple[str, str], ...]


def _comparable(network: ast.Network) -> ast.Network:
    """What two specs must share to be one up to a preset: everything but the name,
    comments, presets, input size and which blocks opt out of scaling."""

    def unfixed(block: Any) -> Any:
        update: dict[str, Any] = {"fix": "none"}
        if isinstance(block, ast.Stage):
            update["lines"] = tuple(unfixed(line) for line in block.lines)
        return block.model_copy(update=update)

    return network.model_copy(
        update={
            "name": "_",
            "presets": (),
            "input": network.input.model_copy(update={"size": 8}),
            "stem": unfixed(network.stem),
            "stages": tuple(unfixed(stage) for stage in network.stages),
            "head": unfixed(network.head),
        }
    )


def _shortest(low: float, high: float) -> float | None:
    """The shortest decimal in the half-open interval (low, high], if any within 4 digits."""
    for digits in range(5):
        step = 10.0**-digits
        candidate = round((int(low / step) + 1) * step, digits)
        if low < candidate <= high:
            return candidate
    return None


def _width(base: ast.Network, variant: ast.Network) -> tuple[float, set[int]] | None:
    """A width multiplier taking base's channels to variant's, and the blocks (by position:
    stem, stages, head) that must keep their width, or None."""
    divisor = base.scaling.divisor
    ours, theirs = _blocks(base), _blocks(variant)
    if len(ours) != len(theirs):
        return None
    pairs = [(b.channels, v.channels) for b, v in zip(ours, theirs, strict=True)]
    ratios = sorted(v / b for b, v in pairs if v != b)
    if not ratios:
        return 1.0, set()
    middle = ratios[len(ratios) // 2]
    candidates = sorted(
        {round(middle + step / 100, 2) for step in range(-15, 16) if middle + step / 100 > 0},
        key=lambda w: (len(f"{w:g}"), abs(w - middle)),
    )
    for width in candidates:
        fixed = set()
        for position, (b, v) in enumerate(pairs):
            if round_channels(b, width, divisor, base.scaling.round_limit) == v:
                continue
            if b == v:
                fixed.add(position)
                continue
            break
        else:
            return width, fixed
    return None


def _depth(base: ast.Network, variant: ast.Network) -> tuple[float, set[int]] | None:
    """A depth multiplier taking base's repeats to variant's, and the stages that keep theirs."""
    low, high = 0.0, float("inf")
    fixed: set[int] = set()
    rounding = base.scaling.depth_round
    if rounding != "up":  # the bounds below are ceil's; other roundings are tried by scaling
        return 1.0, fixed
    pairs = [
        (b.total_repeats, v.total_repeats)
        for b, v in zip(base.stages, variant.stages, strict=True)
    ]
    for b, v in pairs:
        if v == 1 and b == 1:
            continue
        # ceil(b·d) = v  ⇔  (v-1)/b < d ≤ v/b
        low, high = max(low, (v - 1) / b), min(high, v / b)
    if low >= high:
        # try keeping the stages whose repeats did not change, then solve the rest
        low, high = 0.0, float("inf")
        for index, (b, v) in enumerate(pairs):
            if b == v:
                fixed.add(index)
                continue
            low, high = max(low, (v - 1) / b), min(high, v / b)
        if low >= high:
            return None
    if high == float("inf"):
        return 1.0, fixed
    depth = 1.0 if low < 1.0 <= high else _shortest(low, high)
    if depth is None:
        return None
    if any(round_repeats(b, depth) != v for i, (b, v) in enumerate(pairs) if i not in fixed):
        return None
    return depth, fixed


def _with_skips(base: ast.Network, variant: ast.Network) -> ast.Network:
    """`base` with the variant's `skip=` on each line where the base's blocks could have no
    residual anyway (one block that changes shape): a deeper variant's extra blocks show
    whether the line has them (MobileNetV3-Large 1.5d's second 1×1 conv block has none)."""
    channels = base.stem.channels

    def line_of(ours: Any, theirs: Any) -> Any:
        nonlocal channels
        alone = ours.repeats == 1 and (ours.stride != 1 or ours.channels != channels)
        channels = ours.channels
        if alone and ours.skip != theirs.skip:
            return ours.model_copy(update={"skip": theirs.skip})
        return ours

    stages = []
    for ours, theirs in zip(base.stages, variant.stages, strict=True):
        if len(ours.lines) != len(theirs.lines):
            return base
        first = line_of(ours, theirs)
        lines = tuple(line_of(a, b) for a, b in zip(ours.lines, theirs.lines, strict=True))
        stages.append(first.model_copy(update={"lines": lines}) if lines else first)
    return base.model_copy(update={"stages": tuple(stages)})


def _blocks(network: ast.Network) -> list[Any]:
    """The stem, every line of every stage in order, and the head: what a width scales."""
    lines = [line for stage in network.stages for line in stage.all_lines()]
    return [network.stem, *lines, network.head]


def _with_fixes(base: ast.Network, widths: set[int], depths: set[int]) -> ast.Network:
    """`base` with `fix=` on the blocks (positions in `_blocks`) that keep their width and the
    stages (by index) that keep their depth: a stage's lines keep it with it."""
    position = 0

    def fixed(block: Any, stage: int | None) -> Any:
        nonlocal position
        fix_width = position in widths
        fix_depth = stage is not None and stage in depths
        position += 1
        if fix_width or fix_depth:
            fix = "all" if fix_width and fix_depth else ("width" if fix_width else "depth")
            return block.model_copy(update={"fix": fix})
        return block

    stem = fixed(base.stem, None)
    stages = []
    for index, stage in enumerate(base.stages):
        first = fixed(stage, index)
        lines = tuple(fixed(line, index) for line in stage.lines)
        stages.append(first.model_copy(update={"lines": lines}) if lines else first)
    head = fixed(base.head, None)
    return base.model_copy(update={"stem": stem, "stages": tuple(stages), "head": head})


def preset_for(
    base: ast.Network, variant: ast.Network, name: str
) -> tuple[ast.Preset, ast.Network] | str:
    """The preset of `base` that gives `variant` (and the base with any `fix=` it needs), or
    why there is none."""
    if len(base.stages) != len(variant.stages):
        return f"{len(variant.stages)} stages where the base has {len(base.stages)}"
    width = _width(base, variant)
    if width is None:
        return "no width multiplier gives its channels"
    depth = _depth(base, variant)
    if depth is None:
        return "no depth multiplier gives its repeats"
    fixed = _with_fixes(
        base, width[1] | base_fixed_widths(base), depth[1] | base_fixed_depths(base)
    )
    fixed = _with_skips(fixed, variant)
    fields: dict[str, Any] = {"name": name}
    if width[0] != 1.0:
        fields["width"] = width[0]
    if depth[0] != 1.0:
        fields["depth"] = depth[0]
    if variant.input.size != base.input.size:
        fields["resolution"] = variant.input.size
    if variant.classifier.dropout != base.classifier.dropout:
        fields["dropout"] = variant.classifier.dropout
    preset = ast.Preset(**fields)
    try:
        scaled = scale(fixed.model_copy(update={"presets": (preset,)}), preset=name)
    except EffError as error:
        return error.message
    difference = _difference(_comparable(scaled), _comparable(variant))
    if difference:
        return difference
    return preset, fixed


def _difference(scaled: ast.Network, variant: ast.Network) -> str | None:
    """Where the scaled base and the variant differ, said briefly; None when they lower to the
    same layers (an expansion written e2.3 in one and e2.2 in the other, giving the same
    widths, is no difference)."""
    if _layers(scaled) == _layers(variant):
        return None
    pairs: list[tuple[str, Any, Any]] = [
        ("defaults", scaled.defaults, variant.defaults),
        ("stem", scaled.stem, variant.stem),
        *(
            (f"stage {i}", a, b)
            for i, (a, b) in enumerate(zip(scaled.stages, variant.stages, strict=True))
        ),
        ("head", scaled.head, variant.head),
        ("classifier", scaled.classifier, variant.classifier),
    ]
    for where, ours, theirs in pairs:
        if ours != theirs:
            fields = [
                f"{name} {_brief(getattr(ours, name))} vs {_brief(getattr(theirs, name))}"
                for name in type(ours).model_fields
                if name not in ast.TRIVIA and getattr(ours, name) != getattr(theirs, name)
            ]
            return f"{where} differs ({', '.join(fields)})"
    return "their layers differ"


def _brief(value: Any) -> str:
    """A field's value for a message: block lines as the `fmt` text of their shapes."""
    if isinstance(value, tuple) and value and isinstance(value[0], ast.BlockLine):
        return "[" + "; ".join(_brief(line) for line in value) + "]"
    if isinstance(value, ast.BlockLine):
        return f"{value.kind} e{value.expand:g} k{ast.kernel_text(value.kernel)} c{value.channels}"
    return str(value)


def _layers(network: ast.Network) -> tuple[Any, ...]:
    """Every layer of the lowered network, with each block's residual and drop-path rate."""
    plan = lower(network)
    blocks = tuple((block.ops, block.residual, block.drop_path) for block in plan.blocks())
    return (plan.stem, blocks, plan.head, plan.head_pool, plan.classifier)


def base_fixed_widths(network: ast.Network) -> set[int]:
    return {i for i, block in enumerate(_blocks(network)) if block.fix in ("width", "all")}


def base_fixed_depths(network: ast.Network) -> set[int]:
    return {i for i, stage in enumerate(network.stages) if stage.fix in ("depth", "all")}


def _preset_names(members: Sequence[str]) -> dict[str, str]:
    """Each member's preset name: what follows the members' common prefix, when that is a
    word for every member (`efficientnet_b3` → `b3`), else the full name."""
    prefix = ""
    if len(members) > 1:
        common = min(members)
        other = max(members)
        length = next(
            (i for i, (a, b) in enumerate(zip(common, other, strict=False)) if a != b),
            min(len(common), len(other)),
        )
        prefix = common[:length]
        prefix = prefix[: prefix.rfind("_") + 1] if "_" in prefix else ""
    suffixes = {m: m[len(prefix) :] for m in members}
    if prefix and all(_WORD.match(s) for s in suffixes.values()):
        return suffixes
    return {m: m for m in members}


@checked
def import_family(pattern: str) -> Family:
    """One spec with a preset per variant of `pattern` (`timm:mobilenetv3_large_*`)."""
    from effdsl.importers import available, import_model

    library, colon, glob = pattern.partition(":")
    if not colon or not glob:
        raise ImportRefused(f"`{pattern}` is not SOURCE:PATTERN", hint="e.g. timm:efficientnet_b*")
    members = [name for name in available(library) if fnmatch.fnmatchcase(name, glob)]
    if not members:
        raise ImportRefused(f"no {library} model matches `{glob}`")
    specs: dict[str, ast.Network] = {}
    misfits: list[tuple[str, str]] = []
    for name in members:
        try:
            specs[name] = import_model(f"{library}:{name}")
        except ImportRefused as refusal:
            misfits.append((name, refusal.message))
    if not specs:
        return Family(None, tuple(members), tuple(misfits))
    names = _preset_names(list(specs))
    order = sorted(specs, key=lambda n: (not _BASE_NAMES.search(n), n))
    best: tuple[ast.Network, list[str], list[tuple[str, str]]] | None = None
    for base_name in order:
        base = specs[base_name]
        presets: list[ast.Preset] = []
        fitted: list[str] = []
        unfit: list[tuple[str, str]] = []
        for name in specs:
            found = preset_for(base, specs[name], names[name])
            if isinstance(found, str):
                unfit.append((name, f"does not share {base_name}'s structure: {found}"))
                continue
            preset, fixed = found
            clash = next(
                (
                    p.name
                    for p in presets
                    if _difference(
                        _comparable(
                            scale(fixed.model_copy(update={"presets": (p,)}), preset=p.name)
                        ),
                        _comparable(specs[next(n for n in fitted if names[n] == p.name)]),
                    )
                ),
                None,
            )
            if clash is not None:
                unfit.append((name, f"needs a `fix=` that {clash} cannot take"))
                continue
            base = fixed
            presets.append(preset)
            fitted.append(name)
        network = base.model_copy(update={"presets": tuple(presets)})
        if best is None or len(fitted) > len(best[1]):
            best = (network, fitted, unfit)
    assert best is not None
    network, fitted, unfit = best
    comment = (
        f"# {library}:{glob}, imported from {network.comments[0].split('imported from ')[1]}",
        "# One preset per variant: `effdsl compile SPEC --preset NAME` gives that model.",
    )
    return Family(
        network.model_copy(update={"comments": comment}),
        tuple(members),
        tuple(misfits + unfit),
    )
