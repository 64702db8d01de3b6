"""The renderer: a plan drawn as a graphviz graph, by stage, block or layer, or beside its base.

    to_dot(plan)                         # input, stem, one node per stage, head, classifier
    to_dot(plan, detail="block")         # every block, clustered by stage, residuals dashed
    to_dot(plan, detail="layer")         # every op, clustered by block within stage
    to_dot(b3, base=b0)                  # base and scaled side by side, what scaling changed in red
    render(plan, "b0.svg")               # .dot needs nothing; .svg/.png/.pdf run graphviz's `dot`

Walking and drawing are separate steps. The walkers read the plan and `effdsl.cost` (never
re-deriving a channel count) into a small graph description (`Box`, `Arrow`, `Cluster`,
`Graph`); `emit` turns that description into DOT text. Node ids come from plan paths
(`stages.3.blocks.1.expand` → `stages_3_blocks_1_expand`), so the same plan always gives
byte-identical DOT. Every piece of user text (network, stage and preset names can hold anything)
is escaped on the way out. No torch; `dot` is only run when a picture is asked for.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path

from effdsl.arguments import checked
from effdsl.ast import UNEXPANDED, Network, kernel_text
from effdsl.ast import Node as NetworkNode
from effdsl.cost import Cost, classifier_cost, cost, op_cost
from effdsl.errors import LimitError, OutputError, ToolMissingError
from effdsl.files import atomic_path, atomic_write
from effdsl.plan import (
    AttentionOp,
    BlockPlan,
    ConvOp,
    GlobalContextOp,
    LayerScaleOp,
    MixedConvOp,
    NormOp,
    Op,
    Plan,
    PoolOp,
    RoutingOp,
    SqueezeExciteOp,
    StagePlan,
)
from effdsl.text import markup
from effdsl.text import printable as safe_text

DETAILS = ("stage", "block", "layer")
RANKDIRS = ("TB", "LR", "BT", "RL")
#: Output suffixes graphviz's `dot` draws, and the `-T` format of each.
FORMATS = {".svg": "svg", ".png": "png", ".pdf": "pdf"}
#: Suffixes written as DOT text, which needs no graphviz at all.
DOT_SUFFIXES = (".dot", ".gv")
#: Seconds `dot` may take; a layer-detail EfficientNet-B7 takes a few.
DOT_TIMEOUT = 60
#: The most nodes handed to `dot`: its layout time grows faster than the node count (1,200
#: nodes take about 4 s, 2,400 took 81 s), and a layer-detail drawing of 2,000 blocks would
#: take minutes and gigabytes. EfficientNet-L2 at layer detail has about 600.
MAX_DRAWN_NODES = 1_000

INSTALL_HINT = "install graphviz (`apt-get install graphviz` or `brew install graphviz`)"


# ---- colours -------------------------------------------------------------------------------

FONT = "Helvetica,Arial,sans-serif"
HIGHLIGHT = "#c62828"  # what scaling changed
INK = "#222222"
MUTED = "#666666"


@dataclass(frozen=True)
class Swatch:
    """How one kind of node is filled and outlined, and its name in the legend."""

    fill: str
    line: str
    legend: str


#: One colour per kind of block (and for the ends of the network), the same at every detail
#: level, so a stage node and the ops inside its blocks read as one thing.
PALETTE: dict[str, Swatch] = {
    "input": Swatch("#eeeeee", "#8a8a8a", "input"),
    "stem": Swatch("#d6e6f5", "#3f6fa8", "stem"),
    "conv": Swatch("#e6ddf2", "#6d4fa0", "Conv"),
    "fused_mbconv": Swatch("#fde2c4", "#c7741f", "Fused-MBConv"),
    "mbconv": Swatch("#d8eed5", "#3a8a3a", "MBConv"),
    "mixconv": Swatch("#fbf3c4", "#a88a12", "MixConv"),
    "condconv": Swatch("#f5d9ec", "#a4497f", "CondConv"),
    "separable": Swatch("#e3ecf7", "#4f6f9a", "SepConv"),
    "uir": Swatch("#efe3d3", "#8a6234", "UIB"),
    "mqa": Swatch("#dde3f6", "#4a58a8", "MQA"),
    "head": Swatch("#d3eeea", "#2a8579", "head"),
    "classifier": Swatch("#f6d5d5", "#b04848", "classifier"),
    "add": Swatch("#ffffff", "#777777", "residual add"),
}

#: Background of a stage cluster (a pale tint of its kind) and of a block cluster.
STAGE_TINT: dict[str, str] = {
    "conv": "#f7f4fb",
    "fused_mbconv": "#fff7ee",
    "mbconv": "#f3faf2",
    "mixconv": "#fffcea",
    "condconv": "#fdf3f9",
    "separable": "#f4f7fb",
    "uir": "#fcf8f2",
    "mqa": "#f5f7fd",
}
BLOCK_TINT = "#ffffff"


# ---- the graph description -----------------------------------------------------------------


@dataclass(frozen=True)
class Text:
    """A run of label text; a `changed` run is drawn in the highlight colour."""

    text: str
    changed: bool = False


@dataclass(frozen=True)
class Row:
    """One line of a label: runs of text, drawn as a `title` (bold), `body` or `note` (small)."""

    runs: tuple[Text, ...]
    style: str = "body"


@dataclass(frozen=True)
class Box:
    """A node: `kind` picks its colours; `shape` is "box", "add" (a residual sum), "fork"
    (where a residual branches off) or "header" (a compared network's title)."""

    id: str
    kind: str
    rows: tuple[Row, ...]
    tooltip: str
    shape: str = "box"


@dataclass(frozen=True)
class Arrow:
    """An edge carrying a tensor (`flow`), a residual `skip`, or an `invisible` layout aid."""

    tail: str
    head: str
    label: str = ""
    style: str = "flow"
    changed: bool = False


@dataclass(frozen=True)
class Cluster:
    """A framed group of boxes: a stage (`level="stage"`), a block, or a compared network.

    `rows` describe the group; they are drawn beside `anchor`, its first node.
    """

    id: str
    kind: str
    level: str
    rows: tuple[Row, ...]
    items: tuple[Item, ...]
    anchor: str = ""


Item = Box | Cluster


@dataclass(frozen=True)
class Graph:
    """Everything `emit` draws: a title, the items, the edges and rows of same-rank nodes."""

    title: tuple[Row, ...]
    items: tuple[Item, ...]
    arrows: tuple[Arrow, ...]
    ranks: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class Part:
    """A piece of the forward path, chained to its neighbours by `chain`.

    `entry` receives the incoming tensor, `exit` emits `out_shape`.
    """

    items: tuple[Item, ...]
    arrows: tuple[Arrow, ...]
    entry: str
    exit: str
    out_shape: str


def chain(parts: Sequence[Part]) -> Part:
    """The parts joined in order, each edge labelled with the shape of the tensor it carries."""
    arrows: list[Arrow] = []
    for before, after in pairwise(parts):
        arrows.append(Arrow(before.exit, after.entry, before.out_shape))
        first = after.items[0] if after.items else None
        if isinstance(first, Cluster) and first.level == "stage" and first.rows:
            # a stage's note has a rank of its own above the stage's first node: below the
            # previous part, or the two frames would share ranks and stand side by side
            arrows.append(Arrow(before.exit, note_node(first), style="invisible"))
    return Part(
        items=tuple(item for part in parts for item in part.items),
        arrows=tuple(a for part in parts for a in part.arrows) + tuple(arrows),
        entry=parts[0].entry,
        exit=parts[-1].exit,
        out_shape=parts[-1].out_shape,
    )


# ---- words and numbers ---------------------------------------------------------------------


def node_id(path: str, prefix: str = "") -> str:
    """A DOT-safe node id from a plan path: `stages.3.blocks.1` → `stages_3_blocks_1`."""
    name = re.sub(r"[^0-9A-Za-z_]", "_", path)
    return f"{prefix}_{name}" if prefix else name


def shape(channels: int, size: int) -> str:
    """A tensor shape as C×H×W (plans are square)."""
    return f"{channels}×{size}×{size}"


def amount(n: int) -> str:
    """A count with a G/M/K suffix, three significant figures or so: 5288548 → 5.29M."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f}{suffix}"
    return str(n)


def share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "–"


def ratio(number: float) -> str:
    return f"{number:g}" if float(number).is_integer() else f"{number:.4g}"


def kind_name(kind: str, expand: float) -> str:
    """`MBConv6`, `Fused-MBConv4`, `Conv`: the kind as the papers write it."""
    if kind in UNEXPANDED:
        return PALETTE[kind].legend
    return f"{PALETTE[kind].legend}{ratio(expand)}"


def activation(act: str | None) -> str:
    names = {"silu": "SiLU", "relu": "ReLU", "relu6": "ReLU6", "hardswish": "HardSwish",
             "gelu": "GELU", "hard_sigmoid": "HardSigmoid"}
    return "linear" if act is None or act == "none" else names.get(act, act)


def gate_name(gate: str) -> str:
    """The gate of a squeeze-and-excitation, as drawn."""
    return {"sigmoid": "sigmoid", "hard_sigmoid": "hard-sigmoid"}.get(gate, gate)


def squeeze_excite(block: BlockPlan) -> SqueezeExciteOp | None:
    return next((op for op in block.ops if isinstance(op, SqueezeExciteOp)), None)


def squeeze_name(block: BlockPlan) -> str:
    """What gates the block's channels, as drawn: `SE`, `GC` (global context), or ""."""
    se = squeeze_excite(block)
    if se is None:
        return ""
    return "GC" if isinstance(se, GlobalContextOp) else "SE"


def norm_label(op: ConvOp) -> str:
    """The norm after a conv where it is not batch norm, as drawn: without one, a bias or
    (FBNetV3's head) nothing at all."""
    if op.norm == "none":
        return " · bias, no norm" if op.bias else " · no bias, no norm"
    if op.norm == "group":
        return f" · GroupNorm {op.norm_groups}×{op.norm_group_size}"
    if op.norm == "layer":
        return " · LayerNorm"
    if op.norm == "evonorm":
        return f" · EvoNorm-S0 {op.norm_groups}×{op.norm_group_size}" if op.norm_acts else (
            " · EvoNorm-S0 affine"
        )
    return ""


def norm_act(op: ConvOp) -> str:
    """` · norm · activation` of a conv; EvoNorm-S0's own non-linearity stands for its act."""
    if op.norm_acts:
        return norm_label(op)
    return f"{norm_label(op)} · {activation(op.act)}"


def grouped(op: ConvOp) -> str:
    """` · 4 groups` for a grouped conv that is neither dense nor depthwise."""
    return f" · {op.groups} groups" if op.groups > 1 and not op.depthwise else ""


def clip(text: str, limit: int = 48) -> str:
    """Long names would stretch every box in their rank; the tooltip keeps the whole name."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def changed(now: str, before: str | None) -> Text:
    """`now`, or `before → now` in the highlight colour when a base differs."""
    if before is None or before == now:
        return Text(now)
    return Text(f"{before} → {now}", changed=True)


def title(text: str) -> Row:
    return Row((Text(text),), "title")


def body(*runs: Text | str) -> Row:
    return Row(tuple(Text(run) if isinstance(run, str) else run for run in runs))


def note(*runs: Text | str) -> Row:
    return Row(tuple(Text(run) if isinstance(run, str) else run for run in runs), "note")


def cost_rows(own: Cost, total: Cost, before: Cost | None = None) -> tuple[Row, ...]:
    """Params and MACs with their share of the network, or `before → now` when compared."""
    if before is not None:
        return (
            note("params ", changed(amount(own.params), amount(before.params))),
            note("MACs ", changed(amount(own.macs), amount(before.macs))),
        )
    return (
        note(f"params {amount(own.params)} ({share(own.params, total.params)})"),
        note(f"MACs {amount(own.macs)} ({share(own.macs, total.macs)})"),
    )


def tooltip(path: str, own: Cost, *extra: str) -> str:
    """Exact figures for hovering in an SVG viewer, where the label rounds them."""
    return "\n".join((path, *extra, f"{own.params:,} params", f"{own.macs:,} MACs"))


def block_cost(block: BlockPlan) -> Cost:
    total = Cost()
    for op in block.ops:
        total += op_cost(op)
    return total


# ---- walking the plan: the ends ------------------------------------------------------------


def input_part(plan: Plan, prefix: str, base: Plan | None = None) -> Part:
    size = f"{plan.resolution}×{plan.resolution}"
    before = f"{base.resolution}×{base.resolution}" if base else None
    box = Box(
        node_id("input", prefix),
        "input",
        (title("input"), body(changed(size, before), f" · {plan.in_channels} ch")),
        f"input\n{shape(plan.in_channels, plan.resolution)}",
    )
    return Part((box,), (), box.id, box.id, shape(plan.in_channels, plan.resolution))


def conv_end_part(op: ConvOp, kind: str, total: Cost, prefix: str, before: ConvOp | None) -> Part:
    """The stem or the head: one convolution."""
    own = op_cost(op)
    stride = f" s{op.stride}" if op.stride > 1 else ""
    pooled = op.role == "head" and op.in_size == 1 and op.out_size == 1
    box = Box(
        node_id(op.path, prefix),
        kind,
        (
            title(f"{op.role} (after avgpool)" if pooled else op.role),
            body(f"Conv {op.kernel}×{op.kernel}{stride}{grouped(op)}{norm_act(op)}"),
            # only the output width: "3 → 32 → 40 ch" would mix up the two kinds of arrow
            body(changed(str(op.out_channels), str(before.out_channels) if before else None),
                 " ch out"),
            *cost_rows(own, total, op_cost(before) if before else None),
        ),
        op_tooltip(op, own),
    )
    return Part((box,), (), box.id, box.id, shape(op.out_channels, op.out_size))


def classifier_part(plan: Plan, total: Cost, prefix: str, base: Plan | None) -> Part:
    head = plan.classifier
    own = classifier_cost(head)
    was = base.classifier if base else None
    box = Box(
        node_id(head.path, prefix),
        "classifier",
        (
            title("classifier"),
            body("dropout " if plan.pooled_head else "avgpool · dropout ",
                 changed(f"{head.dropout:g}", f"{was.dropout:g}" if was else None)),
            body(f"FC · {head.classes} classes"),
            *cost_rows(own, total, classifier_cost(was) if was else None),
        ),
        tooltip(head.path, own, f"dropout {head.dropout:g}"),
    )
    return Part((box,), (), box.id, box.id, f"{head.classes} logits")


def spine(plan: Plan, middle: Sequence[Part], prefix: str = "", base: Plan | None = None) -> Part:
    """input → stem → `middle` → head → classifier, chained."""
    return chain(spine_parts(plan, middle, prefix, base))


def spine_parts(
    plan: Plan, middle: Sequence[Part], prefix: str = "", base: Plan | None = None
) -> list[Part]:
    """input, stem, `middle`, head, classifier: the parts of the forward path, in order."""
    total = cost(plan).total
    # `head none` (MobileNetV1): the last stage feeds the classifier's pool, with no head box
    head = (
        [conv_end_part(plan.head, "head", total, prefix, base.head if base else None)]
        if plan.head is not None
        else []
    )
    return [
        input_part(plan, prefix, base),
        conv_end_part(plan.stem, "stem", total, prefix, base.stem if base else None),
        *middle,
        *head,
        classifier_part(plan, total, prefix, base),
    ]


# ---- wrapping a long path into columns -----------------------------------------------------

#: Points (1/72 in) one box takes along the flow and a column takes across it, by detail and
#: direction, as dot lays them out (measured on the shipped specs, notes and edges included).
ALONG = {"stage": 114, "block": 67, "layer": 85}
ALONG_LR = 200
ACROSS = {"stage": 335, "block": 530, "layer": 530}
ACROSS_LR = {"stage": 205, "block": 400, "layer": 400}
#: A path longer than this many points (about 2,400 px at 96 dpi) wraps into columns.
WRAP_LENGTH = 1800


def box_count(items: Iterable[Item]) -> int:
    """How many boxes `items` draw, inside clusters too."""
    return sum(1 if isinstance(item, Box) else box_count(item.items) for item in items)


def auto_columns(parts: Sequence[Part], detail: str, rankdir: str) -> int:
    """How many columns (rows, left to right) make the drawing closest to square.

    One when the path fits in `WRAP_LENGTH`; else ⌈√(length / column width)⌉, so a layer
    drawing of MnasNet (about 6,000 pt long) becomes four columns.
    """
    across_flow = rankdir in ("LR", "RL")
    along = ALONG_LR if across_flow else ALONG[detail]
    across = (ACROSS_LR if across_flow else ACROSS)[detail]
    length = along * box_count(item for part in parts for item in part.items)
    if length <= WRAP_LENGTH:
        return 1
    return max(2, min(len(parts) - 1, math.ceil(math.sqrt(length / across))))


def split(parts: Sequence[Part], columns: int) -> list[list[Part]]:
    """`parts` in `columns` runs of about equal drawn length, in order.

    Runs break between parts, never inside a stage: a stage split over two columns read worse
    than columns of unequal length.
    """
    sizes = [box_count(part.items) for part in parts]
    total = sum(sizes)
    groups: list[list[Part]] = [[]]
    done = 0
    for part, size in zip(parts, sizes, strict=True):
        # break before the part whose middle would lie past this column's share
        past = done + size / 2 > total * len(groups) / columns
        if groups[-1] and len(groups) < columns and past:
            groups.append([])
        groups[-1].append(part)
        done += size
    return groups


def top_node(part: Part) -> str:
    """The node at the top of a part: a stage's note, else the part's entry."""
    first = part.items[0] if part.items else None
    if isinstance(first, Cluster) and first.level == "stage" and first.rows:
        return note_node(first)
    return part.entry


def wrapped(groups: Sequence[Sequence[Part]]) -> tuple[Part, tuple[tuple[str, ...], ...]]:
    """Each group of parts chained as a column, and the rank that puts the columns' tops level.

    The edge from one column's foot to the next one's top does not constrain the layout, so
    each column starts at the top; each column is a frame of its own (never drawn), which dot
    lays out left to right in order.
    """
    chained = [chain(group) for group in groups]
    arrows = [arrow for column in chained for arrow in column.arrows]
    tops = tuple(top_node(group[0]) for group in groups)
    # into the next column's top (a stage's note): an edge into its first op instead lets dot
    # swap columns around
    for before, top in zip(chained[:-1], tops[1:], strict=True):
        arrows.append(Arrow(before.exit, top, before.out_shape, style="wrap"))
    # within one rank, an edge puts its tail left of its head: the columns stay in order
    arrows += [Arrow(left, right, style="invisible") for left, right in pairwise(tops)]
    items: tuple[Item, ...] = chained[0].items
    if len(chained) > 1:
        # a frame per column: dot lays side-by-side clusters out in the order they are written
        items = tuple(
            Cluster(f"cluster_column_{i}", "input", "wrap", (), column.items)
            for i, column in enumerate(chained)
        )
    path = Part(
        items=items,
        arrows=tuple(arrows),
        entry=chained[0].entry,
        exit=chained[-1].exit,
        out_shape=chained[-1].out_shape,
    )
    return path, ((tops,) if len(tops) > 1 else ())


# ---- walking the plan: stages, blocks, ops -------------------------------------------------


def stage_summary(stage: StagePlan) -> str:
    """`MBConv6 k5 s2 · SiLU · SE 0.25 sigmoid`: what every block of the stage is (of a stage
    of several block lines, the first line's shape, and how many more lines follow)."""
    gates = dict.fromkeys(se_gate(block) for block in stage.blocks if block.se_channels)
    gate = "/".join(gate_name(name) for name in gates)
    kinds = "/".join(dict.fromkeys(squeeze_name(b) for b in stage.blocks if b.se_channels))
    se = f" · {kinds} {stage.se:g} {gate}" if stage.se and gates else (
        f" · {kinds} {gate}" if gates else ""
    )
    acts = "/".join(dict.fromkeys(activation(block.act) for block in stage.blocks))
    kernel = block_kernels(stage.blocks[0])
    more = f" · +{stage.lines - 1} line{'s' if stage.lines > 2 else ''}" if stage.lines > 1 else ""
    pools = dict.fromkeys(pool.kind for block in stage.blocks for pool in block.pools.values())
    aa = f" aa={'/'.join(pools)}" if pools else ""
    return (
        f"{kind_name(stage.kind, stage.expand)} {kernel} s{stage.stride}{aa} · {acts}{se}{more}"
    )


def se_gate(block: BlockPlan) -> str:
    """The gate of the block's squeeze-and-excitation (`sigmoid`), or "" where it has none."""
    se = squeeze_excite(block)
    return se.gate if se is not None else ""


def stage_counts(stage: StagePlan, was: StagePlan | None = None) -> tuple[Text, ...]:
    """`4 blocks · 40 ch · 28×28`: what depth, width and resolution scaling change."""
    blocks = "block" if stage.repeats == 1 else "blocks"
    return (
        changed(str(stage.repeats), str(was.repeats) if was else None),
        Text(f" {blocks} · "),
        changed(str(stage.out_channels), str(was.out_channels) if was else None),
        Text(" ch · "),
        changed(f"{stage.out_size}×{stage.out_size}",
                f"{was.out_size}×{was.out_size}" if was else None),
    )


def stage_rows(
    stage: StagePlan, own: Cost, total: Cost, before: tuple[StagePlan, Cost] | None = None
) -> tuple[Row, ...]:
    """A stage node: name; kind, kernel, stride, SE; blocks, channels, size; params; MACs."""
    was = before[0] if before else None
    return (
        title(clip(stage.name)),
        body(changed(stage_summary(stage), stage_summary(was) if was else None)),
        Row(stage_counts(stage, was)),
        *cost_rows(own, total, before[1] if before else None),
    )


def stage_box_part(
    stage: StagePlan, own: Cost, total: Cost, prefix: str,
    before: tuple[StagePlan, Cost] | None = None,
) -> Part:
    box = Box(
        node_id(stage.path, prefix),
        stage.kind,
        stage_rows(stage, own, total, before),
        tooltip(
            f"{stage.path} ({stage.name})",
            own,
            f"{stage.repeats} × {stage_summary(stage)}",
            f"{shape(stage.blocks[0].in_channels, stage.in_size)} → "
            f"{shape(stage.out_channels, stage.out_size)}",
        ),
    )
    out = shape(stage.out_channels, stage.out_size)
    return Part((box,), (), box.id, box.id, out)


def block_title(block: BlockPlan) -> str:
    stride = f" s{block.stride}" if block.stride > 1 else ""
    kind = kind_name(block.kind, block.expand)
    return f"{block.stage}.{block.index} {kind} {block_kernels(block)}{stride}"


def block_kernels(block: BlockPlan) -> str:
    """`k3`, `k3.5.7` (mixed), a block that starts with space-to-depth `s2d · k2` (its
    depthwise kernel, halved), or a universal inverted bottleneck's depthwise kernels before,
    between and after its 1×1 convs, `–` where it has none: `dw 3·5·–`."""
    attention = next((op for op in block.ops if isinstance(op, AttentionOp)), None)
    if attention is not None:
        down = attention.key_down
        kv = f" kv {down.kernel}×{down.kernel} s{down.stride}" if down is not None else ""
        return f"{attention.heads}×{attention.key_dim}{kv}"
    s2d = next((op for op in block.ops if op.role == "s2d"), None)
    if s2d is not None:  # the depthwise conv runs on the space-to-depth conv's 4× channels
        spatial = next(op for op in block.ops if op.role == "depthwise")
        return f"s2d · k{kernel_text(getattr(spatial, 'kernel', block.kernel))}"
    if block.kind != "uir":
        return f"k{kernel_text(block.kernel)}"
    kernels = {op.role: op.kernel for op in block.ops if isinstance(op, ConvOp)}
    return "dw " + "·".join(str(kernels.get(role, "–")) for role in ("start", "depthwise", "end"))


def add_part(block: BlockPlan, prefix: str) -> Box:
    """The residual sum closing `block`, with the block's drop-path rate when it has one."""
    rows = [title("+")]
    if block.drop_path > 0:
        rows.append(note(f"drop-path {block.drop_path:.3f}"))
    return Box(
        node_id(f"{block.path}.add", prefix),
        "add",
        tuple(rows),
        f"{block.path}: residual add\ndrop-path rate {block.drop_path:.4f}",
        shape="add",
    )


def with_residual(block: BlockPlan, body_part: Part, prefix: str) -> Part:
    """`body_part` between a fork and the residual add, when the block has a residual.

    The fork (a dot on the main path) is the start of the dashed skip edge. Starting the skip
    at the block's own fork rather than at the previous node keeps it inside the block's (or
    stage's) frame; an edge from outside a frame is routed around the whole frame.
    """
    if not block.residual:
        return body_part
    fork = Box(node_id(f"{block.path}.fork", prefix), "add", (),
               f"{block.path}: input, also to the residual add", shape="fork")
    add = add_part(block, prefix)
    return Part(
        items=(fork, *body_part.items, add),
        arrows=(
            Arrow(fork.id, body_part.entry),
            *body_part.arrows,
            Arrow(body_part.exit, add.id),
            Arrow(fork.id, add.id, style="skip"),
        ),
        entry=fork.id,
        exit=add.id,
        out_shape=body_part.out_shape,
    )


def block_layout(block: BlockPlan) -> tuple[Row, ...]:
    """What a block does beyond an MBConv's shape: a MixConv's mixed kernels and their channel
    slices, the 1×1 convs' groups, a CondConv's experts and their routing, a grouped k×k conv,
    and a norm other than batch norm."""
    rows = []
    for op in block.ops:
        if isinstance(op, MixedConvOp) and op.depthwise:
            slices = " · ".join(
                f"{kernel}×{kernel}:{width}" for kernel, width in zip(
                    op.kernels, op.out_splits, strict=True)
            )
            rows.append(body(f"mixed kernels {slices} ch"))
        elif isinstance(op, MixedConvOp):
            rows.append(body(f"{op.role} 1×1 in {len(op.kernels)} groups"))
        elif isinstance(op, RoutingOp):
            rows.append(body(f"{op.experts} experts · routing avgpool → FC → sigmoid"))
        elif isinstance(op, ConvOp) and grouped(op):
            cin, cout = op.in_channels // op.groups, op.out_channels // op.groups
            each = f"of {cin} ch" if cin == cout else f"of {cin} → {cout} ch"
            rows.append(body(f"{op.role} {op.kernel}×{op.kernel} in {op.groups} groups {each}"))
        elif isinstance(op, PoolOp):
            conv = op.path.rsplit(".", 2)[-2]
            rows.append(body(f"anti-aliased: {conv} s1, then {pool_name(op)}"))
    norms = {norm_label(op) for op in block.ops if isinstance(op, ConvOp) and op.norm != "batch"}
    rows += [body(label.removeprefix(" · ")) for label in sorted(norms)]
    return tuple(rows)


def block_part(block: BlockPlan, prefix: str) -> Part:
    """Block detail: one box per block."""
    own = block_cost(block)
    se = (
        f" · {squeeze_name(block)} {block.se_channels} {gate_name(se_gate(block))}"
        if block.se_channels
        else ""
    )
    box = Box(
        node_id(block.path, prefix),
        block.kind,
        (
            title(block_title(block)),
            body(f"{block_channels(block)} ch · {activation(block.act)}{se}"),
            *block_layout(block),
            note(f"params {amount(own.params)} · MACs {amount(own.macs)}"),
        ),
        tooltip(
            block.path,
            own,
            f"{block_title(block)}, {activation(block.act)}, drop-path {block.drop_path:.4f}",
            f"{shape(block.in_channels, block.in_size)} → "
            f"{shape(block.out_channels, block.out_size)}",
        ),
    )
    out = shape(block.out_channels, block.out_size)
    return with_residual(block, Part((box,), (), box.id, box.id, out), prefix)


def block_channels(block: BlockPlan) -> str:
    """`16 → 96 → 24`, or `24 → 24` where the block does not expand."""
    widths = [block.in_channels, block.mid_channels, block.out_channels]
    if block.mid_channels == block.in_channels:
        widths = [block.in_channels, block.out_channels]
    return " → ".join(str(width) for width in widths)


def op_rows(op: Op) -> tuple[Row, ...]:
    """What an op is: `depthwise 5×5 s2`, its channels and activation."""
    if isinstance(op, GlobalContextOp):
        return (
            title("global context"),
            body(f"attention pool · {op.channels} → {op.squeeze} → {op.channels}"),
            body(f"layer norm · {activation(op.act)} · {gate_name(op.gate)} gate"),
        )
    if isinstance(op, SqueezeExciteOp):
        return (
            title("squeeze-excite"),
            body(f"{op.channels} → {op.squeeze} → {op.channels} · {activation(op.act)}"),
            body(f"{gate_name(op.gate)} gate"),
        )
    if isinstance(op, RoutingOp):
        return (
            title(f"routing · {op.experts} experts"),
            body(f"avgpool → FC {op.channels} → {op.experts} · sigmoid"),
        )
    if isinstance(op, LayerScaleOp):
        return (title("layer scale"), body(f"{op.channels} ch × γ · init {op.init:g}"))
    if isinstance(op, NormOp):
        return (title("batch norm"), body(f"{op.channels} ch"))
    if isinstance(op, PoolOp):
        padding = "" if not op.blur else f" · {'reflect' if op.kind == 'blur' else 'zero'} pad"
        return (title(f"anti-alias · {pool_name(op)}"), body(f"{op.channels} ch{padding}"))
    if isinstance(op, AttentionOp):
        rows = [
            title(f"multi-query attention · {op.heads} heads"),
            body(f"query {op.in_channels} → {op.heads}×{op.key_dim} · shared key {op.key_dim}, "
                 f"value {op.value_dim}"),
        ]
        if op.key_down is not None:
            down = op.key_down
            rows.append(body(f"key, value: depthwise {down.kernel}×{down.kernel} s{down.stride} "
                             f"→ {op.kv_size}×{op.kv_size}"))
        rows.append(body(f"softmax · output {op.heads}×{op.value_dim} → {op.out_channels} ch"))
        return tuple(rows)
    stride = f" s{op.stride}" if op.stride > 1 else ""
    if isinstance(op, MixedConvOp):
        kernels = " | ".join(f"{k}×{k}" for k in op.kernels)
        slices = zip(op.kernels, op.in_splits, op.out_splits, strict=True)
        if op.depthwise:
            parts = [f"{k}×{k}: {cout} ch" for k, _, cout in slices]
            heading = f"{op.role} mixed {kernels}{stride}"
        else:
            parts = [f"{cin} → {cout} ch" for _, cin, cout in slices]
            heading = f"{op.role} 1×1{stride} · {len(op.kernels)} groups"
        return (
            title(heading),
            *(body(part) for part in parts),
            body(f"{op.in_channels} → {op.out_channels} ch · {activation(op.act)}"),
        )
    channels = (f"{op.out_channels} ch, per channel" if op.depthwise
                else f"{op.in_channels} → {op.out_channels} ch")
    experts = f" · {op.experts} experts" if op.experts else ""
    return (
        title(f"{op.role} {op.kernel}×{op.kernel}{stride}{experts}{grouped(op)}"),
        body(f"{channels}{norm_act(op)}"),
    )


def pool_name(op: PoolOp) -> str:
    """`blur pool 3×3 s2` or `avgpool 2×2 s2`: the pool of an anti-aliased downsampling."""
    if op.blur:
        return f"blur pool 3×3 s{op.stride}"
    return f"avgpool {op.stride}×{op.stride} s{op.stride}"


def op_tooltip(op: Op, own: Cost) -> str:
    """An op in full: what it is, the tensors in and out, exact params and MACs."""
    what = " · ".join("".join(run.text for run in row.runs) for row in op_rows(op))
    shapes = f"{shape(op.in_channels, op.in_size)} → {shape(op.out_channels, op.out_size)}"
    return tooltip(op.path, own, what, shapes)


def op_part(op: Op, kind: str, prefix: str) -> Part:
    own = op_cost(op)
    box = Box(
        node_id(op.path, prefix),
        kind,
        (*op_rows(op), note(f"params {amount(own.params)} · MACs {amount(own.macs)}")),
        op_tooltip(op, own),
    )
    return Part((box,), (), box.id, box.id, shape(op.out_channels, op.out_size))


def block_cluster_part(block: BlockPlan, prefix: str) -> Part:
    """Layer detail: a block's ops (and residual add) framed together."""
    inner = with_residual(block, chain([op_part(op, block.kind, prefix) for op in block.ops]),
                          prefix)
    own = block_cost(block)
    frame = Cluster(
        node_id(block.path, cluster_prefix(prefix)),
        block.kind,
        "block",
        (body(block_title(block)), note(f"params {amount(own.params)} · MACs {amount(own.macs)}")),
        inner.items,
        inner.entry,
    )
    return Part((frame,), inner.arrows, inner.entry, inner.exit, inner.out_shape)


def stage_cluster_part(stage: StagePlan, own: Cost, total: Cost, parts: Sequence[Part],
                       prefix: str) -> Part:
    """Block and layer detail: a stage's blocks framed together, titled like a stage node."""
    inner = chain(parts)
    rows = (
        title(f"{clip(stage.name)} · {stage_summary(stage)}"),
        Row(stage_counts(stage)),
        note(f"params {amount(own.params)} ({share(own.params, total.params)}) · MACs "
             f"{amount(own.macs)} ({share(own.macs, total.macs)})"),
    )
    frame = Cluster(node_id(stage.path, cluster_prefix(prefix)), stage.kind, "stage", rows,
                    inner.items, first_box(inner.items))
    return Part((frame,), inner.arrows, inner.entry, inner.exit, inner.out_shape)


def first_box(items: Iterable[Item]) -> str:
    """The first labelled box among `items`, beside which a cluster's description is drawn.

    Not a residual fork: a note beside that dot would pull it off the main path.
    """
    for item in items:
        if isinstance(item, Cluster):
            return first_box(item.items)
        if item.shape != "fork":
            return item.id
    return ""


def cluster_prefix(prefix: str) -> str:
    """graphviz frames only subgraphs whose name starts with `cluster`."""
    return f"cluster_{prefix}" if prefix else "cluster"


def stage_parts(plan: Plan, detail: str, prefix: str = "",
                base: Plan | None = None) -> list[Part]:
    """One part per stage, drawn at `detail`; `base` marks what differs from it (stage only)."""
    report = cost(plan)
    total = report.total
    before = _pair_stages(plan, base)
    parts = []
    for stage, own in zip(plan.stages, report.stages, strict=True):
        if detail == "stage":
            parts.append(stage_box_part(stage, own, total, prefix, before.get(stage.index)))
            continue
        if detail == "block":
            blocks = [block_part(block, prefix) for block in stage.blocks]
        else:
            blocks = [block_cluster_part(block, prefix) for block in stage.blocks]
        parts.append(stage_cluster_part(stage, own, total, blocks, prefix))
    return parts


def _pair_stages(plan: Plan, base: Plan | None) -> dict[int, tuple[StagePlan, Cost]]:
    """Each stage of `base` (and its cost) by index, to compare the scaled stage against."""
    if base is None:
        return {}
    report = cost(base)
    pairs = zip(base.stages, report.stages, strict=True)
    return {stage.index: (stage, own) for stage, own in pairs}


# ---- walking the plan: the title and the comparison ----------------------------------------


def scaling_line(plan: Plan) -> str:
    """`preset b3 · width ×1.2 · depth ×1.4 · 300×300 input`, or `unscaled · 224×224 input`."""
    factors = plan.scaling
    widths = "" if factors.is_identity else (
        f" · width ×{factors.width:.3g} · depth ×{factors.depth:.3g}")
    return f"{factors.describe()}{widths} · {plan.resolution}×{plan.resolution} input"


def totals_line(plan: Plan, base: Plan | None = None) -> Row:
    own = cost(plan).total
    was = cost(base).total if base else None
    return body(
        changed(amount(own.params), amount(was.params) if was else None), " params · ",
        changed(amount(own.macs), amount(was.macs) if was else None), " MACs · ",
        changed(str(plan.block_count), str(base.block_count) if base else None), " blocks",
    )


def network_title(plan: Plan, detail: str) -> tuple[Row, ...]:
    return (
        title(clip(plan.name, 80)),
        body(scaling_line(plan)),
        totals_line(plan),
        note(f"{detail} detail · MACs are multiply-adds (1 MAC = 2 FLOPs)"),
    )


def column_name(plan: Plan, other: Plan) -> str:
    """How a compared network is named: how it was scaled, and which net when they differ."""
    scaling = plan.scaling.describe()
    return scaling if plan.name == other.name else f"{clip(plan.name)} · {scaling}"


def header_box(plan: Plan, prefix: str, other: Plan, base: Plan | None) -> Box:
    """The top of a compared network: its name, how it was scaled and its totals."""
    return Box(
        node_id("header", prefix),
        "input",
        (title(column_name(plan, other)), note(scaling_line(plan)), totals_line(plan, base)),
        f"{plan.name}\n{plan.scaling.describe()}",
        shape="header",
    )


def row_keys(plan: Plan) -> list[str]:
    """The rows a compared network is drawn in: the header, each end and each stage."""
    return ["header", "input", "stem", *(s.path for s in plan.stages), "head", "classifier"]


def compare_graph(plan: Plan, base: Plan, detail: str = "stage") -> Graph:
    """Base and scaled side by side, each stage level with the same stage of the other.

    At block and layer detail the stages hold different numbers of blocks, so only the tops
    (header, input, stem) are levelled; each column then runs down at its own pace.
    """
    columns = []
    arrows: list[Arrow] = []
    for prefix, net, against in (("base", base, None), ("scaled", plan, base)):
        path = spine(net, stage_parts(net, detail, prefix, against), prefix, against)
        header = header_box(net, prefix, base if net is plan else plan, against)
        columns.append(Cluster(f"cluster_{prefix}", "input", "column", (), (header, *path.items)))
        arrows += [Arrow(header.id, path.entry, style="invisible"), *path.arrows]
    arrows = list(_highlight_changes(arrows))
    keys = row_keys(plan) if detail == "stage" else ["header", "input", "stem"]
    shared = set(row_keys(base)) & set(keys)
    ranks = tuple((node_id(key, "base"), node_id(key, "scaled"))
                  for key in keys if key in shared)
    # an invisible edge within each rank holds the base to the left of the scaled net
    arrows += [Arrow(left, right, style="invisible") for left, right in ranks]
    return Graph(
        title=(
            title(clip(plan.name, 80)),
            body(f"{column_name(base, plan)} vs {column_name(plan, base)}"),
            note(f"{detail} detail · ", Text("red", True), ": what scaling changed · MACs are "
                 "multiply-adds (1 MAC = 2 FLOPs)"),
        ),
        items=tuple(columns),
        arrows=tuple(arrows),
        ranks=ranks,
    )


def _highlight_changes(arrows: Sequence[Arrow]) -> Iterator[Arrow]:
    """The edges, the scaled network's in the highlight colour where the tensor's shape changed."""
    before = {arrow.tail.removeprefix("base_"): arrow.label
              for arrow in arrows if arrow.tail.startswith("base_") and arrow.style == "flow"}
    for arrow in arrows:
        was = before.get(arrow.tail.removeprefix("scaled_"))
        if arrow.tail.startswith("scaled_") and arrow.style == "flow" and was != arrow.label:
            yield Arrow(arrow.tail, arrow.head, arrow.label, arrow.style, changed=True)
        else:
            yield arrow


# ---- the public entry points ---------------------------------------------------------------


def spec_origins(spec: Network) -> dict[str, str]:
    """Node-id stem → `spec line N: STATEMENT` for the statements a drawing's nodes come from."""
    from effdsl.fmt import statement

    def where(node: NetworkNode) -> str:
        line = f"{node.span.file}:{node.span.line}" if node.span else "the spec"
        return f"from {line}: {statement(node)}"

    origins = {
        "input": where(spec.input),
        "stem": where(spec.stem),
        "head": where(spec.head),
        "classifier": where(spec.classifier),
    }
    for index, stage in enumerate(spec.stages):
        origins[f"stages_{index}"] = where(stage)
    return origins


def with_origins(graph: Graph, spec: Network | None) -> Graph:
    """`graph` with each box's tooltip ending in the spec statement it was drawn from."""
    if spec is None:
        return graph
    origins = spec_origins(spec)

    def origin(box_id: str) -> str | None:
        name = re.sub(r"^(base|scaled)_", "", box_id)
        stem = "_".join(name.split("_")[:2]) if name.startswith("stages_") else name
        return origins.get(stem)

    def visit(items: tuple[Item, ...]) -> tuple[Item, ...]:
        done: list[Item] = []
        for item in items:
            if isinstance(item, Cluster):
                done.append(replace(item, items=visit(item.items)))
            elif (found := origin(item.id)) is not None:
                done.append(replace(item, tooltip=f"{item.tooltip}\n{found}"))
            else:
                done.append(item)
        return tuple(done)

    return replace(graph, items=visit(graph.items))


@checked
def graph_of(
    plan: Plan,
    *,
    base: Plan | None = None,
    detail: str = "stage",
    rankdir: str = "TB",
    columns: int | None = None,
    spec: Network | None = None,
) -> Graph:
    """The graph description of `plan` at `detail`, or of `base` beside `plan`.

    A long path wraps into `columns` columns (rows when `rankdir` is LR); None chooses enough
    to keep the drawing about as wide as it is long (see `auto_columns`). A comparison is
    always two columns, one per network.
    """
    if detail not in DETAILS:
        raise OutputError(f"unknown detail `{detail}`", hint="use stage, block or layer")
    if columns is not None and (
        isinstance(columns, bool) or not isinstance(columns, int) or not 1 <= columns <= MAX_COLUMNS
    ):
        raise OutputError(
            f"columns must be a whole number from 1 to {MAX_COLUMNS}, got {columns!r}"
        )
    if base is not None:
        return with_origins(compare_graph(plan, base, detail), spec)
    parts = spine_parts(plan, stage_parts(plan, detail))
    count = columns if columns is not None else auto_columns(parts, detail, rankdir)
    if count == 1:
        path = chain(parts)
        return with_origins(Graph(network_title(plan, detail), path.items, path.arrows), spec)
    path, ranks = wrapped(split(parts, count))
    graph = Graph(network_title(plan, detail), path.items, path.arrows, ranks)
    return with_origins(graph, spec)


#: More columns than a net has stages would only split the ends apart.
MAX_COLUMNS = 64


@checked
def to_dot(
    plan: Plan,
    *,
    base: Plan | None = None,
    detail: str = "stage",
    rankdir: str = "TB",
    columns: int | None = None,
    spec: Network | None = None,
) -> str:
    """DOT text of `plan` (see the module docstring); pure, needs no graphviz.

    `spec`, the network `plan` was lowered from, adds to each node's tooltip the spec line
    it came from.
    """
    if rankdir not in RANKDIRS:
        raise OutputError(f"unknown rankdir `{rankdir}`", hint="use TB or LR")
    graph = graph_of(
        plan, base=base, detail=detail, rankdir=rankdir, columns=columns, spec=spec
    )
    return emit(graph, rankdir)


@checked
def render(
    plan: Plan,
    path: str | Path,
    *,
    base: Plan | None = None,
    detail: str = "stage",
    rankdir: str = "TB",
    columns: int | None = None,
    dpi: int | None = None,
    size: int | None = None,
    spec: Network | None = None,
) -> Path:
    """Draw `plan` to `path`: `.dot`/`.gv` as text, `.svg`/`.png`/`.pdf` through `dot`.

    `columns` wraps the path (see `graph_of`); `spec` adds spec lines to the tooltips (see
    `to_dot`). For `.png` only, `dpi` sets the resolution (graphviz's default is 96) and
    `size` scales the drawing down, if need be, to fit within `size`×`size` pixels (by
    default 2,500; see `raster_options`). The file appears whole or not at all. Without
    graphviz, the DOT text is written beside `path` (as `.dot`) and `ToolMissingError` says
    where and how to install graphviz.
    """
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in DOT_SUFFIXES and suffix not in FORMATS:
        raise OutputError(
            f"{target}: cannot draw to `{suffix or 'a file without a suffix'}`",
            hint="use .svg, .png, .pdf or .dot",
        )
    raster = raster_options(suffix, dpi, size)
    source = to_dot(
        plan, base=base, detail=detail, rankdir=rankdir, columns=columns, spec=spec
    )
    if suffix in DOT_SUFFIXES:
        atomic_write(target, source)
        return target
    nodes = _node_count(source)
    if nodes > MAX_DRAWN_NODES:
        raise LimitError(
            f"the drawing has {nodes:,} nodes, more than graphviz lays out in seconds "
            f"(the limit is {MAX_DRAWN_NODES:,})",
            hint="draw with less detail (--detail stage or block), or write .dot and run dot "
            "yourself",
        )
    program = shutil.which("dot")
    if program is None:
        fallback = target.with_suffix(".dot")
        try:
            # a file nobody named: never over an existing one (the spec may be `net.dot`)
            atomic_write(fallback, source, replace=False)
        except OutputError as error:
            raise ToolMissingError(
                f"graphviz's `dot` was not found, so {target} was not drawn, and the DOT text "
                f"was not written either: {error.message}",
                hint=f"{INSTALL_HINT}, or write the DOT text with -o NAME.dot",
            ) from None
        raise ToolMissingError(
            f"graphviz's `dot` was not found, so {target} was not drawn; wrote {fallback} "
            f"instead; {INSTALL_HINT} and run `dot -T{FORMATS[suffix]} {fallback} -o {target}`"
        )
    with atomic_path(target) as temporary:
        run_dot(program, source, FORMATS[suffix], temporary, raster)
    return target


#: Bounds of `dpi` and `size` (pixels): beyond them a PNG is unreadable or absurdly large.
DPI_RANGE = (24, 1200)
SIZE_RANGE = (100, 50_000)
DEFAULT_DPI = 96  # graphviz's own default for raster output
DEFAULT_PNG_SIZE = 2_500


def raster_options(suffix: str, dpi: int | None, size: int | None) -> list[str]:
    """graphviz's `-G` options for `dpi` and `size`; refused for formats other than PNG.

    A PNG drawn with neither fits within `DEFAULT_PNG_SIZE` pixels: one image should fit a
    screen or a page (scaled down only; a small drawing keeps 96 dpi). An explicit `dpi`
    alone lifts that bound.
    """
    if dpi is None and size is None:
        if suffix != ".png":
            return []
        inches = DEFAULT_PNG_SIZE / DEFAULT_DPI
        return [f"-Gsize={inches:.4f},{inches:.4f}"]
    if suffix != ".png":
        raise OutputError(
            f"dpi and size apply to .png output, not `{suffix}`",
            hint="SVG and PDF scale without loss; draw to .png to set them",
        )
    options = []
    for name, value, (low, high) in (("dpi", dpi, DPI_RANGE), ("size", size, SIZE_RANGE)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high
        ):
            raise OutputError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    resolution = dpi or DEFAULT_DPI
    options.append(f"-Gdpi={resolution}")
    if size is not None:
        inches = size / resolution
        options.append(f"-Gsize={inches:.4f},{inches:.4f}")
    return options


def _node_count(source: str) -> int:
    """The nodes of DOT text as `emit` writes it: one `"id" [` statement per node."""
    return len(_NODE.findall(source))


_NODE = re.compile(r'^\s*"(?:[^"\\]|\\.)*" \[', re.MULTILINE)  # `"id" [`, not `"a" -> "b" [`


def run_dot(
    program: str, source: str, fmt: str, output: Path, options: Sequence[str] = ()
) -> None:
    """Lay out and draw `source` with graphviz, as an `EffError` when it fails.

    The child is killed on every way out (a time-out, Ctrl-C, SIGTERM, an error), so no
    `dot` outlives effdsl.
    """
    try:
        child = subprocess.Popen(
            [program, f"-T{fmt}", *options, "-o", str(output)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    except OSError as error:
        raise ToolMissingError(f"cannot run graphviz's `dot` ({program}): {error.strerror}; "
                               f"{INSTALL_HINT}") from None
    try:
        _, errors = child.communicate(source.encode("utf-8"), timeout=DOT_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise OutputError(
            f"graphviz's `dot` took more than {DOT_TIMEOUT} s to lay out the graph",
            hint="draw with less detail (--detail stage or block), or write .dot and run dot "
            "yourself",
        ) from None
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    if child.returncode != 0:
        reason = errors.decode("utf-8", "replace").strip().splitlines()
        raise OutputError(
            f"graphviz's `dot` failed with exit status {child.returncode}"
            + (f": {reason[0]}" if reason else "")
        )


# ---- drawing: the graph description as DOT -------------------------------------------------


def printable(text: str) -> str:
    """`text` safe for a label: control characters escaped, newlines kept as line breaks."""
    return safe_text(text, newlines=True)


def html(text: str) -> str:
    """Text for an HTML-like label: markup characters and backslashes escaped.

    graphviz expands `\\N` (the node's name), `\\G` and `\\\\` even in HTML-like labels,
    and a character reference does not stop it; a word joiner (U+2060, invisible) after each
    backslash does, whatever graphviz's version. Newlines become line breaks.
    """
    escaped = (
        markup(text, newlines=True)
        .replace("]", "&#93;")  # graphviz 2.43 rejects a text of only `]` (`<B>]</B>`)
        .replace("\\", "\\&#8288;")
    )
    return escaped.replace("\n", "<BR/>")


def quoted(text: str) -> str:
    """A DOT double-quoted string: backslashes and quotes escaped, newlines as `\\n`.

    A tooltip is expanded twice (`\\\\N` still becomes the node's name), so a backslash is
    doubled and then followed by an invisible word joiner, as in `html`.
    """
    escaped = (
        printable(text)
        .replace("\\", "\\\\\u2060")
        .replace('"', '\\"')
        .replace("\n", "\\n")
    )
    return f'"{escaped}"'


ROW_FONT = {"title": (12, True), "body": (11, False), "note": (9, False)}


def label_row(row: Row, align: str = "CENTER") -> str:
    size, bold = ROW_FONT[row.style]
    runs = []
    for run in row.runs:
        text = html(run.text)
        if run.changed:
            text = f'<FONT COLOR="{HIGHLIGHT}"><B>{text}</B></FONT>'
        runs.append(text)
    text = "".join(runs) or " "
    if bold:
        text = f"<B>{text}</B>"
    colour = f' COLOR="{MUTED}"' if row.style == "note" else ""
    return f'<TR><TD ALIGN="{align}"><FONT POINT-SIZE="{size}"{colour}>{text}</FONT></TD></TR>'


def table(rows: Iterable[Row], align: str = "CENTER") -> str:
    inner = "".join(label_row(row, align) for row in rows)
    return f'<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">{inner}</TABLE>>'


def legend(kinds: Iterable[str], notes: Sequence[str]) -> str:
    """A row of colour swatches, one per kind drawn, then the notes."""
    cells = "".join(
        f'<TD BGCOLOR="{PALETTE[k].fill}" COLOR="{PALETTE[k].line}" BORDER="1">'
        f'<FONT POINT-SIZE="9"> {html(PALETTE[k].legend)} </FONT></TD>'
        for k in kinds
    )
    text = "".join(f'<TD><FONT POINT-SIZE="9" COLOR="{MUTED}">  {html(n)}</FONT></TD>'
                   for n in notes)
    return (f'<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="3" CELLPADDING="2">'
            f"<TR>{cells}{text}</TR></TABLE>")


def graph_label(graph: Graph) -> str:
    kinds = sorted(set(_kinds(graph.items)) - {"input"}, key=list(PALETTE).index)
    notes = []
    if any(arrow.style == "skip" for arrow in graph.arrows):
        notes.append("dashed: residual connection")
    notes.append("edges: tensor C×H×W")
    rows = "".join(label_row(row, "LEFT") for row in graph.title)
    return (f'<<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">{rows}'
            f'<TR><TD ALIGN="LEFT">{legend(kinds, notes)}</TD></TR></TABLE>>')


def _kinds(items: Iterable[Item]) -> Iterator[str]:
    for item in items:
        if isinstance(item, Box):
            yield item.kind
        else:
            yield from _kinds(item.items)


def box_line(box: Box) -> str:
    swatch = PALETTE[box.kind]
    attributes = [f"id={quoted(box.id)}", f"tooltip={quoted(box.tooltip)}"]
    if box.shape == "fork":
        attributes += ["shape=point", "width=0.07", f"color={quoted(swatch.line)}",
                       f"fillcolor={quoted(swatch.line)}"]
        return f"{quoted(box.id)} [{', '.join(attributes)}];"
    if box.shape == "add":
        attributes += ["shape=box", 'style="rounded,filled"', "fillcolor=\"#ffffff\"",
                       f"color={quoted(swatch.line)}", 'margin="0.04,0.02"', "height=0.3"]
    elif box.shape == "header":
        attributes += ["shape=plaintext", 'style=""']
    else:
        # the outline keeps the kind's colour even when values changed: red text says enough
        attributes += [f"fillcolor={quoted(swatch.fill)}", f"color={quoted(swatch.line)}"]
    return f"{quoted(box.id)} [label={table(box.rows)}, {', '.join(attributes)}];"


CLUSTER_LOOK = {
    "stage": 'style="rounded"',
    "block": 'style="rounded,dashed"',
    "column": 'style="rounded", color="#bbbbbb", bgcolor="#fcfcfc"',
    # a wrapped path's columns: frames dot lays out in order, left to right, never drawn
    "wrap": "style=invis",
}


def cluster_lines(cluster: Cluster, depth: int) -> list[str]:
    pad = "  " * depth
    look = CLUSTER_LOOK[cluster.level]
    if cluster.level in ("stage", "block"):
        tint = STAGE_TINT.get(cluster.kind, BLOCK_TINT) if cluster.level == "stage" else BLOCK_TINT
        look += f", color={quoted(PALETTE[cluster.kind].line)}, bgcolor={quoted(tint)}"
    if cluster.rows:  # hovering a frame shows its description, not the subgraph's name
        look += f", tooltip={quoted(note_tooltip(cluster))}"
    # label="": a subgraph would otherwise inherit the graph's title as its own label
    lines = [f"{pad}subgraph {quoted(cluster.id)} {{", f'{pad}  graph [label="", {look}];']
    if cluster.level in ("column", "wrap"):  # each column of the drawing is straight
        lines.append(f"{pad}  node [group={quoted(cluster.id)}];")
    lines += [f"{pad}  {line}" for line in note_lines(notes_drawn_in(cluster))]
    lines += item_lines(cluster.items, depth + 1)
    lines.append(f"{pad}}}")
    return lines


def notes_drawn_in(cluster: Cluster) -> list[Cluster]:
    """The clusters whose descriptions are drawn in `cluster`'s frame: its own and its blocks'.

    A block's note goes in its stage's frame, outside the block's own: dot then puts it left
    of the ops, away from the residual edge, which runs inside the block's frame on the right.
    """
    drawn = [cluster] if cluster.rows and cluster.level != "block" else []
    drawn += [child for child in cluster.items
              if isinstance(child, Cluster) and child.level == "block" and child.rows]
    return drawn


def note_lines(clusters: Sequence[Cluster]) -> list[str]:
    """Each cluster's description as a plain node: a stage's above its first node, a block's
    on the rank of its first node, to its left.

    Not a cluster label: that sits at the top of the frame, right where the incoming edge
    enters, and the edge would strike through the text. Each note has a group of its own, so
    it does not bend the main path. A stage's note takes a rank of its own rather than a place
    beside its first block's: side by side, stage and block notes made every frame as wide as
    both, and a layer-detail drawing twice as wide as its ops.
    """
    lines = []
    for cluster in clusters:
        note_id = quoted(note_node(cluster))
        lines.append(
            f"{note_id} [label={table(cluster.rows, 'LEFT')}, shape=plaintext, style=\"\", "
            f"margin=0, group={note_id}, tooltip={quoted(note_tooltip(cluster))}];"
        )
        if cluster.level == "stage":
            lines.append(f"{note_id} -> {quoted(cluster.anchor)} [style=invis];")
        else:
            lines.append(f"{{rank=same; {note_id}; {quoted(cluster.anchor)};}}")
    return lines


def note_node(cluster: Cluster) -> str:
    """The id of the plain node that carries `cluster`'s description."""
    return f"{cluster.id}__note"


def note_tooltip(cluster: Cluster) -> str:
    """A note's tooltip: its text, one row a line (hovering a caption repeats it in full)."""
    return "\n".join("".join(run.text for run in row.runs) for row in cluster.rows)


def item_lines(items: Iterable[Item], depth: int) -> list[str]:
    lines = []
    for item in items:
        if isinstance(item, Box):
            lines.append("  " * depth + box_line(item))
        else:
            lines += cluster_lines(item, depth)
    return lines


def arrow_line(arrow: Arrow) -> str:
    attributes = []
    if arrow.label:
        attributes.append(f"label={quoted(' ' + arrow.label)}")
    if arrow.style == "skip":
        # weight 0: the skip must not pull the main path, which `group` keeps straight
        attributes += ["style=dashed", 'color="#888888"', "weight=0"]
    elif arrow.style == "invisible":
        attributes += ["style=invis"]
    elif arrow.style == "wrap":
        # from one column's foot to the next one's top: drawn, but it must not stack them
        attributes += ["constraint=false"]
    if arrow.changed:
        attributes += [f"fontcolor={quoted(HIGHLIGHT)}"]
    if arrow.style != "invisible":
        # the label too: a thin line is hard to hover, its label is not
        hover = quoted(edge_tooltip(arrow))
        attributes += [f"tooltip={hover}"] + ([f"labeltooltip={hover}"] if arrow.label else [])
    suffix = f" [{', '.join(attributes)}]" if attributes else ""
    return f"  {quoted(arrow.tail)} -> {quoted(arrow.head)}{suffix};"


def edge_tooltip(arrow: Arrow) -> str:
    """What an edge carries and between which nodes (named by their ids)."""
    what = "residual connection" if arrow.style == "skip" else f"tensor {arrow.label}".strip()
    return f"{what}\nfrom {arrow.tail}\nto {arrow.head}"


def declaration_order(items: tuple[Item, ...], rankdir: str) -> tuple[Item, ...]:
    """The items in the order to write them: compared columns reversed for LR and RL.

    dot lays side-by-side clusters out in the order they are written, left to right, which
    LR turns into bottom to top; reversed, the base network stays first (on top).
    """
    columns = all(isinstance(item, Cluster) and item.level == "column" for item in items)
    return items[::-1] if columns and rankdir in ("LR", "RL") else items


def emit(graph: Graph, rankdir: str = "TB") -> str:
    """The DOT text of `graph`: defaults, the items (clusters nested), the edges, the ranks."""
    lines = [
        "digraph effdsl {",
        # polyline: curved skips bulge out of their frames on long blocks; polylines stay in
        f"  graph [rankdir={rankdir}, newrank=true, splines=polyline, nodesep=0.3, "
        f"ranksep=0.32, "
        f"fontname={quoted(FONT)}, labelloc=t, labeljust=l, pad=0.3, "
        f'label={graph_label(graph)}];',
        f'  node [shape=box, style="rounded,filled", fontname={quoted(FONT)}, '
        f'fontcolor={quoted(INK)}, margin="0.12,0.05", penwidth=1.2, group=main];',
        f"  edge [fontname={quoted(FONT)}, fontsize=9, fontcolor={quoted(MUTED)}, "
        f'color="#555555", arrowsize=0.7];',
    ]
    lines += item_lines(declaration_order(graph.items, rankdir), 1)
    lines += [arrow_line(arrow) for arrow in graph.arrows]
    lines += [f"  {{rank=same; {'; '.join(quoted(n) for n in rank)};}}" for rank in graph.ranks]
    lines.append("}")
    return "\n".join(lines) + "\n"


__all__ = ["DETAILS", "FORMATS", "Graph", "graph_of", "render", "to_dot"]
