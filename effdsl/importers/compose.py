"""Facts read off a model → the spec a person would write, or a refusal naming what is missing.

    network = compose(facts)      # ast.Network; raises ImportRefused

The model's stages stay stages. Within a stage, consecutive blocks that agree collapse into one
line (`x4`); a block that differs starts a further `block` line of the same stage. Expansion
and squeeze widths are said the way the references compute them: the shortest decimal ratio
that gives every block's width under the language's own rounding
(`effdsl.plan.expanded_channels`, `squeeze_channels`), else the width itself (`mid=`). Options
are factored out: the value most lines use goes to `defaults` (the language's own default stays
while some lines use it, unless another covers two thirds of them) and the rest are
overrides. Anything the language cannot say is refused, naming the module and the feature,
never approximated.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from effdsl import ast
from effdsl.errors import ImportRefused
from effdsl.importers.facts import AttentionFact, BlockFact, ConvFact, ModelFacts
from effdsl.plan import expanded_channels, squeeze_channels
from effdsl.scaling import make_divisible

T = TypeVar("T")

#: The options a line inherits from `defaults` and may override, those the language has.
OPTIONS: tuple[str, ...] = tuple(
    name
    for name in (
        "act",
        "norm_group_size",
        "group_size",
        "se",
        "bn_eps",
        "bn_momentum",
        "padding",
        "se_from",
        "se_divisor",
        "se_act",
        "se_gate",
        "se_kind",
        "norm",
        "layer_scale",
        "aa",
    )
    if name in ast.Defaults.model_fields
)
#: Options that only mean something on a line with squeeze-and-excitation.
SE_OPTIONS = ("se_from", "se_divisor", "se_act", "se_gate", "se_kind")

GROUPED = "grouped convolution (group_size)"
SQUEEZE_UNSAID = "squeeze-and-excitation width no ratio gives"

#: The language's round limit, and timm's other one (FBNetV3 never rounds more than 5% down).
ROUND_LIMIT: float = ast.Scaling.model_fields["round_limit"].default
OTHER_ROUND_LIMITS = (0.95,)
#: Whether the language rounds squeeze widths with the network's round limit.
_SQUEEZE_ROUND_LIMIT = "round_limit" in inspect.signature(squeeze_channels).parameters

#: How squeeze widths are tried, in order: (se_from, se_divisor).
SQUEEZE_RULES: tuple[tuple[str, int | None], ...] = (
    ("input", None),
    ("expanded", 8),
    ("expanded", None),
    ("input", 8),
)


@dataclass(frozen=True)
class Line:
    """One block as the language would say it, before lines collapse the repeats."""

    path: str
    kind: str  # conv, mbconv, fused_mbconv, separable, mixconv, condconv
    full: bool  # expansion 1 that keeps its 1×1 conv
    kernel: ast.Kernel  # a mixconv's list of kernels, one per channel slice
    stride: int
    in_channels: int
    mid_channels: int
    out_channels: int
    squeeze: int  # 0: no squeeze-and-excitation
    se_act: str | None
    se_gate: str | None
    se_kind: str | None  # `se` or `gc` (global context) where the block has one
    act: str | None  # None: EvoNorm-S0's own non-linearity, any activation
    norm: str
    bn_eps: float
    bn_momentum: float
    padding: str | None  # None: every conv has stride 1, where SAME and symmetric agree
    residual: bool
    drop_path: float
    expand_groups: int = 1  # mixconv: the 1×1 expansion cut into this many channel slices
    project_groups: int = 1
    experts: int = 0  # condconv
    group_size: int | None = None  # channels per group of the k×k conv; None: as the kind has it
    fused: bool | None = None  # a conv block: whether it is a fused block of expansion 1
    dw_start: int | None = None  # uir: the depthwise kernels before and after
    dw_end: int | None = None
    layer_scale: float = 0.0
    attention: tuple[int, int, int, int] | None = None  # mqa: heads, key and value dims, kv stride
    norm_group_size: int | None = None  # group norm and EvoNorm-S0
    # space-to-depth: the block starts with its conv (`s2d`; `in_channels` are then the conv's
    # output, `kernel` the written one, twice the depthwise kernel less one); its output is 4×
    # the written width (`packed`: the region); it is the strided block that ends a region
    # (`ends`: `stride` is the written 2, `mid_channels` a quarter of the written ratio's)
    s2d: bool = False
    packed: bool = False
    ends: bool = False
    aa: str = "none"  # anti-aliased downsampling: the pool after the strided conv


class Composer:
    """Turns one model's facts into a `Network`; every refusal names `facts.source`."""

    def __init__(self, facts: ModelFacts) -> None:
        self.facts = facts
        self.squeeze_rules = SQUEEZE_RULES  # reordered by `network` to the model's own rule
        self.round_limit = ROUND_LIMIT  # of squeeze widths rounded to a divisor

    def refuse(self, path: str, feature: str, detail: str = "") -> ImportRefused:
        """The refusal `SOURCE: PATH: FEATURE (DETAIL)`; `feature` alone groups refusals."""
        more = f" ({detail})" if detail else ""
        return ImportRefused(f"{self.facts.source}: {path}: {feature}{more}", feature=feature)

    # ---- convolutions -------------------------------------------------------------------

    def _plain(
        self,
        conv: ConvFact,
        *,
        depthwise: bool = False,
        act: bool = True,
        grouped: bool = False,
        bare: bool = False,
        halved: bool = False,
        any_kernel: bool = False,
    ) -> str:
        """Refuse a conv the language's conv-norm-act op cannot be; return its norm. With
        `grouped`, the conv may be grouped (the k×k conv of a block: `group_size`); with
        `bare`, it may have neither norm nor bias (the head's `bias=no`); with `halved` (the
        depthwise conv after space-to-depth), its kernel may be even where it pads as SAME;
        with `any_kernel` (the space-to-depth conv, checked already) it may be even too."""
        if conv.norm is None:
            if not conv.bias and not bare:
                raise self.refuse(conv.path, "convolution without a norm or a bias")
            norm = "none"
        elif conv.norm not in ast.NORMS:
            named = {"group": "group norm", "layer": "layer norm", "evonorm": "EvoNorm-S0"}
            name = named.get(conv.norm, f"norm layer {conv.norm}")
            raise self.refuse(conv.path, f"{name} (not in the language)")
        elif conv.bias:
            raise self.refuse(conv.path, "convolution with a bias before its norm")
        else:
            norm = conv.norm
        if depthwise and not conv.depthwise and not (grouped and conv.groups > 1):
            raise self.refuse(conv.path, GROUPED, f"groups={conv.groups}")
        if not depthwise and conv.groups != 1 and not grouped:
            raise self.refuse(conv.path, GROUPED, f"groups={conv.groups}")
        even = any(kernel % 2 == 0 for kernel in conv.kernels or (conv.kernel,))
        halved_even = halved and conv.padding == "same" and not conv.kernels
        if even and not (halved_even or any_kernel):
            raise self.refuse(conv.path, "even kernel", str(conv.kernel))
        if conv.norm == "evonorm" and act != conv.norm_acts:
            raise self.refuse(
                conv.path, "EvoNorm-S0 " + ("without" if act else "with") + " its non-linearity"
            )
        if conv.norm_acts:
            if conv.act is not None:
                raise self.refuse(conv.path, "an activation after EvoNorm-S0's own")
            return norm
        if act and conv.act is None:
            raise self.refuse(conv.path, "convolution without an activation")
        if not act and conv.act is not None:
            raise self.refuse(conv.path, "activation after the projection", conv.act)
        if conv.act is not None and conv.act not in ast.ACTIVATIONS:
            raise self.refuse(conv.path, f"activation {conv.act} after a convolution")
        return norm

    def _padding(self, convs: Sequence[ConvFact]) -> str | None:
        modes = {conv.padding for conv in convs if conv.stride > 1}
        if len(modes) > 1:
            raise self.refuse(convs[0].path, "SAME and symmetric padding in one block")
        return modes.pop() if modes else None

    def _uniform(
        self, convs: Sequence[ConvFact], norms: Sequence[str]
    ) -> tuple[float, float, str]:
        args = {(conv.bn_eps, conv.bn_momentum) for conv in convs if conv.norm is not None}
        if len(args) > 1:
            raise self.refuse(convs[0].path, "batch norms with different eps or momentum")
        if len({conv.norm_group_size for conv in convs if conv.norm_group_size}) > 1:
            raise self.refuse(convs[0].path, "norms with different group sizes in one block")
        if len(set(norms)) > 1:
            raise self.refuse(convs[0].path, "convolutions with and without norms in one block")
        eps, momentum = args.pop() if args else (1e-5, 0.1)
        return eps, momentum, norms[0]

    # ---- blocks -------------------------------------------------------------------------

    def line(self, block: BlockFact) -> Line:
        """The block as one line of the language, or a refusal."""
        if block.attention is not None:
            return self._attention(block, block.attention)
        convs = block.convs
        full = False
        experts = self._experts(block)
        halved = self._space_to_depth(block)
        mixed = any(conv.kernels for conv in convs)
        groups = (1, 1)  # a mixconv's expansion and projection slices
        if block.kind == "conv":
            (conv,) = convs
            norms = [self._plain(conv, grouped=True)]
            spatial = conv
            kind, mid, kernel = "conv", conv.in_channels, _kernel(conv)
        elif block.kind == "ds":
            depthwise, pointwise = convs
            separable = pointwise.act is not None  # MobileNetV1's block: no residual
            norms = [
                self._plain(depthwise, depthwise=True, grouped=True, halved=halved),
                self._plain(pointwise, act=separable),
            ]
            spatial = depthwise
            if not _pointwise(pointwise):
                raise self.refuse(pointwise.path, "pointwise conv with a k×k kernel")
            if separable and block.residual:
                raise self.refuse(
                    block.path, "depthwise-separable block with an activation and a residual"
                )
            if separable and (mixed or experts):
                raise self.refuse(block.path, "separable block with MixConv or CondConv layers")
            kind = "separable" if separable else "mbconv"
            mid, kernel = depthwise.out_channels, _kernel(depthwise)
            groups = (1, pointwise.slices)
        elif block.kind == "ir":
            expand, depthwise, project = convs
            norms = [
                self._plain(expand),
                self._plain(depthwise, depthwise=True, grouped=True, halved=halved),
                self._plain(project, act=False),
            ]
            spatial = depthwise
            if not (_pointwise(expand) and _pointwise(project)):
                raise self.refuse(block.path, "inverted residual with a k×k expansion/projection")
            kind, mid, kernel = "mbconv", expand.out_channels, _kernel(depthwise)
            full = mid == expand.in_channels
            groups = (expand.slices, project.slices)
        elif block.kind == "er":
            expand, project = convs
            norms = [self._plain(expand, grouped=True), self._plain(project, act=False)]
            spatial = expand
            if not _pointwise(project):
                raise self.refuse(project.path, "projection with a k×k kernel")
            if mixed or experts:
                raise self.refuse(block.path, "fused block with MixConv or CondConv layers")
            kind, mid, kernel = "fused_mbconv", expand.out_channels, expand.kernel
            full = mid == expand.in_channels
        elif block.kind == "uir":
            if "uir" not in ast.BLOCK_KINDS:
                raise self.refuse(block.path, "MobileNetV4 universal inverted bottleneck (UIR)")
            if mixed or experts:
                raise self.refuse(block.path, "UIR block with MixConv or CondConv layers")
            norms, mid, kernel, extra, uir_group_size = self._uir(block)
            kind, spatial = "uir", block.convs[0]
        else:  # pragma: no cover - readers only produce the kinds above
            raise self.refuse(block.path, f"block kind {block.kind}")
        if block.kind != "uir":
            extra = {}
        if mixed and experts:
            raise self.refuse(block.path, "MixConv and CondConv in one block")
        if kind == "uir":
            group_size = uir_group_size
        else:
            group_size = self._group_size(block, kind, spatial, mid)
        if group_size is not None and "group_size" not in ast.Line.model_fields:
            raise self.refuse(spatial.path, GROUPED, f"groups={spatial.groups}")
        if group_size is not None and (mixed or experts):
            raise self.refuse(spatial.path, "a grouped conv in a MixConv or CondConv block")
        if mixed or experts:
            kind = "mixconv" if mixed else "condconv"
            if full:
                raise self.refuse(
                    block.path,
                    f"{kind} block with expansion 1 that keeps its 1×1 expansion conv",
                )
        else:
            groups = (1, 1)
        if block.s2d is not None:  # its norm and activation are the block's
            if mixed or experts or kind not in ast.SPACE_TO_DEPTH:
                raise self.refuse(block.path, f"space-to-depth before a {kind} block")
            norms.append(self._plain(block.s2d, any_kernel=True))
            convs = (block.s2d, *convs)
            assert isinstance(kernel, int)  # not a mixconv
            kernel = 2 * kernel - 1  # the written kernel, which the block halves
        # EvoNorm-S0's own non-linearity stands in for the activation, whichever it is: None
        acts = {conv.act for conv in convs if conv.act is not None}
        if len(acts) > 1:
            raise self.refuse(block.path, "different activations inside one block")
        act = acts.pop() if acts else None
        squeeze, se_act, se_gate, se_kind = 0, None, None, None
        if block.se is not None:
            se = block.se
            if se.gate not in ast.GATES:
                raise self.refuse(se.path, f"squeeze-and-excitation gate {se.gate}")
            if se.act not in ast.ACTIVATIONS:
                raise self.refuse(se.path, f"squeeze-and-excitation activation {se.act}")
            if se.channels != mid:
                raise self.refuse(se.path, "squeeze-and-excitation not on the expanded width")
            squeeze, se_act, se_gate, se_kind = se.squeeze, se.act, se.gate, se.kind
        eps, momentum, norm = self._uniform(convs, norms)
        if kind in ("mixconv", "condconv") and norm != "batch":
            raise self.refuse(block.path, f"{kind} block without batch norm")
        aa = self._anti_alias(convs)
        return Line(
            path=block.path,
            kind=kind,
            full=full,
            kernel=kernel,
            stride=block.stride,
            in_channels=block.in_channels,
            mid_channels=mid,
            out_channels=block.out_channels,
            squeeze=squeeze,
            se_act=se_act,
            se_gate=se_gate,
            se_kind=se_kind,
            act=act,
            norm=norm,
            bn_eps=eps,
            bn_momentum=momentum,
            padding=self._padding(block.convs),
            residual=block.residual,
            drop_path=block.drop_path,
            expand_groups=groups[0],
            project_groups=groups[1],
            experts=experts,
            fused=block.fused,
            dw_start=extra.get("start"),
            dw_end=extra.get("end"),
            layer_scale=block.layer_scale,
            group_size=group_size,
            norm_group_size=max(conv.norm_group_size for conv in convs) or None,
            s2d=block.s2d is not None,
            packed=block.s2d is not None,
            aa=aa,
        )

    def _space_to_depth(self, block: BlockFact) -> bool:
        """Refuse a space-to-depth conv the language's is not (2×2, stride 2, from the block's
        input to 4× the channels, padded as SAME: on an even map a conv without padding is
        the same conv); whether the block has one."""
        conv = block.s2d
        if conv is None:
            return False
        shape = (conv.kernel, conv.stride, conv.groups, conv.out_channels, conv.kernels)
        if shape != (2, 2, 1, 4 * conv.in_channels, ()) or conv.experts:
            raise self.refuse(conv.path, "a space-to-depth conv other than 2×2 to 4× the channels")
        if block.in_channels != conv.out_channels:
            raise self.refuse(block.path, "a space-to-depth conv the block does not run on")
        return True

    def _anti_alias(self, convs: Sequence[ConvFact]) -> str:
        """The block's anti-aliased downsampling (`none`): the pool after its strided conv."""
        pooled = [conv for conv in convs if conv.aa is not None]
        if not pooled:
            return "none"
        if "aa" not in ast.Line.model_fields:
            raise self.refuse(pooled[0].path, "anti-aliased downsampling (blur pool)")
        if len(pooled) > 1 or pooled[0].stride != 2 or pooled[0].aa not in ast.ANTI_ALIASES:
            raise self.refuse(pooled[0].path, f"anti-aliased downsampling {pooled[0].aa}")
        return pooled[0].aa

    def _group_size(
        self, block: BlockFact, kind: str, spatial: ConvFact, mid: int
    ) -> int | None:
        """The line's `group_size`: channels per group of the block's k×k conv, counted as
        the language counts them (the expanded width over the groups for mbconv and
        fused_mbconv, the input width for conv and separable); None where it is depthwise or
        dense, as the kind has it."""
        if spatial.groups == 1 or spatial.depthwise:
            return None
        width = mid if block.kind in ("ir", "er") else block.in_channels
        if width % spatial.groups:
            raise self.refuse(spatial.path, GROUPED, f"{width} channels in {spatial.groups}")
        return width // spatial.groups

    def _uir(self, block: BlockFact) -> tuple[list[str], int, int, dict[str, int], int | None]:
        """A universal inverted bottleneck's norms, expanded width, middle kernel (0: none),
        its extra depthwise kernels and the channels per group of its spatial convs (None:
        depthwise), checking that the stride is where the language puts it: on the middle
        depthwise conv, else the start, else the end."""
        convs = dict(zip(block.roles, block.convs, strict=True))
        if "expand" not in convs or "project" not in convs:
            raise self.refuse(block.path, "UIR block without its 1×1 expansion and projection")
        norms = []
        for role, conv in convs.items():
            depthwise = role in ("start", "depthwise", "end")
            acts = role in ("expand", "depthwise")
            norms.append(self._plain(conv, depthwise=depthwise, act=acts, grouped=depthwise))
            if not depthwise and conv.kernel != 1:
                raise self.refuse(conv.path, f"UIR {role} conv with a k×k kernel")
        strided = [role for role, conv in convs.items() if conv.stride > 1]
        first = next((r for r in ("depthwise", "start", "end") if r in convs), None)
        if strided and strided != [first]:
            raise self.refuse(block.path, "UIR block strided on another conv than the language's")
        extra: dict[str, int] = {
            role: convs[role].kernel for role in ("start", "end") if role in convs
        }
        middle = convs["depthwise"].kernel if "depthwise" in convs else 0
        spatial = [convs[r] for r in ("start", "depthwise", "end") if r in convs]
        # the language groups all three at one group size, as timm's `group_size` does
        sizes = {conv.in_channels // conv.groups for conv in spatial if not conv.depthwise}
        if sizes and (len(sizes) > 1 or any(conv.depthwise for conv in spatial)):
            raise self.refuse(block.path, GROUPED, "UIR convs grouped at different sizes")
        group_size = sizes.pop() if sizes else None
        return norms, convs["expand"].out_channels, middle, extra, group_size

    def _attention(self, block: BlockFact, attention: AttentionFact) -> Line:
        """MobileNetV4's multi-query attention block as an `mqa` line: its kernel is the keys'
        and values' downsampling conv's (3, timm's, where there is none)."""
        if "mqa" not in ast.BLOCK_KINDS:
            raise self.refuse(block.path, "MobileNetV4 attention block (MQA)")
        for conv in block.convs:
            if conv.bias or conv.norm is not None or conv.act is not None or conv.kernel != 1:
                raise self.refuse(conv.path, "attention projection other than a bare 1×1 conv")
        strided = attention.kv_stride > 1
        return Line(
            path=block.path,
            kind="mqa",
            full=False,
            kernel=attention.kv_kernel or 3,
            stride=1,
            in_channels=block.in_channels,
            mid_channels=block.in_channels,
            out_channels=block.out_channels,
            squeeze=0,
            se_act=None,
            se_gate=None,
            se_kind=None,
            act=None,  # no activation: the line inherits any
            norm="batch",
            bn_eps=attention.bn_eps,
            bn_momentum=attention.bn_momentum,
            padding=attention.kv_padding if strided else None,
            residual=block.residual,
            drop_path=block.drop_path,
            layer_scale=block.layer_scale,
            attention=(
                attention.heads,
                attention.key_dim,
                attention.value_dim,
                attention.kv_stride,
            ),
        )

    def _experts(self, block: BlockFact) -> int:
        """CondConv's experts: on every conv of the block, with its routing function."""
        experts = {conv.experts for conv in block.convs}
        if len(experts) > 1:
            raise self.refuse(block.path, "CondConv on some of a block's convolutions only")
        count = experts.pop()
        if count != block.routing:
            raise self.refuse(block.path, "CondConv without one routing function for the block")
        return count

    # ---- lines --------------------------------------------------------------------------

    def fields(self, lines: Sequence[Line]) -> dict[str, Any] | None:
        """The fields of one block line saying all of `lines`, or None when they cannot be one
        line (different shapes, no common ratio)."""
        first = lines[0]
        same: tuple[str, ...] = ("kind", "full", "kernel", "out_channels", "act", "norm")
        same += ("bn_eps", "bn_momentum", "se_act", "se_gate", "se_kind")
        same += ("expand_groups", "project_groups")
        same += ("experts", "group_size", "norm_group_size", "fused", "dw_start", "dw_end")
        same += ("layer_scale", "attention", "packed")
        if any(getattr(line, name) != getattr(first, name) for line in lines for name in same):
            return None
        if any(line.s2d or line.ends for line in lines[1:]):  # a line's first block only
            return None
        if first.packed and first.out_channels % 4:
            raise self.refuse(first.path, "a space-to-depth region of widths not 4× a width")
        if any(line.stride != 1 for line in lines[1:]):
            return None
        paddings = {line.padding for line in lines} - {None}
        if len(paddings) > 1:
            return None
        skip = self._skip(lines)
        if skip is None:
            return None
        fields: dict[str, Any] = {
            "kind": first.kind,
            "kernel": first.kernel,
            "stride": first.stride,
            "channels": first.out_channels // 4 if first.packed else first.out_channels,
            "repeats": len(lines),
            "act": first.act,
            "norm": first.norm,
            "bn_eps": first.bn_eps,
            "bn_momentum": first.bn_momentum,
            "padding": paddings.pop() if paddings else None,
            "skip": skip,
            "fused": first.fused,
        }
        if first.s2d:
            fields["s2d"] = True
        if first.kind == "uir":
            fields.update(dw_start=first.dw_start, dw_end=first.dw_end)
        if first.kind in ("uir", "mqa"):
            fields["layer_scale"] = first.layer_scale
        if "aa" in ast.Line.model_fields:  # the first block's: only it may stride
            fields["aa"] = first.aa
        if first.attention is not None:
            heads, key_dim, value_dim, kv_stride = first.attention
            fields.update(heads=heads, key_dim=key_dim, se=0.0)
            if kv_stride != 1:  # said where it is not the default, as a person writes it
                fields["kv_stride"] = kv_stride
            if value_dim != key_dim:
                fields["value_dim"] = value_dim
            return fields
        # said only where set, so that a language without them reads the rest
        if first.norm_group_size is not None:
            fields["norm_group_size"] = first.norm_group_size
        if first.group_size is not None:
            fields["group_size"] = first.group_size
        if first.kind == "conv":
            return fields
        if first.expand_groups != 1:
            fields["expand_groups"] = first.expand_groups
        if first.project_groups != 1:
            fields["project_groups"] = first.project_groups
        if first.experts:
            fields["experts"] = first.experts
        if first.full:
            fields["full"] = True
        else:
            expansion = self._expansion(lines)
            if expansion is None:
                return None
            fields.update(expansion)
        if first.squeeze:
            if not all(line.squeeze for line in lines):
                return None
            squeeze = self._squeeze(lines, fields.get("expand", 1.0), fields.get("mid"))
            if squeeze is None:
                return None
            fields.update(squeeze)
            fields["se_act"] = first.se_act
            fields["se_gate"] = first.se_gate
            fields["se_kind"] = first.se_kind
        elif any(line.squeeze for line in lines):
            return None
        else:
            fields["se"] = 0.0
        return fields

    def _expansion(self, lines: Sequence[Line]) -> dict[str, Any] | None:
        """`expand` as the shortest ratio giving every block's width, else `mid`. The block
        that ends a space-to-depth region expands by a quarter of its written ratio."""
        first = lines[0]
        # a uir block always expands, rounding even e1 to a multiple of 8; so does a region's
        # end, by a quarter of e1
        always = first.kind == "uir" or first.ends
        if not always and all(line.mid_channels == line.in_channels for line in lines):
            return {}
        exact = first.mid_channels / first.in_channels * (4 if first.ends else 1)
        for digits in range(4):
            ratio = round(exact, digits)
            low_ok = ratio >= 1.0 if always else ratio > 1.0
            if not low_ok or ratio > ast.MAX_EXPAND:
                continue
            widths = (
                make_divisible(line.in_channels * own)
                if first.kind == "uir"
                else expanded_channels(line.in_channels, own)
                for line in lines
                for own in (ratio / 4 if line.ends else ratio,)
            )
            if all(width == line.mid_channels for width, line in zip(widths, lines, strict=True)):
                return {"expand": float(ratio)} if ratio != 1.0 else {}
        if all(line.mid_channels == first.mid_channels for line in lines):
            return {"mid": first.mid_channels}
        return None

    def _squeeze(
        self, lines: Sequence[Line], expand: float, mid: int | None
    ) -> dict[str, Any] | None:
        """`se`, `se_from` and `se_divisor` giving every block's squeeze width."""
        first = lines[0]
        for source, divisor in self.squeeze_rules:
            base = first.mid_channels if source == "expanded" else first.in_channels
            # space-to-depth: the ratio is of the input before the conv, a quarter as wide
            exact = first.squeeze / base * (4 if first.s2d else 1)
            candidates = [round(exact, digits) for digits in range(5)]
            if divisor is not None:
                candidates = [0.25, *candidates]
            for ratio in candidates:
                if not 0.0 < ratio <= 1.0:
                    continue
                limit = {"round_limit": self.round_limit} if _SQUEEZE_ROUND_LIMIT else {}
                if all(
                    squeeze_channels(
                        line.in_channels,
                        ratio / 4 if line.s2d else ratio,
                        mid_channels=line.mid_channels,
                        source=source,
                        divisor=divisor,
                        **limit,
                    )
                    == line.squeeze
                    for line in lines
                ):
                    return {"se": float(ratio), "se_from": source, "se_divisor": divisor}
        return None

    def _rule_order(self, lines: Sequence[Line]) -> tuple[tuple[str, int | None], ...]:
        """The squeeze rules, the one that fits most of the model's blocks first: a model has
        one rule, and a block that several rules fit is said by the model's."""
        squeezed = [line for line in lines if line.squeeze]
        fits = Counter()  # type: Counter[tuple[str, int | None]]
        ratios: dict[tuple[str, int | None], int] = {}
        for rule in SQUEEZE_RULES:
            self.squeeze_rules = (rule,)
            found = [self._squeeze([line], 1.0, None) for line in squeezed]
            fits[rule] = sum(1 for fields in found if fields)
            ratios[rule] = len({fields["se"] for fields in found if fields})
        # most blocks fitted, then fewest ratios: a rule that says them all with one
        return tuple(sorted(SQUEEZE_RULES, key=lambda rule: (-fits[rule], ratios[rule])))

    def _skip(self, lines: Sequence[Line]) -> bool | None:
        """Whether the line keeps the language's residual rule (`skip=no` turns it off)."""
        if lines[0].kind == "separable":  # never a residual: nothing to turn off
            return True
        # a region's end keeps stride 1, its start halves the map
        allowed = [
            line
            for line in lines
            if (line.stride == 1 or line.ends)
            and not line.s2d
            and line.in_channels == line.out_channels
        ]
        for line in lines:
            if line.residual and line not in allowed:
                raise self.refuse(line.path, "a residual connection across a shape change")
        kept = {line.residual for line in allowed}
        if len(kept) > 1:
            return None
        return kept.pop() if kept else True

    def stage(self, lines: Sequence[Line]) -> list[dict[str, Any]]:
        """The block lines of one stage: consecutive blocks that agree share a line."""
        groups: list[list[Line]] = []
        for line in lines:
            joined = self.fields([*groups[-1], line]) if groups else None
            # one width for blocks of different ratios (`mid=`) hides the table's ratios:
            # a block whose own ratio is one starts its own line instead
            if joined is not None and "mid" in joined and "mid" not in (self.fields([line]) or {}):
                joined = None
            if joined is not None:
                groups[-1].append(line)
            else:
                groups.append([line])
        out = []
        for group in groups:
            fields = self.fields(group)
            if fields is None:
                first = group[0]
                if first.squeeze:
                    raise self.refuse(
                        first.path,
                        SQUEEZE_UNSAID,
                        f"{first.squeeze} from {first.in_channels} in, {first.mid_channels} "
                        "expanded",
                    )
                raise self.refuse(first.path, "a block the language cannot say as one line")
            out.append(fields)
        return out

    # ---- the network --------------------------------------------------------------------

    def network(self) -> ast.Network:
        facts = self.facts
        stem_norm = self._plain(facts.stem)
        head_conv = facts.head
        if head_conv is None and not hasattr(ast, "NoHead"):
            raise self.refuse("head", "no head conv (pooling straight after the last stage)")
        # a head conv with neither norm nor bias (FBNetV3's), where the language has `bias=no`
        bare = (
            head_conv is not None
            and head_conv.norm is None
            and not head_conv.bias
            and "bias" in ast.Head.model_fields
        )
        head_norm = self._plain(head_conv, bare=bare) if head_conv is not None else "none"
        if facts.stem.stride > 2 or (head_conv is not None and head_conv.stride > 2):
            raise self.refuse(facts.stem.path, "a stride above 2")
        lines = self._regions([[self.line(block) for block in stage] for stage in facts.stages])
        stages = self._stages(lines)
        every = [line for stage in stages for line in stage]
        fused_network = any(line["kind"] == "fused_mbconv" for line in every)
        for line in every:
            # a one-conv block is what Fused-MBConv e1 is: where the library says so, and
            # where it does not (an effdsl module), a k×k one in a network of fused blocks
            fused = line.pop("fused")
            if fused is None:
                fused = fused_network and line["kernel"] != 1
            if line["kind"] == "conv" and fused:
                line.update(kind="fused_mbconv", se=0.0)
        ends = []
        ends_read = [(facts.stem, stem_norm)]
        if head_conv is not None:
            ends_read.append((head_conv, head_norm))
        for conv, norm in ends_read:
            ends.append(
                {
                    "kind": "conv",
                    "kernel": conv.kernel,
                    "stride": conv.stride,
                    "channels": conv.out_channels,
                    "act": conv.act,
                    "norm": norm,
                    "bn_eps": conv.bn_eps if norm != "none" else None,
                    "bn_momentum": conv.bn_momentum if norm == "batch" else None,
                    "padding": conv.padding if conv.stride > 1 else None,
                }
            )
            if conv.norm_group_size:
                ends[-1]["norm_group_size"] = conv.norm_group_size
        if head_conv is not None and facts.head_style == "post_pool":
            ends[1]["pool"] = "first"
        if bare:
            ends[1]["bias"] = False
        statements = [ends[0], *every, *ends[1:]]
        defaults = self._defaults(statements, every)
        defaults["drop_path"] = self._drop_path(lines)
        for statement in statements:
            self._overrides(statement, defaults)
        set_defaults = {
            name: value
            for name, value in defaults.items()
            if value != ast.Defaults.model_fields[name].default
        }
        built = []
        for stage in stages:
            head, *rest = stage
            built.append(
                ast.Stage(**head, lines=tuple(ast.BlockLine(**line) for line in rest))
                if rest
                else ast.Stage(**head)
            )
        network: dict[str, Any] = {
            "name": facts.name,
            "input": ast.Input(size=facts.resolution, channels=facts.in_channels),
            "stem": ast.Stem(**statements[0]),
            "stages": tuple(built),
            # `head none` (MobileNetV1): the last stage goes to the pool itself
            "head": ast.Head(**statements[-1]) if head_conv is not None else ast.NoHead(),
            "classifier": ast.Classifier(
                **_given(dropout=facts.dropout, node=ast.Classifier), classes=facts.classes
            ),
        }
        if set_defaults:
            network["defaults"] = ast.Defaults(**set_defaults)
        if self.round_limit != ROUND_LIMIT:
            network["scaling"] = ast.Scaling(round_limit=self.round_limit)
        return ast.Network(**network)

    def _regions(self, stages: list[list[Line]]) -> list[list[Line]]:
        """Mark the space-to-depth regions: after a block that starts with space-to-depth,
        every block's output is 4× its written width, up to the first block of a later stage
        that can end the region: a stride-2 block whose stride the conv took (the language
        ends a region at the next stride-2 block, and strides start stages), which expands a
        quarter of its ratio, so it has its expansion conv (or none to have). Where a region
        could end at several stages, the modules are the same, and the first is written."""
        marked: list[list[Line]] = []
        region: Line | None = None
        for stage in stages:
            marked.append([])
            for index, line in enumerate(stage):
                if line.s2d and region is not None:
                    raise self.refuse(line.path, "space-to-depth inside a space-to-depth region")
                if line.stride != 1 and (region is not None or line.s2d):
                    raise self.refuse(line.path, "a stride inside a space-to-depth region")
                if line.s2d:
                    region = line
                elif region is not None and index == 0 and _can_end(line):
                    line = replace(line, stride=2, ends=True, full=False)
                    region = None
                elif region is not None:
                    line = replace(line, packed=True)
                marked[-1].append(line)
        return marked

    def _stages(self, lines: list[list[Line]]) -> list[list[dict[str, Any]]]:
        """The stages' block lines. Squeeze widths rounded to a divisor are tried under the
        language's round limit, then under timm's other (FBNetV3's 0.95, which a spec says as
        `scaling round_limit=`), where the language rounds squeeze widths with it."""
        limits = (ROUND_LIMIT, *OTHER_ROUND_LIMITS) if _SQUEEZE_ROUND_LIMIT else (ROUND_LIMIT,)
        every = [line for stage in lines for line in stage]
        best: tuple[int, float, list[list[dict[str, Any]]]] | None = None
        refused: ImportRefused | None = None
        for limit in limits:
            self.round_limit = limit
            self.squeeze_rules = self._rule_order(every)
            try:
                stages = [self.stage(stage) for stage in lines]
            except ImportRefused as refusal:
                if refusal.feature != SQUEEZE_UNSAID:
                    raise
                refused = refused or refusal
                continue
            # a person writes one squeeze ratio where one rule gives it (FBNetV3's 0.25)
            ratios = len({line["se"] for stage in stages for line in stage if line.get("se")})
            if best is None or ratios < best[0]:
                best = (ratios, limit, stages)
        if best is None:
            assert refused is not None
            raise refused
        self.round_limit = best[1]
        return best[2]

    def _defaults(
        self, statements: list[dict[str, Any]], lines: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """The `defaults` statement: per option, the value fewest overrides need."""
        language = {name: ast.Defaults.model_fields[name].default for name in OPTIONS}
        defaults: dict[str, Any] = {}
        for name in ("act", "norm", "bn_eps", "bn_momentum", "padding", "norm_group_size"):
            if name not in OPTIONS:
                continue
            values = [s[name] for s in statements if s.get(name) is not None]
            defaults[name] = _most_common(values, language[name])
        # `group_size` on `defaults` reaches every line but MixConv and CondConv ones, and no
        # line can undo it: the default only where every such line has the same
        sizes = {
            line.get("group_size") for line in lines if line["kind"] not in ("mixconv", "condconv")
        }
        if "layer_scale" in OPTIONS:
            scaled = [line["layer_scale"] for line in lines if "layer_scale" in line]
            defaults["layer_scale"] = _most_common(scaled, language["layer_scale"])
        if "aa" in OPTIONS:  # anti-aliasing reaches the strided lines only
            strided = [line["aa"] for line in lines if line["stride"] > 1]
            defaults["aa"] = _most_common(strided, language["aa"])
        if "group_size" in OPTIONS:
            defaults["group_size"] = sizes.pop() if len(sizes) == 1 else None
        # the network's activation is its stem's and head's where they agree (MixNet: ReLU,
        # with swish in its later stages), however many stages override it
        if statements[0]["act"] == statements[-1]["act"] is not None:
            defaults["act"] = statements[0]["act"]
        blocks = [line for line in lines if line["kind"] != "conv"]
        defaults["se"] = _most_common([line["se"] for line in blocks], language["se"])
        squeezed = [line for line in blocks if line.get("se")]
        for name in ("se_from", "se_divisor", "se_gate", "se_kind"):
            defaults[name] = _most_common([line[name] for line in squeezed], language[name])
        # se_act unset means "the block's own": count what each choice saves
        effective = [(line["se_act"], line["act"]) for line in squeezed]
        choices = [None, *sorted({se for se, _ in effective})]
        defaults["se_act"] = min(
            choices,
            key=lambda choice: sum(
                se != (choice if choice is not None else act) for se, act in effective
            ),
        )
        return defaults

    @staticmethod
    def _overrides(statement: dict[str, Any], defaults: dict[str, Any]) -> None:
        """Leave in `statement` only the options that differ from `defaults`."""
        squeezed = bool(statement.get("se"))
        act = statement.get("act") or defaults["act"]
        for name in OPTIONS:
            if name not in statement:
                continue
            value = statement[name]
            inherited = defaults[name]
            if name == "aa" and statement["stride"] == 1:  # a stride-1 line has none to say
                statement.pop(name)
                continue
            if name == "se_act" and squeezed:
                if value == (defaults["se_act"] if defaults["se_act"] is not None else act):
                    statement.pop(name)
                continue
            if value is None or value == inherited or (name in SE_OPTIONS and not squeezed):
                statement.pop(name)
        if statement.get("skip") is True:
            del statement["skip"]
        if statement["kind"] in ("conv", "mqa"):  # no squeeze-and-excitation to turn off
            statement.pop("se", None)

    def _drop_path(self, stages: Sequence[Sequence[Line]]) -> float:
        """The network's stochastic-depth rate: block i of N has rate·i/N (residuals only)."""
        blocks = [line for stage in stages for line in stage]
        total = len(blocks)
        rates = {
            round(line.drop_path * total / number, 6)
            for number, line in enumerate(blocks)
            if line.residual and number > 0
        }
        if len(rates) > 1:
            raise self.refuse(blocks[0].path, "drop-path rates that do not grow linearly")
        rate = rates.pop() if rates else 0.0
        if rate == 0.0 and any(line.residual and line.drop_path for line in blocks):
            raise self.refuse(blocks[0].path, "a drop-path rate on the first block")
        return rate


def _can_end(line: Line) -> bool:
    """Whether a block can be the strided one that ends a space-to-depth region: it expands by
    a quarter of its written ratio, so it has an expansion conv, or a kind without one."""
    if line.kind in ast.UNEXPANDED or line.kind == "uir":
        return True
    return line.full or line.mid_channels != line.in_channels


def _kernel(conv: ConvFact) -> ast.Kernel:
    """The `k` of a conv: its kernel, or a MixConv's list of kernels."""
    return conv.kernels or conv.kernel


def _pointwise(conv: ConvFact) -> bool:
    """Whether every kernel of `conv` (each slice of a MixConv) is 1×1."""
    return set(conv.kernels or (conv.kernel,)) == {1}


def _given(node: type[ast.Node], **fields: Any) -> dict[str, Any]:
    """`fields` without those equal to the node's default, so `fmt` leaves them unsaid."""
    return {
        name: value
        for name, value in fields.items()
        if value != node.model_fields[name].get_default(call_default_factory=True)
    }


def _most_common(values: Sequence[T], default: T) -> T:
    """The value for `defaults`: the language's own default while some statements use it,
    unless another value is used by more than three quarters of them (B0 factors `se` out;
    EfficientNetV2 and MobileNetV3-Small, with SE on 6 of 8 lines, write it per line);
    otherwise the most common value, the first on a tie."""
    if not values:
        return default
    counts = Counter(values)
    best = max(counts.values())
    tied = [value for value in values if counts[value] == best]
    if default in tied or (default in counts and 4 * best <= 3 * len(values)):
        return default
    return tied[0]


def compose(facts: ModelFacts) -> ast.Network:
    """The spec of the model `facts` describe, or `ImportRefused`."""
    return Composer(facts).network()
