"""The rules of a spec that need the whole network, checked in one pass.

Local rules (bounds, odd kernels) are enforced when each AST node is built; this pass adds the
ones that look across statements. It returns every problem it finds rather than stopping at the
first, so that `effdsl check` reports a file's errors in one run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from effdsl import ast
from effdsl.errors import EffError, EffSemanticError


def validate(network: ast.Network) -> list[EffError]:
    """All global-rule violations of `network`, in source order (empty when it is valid)."""
    ends = (network.stem, network.head) if isinstance(network.head, ast.Head) else (network.stem,)
    return validate_parts(stages=network.stages, presets=network.presets, ends=ends)


def validate_parts(
    *,
    stages: Sequence[ast.Stage],
    presets: Sequence[ast.Preset],
    ends: Sequence[ast.Block],
    lines: Sequence[ast.Line] = (),
) -> list[EffError]:
    """The global rules over the statements that were read, in source order.

    `lines` are `block` lines not (yet) attached to their stage.

    The parser calls this with the statements that built even when others had errors, so that
    one run reports a file's per-line and whole-network errors together.
    """
    errors: list[EffError] = []
    errors += _duplicates("stage", [(s.name, s) for s in stages if s.name is not None])
    errors += _duplicates("preset", [(p.name, p) for p in presets])
    for block in ends:
        if block.kind != "conv":
            errors.append(
                EffSemanticError(
                    f"the {block.keyword} must be a `conv` block, not `{block.kind}`",
                    block.span_of("kind"),
                    hint=f"write `{block.keyword} {_END_EXAMPLES[block.keyword]}`, and put "
                    f"{block.kind} blocks in stages",
                )
            )
    every_line = [line for stage in stages for line in stage.all_lines()]
    for block in (*ends, *every_line, *lines):
        if block.kind in ("conv", "mqa") and block.se:
            errors.append(
                EffSemanticError(
                    f"a `{block.kind}` block has no squeeze-and-excitation",
                    block.span_of("se"),
                    hint="remove `se=...` or use an mbconv or fused_mbconv block",
                )
            )
    for block in (*ends, *every_line, *lines):
        if block.kind in ("conv", "mqa") and block.se_kind is not None:
            errors.append(
                EffSemanticError(
                    f"a `{block.kind}` block has no squeeze-and-excitation for `se_kind` to "
                    "replace",
                    block.span_of("se_kind"),
                    hint="remove `se_kind=...` here, or set it in `defaults`, where it applies "
                    "to the blocks with `se`",
                )
            )
    for block in (*ends, *every_line, *lines):
        if block.layer_scale and block.kind not in ast.LAYER_SCALED:
            errors.append(
                EffSemanticError(
                    f"layer_scale applies to `uir` blocks, not `{block.kind}`",
                    block.span_of("layer_scale"),
                    hint="remove `layer_scale=...` here, or set it in `defaults`, where it "
                    "applies to the uir blocks only",
                )
            )
    return sorted(errors, key=lambda e: (e.span.line, e.span.column) if e.span else (0, 0))


#: What a stem and a head usually are, shown when one is not a `conv` block.
_END_EXAMPLES = {"stem": "conv k3 s2 c32", "head": "conv k1 s1 c1280"}


def _duplicates(what: str, named: Iterable[tuple[str, ast.Node]]) -> list[EffError]:
    errors: list[EffError] = []
    seen: dict[str, ast.Node] = {}
    for name, node in named:
        first = seen.setdefault(name, node)
        if first is not node:
            line = first.span.line if first.span else "?"
            errors.append(
                EffSemanticError(
                    f"duplicate {what} name `{name}`",
                    node.span_of("name"),
                    hint=f"the first `{name}` is at line {line}; names must be unique",
                )
            )
    return errors
