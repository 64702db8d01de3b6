"""The lowered plan: a (scaled) `Network` expanded into concrete layers.

`lower(network)` is the single place where stage repeats are expanded and every layer gets its
concrete input/output channels, expanded width, squeeze-and-excitation width, stride, kernel,
padding, spatial sizes, activation, residual flag and drop-path rate. Every backend (PyTorch
build, Python code generation, cost model, renderer, checkpoint conversion) reads the plan and
none re-derives channel arithmetic, so they agree by construction.

Each layer carries its `path`, the dotted name of its module in the built network
(`stages.3.blocks.1.expand`), so state_dict keys, generated code and graph node ids all come
from here. No torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

from effdsl import ast
from effdsl.ast import GROUPED_NORMS
from effdsl.errors import BuildError, EffSemanticError, LimitError
from effdsl.scaling import Multipliers, make_divisible

#: Lowering allocates per block; more than this many is refused (see `effdsl.limits`). Real
#: networks have tens (EfficientNet-L2: 87); at 2,000 every command on any spec stays under a
#: second, where 10,000 blocks took seconds to summarise, draw and generate.
MAX_BLOCKS = 2_000

Pad = tuple[int, int, int, int]  # left, right, top, bottom (the order of torch.nn.functional.pad)


@dataclass(frozen=True)
class ConvOp:
    """Convolution, then its normalisation, then the activation (`act=None`: none).

    The module at `path` has children `conv` and `bn`. With `norm="none"` there is no
    normalisation and the conv has a bias (`bias`).
    """

    path: str
    role: str  # "stem", "s2d", "expand", "depthwise", "project", "conv", "head", ...
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    groups: int
    padding: Pad
    act: str | None
    in_size: int
    out_size: int
    bn_eps: float
    bn_momentum: float
    # CondConv: the weight is a per-sample mixture of this many expert kernels, weighted by
    # the block's `RoutingOp`; 0 is an ordinary conv.
    experts: int = 0
    norm: str = "batch"  # "batch", "group", "layer", "evonorm" or "none"
    # without a norm the conv has a bias unless this says otherwise (FBNetV3's head: `bias=no`)
    unnormalised_bias: bool = True
    # channels per group of a group norm or EvoNorm-S0 (`norm_groups` groups); 0 for the others
    norm_group_size: int = 0

    @property
    def bias(self) -> bool:
        """A conv without a normalisation after it has a bias, which no shift follows."""
        return self.norm == "none" and self.unnormalised_bias

    @property
    def norm_groups(self) -> int:
        """The groups of a group norm or EvoNorm-S0 (0 for the other norms)."""
        return self.out_channels // self.norm_group_size if self.norm_group_size else 0

    @property
    def norm_acts(self) -> bool:
        """Whether the norm applies a non-linearity of its own in place of `act`: EvoNorm-S0
        where the conv has an activation (x·σ(v·x) over the group's deviation, as timm's
        `EvoNorm2dS0` with `apply_act`); where it has none, EvoNorm-S0 is its affine alone."""
        return self.norm == "evonorm" and self.act is not None

    @property
    def act_after_norm(self) -> str | None:
        """The activation that runs after the norm: `act`, unless the norm applies its own."""
        return None if self.norm == "evonorm" else self.act

    @property
    def norm_params(self) -> int:
        """Parameters of the norm: weight and bias per channel (EvoNorm-S0 with its
        non-linearity: and `v`); without a norm, the conv's bias if it has one."""
        if self.norm == "none":
            return self.out_channels if self.bias else 0
        return (3 if self.norm_acts else 2) * self.out_channels

    @property
    def symmetric_padding(self) -> int | None:
        """The padding as one number when it is the same on every side, else None."""
        left, right, top, bottom = self.padding
        return left if left == right == top == bottom else None

    @property
    def depthwise(self) -> bool:
        return self.groups == self.in_channels == self.out_channels and self.groups > 1


class _SameShape:
    """An op whose output has its input's channels and size (`channels`, `size`): SE, layer
    scale, a lone norm, and CondConv's routing, which passes the block's input on unchanged."""

    channels: int
    size: int

    @property
    def in_channels(self) -> int:
        return self.channels

    @property
    def out_channels(self) -> int:
        return self.channels

    @property
    def in_size(self) -> int:
        return self.size

    @property
    def out_size(self) -> int:
        return self.size


@dataclass(frozen=True)
class SqueezeExciteOp(_SameShape):
    """Global average pool, 1×1 conv down to `squeeze` (with `act`), 1×1 conv back, `gate`.

    The module at `path` has children `reduce` and `expand` (1×1 convs with bias), and the
    gate function (`sigmoid` or `hard_sigmoid`) as `gate`.
    """

    path: str
    channels: int
    squeeze: int
    act: str | None
    size: int  # spatial size of the tensor it gates
    gate: str = "sigmoid"  # `sigmoid` or `hard_sigmoid`

    role: str = field(default="se", init=False)


@dataclass(frozen=True)
class GlobalContextOp(SqueezeExciteOp):
    """GCNet's global context (Cao et al., 2019) in SE's place, as timm's `GlobalContext`
    with `fuse_scale`: a 1×1 conv to one channel, softmax over the positions, the
    attention-weighted sum of each channel (in place of its mean), then SE's bottleneck with a
    layer norm (over the `squeeze` channels, ε `norm_eps`) before its activation, and the gate.

    The module at `path` has the 1×1 convs `attn` (to one channel, with bias), `reduce` and
    `expand`, the layer norm `norm` between them, and `gate`.
    """

    norm_eps: float = 1e-6  # timm's LayerNorm2d


def split_channels(channels: int, slices: int) -> tuple[int, ...]:
    """`channels` cut into `slices` near-equal slices, the remainder to the first (MixNet's
    reference and timm's `_split_channels`): 80 into 3 is (28, 26, 26)."""
    share = channels // slices
    return (channels - share * (slices - 1),) + (share,) * (slices - 1)


@dataclass(frozen=True)
class MixedConvOp:
    """MixConv: the channels cut into slices (`split_channels`), slice g convolved by its own
    `kernels[g]`×`kernels[g]` conv (depthwise when `depthwise`), the outputs concatenated, then
    batch norm and the activation. With 1×1 kernels it is a pointwise conv split into groups.

    The module at `path` has children `convs` (one conv per slice, in order), `bn` and `act`.
    """

    path: str
    role: str  # "expand", "depthwise", "project"
    in_channels: int
    out_channels: int
    kernels: tuple[int, ...]
    stride: int
    depthwise: bool
    paddings: tuple[Pad, ...]  # one per slice
    act: str | None
    in_size: int
    out_size: int
    bn_eps: float
    bn_momentum: float

    @property
    def norm(self) -> str:
        """Always batch norm: `lower` refuses `norm=none` on a mixconv block."""
        return "batch"

    @property
    def norm_group_size(self) -> int:
        """Batch norm has no groups."""
        return 0

    @property
    def in_splits(self) -> tuple[int, ...]:
        return split_channels(self.in_channels, len(self.kernels))

    @property
    def out_splits(self) -> tuple[int, ...]:
        return split_channels(self.out_channels, len(self.kernels))

    def slices(self) -> Iterator[tuple[int, int, int, int, Pad]]:
        """(kernel, in, out, groups, padding) of each slice's conv."""
        for kernel, cin, cout, pad in zip(
            self.kernels, self.in_splits, self.out_splits, self.paddings, strict=True
        ):
            yield kernel, cin, cout, (cin if self.depthwise else 1), pad


@dataclass(frozen=True)
class RoutingOp(_SameShape):
    """CondConv's routing function: sigmoid(linear(global average of the block's input)), the
    weights of the `experts` kernels of each of the block's convs, per sample.

    The module at `path` is the linear layer itself (`weight`, `bias`).
    """

    path: str
    channels: int
    experts: int
    size: int  # spatial size of the input it pools

    role: str = field(default="routing", init=False)


@dataclass(frozen=True)
class LayerScaleOp(_SameShape):
    """Layer scale: the tensor times a learnt per-channel factor `gamma`, initialised to `init`
    (MobileNetV4's blocks, before the residual sum).

    The module at `path` holds the parameter `gamma` (`channels` values).
    """

    path: str
    channels: int
    init: float
    size: int

    role: str = field(default="layer_scale", init=False)


@dataclass(frozen=True)
class NormOp(_SameShape):
    """Batch norm on its own, without a conv before it (the pre-norm of an attention block).

    The module at `path` is the `BatchNorm2d` itself.
    """

    path: str
    channels: int
    size: int
    bn_eps: float
    bn_momentum: float

    role: str = field(default="norm", init=False)


@dataclass(frozen=True)
class AttentionOp:
    """Multi-query attention (MobileNetV4): `heads` query heads of width `key_dim` attend over
    one shared key (`key_dim`) and one shared value (`value_dim`); the heads' outputs,
    concatenated, are projected to `out_channels`. Every projection is a 1×1 conv without
    bias. Where `kv_stride` > 1 the keys and the values are each first downsampled by their
    own depthwise conv with batch norm (`key_down`, `value_down`), so the `size`² queries
    attend over `kv_size`² positions.

    The module at `path` has 1×1 convs `query`, `key`, `value`, `output` and the ConvOps'
    modules `key_down`, `value_down` (when there are any).
    """

    path: str
    in_channels: int
    out_channels: int
    heads: int
    key_dim: int
    value_dim: int
    size: int
    key_down: ConvOp | None = None
    value_down: ConvOp | None = None

    role: str = field(default="attention", init=False)

    @property
    def kv_size(self) -> int:
        return self.key_down.out_size if self.key_down is not None else self.size

    @property
    def downs(self) -> tuple[ConvOp, ...]:
        """The keys' and the values' downsampling convs, where there are any."""
        return tuple(op for op in (self.key_down, self.value_down) if op is not None)

    @property
    def in_size(self) -> int:
        return self.size

    @property
    def out_size(self) -> int:
        return self.size


#: The binomial filter of the blur pools: [1, 2, 1] ⊗ [1, 2, 1] / 16 (timm's `BlurPool2d`).
BLUR_KERNEL = 3


@dataclass(frozen=True)
class PoolOp:
    """Anti-aliased downsampling (timm's `aa_layer`): the pool that does a strided block's
    downsampling after its conv, which then runs at stride 1, and that conv's norm and
    activation. `avg`: a `stride`×`stride` average pool without padding (odd sizes round
    down); `blur`, `blurpc`: a depthwise 3×3 convolution by the fixed binomial filter, of
    stride `stride`, over one pixel of padding on each side, reflected (`blur`) or zeros
    (`blurpc`, timm's "pad constant").

    Its path is the strided conv's plus `.aa`: the module is a child of the conv's module, as
    timm's `ConvNormAct.aa`; it has no parameters and no state (the blur's filter is fixed;
    timm keeps it out of the state_dict too).
    """

    path: str
    kind: str  # "avg", "blur" or "blurpc"
    channels: int
    stride: int
    in_size: int

    role: str = field(default="aa", init=False)

    @property
    def in_channels(self) -> int:
        return self.channels

    @property
    def out_channels(self) -> int:
        return self.channels

    @property
    def blur(self) -> bool:
        return self.kind != "avg"

    @property
    def padding_mode(self) -> str:
        """How the blur pads: `reflect` or `constant` (zeros), as `torch.nn.functional.pad`."""
        return "reflect" if self.kind == "blur" else "constant"

    @property
    def out_size(self) -> int:
        if not self.blur:
            return self.in_size // self.stride
        pad = (BLUR_KERNEL - 1) // 2
        return (self.in_size + 2 * pad - BLUR_KERNEL) // self.stride + 1


Op = (
    ConvOp | MixedConvOp | SqueezeExciteOp | RoutingOp | LayerScaleOp | NormOp | AttentionOp
    | PoolOp
)


@dataclass(frozen=True)
class BlockPlan:
    """One block of a stage: its ops in order, and a residual connection when `residual`."""

    path: str  # "stages.3.blocks.1"
    stage: int
    index: int  # within its stage
    number: int  # over the whole network, from 0
    kind: str
    in_channels: int
    out_channels: int
    mid_channels: int  # width after expansion
    kernel: ast.Kernel
    stride: int
    expand: float
    se_channels: int  # 0: no squeeze-and-excitation
    act: str
    residual: bool
    drop_path: float
    in_size: int
    out_size: int
    ops: tuple[Op, ...]

    @property
    def layers(self) -> tuple[Op, ...]:
        """The ops that are modules of the block itself: all but the anti-aliasing pools,
        each a child of the conv before it."""
        return tuple(op for op in self.ops if not isinstance(op, PoolOp))

    @property
    def pools(self) -> dict[str, PoolOp]:
        """The anti-aliasing pools by the path of the conv each follows."""
        return {op.path.rsplit(".", 1)[0]: op for op in self.ops if isinstance(op, PoolOp)}


@dataclass(frozen=True)
class StagePlan:
    index: int
    name: str  # the spec's name, or "stage{index}"
    kind: str
    kernel: ast.Kernel
    stride: int
    expand: float
    se: float
    repeats: int
    out_channels: int
    in_size: int
    out_size: int
    blocks: tuple[BlockPlan, ...]
    lines: int = 1  # block lines in the spec; kind, kernel, stride, expand, se: the first's

    @property
    def path(self) -> str:
        return f"stages.{self.index}"


@dataclass(frozen=True)
class ClassifierPlan:
    """Global average pool, dropout, linear layer (module `classifier`)."""

    in_features: int
    classes: int
    dropout: float
    path: str = "classifier"


@dataclass(frozen=True)
class FeatureInfo:
    """What `features_only` returns for one stage: channels and total stride."""

    stage: int
    name: str
    channels: int
    reduction: int
    size: int


@dataclass(frozen=True)
class Plan:
    """The whole network, concrete."""

    name: str
    resolution: int
    in_channels: int
    padding: str
    stem: ConvOp
    stages: tuple[StagePlan, ...]
    head: ConvOp | None  # None: `head none`, the last stage's output is pooled as it is
    classifier: ClassifierPlan
    scaling: Multipliers
    head_pool: str = "last"  # "first": the global pool runs before the head (on a 1×1 map)

    @property
    def pooled_head(self) -> bool:
        return self.head_pool == "first"

    def blocks(self) -> tuple[BlockPlan, ...]:
        """Every block of every stage, in forward order (a tuple: index it, take its len)."""
        return tuple(block for stage in self.stages for block in stage.blocks)

    def ops(self) -> Iterator[Op]:
        """Every op in forward order: the stem, each block's ops, the head (if any)."""
        yield self.stem
        for block in self.blocks():
            yield from block.ops
        if self.head is not None:
            yield self.head

    @property
    def block_count(self) -> int:
        return sum(len(stage.blocks) for stage in self.stages)

    def feature_info(self) -> tuple[FeatureInfo, ...]:
        return tuple(
            FeatureInfo(
                stage=s.index,
                name=s.name,
                channels=s.out_channels,
                reduction=self.resolution // s.out_size if s.out_size else 0,
                size=s.out_size,
            )
            for s in self.stages
        )


# ---- geometry -------------------------------------------------------------------------------


def conv_geometry(size: int, kernel: int, stride: int, mode: str) -> tuple[Pad, int]:
    """Padding and output size of a k×k, stride-s convolution on a `size`×`size` input.

    `symmetric` pads (k-1)/2 on every side (PyTorch, torchvision). `same` is TensorFlow's SAME:
    the output is ceil(size / stride) and the padding needed for that is split with the extra
    pixel on the right and bottom, which is what TF-trained checkpoints expect.
    """
    if mode == "same":
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + kernel - size, 0)
        before = total // 2
        pad = (before, total - before, before, total - before)
        return pad, out
    half = (kernel - 1) // 2
    out = (size + 2 * half - kernel) // stride + 1
    return (half, half, half, half), out


# ---- lowering -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    act: str
    se: float
    bn_eps: float
    bn_momentum: float
    drop_path: float
    padding: str
    se_from: str
    se_divisor: int | None
    se_act: str | None
    se_gate: str
    se_kind: str
    norm: str
    norm_group_size: int | None
    layer_scale: float
    aa: str  # the stem and the head: always "none"


def _options(block: ast.Block, defaults: ast.Defaults) -> _Options:
    """A block's options: its own overrides (`None`: not given), else the network's defaults.
    Anti-aliasing (`aa`) is a stage line's only: the stem and the head never have it."""
    values = {
        name: own if (own := getattr(block, name, None)) is not None else getattr(defaults, name)
        for name in _Options.__dataclass_fields__
    }
    if not isinstance(block, ast.Line):
        values["aa"] = "none"
    return _Options(**values)


def _act(name: str | None) -> str | None:
    """The plan's activation: `none` is no activation at all."""
    return None if name == "none" else name


def _squeeze_op(
    path: str, channels: int, squeeze: int, size: int, options: _Options
) -> SqueezeExciteOp:
    """The block's squeeze-and-excitation (`se_kind=se`) or global context (`gc`) on a tensor of
    `channels` channels, with the block's `se_act` (else its `act`) and `se_gate`."""
    act = _act(options.se_act if options.se_act is not None else options.act)
    kind = GlobalContextOp if options.se_kind == "gc" else SqueezeExciteOp
    return kind(path, channels, squeeze, act, size, options.se_gate)


def _conv(
    path: str,
    role: str,
    in_channels: int,
    out_channels: int,
    kernel: int,
    stride: int,
    size: int,
    options: _Options,
    *,
    groups: int = 1,
    act: bool = True,
) -> ConvOp:
    padding, out_size = conv_geometry(size, kernel, stride, options.padding)
    return ConvOp(
        path=path,
        role=role,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel=kernel,
        stride=stride,
        groups=groups,
        padding=padding,
        act=_act(options.act) if act else None,
        in_size=size,
        out_size=out_size,
        bn_eps=options.bn_eps,
        bn_momentum=options.bn_momentum,
        norm=options.norm,
        norm_group_size=(options.norm_group_size or 0) if options.norm in GROUPED_NORMS else 0,
    )


def expanded_channels(in_channels: int, expand: float, mid: int | None = None) -> int:
    """Width after expansion: `mid` where the spec gives it, else `in · e` rounded to a multiple
    of 8 as timm's and torchvision's inverted residuals round it (`make_divisible`: 24 · 2.3 is
    56, not 55). A ratio of 1 keeps the width as it is."""
    if mid is not None:
        return mid
    if expand == 1.0:
        return in_channels
    return make_divisible(in_channels * expand)


def squeeze_channels(
    in_channels: int,
    se: float,
    *,
    mid_channels: int | None = None,
    source: str = "input",
    divisor: int | None = None,
    round_limit: float = 0.9,
) -> int:
    """SE width: `se` of the block's *input* channels (the TF reference, torchvision's
    EfficientNet) or of its *expanded* ones (MobileNetV3), rounded down, or to a multiple of
    `divisor` where the spec asks (MobileNetV3: `make_divisible(mid / 4, 8)`), never below
    `round_limit` of it: the network's scaling rule, as timm rounds both with one function
    (FBNetV3: 0.95)."""
    if se <= 0:
        return 0
    expanded = mid_channels if mid_channels is not None else in_channels
    width = (expanded if source == "expanded" else in_channels) * se
    if divisor is not None:
        return make_divisible(width, divisor, round_limit)
    return max(1, int(width))


@dataclass(frozen=True)
class _Layout:
    """How a block's convs are cut up: the depthwise kernels (several: MixConv, one slice
    each), the 1×1 convs' slices, and CondConv's experts (0: none)."""

    kernels: tuple[int, ...]
    expand_groups: int = 1
    project_groups: int = 1
    experts: int = 0
    groups: int | None = None  # of the k×k conv; None: depthwise (mbconv, separable) or dense

    @classmethod
    def of(cls, block: ast.Block, groups: int | None = None) -> _Layout:
        return cls(
            block.kernels, block.expand_groups, block.project_groups, block.experts or 0, groups
        )


def _mixed(
    path: str,
    role: str,
    in_channels: int,
    out_channels: int,
    kernels: tuple[int, ...],
    stride: int,
    size: int,
    options: _Options,
    *,
    depthwise: bool = False,
    act: bool = True,
) -> ConvOp | MixedConvOp:
    """A conv over channel slices, one kernel each; a single slice is an ordinary conv."""
    if len(kernels) == 1:
        groups = in_channels if depthwise else 1
        return _conv(
            path, role, in_channels, out_channels, kernels[0], stride, size, options,
            groups=groups, act=act,
        )
    geometry = [conv_geometry(size, kernel, stride, options.padding) for kernel in kernels]
    return MixedConvOp(
        path=path,
        role=role,
        in_channels=in_channels,
        out_channels=out_channels,
        kernels=kernels,
        stride=stride,
        depthwise=depthwise,
        paddings=tuple(pad for pad, _ in geometry),
        act=_act(options.act) if act else None,
        in_size=size,
        out_size=geometry[0][1],  # the same for every odd kernel
        bn_eps=options.bn_eps,
        bn_momentum=options.bn_momentum,
    )


def _with_experts(op: ConvOp | MixedConvOp, experts: int) -> ConvOp | MixedConvOp:
    """`op` as a CondConv conv of `experts` kernels (0: unchanged)."""
    if not experts:
        return op
    if not isinstance(op, ConvOp):  # pragma: no cover - the AST gives only mixconv slices
        raise EffSemanticError(f"{op.path}: a conv over channel slices cannot have experts")
    return replace(op, experts=experts)


def _strided(
    make: Callable[[int], ConvOp | MixedConvOp], stride: int, options: _Options
) -> list[Op]:
    """A block's strided conv, made by `make(stride)`: where the block is anti-aliased
    (`options.aa`) and strides, the conv at stride 1 and the `PoolOp` that downsamples after
    it; else the conv alone. The caller carries on from the last op's `out_size`."""
    if stride == 1 or options.aa == "none":
        return [make(stride)]
    conv = make(1)
    return [conv, PoolOp(f"{conv.path}.aa", options.aa, conv.out_channels, stride, conv.out_size)]


def _block_ops(
    path: str,
    kind: str,
    in_channels: int,
    out_channels: int,
    mid: int,
    se_channels: int,
    layout: _Layout,
    stride: int,
    size: int,
    options: _Options,
    full: bool = False,
) -> tuple[Op, ...]:
    ops: list[Op] = []
    kernel = layout.kernels[0]
    experts = layout.experts
    if kind == "separable":  # depthwise, SE, pointwise with its activation (MobileNetV1)
        ops += _strided(
            lambda s: _conv(
                f"{path}.depthwise", "depthwise", in_channels, in_channels, kernel, s, size,
                options, groups=layout.groups or in_channels,
            ),
            stride,
            options,
        )
        size = ops[-1].out_size
        if se_channels:
            ops.append(_squeeze_op(f"{path}.se", in_channels, se_channels, size, options))
        ops.append(
            _conv(f"{path}.pointwise", "pointwise", in_channels, out_channels, 1, 1, size, options)
        )
        return tuple(ops)
    if kind == "conv":
        return tuple(
            _strided(
                lambda s: _conv(
                    f"{path}.conv", "conv", in_channels, out_channels, kernel, s, size, options,
                    groups=layout.groups or 1,
                ),
                stride,
                options,
            )
        )
    if experts:
        ops.append(RoutingOp(f"{path}.routing", in_channels, experts, size))
    if kind in ("mbconv", "mixconv", "condconv"):
        width = in_channels
        if mid != in_channels or full:
            expand = _mixed(
                f"{path}.expand", "expand", in_channels, mid, (1,) * layout.expand_groups, 1,
                size, options,
            )
            ops.append(_with_experts(expand, experts))
            width = mid
        def spatial(stride: int) -> ConvOp | MixedConvOp:
            if layout.groups is None:
                conv = _mixed(
                    f"{path}.depthwise", "depthwise", width, width, layout.kernels, stride, size,
                    options, depthwise=True,
                )
            else:  # a grouped rather than depthwise k×k conv (timm's `gs`)
                conv = _conv(
                    f"{path}.depthwise", "depthwise", width, width, kernel, stride, size,
                    options, groups=layout.groups,
                )
            return _with_experts(conv, experts)

        ops += _strided(spatial, stride, options)
        size = ops[-1].out_size
    else:  # fused_mbconv
        if mid == in_channels and not full:  # ratio 1: one k×k conv-BN-act does it all
            return tuple(
                _strided(
                    lambda s: _conv(
                        f"{path}.conv", "conv", in_channels, out_channels, kernel, s, size,
                        options, groups=layout.groups or 1,
                    ),
                    stride,
                    options,
                )
            )
        ops += _strided(
            lambda s: _conv(
                f"{path}.expand", "expand", in_channels, mid, kernel, s, size, options,
                groups=layout.groups or 1,
            ),
            stride,
            options,
        )
        size = ops[-1].out_size
    if se_channels:
        ops.append(_squeeze_op(f"{path}.se", mid, se_channels, size, options))
    project = _mixed(
        f"{path}.project", "project", mid, out_channels, (1,) * layout.project_groups, 1, size,
        options, act=False,
    )
    ops.append(_with_experts(project, experts))
    return tuple(ops)


def _uir_ops(
    path: str,
    line: ast.Line,
    in_channels: int,
    out_channels: int,
    mid: int,
    se_channels: int,
    stride: int,
    size: int,
    options: _Options,
    group_size: int | None,
) -> tuple[Op, ...]:
    """MobileNetV4's universal inverted bottleneck: a depthwise conv before the expansion
    (`dw_start`, no activation), the 1×1 expansion, the middle depthwise conv (`k`; k0: none),
    squeeze-and-excitation, the 1×1 projection, a depthwise conv after it (`dw_end`, no
    activation), then layer scale. The first depthwise conv there is takes the stride, in the
    order middle, start, end (timm's `UniversalInvertedResidual`). With `group_size` each of
    the three spatial convs is grouped at that many channels per group, as timm's."""

    def groups(width: int, what: str) -> int:
        return width if group_size is None else _groups_of(line, group_size, width, what)

    kernel = line.kernel if isinstance(line.kernel, int) else line.kernel[0]
    start_stride = stride if not kernel else 1
    end_stride = stride if not (kernel or line.dw_start) else 1
    ops: list[Op] = []
    if line.dw_start:
        ops += _strided(
            lambda s: _conv(
                f"{path}.start", "start", in_channels, in_channels, line.dw_start or 0, s,
                size, options, groups=groups(in_channels, "input width"), act=False,
            ),
            start_stride,
            options,
        )
        size = ops[-1].out_size
    ops.append(_conv(f"{path}.expand", "expand", in_channels, mid, 1, 1, size, options))
    if kernel:
        ops += _strided(
            lambda s: _conv(
                f"{path}.depthwise", "depthwise", mid, mid, kernel, s, size, options,
                groups=groups(mid, "expanded width"),
            ),
            stride,
            options,
        )
        size = ops[-1].out_size
    if se_channels:
        ops.append(_squeeze_op(f"{path}.se", mid, se_channels, size, options))
    ops.append(
        _conv(f"{path}.project", "project", mid, out_channels, 1, 1, size, options, act=False)
    )
    if line.dw_end:
        ops += _strided(
            lambda s: _conv(
                f"{path}.end", "end", out_channels, out_channels, line.dw_end or 0, s, size,
                options, groups=groups(out_channels, "output width"), act=False,
            ),
            end_stride,
            options,
        )
        size = ops[-1].out_size
    if options.layer_scale:
        ops.append(LayerScaleOp(f"{path}.layer_scale", out_channels, options.layer_scale, size))
    return tuple(ops)


def _mqa_ops(
    path: str, line: ast.Line, in_channels: int, out_channels: int, size: int, options: _Options
) -> tuple[Op, ...]:
    """MobileNetV4's multi-query attention block: batch norm, the attention, layer scale."""
    assert line.heads is not None and line.key_dim is not None  # the AST requires them
    kernel = line.kernel if isinstance(line.kernel, int) else line.kernel[0]
    downs = [
        _conv(
            f"{path}.attn.{name}_down", f"{name}_down", in_channels, in_channels, kernel,
            line.kv_stride, size, options, groups=in_channels, act=False,
        )
        if line.kv_stride > 1
        else None
        for name in ("key", "value")
    ]
    ops: list[Op] = [
        NormOp(f"{path}.norm", in_channels, size, options.bn_eps, options.bn_momentum),
        AttentionOp(
            f"{path}.attn",
            in_channels,
            out_channels,
            line.heads,
            line.key_dim,
            line.value_dim if line.value_dim is not None else line.key_dim,
            size,
            *downs,
        ),
    ]
    if options.layer_scale:
        ops.append(LayerScaleOp(f"{path}.layer_scale", out_channels, options.layer_scale, size))
    return tuple(ops)


def check_blocks(network: ast.Network, max_blocks: int = MAX_BLOCKS) -> int:
    """The number of blocks of `network`; more than `max_blocks` is a `LimitError`."""
    if isinstance(max_blocks, bool) or not isinstance(max_blocks, int | float):
        raise LimitError(f"max_blocks must be a number, not {type(max_blocks).__name__}")
    total = sum(stage.total_repeats for stage in network.stages)
    if not total <= max_blocks:  # `not <=`: a NaN limit refuses rather than lets all through
        raise LimitError(
            f"network `{network.name}` has {total:,} blocks, more than the limit of {max_blocks:,}",
            hint="lower the repeats or the depth multiplier",
        )
    return total


def _check_slices(line: ast.Line, ops: tuple[Op, ...]) -> None:
    """Refuse a MixConv whose channels are too few for its slices: one would be empty."""
    for op in ops:
        if isinstance(op, MixedConvOp) and min(op.in_splits + op.out_splits) < 1:
            width = min(op.in_channels, op.out_channels)
            attribute = "kernel" if op.role == "depthwise" else f"{op.role}_groups"
            raise EffSemanticError(
                f"{op.path} cuts {width} channels into {len(op.kernels)} slices, so one is "
                "empty",
                line.span_of(attribute),
                hint="use fewer kernels or groups, or more channels",
            )


def _group_size(line: ast.Line, defaults: ast.Defaults) -> int | None:
    """The channels per group of the block's spatial convs: the line's, else the default."""
    return line.group_size if line.group_size is not None else defaults.group_size


def _groups_of(line: ast.Line, size: int, width: int, what: str) -> int:
    """The groups `width` channels make at `size` channels each, refused where they do not
    divide (timm's `num_groups` asserts the same)."""
    if width % size:
        inherited = "" if line.group_size is not None else " (from `defaults`)"
        raise EffSemanticError(
            f"group_size={size}{inherited} does not divide the {what} of this "
            f"`{line.kind}` block, {width} channels",
            line.span_of("group_size"),
            hint="choose a group size that divides it, or widths that are multiples of it "
            "(the scaling divisor)",
        )
    return width // size


def _check_pools(line: ast.Line, ops: tuple[Op, ...]) -> None:
    """Refuse an anti-aliasing pool on a 1-pixel map: a 2×2 average pool leaves nothing of
    it, and a reflect-padded blur has nothing to reflect (PyTorch refuses both)."""
    for op in ops:
        if isinstance(op, PoolOp) and op.in_size < 2 and op.kind in ("avg", "blur"):
            raise EffSemanticError(
                f"{op.path}: aa={op.kind} needs maps of at least 2×2 pixels, and this block "
                f"downsamples {op.in_size}×{op.in_size} ones",
                line.span_of("aa"),
                hint="use a larger input, or aa=blurpc (zero padding) on this line",
            )


def _spatial_groups(
    line: ast.Line, defaults: ast.Defaults, in_channels: int, mid: int
) -> int | None:
    """The groups of the block's k×k conv where `group_size` is given (the line's, else the
    default), as timm counts them: the expanded width (mbconv, fused_mbconv) or the input
    width (conv, separable) over the group size. None: the kind's own (depthwise or dense)."""
    if line.kind in ("mixconv", "condconv"):
        return None  # the default does not reach them: their convs are cut otherwise
    size = _group_size(line, defaults)
    if size is None:
        return None
    inherited = "" if line.group_size is not None else " (from `defaults`)"
    width = mid if line.kind in ("mbconv", "fused_mbconv") else in_channels
    what = "expanded width" if line.kind in ("mbconv", "fused_mbconv") else "input width"
    groups = _groups_of(line, size, width, what)
    # the conv's other side must split into as many groups (a dense conv's output, a fused
    # conv's input)
    other = line.channels if line.kind == "conv" else in_channels
    if line.kind in ("conv", "fused_mbconv") and other % groups:
        side = "output" if line.kind == "conv" else "input"
        raise EffSemanticError(
            f"group_size={size}{inherited} makes {groups} groups, which do not divide the "
            f"{side} width of this `{line.kind}` block, {other} channels",
            line.span_of("group_size"),
            hint="choose a group size for which both widths split into whole groups",
        )
    # a fused block of ratio 1 is that one k×k conv, straight to the block's output
    single = line.kind == "fused_mbconv" and mid == in_channels and not line.full
    if single and line.channels % groups:
        raise EffSemanticError(
            f"group_size={size}{inherited} makes {groups} groups, which do not divide the "
            f"output width of this `fused_mbconv` block, {line.channels} channels",
            line.span_of("group_size"),
            hint="choose a group size for which both widths split into whole groups",
        )
    return groups


def _check_norms(statement: ast.Block, ops: tuple[Op, ...]) -> None:
    """Refuse a group norm or EvoNorm-S0 without a group size, or whose group size does not
    divide a conv's channels."""
    for op in ops:
        if not isinstance(op, ConvOp) or op.norm not in GROUPED_NORMS:
            continue
        if not op.norm_group_size:
            raise EffSemanticError(
                f"`norm={op.norm}` needs the channels per group: `norm_group_size=`",
                statement.span_of("norm"),
                hint="add e.g. `norm_group_size=8` (timm's GroupNorm and EvoNorm models use 8 "
                "or 16) here or on `defaults`",
            )
        if op.out_channels % op.norm_group_size:
            raise EffSemanticError(
                f"{op.path} has {op.out_channels} channels, not a multiple of "
                f"norm_group_size={op.norm_group_size}",
                statement.span_of("norm_group_size"),
                hint="choose a norm group size that divides every width, or widths that are "
                "multiples of it (the scaling divisor)",
            )


def _space_to_depth(path: str, channels: int, size: int, options: _Options) -> ConvOp:
    """The space-to-depth conv a block starts with (EfficientNet-X, timm's `conv_s2d`): 2×2,
    stride 2, to 4× the channels, with the block's norm and activation. TF's SAME padding
    whatever the network's: nothing on an even map, a pixel right and bottom on an odd one."""
    return _conv(
        f"{path}.s2d", "s2d", channels, 4 * channels, 2, 2, size,
        replace(options, padding="same"),
    )


def _line_of(node: ast.Node) -> str:
    return str(node.span.line) if node.span is not None else "?"


def lower(
    network: ast.Network, scaling: Multipliers | None = None, *, max_blocks: int = MAX_BLOCKS
) -> Plan:
    """Expand `network` (already scaled, if wanted) into a `Plan` of concrete layers.

    `scaling` only records how the network was scaled, for summaries and drawings. A network of
    more than `max_blocks` blocks is refused with `LimitError` before anything is allocated.
    """
    if not isinstance(network, ast.Network):
        raise BuildError(f"lower() takes a Network, not {type(network).__name__}")
    if scaling is not None and not isinstance(scaling, Multipliers):
        raise BuildError(f"scaling must be Multipliers or None, not {type(scaling).__name__}")
    total = check_blocks(network, max_blocks)
    defaults = network.defaults
    size = network.input.size
    stem_options = _options(network.stem, defaults)
    stem = _conv(
        "stem",
        "stem",
        network.input.channels,
        network.stem.channels,
        network.stem.kernels[0],
        network.stem.stride,
        size,
        stem_options,
    )
    _check_norms(network.stem, (stem,))
    size, channels = stem.out_size, stem.out_channels
    number = 0
    stages = []
    region: ast.Line | None = None  # the line whose space-to-depth region is open
    for s, stage in enumerate(network.stages):
        first_options = _options(stage, defaults)
        stage_in_size = size
        blocks: list[BlockPlan] = []
        for line in stage.all_lines():
            options = _options(line, defaults)
            if line.kind in ("mixconv", "condconv", "mqa") and options.norm != "batch":
                raise EffSemanticError(
                    f"a `{line.kind}` block is always batch-normalised, not `norm={options.norm}`",
                    line.span_of("norm"),
                    hint=f"set `norm=batch` on this {line.keyword} line",
                )
            if line.se_kind is not None and not options.se and line.kind not in ("conv", "mqa"):
                raise EffSemanticError(
                    f"`se_kind={line.se_kind}` on a {line.keyword} line without "
                    "squeeze-and-excitation (`se` is 0)",
                    line.span_of("se_kind"),
                    hint="give the line `se=0.25` (its ratio), or remove `se_kind=...`",
                )
            for r in range(line.repeats):
                b = len(blocks)
                path = f"stages.{s}.blocks.{b}"
                stride = line.stride if r == 0 else 1
                starts = line.s2d and r == 0
                if starts and region is not None:
                    raise EffSemanticError(
                        "space-to-depth inside a space-to-depth region",
                        line.span_of("s2d"),
                        hint=f"the region that starts at line {_line_of(region)} ends at the "
                        "next stride-2 block; start another after it",
                    )
                # the stride-2 block after a space-to-depth conv ends its region: the conv did
                # its downsampling already, and its ratio is of the 4× wider input
                ends = region is not None and stride == 2
                expand, se_ratio = line.expand, options.se
                block_options, layout = options, _Layout.of(line)
                in_channels, in_size = channels, size
                prefix: tuple[Op, ...] = ()
                if starts:
                    s2d = _space_to_depth(path, channels, size, options)
                    prefix, region = (s2d,), line
                    channels, size = s2d.out_channels, s2d.out_size
                    half = (layout.kernels[0] + 1) // 2
                    layout = replace(layout, kernels=(half,))
                    if half % 2 == 0:  # an even kernel keeps the size only with TF's SAME
                        block_options = replace(options, padding="same")
                    # its 2×2 conv downsamples: no anti-aliasing pool (timm turns it off too)
                    block_options = replace(block_options, aa="none")
                    se_ratio = options.se / 4  # of the block's input before the conv
                elif ends:
                    stride, expand, region = 1, line.expand / 4, None
                # in the region a block's output is 4× the channels the spec says
                out_channels = line.channels * 4 if region is not None else line.channels
                full = line.full or (ends and line.expand != 1.0)
                if line.kind in ("conv", "mqa"):
                    mid, se_channels = channels, 0
                elif line.kind == "separable":
                    mid = channels
                    se_channels = squeeze_channels(
                        channels,
                        se_ratio,
                        source=options.se_from,
                        divisor=options.se_divisor,
                        round_limit=network.scaling.round_limit,
                    )
                elif line.kind == "uir":  # the expansion conv is always there, rounded as timm's
                    mid = line.mid if line.mid is not None else make_divisible(channels * expand)
                    se_channels = squeeze_channels(
                        channels,
                        se_ratio,
                        mid_channels=mid,
                        source=options.se_from,
                        divisor=options.se_divisor,
                    )
                else:
                    mid = expanded_channels(channels, expand, line.mid)
                    se_channels = squeeze_channels(
                        channels,
                        se_ratio,
                        mid_channels=mid,
                        source=options.se_from,
                        divisor=options.se_divisor,
                        round_limit=network.scaling.round_limit,
                    )
                if line.kind == "uir":
                    ops = _uir_ops(
                        path, line, channels, out_channels, mid, se_channels, stride, size,
                        options, _group_size(line, defaults),
                    )
                elif line.kind == "mqa":
                    ops = _mqa_ops(path, line, channels, out_channels, size, options)
                else:
                    groups = _spatial_groups(line, defaults, channels, mid)
                    ops = _block_ops(
                        path,
                        line.kind,
                        channels,
                        out_channels,
                        mid,
                        se_channels,
                        replace(layout, groups=groups),
                        stride,
                        size,
                        block_options,
                        full,
                    )
                ops = prefix + ops
                _check_slices(line, ops)
                _check_pools(line, ops)
                _check_norms(line, ops)
                # a separable block has no residual connection (MobileNetV1, timm's `dsa`), nor
                # one that starts with space-to-depth (its output is half the size)
                residual = (
                    line.kind != "separable"
                    and line.skip
                    and not starts
                    and stride == 1
                    and in_channels == out_channels
                )
                out_size = ops[-1].out_size
                blocks.append(
                    BlockPlan(
                        path=path,
                        stage=s,
                        index=b,
                        number=number,
                        kind=line.kind,
                        in_channels=in_channels,
                        out_channels=out_channels,
                        mid_channels=mid,
                        kernel=line.kernel,
                        stride=stride,
                        expand=mid / channels if line.mid is not None else expand,
                        se_channels=se_channels,
                        act=options.act,
                        # block i of N drops its branch with probability rate·i/N (N after
                        # depth scaling: torchvision's convention, see tensorflow/tpu#381)
                        drop_path=options.drop_path * number / total if residual else 0.0,
                        residual=residual,
                        in_size=in_size,
                        out_size=out_size,
                        ops=ops,
                    )
                )
                number += 1
                size, channels = out_size, out_channels
        stages.append(
            StagePlan(
                index=s,
                name=stage.name or f"stage{s}",
                kind=stage.kind,
                kernel=stage.kernel,
                stride=blocks[0].stride,  # the written one, unless space-to-depth took it
                expand=blocks[0].expand,
                se=first_options.se if stage.kind not in ("conv", "mqa") else 0.0,
                repeats=len(blocks),
                out_channels=channels,
                in_size=stage_in_size,
                out_size=size,
                blocks=tuple(blocks),
                lines=len(stage.all_lines()),
            )
        )
    head: ConvOp | None = None  # `head none`: the last stage goes to the pool itself
    head_pool = "last"
    if isinstance(network.head, ast.Head):
        head_pool = network.head.pool
        head = _conv(
            "head",
            "head",
            channels,
            network.head.channels,
            network.head.kernels[0],
            network.head.stride,
            1 if head_pool == "first" else size,  # after the pool, the map is 1×1
            _options(network.head, defaults),
        )
        head = replace(head, unnormalised_bias=network.head.bias)
        _check_norms(network.head, (head,))
    classifier = ClassifierPlan(
        in_features=head.out_channels if head is not None else channels,
        classes=network.classifier.classes,
        dropout=network.classifier.dropout,
    )
    return Plan(
        name=network.name,
        resolution=network.input.size,
        in_channels=network.input.channels,
        padding=defaults.padding,
        stem=stem,
        stages=tuple(stages),
        head=head,
        classifier=classifier,
        scaling=scaling or Multipliers(),
        head_pool=head_pool,
    )
