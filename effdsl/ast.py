"""The typed, immutable syntax tree of a `.eff` spec (pydantic v2, frozen, no extra fields).

The tree mirrors the source one statement per node. Local rules (bounds, odd kernels) are
checked when a node is built, so an invalid node cannot exist; rules that need the whole
network (duplicate names, block kinds allowed in the stem) live in `effdsl.validate`.

Source positions and comments are *trivia*: they ride along on every statement (`span`,
`attr_spans`, `comments`, `trailing_comment`) so that errors can point at text and `fmt` can
keep comments, but they take no part in equality or hashing. So `parse(format(net)) == net`.

An update returns a new node, validated like any new node (a bad update raises
`EffSemanticError`): `stage.model_copy(update={"channels": 48})`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from effdsl.errors import EffSemanticError, Span

Activation = Literal["silu", "relu", "relu6", "hardswish", "gelu", "hard_sigmoid", "none"]
BlockKind = Literal[
    "conv", "mbconv", "fused_mbconv", "mixconv", "condconv", "separable", "uir", "mqa"
]
Padding = Literal["symmetric", "same"]
Fix = Literal["none", "depth", "width", "all"]
Gate = Literal["sigmoid", "hard_sigmoid"]
SqueezeKind = Literal["se", "gc"]
SqueezeFrom = Literal["input", "expanded"]
Norm = Literal["batch", "group", "layer", "evonorm", "none"]
HeadPool = Literal["last", "first"]
DepthRound = Literal["up", "nearest"]
#: Anti-aliased downsampling (timm's `aa_layer`): a strided block's conv runs at stride 1 and
#: a pool downsamples after its norm and activation: `avg` (2×2 average), `blur` (a binomial
#: 3×3 blur over reflect padding, Zhang 2019), `blurpc` (the blur over zero padding).
AntiAlias = Literal["none", "avg", "blur", "blurpc"]

#: The block kinds whose output a layer scale may multiply.
LAYER_SCALED: tuple[str, ...] = ("uir", "mqa")
#: The block kinds that may start with space-to-depth (`s2d=yes`), as timm's `ds` and `ir`.
SPACE_TO_DEPTH: tuple[str, ...] = ("mbconv", "separable")
#: The block kinds without an expansion ratio (no `e`, `mid=` or `full=`).
UNEXPANDED: tuple[str, ...] = ("conv", "separable", "mqa")
MAX_HEADS = 1024
MAX_KV_STRIDE = 8

ACTIVATIONS: tuple[str, ...] = get_args(Activation)
BLOCK_KINDS: tuple[str, ...] = get_args(BlockKind)
PADDINGS: tuple[str, ...] = get_args(Padding)
FIXES: tuple[str, ...] = get_args(Fix)
GATES: tuple[str, ...] = get_args(Gate)
SQUEEZE_KINDS: tuple[str, ...] = get_args(SqueezeKind)
NORMS: tuple[str, ...] = get_args(Norm)
ANTI_ALIASES: tuple[str, ...] = get_args(AntiAlias)
#: The norms that cut the channels into groups (`norm_group_size`).
GROUPED_NORMS: tuple[str, ...] = ("group", "evonorm")

#: Other names of the activations, as the papers and libraries write them. The parser reads
#: them as the canonical name (so `act=swish` is `silu`), and `fmt` writes the canonical one.
ALIASES: dict[str, str] = {
    "swish": "silu",
    "hswish": "hardswish",
    "h_swish": "hardswish",
    "hard_swish": "hardswish",
    "hsigmoid": "hard_sigmoid",
    "h_sigmoid": "hard_sigmoid",
    "hardsigmoid": "hard_sigmoid",
    "identity": "none",
}

# Sane bounds of the language. They keep every number finite and small enough to reason about;
# the resource guards of `effdsl.limits` decide what is affordable to build.
MAX_CHANNELS = 1_000_000
MAX_REPEATS = 100_000
MAX_RESOLUTION = 100_000
MAX_KERNEL = 99
MAX_CLASSES = 10_000_000
MAX_EXPAND = 1_000.0
MAX_MULTIPLIER = 1_000.0
MAX_LINES = 64  # block lines in one stage
MAX_MIXED_KERNELS = 16  # MixNet uses up to 5 (k3.5.7.9.11)
MAX_SPLITS = 64
MAX_EXPERTS = 64
MAX_GROUP_SIZE = 4096  # channels per group of a grouped conv or a group norm
MAX_LAYER_SCALE = 1_000.0

#: A kernel size, or a mixconv's list of kernel sizes (`k3.5.7`), one per channel slice.
Kernel = int | tuple[int, ...]


def kernel_text(kernel: Kernel) -> str:
    """`3`, or `3.5.7` for a list of kernels: how the `k` shorthand writes it."""
    return str(kernel) if isinstance(kernel, int) else ".".join(map(str, kernel))


def kernel_sizes(kernel: Kernel) -> tuple[int, ...]:
    """Every kernel size of `kernel`, in channel-slice order."""
    return (kernel,) if isinstance(kernel, int) else kernel

TRIVIA = frozenset({"span", "attr_spans", "comments", "trailing_comment", "closing_comments"})

PositiveInt = Annotated[int, Field(ge=1)]
Rate = Annotated[float, Field(ge=0.0, lt=1.0)]


_Node = TypeVar("_Node", bound="Node")


class InvalidNode(EffSemanticError):
    """A node built with values that break a local rule; `errors()` lists them as pydantic's
    `ValidationError.errors()` does (the parser turns each into a located error)."""

    def __init__(self, node_type: str, error: ValidationError) -> None:
        detail = error.errors()[0]
        where = ".".join(str(part) for part in detail["loc"])
        super().__init__(f"invalid {node_type}: {where + ': ' if where else ''}{detail['msg']}")
        self.validation = error

    def errors(self) -> list[Any]:
        return list(self.validation.errors())


class Node(BaseModel):
    """Base of all nodes: frozen, strict, no extra fields; trivia ignored by `==` and `hash`."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    # trivia: excluded from dumps and (SkipJsonSchema) from the published JSON Schema, which
    # describes the language, not the parser's bookkeeping
    span: SkipJsonSchema[Span | None] = Field(default=None, repr=False, exclude=True)
    attr_spans: SkipJsonSchema[tuple[tuple[str, Span], ...]] = Field(
        default=(), repr=False, exclude=True
    )
    comments: SkipJsonSchema[tuple[str, ...]] = Field(default=(), repr=False, exclude=True)
    trailing_comment: SkipJsonSchema[str | None] = Field(default=None, repr=False, exclude=True)

    # `Statement.keyword` in the source, used by the formatter and in messages.
    keyword: ClassVar[str] = ""

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as error:  # an `EffError`, like every error effdsl raises
            raise InvalidNode(type(self).__name__, error) from None

    def _semantic(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in type(self).model_fields if name not in TRIVIA)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Node)
        return self._semantic() == other._semantic()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._semantic()))

    def model_copy(
        self: _Node, *, update: Mapping[str, Any] | None = None, deep: bool = False
    ) -> _Node:
        """A copy with `update` applied, validated as a new node would be, whatever its fields
        (an invalid node cannot exist); an invalid update raises `EffSemanticError`."""
        if update is None or (isinstance(update, Mapping) and not update):
            return super().model_copy(deep=deep)
        if not isinstance(update, Mapping) or not all(isinstance(k, str) for k in update):
            raise EffSemanticError("model_copy(update=...) takes a mapping of field names")
        # the fields set so far and the update: a field left at its default stays unset, so
        # the formatter still leaves it out
        values = {name: getattr(self, name) for name in self.model_fields_set}
        values.update(update)
        try:
            copy = type(self).model_validate(values)
        except ValidationError as error:
            raise InvalidNode(type(self).__name__, error) from None
        return copy.model_copy(deep=True) if deep else copy

    def span_of(self, attribute: str) -> Span | None:
        """The span of one attribute's value in the source, else the statement's span."""
        for name, span in self.attr_spans:
            if name == attribute:
                return span
        return self.span


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None else _finite(value)


class Input(Node):
    """`input size=224 channels=3`: the square input resolution and its channel count."""

    keyword: ClassVar[str] = "input"
    size: int = Field(ge=8, le=MAX_RESOLUTION, description="Input height and width in pixels.")
    channels: int = Field(default=3, ge=1, le=4096, description="Input channels (3 for RGB).")


class Scaling(Node):
    """`scaling alpha=1.2 beta=1.1 gamma=1.15 divisor=8`: compound-scaling coefficients."""

    keyword: ClassVar[str] = "scaling"
    alpha: float = Field(default=1.2, gt=0, le=MAX_MULTIPLIER, description="Depth base α.")
    beta: float = Field(default=1.1, gt=0, le=MAX_MULTIPLIER, description="Width base β.")
    gamma: float = Field(default=1.15, gt=0, le=MAX_MULTIPLIER, description="Resolution base γ.")
    divisor: int = Field(
        default=8, ge=1, le=1024, description="Scaled channels are rounded to a multiple of this."
    )
    round_limit: float = Field(
        default=0.9,
        ge=0.0,
        le=1.0,
        description="Rounding a scaled width to the divisor never goes below this fraction of "
        "it (one divisor is added back); 0 turns the rule off.",
    )
    depth_round: DepthRound = Field(
        default="up",
        description="Scaled repeats: `up` rounds a stage's total up (EfficientNet), `nearest` "
        "to the nearest (TinyNet).",
    )

    _finite = field_validator("alpha", "beta", "gamma", "round_limit")(_finite)


class Defaults(Node):
    """`defaults act=silu se=0.25 ...`: options every block inherits unless it overrides them."""

    keyword: ClassVar[str] = "defaults"
    act: Activation = Field(default="silu", description="Activation after conv + batch norm.")
    se: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Squeeze-and-excitation ratio of the block's input channels; 0 means none "
        "(written `se=none`).",
    )
    bn_eps: float = Field(default=1e-5, gt=0, lt=1, description="Batch-norm epsilon.")
    bn_momentum: float = Field(default=0.1, gt=0, lt=1, description="Batch-norm momentum.")
    drop_path: Rate = Field(
        default=0.0, description="Stochastic-depth rate of the last block (block i gets rate·i/N)."
    )
    padding: Padding = Field(
        default="symmetric",
        description="`symmetric` pads (k-1)/2 on each side; `same` pads as TensorFlow's SAME.",
    )
    se_from: SqueezeFrom = Field(
        default="input",
        description="Squeeze-and-excitation width as a ratio of the block's `input` channels "
        "(EfficientNet) or of its `expanded` ones (MobileNetV3).",
    )
    se_divisor: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="Round the squeeze width to a multiple of this (never 10% down); unset: "
        "round down.",
    )
    se_act: Activation | None = Field(
        default=None, description="Activation inside squeeze-and-excitation; unset: the block's."
    )
    se_gate: Gate = Field(
        default="sigmoid", description="The gate of squeeze-and-excitation: `sigmoid` or "
        "`hard_sigmoid`."
    )
    se_kind: SqueezeKind = Field(
        default="se",
        description="What gates the channels where `se` is on: `se` (squeeze-and-excitation: "
        "the channel means through a bottleneck) or `gc` (GCNet's global context: an "
        "attention-weighted sum over positions through a layer-normed bottleneck).",
    )
    norm: Norm = Field(
        default="batch",
        description="Normalisation after each conv: `batch`, `group` (GroupNorm), `layer` "
        "(LayerNorm over channels), `evonorm` (EvoNorm-S0, whose own non-linearity replaces "
        "the activation), or `none` (the conv gets a bias).",
    )
    norm_group_size: int | None = Field(
        default=None,
        ge=1,
        le=MAX_GROUP_SIZE,
        description="Channels per group of `norm=group` and `norm=evonorm` (timm: 8 or 16).",
    )
    group_size: int | None = Field(
        default=None,
        ge=1,
        le=MAX_GROUP_SIZE,
        description="Channels per group of every stage block's k×k conv (timm's `gs`); unset: "
        "depthwise (mbconv, separable) or dense (conv, fused_mbconv).",
    )
    layer_scale: float = Field(
        default=0.0,
        ge=0.0,
        le=MAX_LAYER_SCALE,
        description="Layer scale of `uir` blocks: their output times a learnt per-channel "
        "factor, initialised to this (MobileNetV4 hybrid: 1e-5); 0 means none (`none`).",
    )
    aa: AntiAlias = Field(
        default="none",
        description="Anti-aliased downsampling of every strided stage block (not the stem or "
        "the head): its strided conv runs at stride 1, then after the norm and activation "
        "`avg` (2×2 average pool), `blur` (binomial 3×3 blur, reflect padding) or `blurpc` "
        "(the blur with zero padding) downsamples; `none`: the conv strides itself.",
    )

    _finite = field_validator("se", "bn_eps", "bn_momentum", "drop_path", "layer_scale")(_finite)


class Preset(Node):
    """`preset b3 width=1.2 depth=1.4 resolution=300 dropout=0.3`: a named scaling."""

    keyword: ClassVar[str] = "preset"
    name: str = Field(min_length=1, max_length=200, description="The preset's name.")
    width: float = Field(default=1.0, gt=0, le=MAX_MULTIPLIER, description="Width multiplier.")
    depth: float = Field(default=1.0, gt=0, le=MAX_MULTIPLIER, description="Depth multiplier.")
    resolution: int | None = Field(
        default=None, ge=8, le=MAX_RESOLUTION, description="Input resolution in pixels."
    )
    dropout: Rate | None = Field(default=None, description="Classifier dropout.")

    _finite = field_validator("width", "depth")(_finite)


class BlockOptions(Node):
    """Per-block overrides of `defaults`; `None` means "inherit"."""

    act: Activation | None = Field(default=None, description="Overrides `defaults act`.")
    se: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Overrides `defaults se`; 0 means none."
    )
    bn_eps: float | None = Field(default=None, gt=0, lt=1, description="Overrides bn_eps.")
    bn_momentum: float | None = Field(
        default=None, gt=0, lt=1, description="Overrides bn_momentum."
    )
    drop_path: Rate | None = Field(
        default=None, description="Overrides the stochastic-depth rate for this stage's blocks."
    )
    padding: Padding | None = Field(default=None, description="Overrides `defaults padding`.")
    se_from: SqueezeFrom | None = Field(default=None, description="Overrides `defaults se_from`.")
    se_divisor: int | None = Field(
        default=None, ge=1, le=1024, description="Overrides `defaults se_divisor`."
    )
    se_act: Activation | None = Field(default=None, description="Overrides `defaults se_act`.")
    se_gate: Gate | None = Field(default=None, description="Overrides `defaults se_gate`.")
    se_kind: SqueezeKind | None = Field(default=None, description="Overrides `defaults se_kind`.")
    norm: Norm | None = Field(default=None, description="Overrides `defaults norm`.")
    norm_group_size: int | None = Field(
        default=None, ge=1, le=MAX_GROUP_SIZE, description="Overrides `defaults norm_group_size`."
    )
    layer_scale: float | None = Field(
        default=None,
        ge=0.0,
        le=MAX_LAYER_SCALE,
        description="Overrides `defaults layer_scale` (`uir` blocks); `none` turns it off.",
    )

    _finite = field_validator(
        "se", "bn_eps", "bn_momentum", "drop_path", "layer_scale"
    )(_finite_or_none)


class Block(BlockOptions):
    """What the stem, every stage and the head share: a block kind and its shape."""

    kind: BlockKind = Field(
        description="`conv`, `mbconv`, `fused_mbconv`, `mixconv` (mixed-kernel depthwise), "
        "`condconv` (per-sample expert kernels), `separable` (depthwise-separable), `uir` "
        "(MobileNetV4's universal inverted bottleneck) or `mqa` (multi-query attention)."
    )
    expand: float = Field(default=1.0, ge=1.0, le=MAX_EXPAND, description="Expansion ratio (e).")
    kernel: Kernel = Field(
        description="Kernel size (k), odd. A `mixconv` may list one per channel slice (`k3.5.7`); "
        "a `uir` block's is its middle depthwise conv's, `k0` for none.",
        # the bounds `_odd_kernel` checks, for the schema and the editor's hover
        json_schema_extra={
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": MAX_KERNEL},
                {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 1, "maximum": MAX_KERNEL},
                    "minItems": 2,
                    "maxItems": MAX_MIXED_KERNELS,
                },
            ]
        },
    )
    stride: int = Field(default=1, ge=1, le=2, description="Stride (s) of the first block: 1 or 2.")
    channels: int = Field(ge=1, le=MAX_CHANNELS, description="Output channels (c).")
    expand_groups: int = Field(
        default=1,
        ge=1,
        le=MAX_SPLITS,
        description="`mixconv`: the 1×1 expansion as this many convs, each over its own slice "
        "of the channels (MixNet's grouped pointwise).",
    )
    project_groups: int = Field(
        default=1,
        ge=1,
        le=MAX_SPLITS,
        description="`mixconv`: the 1×1 projection as this many convs over channel slices.",
    )
    experts: int | None = Field(
        default=None,
        validate_default=True,
        ge=2,
        le=MAX_EXPERTS,
        description="`condconv`: expert kernels per conv, mixed per sample by a routing "
        "function of the block's pooled input.",
    )
    fix: Fix = Field(
        default="none",
        description="Opt out of scaling: `width` keeps the channels, `depth` the repeats, "
        "`all` both.",
    )

    @field_validator("kernel")
    @classmethod
    def _odd_kernel(cls, kernel: Kernel, info: ValidationInfo) -> Kernel:
        sizes = kernel_sizes(kernel)
        if isinstance(kernel, tuple) and not 2 <= len(kernel) <= MAX_MIXED_KERNELS:
            raise ValueError(f"a kernel list has 2 to {MAX_MIXED_KERNELS} sizes, got {len(kernel)}")
        if kernel == 0 and info.data.get("kind") == "uir":
            return kernel  # a uir block without its middle depthwise conv
        for size in sizes:
            if size == 0:
                raise ValueError("kernel must be ≥ 1, got 0 (`k0`, no middle depthwise conv, is "
                                 "for `uir` blocks)")
            if size < 1:
                raise ValueError(f"kernel must be ≥ 1, got {size}")
            if size > MAX_KERNEL:
                raise ValueError(f"kernel must be ≤ {MAX_KERNEL}, got {size}")
            if size % 2 == 0:
                raise ValueError(f"kernel must be odd, got {size}")
        return kernel

    _finite_expand = field_validator("expand")(_finite)

    @model_validator(mode="after")
    def _conv_has_no_expansion(self) -> Block:
        if self.kind in UNEXPANDED and self.expand != 1.0:
            raise ValueError(
                f"a `{self.kind}` block has no expansion ratio; use mbconv, fused_mbconv or uir"
            )
        return self

    # Options of one block kind: checked per field (the kind comes first), so that an error
    # points at the option.

    @field_validator("kernel")
    @classmethod
    def _kernel_list_is_mixconv(cls, kernel: Kernel, info: ValidationInfo) -> Kernel:
        kind = info.data.get("kind")
        if isinstance(kernel, tuple) and kind not in (None, "mixconv"):
            raise ValueError(
                f"only a `mixconv` block takes a kernel list; a `{kind}` block has one kernel"
            )
        return kernel

    @field_validator("expand_groups", "project_groups")
    @classmethod
    def _groups_are_mixconv(cls, groups: int, info: ValidationInfo) -> int:
        kind = info.data.get("kind")
        if groups != 1 and kind not in (None, "mixconv"):
            raise ValueError(f"{info.field_name} applies to `mixconv` blocks, not `{kind}`")
        return groups

    @field_validator("experts")
    @classmethod
    def _experts_are_condconv(cls, experts: int | None, info: ValidationInfo) -> int | None:
        kind = info.data.get("kind")
        if experts is not None and kind not in (None, "condconv"):
            raise ValueError(f"experts applies to `condconv` blocks, not `{kind}`")
        if experts is None and kind == "condconv":
            raise ValueError("a `condconv` block needs its number of experts, e.g. `experts=4`")
        return experts

    @property
    def kernels(self) -> tuple[int, ...]:
        """The kernel sizes, one per channel slice (one for all but a mixconv's list)."""
        return kernel_sizes(self.kernel)

    @property
    def scales_width(self) -> bool:
        return self.fix in ("none", "depth")

    @property
    def scales_depth(self) -> bool:
        return self.fix in ("none", "width")


class Stem(Block):
    """`stem conv k3 s2 c32`: the first convolution."""

    keyword: ClassVar[str] = "stem"


class Head(Block):
    """`head conv k1 c1280`: the last convolution, before pooling (`pool=first`: after it)."""

    keyword: ClassVar[str] = "head"
    pool: HeadPool = Field(
        default="last",
        description="`last`: conv, norm, act, then the global pool; `first`: the global pool, "
        "then the 1×1 conv (MobileNetV3; with `norm=none` the conv has a bias).",
    )
    shrink: bool = Field(
        default=True,
        description="`shrink=no` keeps at least the written width when scaled down "
        "(MobileNetV2's max(1280, 1280·w)).",
    )
    bias: bool = Field(
        default=True,
        description="With `norm=none`, `bias=no` leaves the conv without a bias too "
        "(FBNetV3's head: conv, then the activation).",
    )

    @model_validator(mode="after")
    def _pooled_head_is_pointwise(self) -> Head:
        if self.pool == "first" and (self.kernel, self.stride) != (1, 1):
            raise ValueError("a head after the pool acts on a 1×1 map: write it `k1 s1`")
        if not self.bias and self.norm != "none":
            # a batch-normalised conv has no bias already; the rule is read on the line itself
            raise ValueError("`bias=no` is for a head conv without norm: add `norm=none`")
        return self


class NoHead(Node):
    """`head none`: no head conv; the last stage's output goes straight to the global pool and
    the classifier (MobileNetV1 as the paper has it, timm's `num_features=0`)."""

    keyword: ClassVar[str] = "head"


class Line(Block):
    """What a stage's block lines share: `repeats` blocks; only the first has the stride."""

    repeats: int = Field(default=1, ge=1, le=MAX_REPEATS, description="Number of blocks (x).")
    skip: bool = Field(
        default=True,
        description="Residual connection where stride is 1 and channels match (`skip=no` "
        "turns it off).",
    )
    mid: int | None = Field(
        default=None,
        ge=1,
        le=MAX_CHANNELS,
        description="The expanded width itself, where a table gives it, instead of a ratio e.",
    )
    full: bool = Field(
        default=False,
        description="At expansion 1, keep the 1×1 expansion conv (mbconv) or the 1×1 "
        "projection (fused_mbconv) that is otherwise left out.",
    )
    s2d: bool = Field(
        default=False,
        description="Space-to-depth (EfficientNet-X): the line's first block starts with a 2×2 "
        "stride-2 conv to 4× the channels and runs on them with its kernel halved; the blocks "
        "after it keep 4× the channels they say until the next stride-2 block, which drops "
        "its stride and expands a quarter as much. `mbconv` and `separable` lines of stride 1.",
    )
    group_size: int | None = Field(
        default=None,
        ge=1,
        le=MAX_GROUP_SIZE,
        description="Channels per group of the block's k×k conv (timm's `gs`): its groups are "
        "the expanded width (mbconv, fused_mbconv) or the input width (conv, separable) over "
        "this; each depthwise conv of a `uir` block over its own width. Overrides `defaults "
        "group_size`.",
    )
    dw_start: int | None = Field(
        default=None,
        ge=1,
        le=MAX_KERNEL,
        description="`uir`: the kernel of a depthwise conv (batch norm, no activation) before "
        "the expansion (MobileNetV4's ExtraDW and ConvNeXt-like blocks).",
    )
    dw_end: int | None = Field(
        default=None,
        ge=1,
        le=MAX_KERNEL,
        description="`uir`: the kernel of a depthwise conv (batch norm, no activation) after "
        "the projection.",
    )

    @model_validator(mode="after")
    def _expanded_width_once(self) -> Line:
        if self.mid is not None:
            if self.kind in UNEXPANDED:
                raise ValueError(f"a `{self.kind}` block has no expanded width; remove `mid=`")
            if "expand" in self.model_fields_set and self.expand != 1.0:
                raise ValueError("give the expansion as a ratio (e) or a width (mid=), not both")
        if self.full and self.kind in UNEXPANDED:
            raise ValueError(f"a `{self.kind}` block has no expansion; remove `full=`")
        if self.full and self.kind in ("mixconv", "condconv", "uir"):
            raise ValueError(f"`full=` is for mbconv and fused_mbconv, not `{self.kind}`")
        return self

    @field_validator("s2d")
    @classmethod
    def _s2d_of_a_depthwise_block(cls, s2d: bool, info: ValidationInfo) -> bool:
        kind = info.data.get("kind")
        if s2d and kind not in (None, *SPACE_TO_DEPTH):
            raise ValueError(f"s2d applies to `mbconv` and `separable` blocks, not `{kind}`")
        if s2d and info.data.get("stride", 1) != 1:
            raise ValueError(
                "a space-to-depth block has stride 1 (its 2×2 stride-2 conv downsamples): "
                "write it `s1`"
            )
        return s2d

    @field_validator("group_size")
    @classmethod
    def _group_size_of_one_kernel(cls, size: int | None, info: ValidationInfo) -> int | None:
        kind = info.data.get("kind")
        if size is not None and kind in ("mixconv", "condconv"):
            raise ValueError(
                f"a `{kind}` block takes no group_size: its convs are cut by kernel or expert"
            )
        if size is not None and kind == "mqa":
            raise ValueError("an `mqa` block takes no group_size: it has no spatial conv to group")
        return size

    heads: int | None = Field(
        default=None,
        validate_default=True,
        ge=1,
        le=MAX_HEADS,
        description="`mqa`: the number of query heads (all share one key and one value).",
    )
    key_dim: int | None = Field(
        default=None,
        validate_default=True,
        ge=1,
        le=MAX_CHANNELS,
        description="`mqa`: the width of each query head and of the shared key.",
    )
    value_dim: int | None = Field(
        default=None,
        ge=1,
        le=MAX_CHANNELS,
        description="`mqa`: the width of the shared value (and of each head's output); unset: "
        "`key_dim`.",
    )
    kv_stride: int = Field(
        default=1,
        ge=1,
        le=MAX_KV_STRIDE,
        description="`mqa`: downsample the keys and values by a depthwise k×k conv of this "
        "stride (with batch norm) before their projections; 1: none.",
    )
    aa: AntiAlias | None = Field(
        default=None,
        description="Overrides `defaults aa` on a strided line (its first block): `avg`, "
        "`blur`, `blurpc`, or `none` for a conv that strides itself.",
    )

    @field_validator("aa")
    @classmethod
    def _anti_alias_downsamples(cls, aa: str | None, info: ValidationInfo) -> str | None:
        if aa not in (None, "none") and info.data.get("stride") == 1:
            raise ValueError(
                f"aa={aa} downsamples a strided block, and this line has stride 1 (give `s2`, "
                "or remove `aa=`)"
            )
        return aa

    @field_validator("heads", "key_dim", "value_dim")
    @classmethod
    def _attention_is_mqa(cls, value: int | None, info: ValidationInfo) -> int | None:
        kind = info.data.get("kind")
        if value is not None and kind not in (None, "mqa"):
            raise ValueError(f"{info.field_name} applies to `mqa` blocks, not `{kind}`")
        if value is None and kind == "mqa" and info.field_name != "value_dim":
            example = "heads=4" if info.field_name == "heads" else "key_dim=64"
            raise ValueError(f"an `mqa` block needs its {info.field_name}, e.g. `{example}`")
        return value

    @field_validator("kv_stride")
    @classmethod
    def _kv_stride_is_mqa(cls, stride: int, info: ValidationInfo) -> int:
        kind = info.data.get("kind")
        if stride != 1 and kind not in (None, "mqa"):
            raise ValueError(f"kv_stride applies to `mqa` blocks, not `{kind}`")
        return stride

    @field_validator("dw_start", "dw_end")
    @classmethod
    def _extra_depthwise_is_uir(cls, kernel: int | None, info: ValidationInfo) -> int | None:
        kind = info.data.get("kind")
        if kernel is not None and kind not in (None, "uir"):
            raise ValueError(f"{info.field_name} applies to `uir` blocks, not `{kind}`")
        if kernel is not None and kernel % 2 == 0:
            raise ValueError(f"kernel must be odd, got {kernel}")
        return kernel

    @model_validator(mode="after")
    def _strided_uir_has_a_depthwise(self) -> Line:
        if (
            self.kind == "uir"
            and self.stride > 1
            and not (self.kernel or self.dw_start or self.dw_end)
        ):
            raise ValueError(
                "a strided `uir` block needs a depthwise conv to stride: give `k` (not k0), "
                "`dw_start=` or `dw_end=`"
            )
        if self.kind == "mqa" and self.stride != 1:
            raise ValueError(
                "an `mqa` block keeps the map size: write it `s1` (downsample its keys and "
                "values with `kv_stride=`)"
            )
        return self


class BlockLine(Line):
    """`block mbconv e3 k3 s1 c24`: a further line of blocks in the stage above it."""

    keyword: ClassVar[str] = "block"


class Stage(Line):
    """`stage mbconv e6 k3 s2 c24 x2`: a stage; the `block` lines after it add to it."""

    keyword: ClassVar[str] = "stage"
    name: str | None = Field(default=None, min_length=1, max_length=200, description="A name.")
    lines: tuple[BlockLine, ...] = Field(
        default=(),
        max_length=MAX_LINES - 1,
        description="Further block lines of the stage (`block` statements), in order.",
    )

    def all_lines(self) -> tuple[Line, ...]:
        """The stage's block lines in order: its own, then its `block` lines."""
        return (self, *self.lines)

    @property
    def total_repeats(self) -> int:
        return sum(line.repeats for line in self.all_lines())


class Classifier(Node):
    """`classifier dropout=0.2 classes=1000`: global pooling, dropout and a linear layer."""

    keyword: ClassVar[str] = "classifier"
    dropout: Rate = Field(default=0.0, description="Dropout before the linear layer.")
    classes: int = Field(default=1000, ge=1, le=MAX_CLASSES, description="Number of classes.")


class Network(Node):
    """A whole spec: `network NAME { ... }`."""

    keyword: ClassVar[str] = "network"
    name: str = Field(min_length=1, max_length=200, description="The network's name.")
    input: Input
    scaling: Scaling = Field(default_factory=Scaling)
    defaults: Defaults = Field(default_factory=Defaults)
    presets: tuple[Preset, ...] = ()
    stem: Stem
    stages: tuple[Stage, ...] = Field(min_length=1)
    head: Head | NoHead = Field(description="The head conv, or `head none`.")
    classifier: Classifier
    closing_comments: SkipJsonSchema[tuple[str, ...]] = Field(default=(), repr=False, exclude=True)

    def preset(self, name: str) -> Preset | None:
        return next((p for p in self.presets if p.name == name), None)
