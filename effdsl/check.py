"""Everything wrong with a spec, as a list: the library side of `effdsl check` and of editors.

    check_text(text, "net.eff")   # [EffError, ...]: errors and warnings, sorted by position

`effdsl.parse` raises on the first file that has errors (all of them, as one `EffErrors`);
`check_text` returns them instead, one value per problem, and adds the warnings that need the
lowered plan (feature maps that collapse). It never raises `EffError` and never imports torch,
so a language server can call it on every keystroke.
"""

from __future__ import annotations

from pathlib import Path

from effdsl import ast
from effdsl.errors import EffError, EffErrors, EffWarning, Span
from effdsl.plan import ConvOp, MixedConvOp, Plan, PoolOp


def check_text(text: str, filename: str = "<string>") -> list[EffError]:
    """Every error and warning of a spec's text, sorted by position (empty when it is clean).

    Each item is an `EffError` (warnings are `EffWarning`, whose `kind` is "warning") carrying
    its span, hint and the text, so `item.render()` prints it as the CLI does.
    """
    from effdsl.parser import parse
    from effdsl.plan import lower

    try:
        network = parse(text, filename=filename)
        problems: list[EffError] = list(collapse_warnings(lower(network), network.input))
    except EffErrors as errors:
        problems = list(errors.errors)
    except EffError as error:
        problems = [error]
    for problem in problems:
        problem.with_source(text)
    return sorted(problems, key=_position)


def check_file(path: str | Path) -> list[EffError]:
    """`check_text` of a file; an unreadable file is one error."""
    from effdsl.parser import read_spec

    try:
        text = read_spec(path)
    except EffError as error:
        return [error]
    return check_text(text, filename=str(path))


def collapse_warnings(plan: Plan, source: ast.Input | None = None) -> list[EffWarning]:
    """A warning when the network's feature maps shrink below its kernels (1×1 under a 3×3).

    A k×k convolution on maps smaller than k sees mostly padding, and stages after a 1×1 map
    only mix channels: a network scaled far down (`--phi -20` gives 14 px) still builds and
    runs, so this is a warning, not an error. One warning, at the first op it happens to;
    `source` is the spec's `input` statement, where the warning points when given.
    """
    for op in plan.ops():
        if not isinstance(op, ConvOp | MixedConvOp):
            continue
        kernel = _largest_kernel(op)
        if op.in_size < kernel:
            span = source.span_of("size") if source is not None else None
            where = _describe(op.path, plan)
            return [
                EffWarning(
                    f"feature maps collapse: {where} runs a {kernel}×{kernel} conv on "
                    f"{op.in_size}×{op.in_size} maps (input {plan.resolution} px)",
                    span,
                    hint=f"at least {_smallest_resolution(plan)} px keeps every map as large "
                    "as its kernel",
                )
            ]
    return []


def _describe(path: str, plan: Plan) -> str:
    """`stage 3 (`stage3`)` for an op inside a stage, else the op's path (stem, head)."""
    parts = path.split(".")
    if parts[0] == "stages":
        stage = plan.stages[int(parts[1])]
        return f"stage {stage.index} (`{stage.name}`)"
    return f"the {parts[0]}"


def _smallest_resolution(plan: Plan) -> int:
    """The smallest input size at which no conv sees maps smaller than its kernel.

    A stride-s conv maps n pixels to ⌈n/s⌉, so after a total stride r the map is ⌈R/r⌉ for an
    input of R; that is at least k exactly when R > (k − 1)·r.
    """
    need, reduction = 1, 1
    for op in plan.ops():
        if isinstance(op, ConvOp | MixedConvOp):
            need = max(need, (_largest_kernel(op) - 1) * reduction + 1)
            reduction *= op.stride
        elif isinstance(op, PoolOp):  # anti-aliased downsampling: the conv before kept the size
            reduction *= op.stride
    return need


def _largest_kernel(op: ConvOp | MixedConvOp) -> int:
    """The kernel a map must be as large as. A MixConv's kernels are a mixture by design: its
    wide slices look at the whole map on purpose (MixNet runs 9×9 slices on 7×7 maps at
    224 px), so it collapses only when its smallest kernel outgrows the map."""
    return min(op.kernels) if isinstance(op, MixedConvOp) else op.kernel


def _position(problem: EffError) -> tuple[str, int, int]:
    span: Span | None = problem.span
    return (span.file, span.line, span.column) if span else ("", 0, 0)
