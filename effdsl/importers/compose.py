"""Facts read off a model → the spec a person would write, or a refusal naming what is missing.

    network = compose(facts)      # ast.Network; raises ImportRefused

The model's stages stay stages; a stage's blocks collapse to one line (`x4`) when they agree,
and the expansion and squeeze ratios are the shortest decimals that give every block's widths
under the language's own rounding (`effdsl.plan.expanded_channels`, `squeeze_channels`).
Options are factored out: the value most statements use goes to `defaults` (ties go to the
language's own default, which is then left unsaid) and the rest are overrides. Anything the
language cannot say is refused, naming the module and the feature, never approximated.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from effdsl import ast
from effdsl.errors import ImportRefused
from effdsl.importers.facts import BlockFact, ConvFact, ModelFacts
from effdsl.plan import expanded_channels, squeeze_channels

T = TypeVar("T")

#: The options a block inherits from `defaults`, in the order `fmt` prints them.
OPTIONS = ("act", "se", "bn_eps", "bn_momentum", "padding")


@dataclass(frozen=True)
class Line:
    """One block as the language would say it, before its stage collapses the repeats."""

    path: str
    kind: str  # conv, mbconv, fused_mbconv
    kernel: int
    stride: int
    in_channels: int
    mid_channels: int
    out_channels: int
    squeeze: int  # 0: no squeeze-and-excitation
    act: str
    bn_eps: float
    bn_momentum: float
    padding: str | None  # None: every conv has stride 1, where SAME and symmetric agree
    residual: bool
    drop_path: float


class Composer:
    """Turns one model's facts into a `Network`; every refusal names `facts.source`."""

    def __init__(self, facts: ModelFacts) -> None:
        self.facts = facts

    def refuse(self, path: str, feature: str, detail: str = "") -> ImportRefused:
        """The refusal `SOURCE: PATH: FEATURE (DETAIL)`; `feature` alone groups refusals."""
        more = f" ({detail})" if detail else ""
        return ImportRefused(f"{self.facts.source}: {path}: {feature}{more}", feature=feature)

    # ---- convolutions -------------------------------------------------------------------

    def _plain(self, conv: ConvFact, *, depthwise: bool = False, act: bool = True) -> None:
        """Refuse a conv the language's conv-BN-act op cannot be."""
        if conv.norm is None:
            raise self.refuse(conv.path, "convolution without a norm layer")
        if conv.norm != "batchnorm":
            raise self.refuse(conv.path, f"norm layer {conv.norm} (the language has batch norm)")
        if conv.bias:
            raise self.refuse(conv.path, "convolution with a bias before its norm")
        if depthwise and not conv.depthwise:
            raise self.refuse(
                conv.path, "grouped convolution (group_size)", f"groups={conv.groups}"
            )
        if not depthwise and conv.groups != 1:
            raise self.refuse(
                conv.path, "grouped convolution (group_size)", f"groups={conv.groups}"
            )
        if conv.kernel % 2 == 0:
            raise self.refuse(conv.path, "even kernel", str(conv.kernel))
        if act and conv.act is None:
            raise self.refuse(conv.path, "convolution without an activation")
        if not act and conv.act is not None:
            raise self.refuse(conv.path, "activation after the projection", conv.act)
        if conv.act is not None and conv.act not in ast.ACTIVATIONS:
            raise self.refuse(conv.path, f"activation {conv.act} after a convolution")

    def _padding(self, convs: Sequence[ConvFact]) -> str | None:
        modes = {conv.padding for conv in convs if conv.stride > 1}
        if len(modes) > 1:
            raise self.refuse(convs[0].path, "SAME and symmetric padding in one block")
        return modes.pop() if modes else None

    def _norm_args(self, convs: Sequence[ConvFact]) -> tuple[float, float]:
        args = {(conv.bn_eps, conv.bn_momentum) for conv in convs}
        if len(args) > 1:
            raise self.refuse(convs[0].path, "batch norms with different eps or momentum")
        return args.pop()

    # ---- blocks -------------------------------------------------------------------------

    def line(self, block: BlockFact) -> Line:
        """The block as one line of the language, or a refusal."""
        convs = block.convs
        if block.kind == "conv":
            (conv,) = convs
            self._plain(conv)
            kind, mid, kernel = "conv", conv.in_channels, conv.kernel
        elif block.kind == "ds":
            depthwise, pointwise = convs
            self._plain(depthwise, depthwise=True)
            if pointwise.act is not None:
                raise self.refuse(
                    pointwise.path,
                    "depthwise-separable block with an activation after the pointwise conv (dsa)",
                )
            self._plain(pointwise, act=False)
            if pointwise.kernel != 1:
                raise self.refuse(pointwise.path, f"pointwise conv with kernel {pointwise.kernel}")
            kind, mid, kernel = "mbconv", depthwise.out_channels, depthwise.kernel
        elif block.kind == "ir":
            expand, depthwise, project = convs
            self._plain(expand)
            self._plain(depthwise, depthwise=True)
            self._plain(project, act=False)
            if expand.kernel != 1 or project.kernel != 1:
                raise self.refuse(block.path, "inverted residual with a k×k expansion/projection")
            if expand.out_channels == expand.in_channels:
                raise self.refuse(
                    expand.path,
                    "inverted residual with expansion 1 that keeps its 1×1 expansion conv",
                )
            kind, mid, kernel = "mbconv", expand.out_channels, depthwise.kernel
        elif block.kind == "er":
            expand, project = convs
            self._plain(expand)
            self._plain(project, act=False)
            if project.kernel != 1:
                raise self.refuse(project.path, f"projection with kernel {project.kernel}")
            if expand.out_channels == expand.in_channels:
                raise self.refuse(
                    project.path,
                    "fused block with expansion 1 that keeps its 1×1 projection",
                )
            kind, mid, kernel = "fused_mbconv", expand.out_channels, expand.kernel
        else:  # pragma: no cover - readers only produce the kinds above
            raise self.refuse(block.path, f"block kind {block.kind}")
        act = convs[0].act
        assert act is not None
        if any(conv.act not in (act, None) for conv in convs):
            raise self.refuse(block.path, "different activations inside one block")
        squeeze = 0
        if block.se is not None:
            se = block.se
            if se.gate != "sigmoid":
                raise self.refuse(se.path, f"squeeze-and-excitation gate {se.gate}")
            if se.act != act:
                raise self.refuse(
                    se.path,
                    "squeeze-and-excitation activation differs from the block's",
                    f"{se.act} in a {act} block",
                )
            if se.channels != mid:
                raise self.refuse(se.path, "squeeze-and-excitation not on the expanded width")
            squeeze = se.squeeze
        eps, momentum = self._norm_args(convs)
        return Line(
            path=block.path,
            kind=kind,
            kernel=kernel,
            stride=block.stride,
            in_channels=block.in_channels,
            mid_channels=mid,
            out_channels=block.out_channels,
            squeeze=squeeze,
            act=act,
            bn_eps=eps,
            bn_momentum=momentum,
            padding=self._padding(convs),
            residual=block.residual,
            drop_path=block.drop_path,
        )

    # ---- stages -------------------------------------------------------------------------

    def stage(self, index: int, lines: Sequence[Line]) -> dict[str, Any]:
        """The fields of one `stage` statement for `lines`, all one shape, or a refusal."""
        first = lines[0]
        for line in lines[1:]:
            if line.stride != 1:
                raise self.refuse(line.path, "a stride after the first block of a stage")
            for name in ("kind", "kernel", "out_channels", "act", "bn_eps", "bn_momentum"):
                if getattr(line, name) != getattr(first, name):
                    raise self.refuse(
                        line.path,
                        "several block lines in one stage",
                        f"{name} {getattr(first, name)} then {getattr(line, name)}",
                    )
            if line.padding not in (first.padding, None) and first.padding is not None:
                raise self.refuse(line.path, "SAME and symmetric padding in one stage")
        fields: dict[str, Any] = {
            "kind": first.kind,
            "kernel": first.kernel,
            "stride": first.stride,
            "channels": first.out_channels,
            "repeats": len(lines),
            "act": first.act,
            "bn_eps": first.bn_eps,
            "bn_momentum": first.bn_momentum,
            "padding": next((line.padding for line in lines if line.padding), None),
        }
        if first.kind != "conv":
            fields["expand"] = self._ratio(
                lines,
                lambda line: line.mid_channels,
                expanded_channels,
                "expansion",
                at_least_one=True,
            )
            squeezes = [line.squeeze for line in lines]
            if any(squeezes) and not all(squeezes):
                raise self.refuse(
                    lines[squeezes.index(0)].path,
                    "several block lines in one stage",
                    "blocks with and without squeeze-and-excitation",
                )
            fields["se"] = (
                self._ratio(lines, lambda line: line.squeeze, squeeze_channels, "squeeze")
                if all(squeezes)
                else 0.0
            )
        fields["skip"] = self._skip(index, lines)
        return fields

    def _ratio(
        self,
        lines: Sequence[Line],
        width: Callable[[Line], int],
        rounding: Callable[[int, float], int],
        what: str,
        *,
        at_least_one: bool = False,
    ) -> float:
        """The shortest decimal r with `rounding(line.in_channels, r) == width(line)` for all."""
        first = lines[0]
        exact = width(first) / first.in_channels
        for digits in range(6):
            candidate = round(exact, digits)
            if candidate <= 0 or (at_least_one and candidate < 1) or candidate > ast.MAX_EXPAND:
                continue
            if what == "squeeze" and candidate > 1:
                break
            if all(rounding(line.in_channels, candidate) == width(line) for line in lines):
                return float(candidate)
        widths = ", ".join(f"{width(line)} from {line.in_channels}" for line in lines)
        if what == "squeeze":
            feature = "squeeze-and-excitation width not a ratio ≤ 1 of the block input"
        else:
            feature = "expanded widths that are not one ratio of the block inputs"
        raise self.refuse(first.path, feature, widths)

    def _skip(self, index: int, lines: Sequence[Line]) -> bool:
        """Whether the stage keeps the language's residual rule (`skip=no` turns it off)."""
        allowed = [
            line for line in lines if line.stride == 1 and line.in_channels == line.out_channels
        ]
        for line in lines:
            if line.residual and line not in allowed:
                raise self.refuse(line.path, "a residual connection across a shape change")
        kept = {line.residual for line in allowed}
        if len(kept) > 1:
            raise self.refuse(
                lines[0].path,
                "several block lines in one stage",
                "blocks with and without residuals",
            )
        return kept.pop() if kept else True

    # ---- the network --------------------------------------------------------------------

    def network(self) -> ast.Network:
        facts = self.facts
        self._plain(facts.stem)
        if facts.head is None:
            raise self.refuse("head", "no head conv (pooling straight after the last stage)")
        if facts.head_style != "conv":
            raise self.refuse(
                facts.head.path,
                "head conv after the global pool (efficient head: pool, 1×1 conv, act, linear)",
            )
        self._plain(facts.head)
        if facts.stem.stride > 2 or facts.head.stride > 2:
            raise self.refuse(facts.stem.path, "a stride above 2")
        lines = [[self.line(block) for block in stage] for stage in facts.stages]
        stages = [self.stage(i, stage) for i, stage in enumerate(lines)]
        if any(stage["kind"] == "fused_mbconv" for stage in stages):
            # a lone conv block is what Fused-MBConv e1 is; in a fused network, write it so
            for stage in stages:
                if stage["kind"] == "conv":
                    stage.update(kind="fused_mbconv", expand=1.0, se=0.0)
        ends = [
            {
                "kind": "conv",
                "kernel": conv.kernel,
                "stride": conv.stride,
                "channels": conv.out_channels,
                "act": conv.act,
                "bn_eps": conv.bn_eps,
                "bn_momentum": conv.bn_momentum,
                "padding": conv.padding if conv.stride > 1 else None,
            }
            for conv in (facts.stem, facts.head)
        ]
        statements = [ends[0], *stages, ends[1]]
        defaults = {
            name: _most_common(
                [s[name] for s in statements if s.get(name) is not None],
                ast.Defaults.model_fields[name].default,
            )
            for name in OPTIONS
        }
        defaults["se"] = _most_common(
            [s["se"] for s in stages if s["kind"] != "conv"],
            ast.Defaults.model_fields["se"].default,
        )
        defaults["drop_path"] = self._drop_path(lines)
        for statement in statements:
            for name in OPTIONS:
                if statement.get(name) is None or statement[name] == defaults[name]:
                    statement.pop(name, None)
            if statement.get("skip") is True:
                del statement["skip"]
            if statement["kind"] == "conv":
                statement.pop("se", None)
        set_defaults = {
            name: value
            for name, value in defaults.items()
            if value != ast.Defaults.model_fields[name].default
        }
        network: dict[str, Any] = {
            "name": facts.name,
            "input": ast.Input(size=facts.resolution, channels=facts.in_channels),
            "stem": ast.Stem(**statements[0]),
            "stages": tuple(ast.Stage(**stage) for stage in statements[1:-1]),
            "head": ast.Head(**statements[-1]),
            "classifier": ast.Classifier(
                **_given(dropout=facts.dropout, node=ast.Classifier), classes=facts.classes
            ),
        }
        if set_defaults:
            network["defaults"] = ast.Defaults(**set_defaults)
        return ast.Network(**network)

    def _drop_path(self, stages: Sequence[Sequence[Line]]) -> float:
        """The network's stochastic-depth rate: block i of N has rate·i/N (residuals only)."""
        blocks = [line for stage in stages for line in stage]
        total = len(blocks)
        rates = {
            round(line.drop_path * total / number, 6)
            for number, line in enumerate(blocks)
            if line.residual and number > 0
        }
        unused = [line for line in blocks if not line.residual and line.drop_path]
        if len(rates) > 1:
            raise self.refuse(blocks[0].path, "drop-path rates that do not grow linearly")
        rate = rates.pop() if rates else 0.0
        if rate == 0.0 and any(line.residual and line.drop_path for line in blocks):
            raise self.refuse(blocks[0].path, "a drop-path rate on the first block")
        del unused  # rates on blocks without a residual never run: nothing to write
        return rate


def _given(node: type[ast.Node], **fields: Any) -> dict[str, Any]:
    """`fields` without those equal to the node's default, so `fmt` leaves them unsaid."""
    return {
        name: value
        for name, value in fields.items()
        if value != node.model_fields[name].get_default(call_default_factory=True)
    }


def _most_common(values: Sequence[T], default: T) -> T:
    """The value for `defaults`: the language's own default while some statements use it,
    unless another value is used by at least two thirds of them (EfficientNetV2 writes `se`
    on its MBConv stages, B0 factors it out); otherwise the most common value, the first on a
    tie."""
    if not values:
        return default
    counts = Counter(values)
    best = max(counts.values())
    tied = [value for value in values if counts[value] == best]
    if default in tied or (default in counts and 3 * best < 2 * len(values)):
        return default
    return tied[0]


def compose(facts: ModelFacts) -> ast.Network:
    """The spec of the model `facts` describe, or `ImportRefused`."""
    return Composer(facts).network()
