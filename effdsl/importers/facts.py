"""What an importer reads off a live module tree, before any language decision is made.

A reader (timm, torchvision, effdsl's own modules) walks a model and records *facts*: each
convolution with its norm and activation, each squeeze-and-excitation, each block's layers in
forward order and its residual, grouped into the model's own stages. `effdsl.importers.compose`
then decides how the language says them, or refuses. Keeping the two apart means a reader never
knows what the language can say, and a new language feature changes the composer only.

The helpers here read the torch modules every library shares (`Conv2d`, batch norm,
activations); the readers call them. Torch is only touched through the modules passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from effdsl.errors import ImportRefused
from effdsl.plan import GlobalContextOp

#: Activation modules by class name (any class in the module's MRO), to the language's names.
#: timm's `Swish` and `HardSwish` and effdsl's own in-place subclasses resolve through the MRO.
ACTIVATION_CLASSES = {
    "SiLU": "silu",
    "Swish": "silu",
    "SwishMe": "silu",
    "ReLU": "relu",
    "ReLU6": "relu6",
    "Hardswish": "hardswish",
    "HardSwish": "hardswish",
    "HardSwishMe": "hardswish",
    "GELU": "gelu",
    "Sigmoid": "sigmoid",
    "Hardsigmoid": "hard_sigmoid",
    "HardSigmoid": "hard_sigmoid",
    "HardSigmoidMe": "hard_sigmoid",
    "Identity": "none",
}


@dataclass(frozen=True)
class ConvFact:
    """One convolution and the norm and activation that follow it."""

    path: str  # the conv's module path in the source model
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    groups: int
    padding: str  # "symmetric" (k-1)/2 on every side, or "same" (TensorFlow's SAME)
    bias: bool
    norm: str | None  # batch, group, layer, evonorm, another norm's class name; None: no norm
    bn_eps: float
    bn_momentum: float
    act: str | None  # a language activation name, or None
    # MixConv: the kernel of each channel slice (two or more; `kernel` is the first), the
    # slices cut as `effdsl.plan.split_channels` cuts them; () for an ordinary conv
    kernels: tuple[int, ...] = ()
    experts: int = 0  # CondConv: expert kernels mixed per sample (0: an ordinary conv)
    norm_group_size: int = 0  # channels per group of a group norm or EvoNorm-S0
    # EvoNorm-S0 with its own non-linearity (its `v`), which takes the activation's place
    norm_acts: bool = False
    # anti-aliased downsampling: the conv itself ran at stride 1, and this pool after its norm
    # and activation made `stride` (`avg`, `blur`, `blurpc`); None: the conv strides itself
    aa: str | None = None

    @property
    def depthwise(self) -> bool:
        return self.groups == self.in_channels == self.out_channels and self.groups > 1

    @property
    def slices(self) -> int:
        """The channel slices a MixConv cuts its input into; 1 for an ordinary conv."""
        return len(self.kernels) or 1


@dataclass(frozen=True)
class SEFact:
    """Squeeze-and-excitation: pool, 1×1 conv to `squeeze` with `act`, 1×1 conv back, `gate`;
    `kind` `gc`: global context (GCNet), pooled by attention, its bottleneck layer-normed."""

    path: str
    channels: int
    squeeze: int
    act: str
    gate: str
    kind: str = "se"


@dataclass(frozen=True)
class AttentionFact:
    """Multi-query attention: `heads` queries of `key_dim` over one key and one value, the
    keys and values downsampled first by a depthwise `kv_kernel` conv of `kv_stride` (with
    batch norm) where `kv_stride` > 1; the block's batch norm before it."""

    path: str
    heads: int
    key_dim: int
    value_dim: int
    kv_stride: int
    kv_kernel: int | None  # None: no downsampling conv
    kv_padding: str
    bn_eps: float
    bn_momentum: float


@dataclass(frozen=True)
class BlockFact:
    """One block: `kind` names its structure, `convs` its convolutions in forward order.

    kinds: `conv` (one conv), `ds` (depthwise, SE?, pointwise; with an activation after the
    pointwise conv it is MobileNetV1's separable block), `ir` (1×1 expansion, depthwise, SE?,
    1×1 projection), `er` (k×k expansion, SE?, 1×1 projection), `uir` (MobileNetV4's
    universal inverted bottleneck: depthwise start?, 1×1 expansion, depthwise?, SE?, 1×1
    projection, depthwise end?, layer scale?; `roles` names each conv's part).
    """

    path: str
    kind: str
    convs: tuple[ConvFact, ...]
    se: SEFact | None
    residual: bool
    drop_path: float  # this block's own rate (0: none)
    routing: int = 0  # CondConv: experts weighted by a routing function of the pooled input
    # a one-conv block: True where the library built it as a fused block of expansion 1
    # (torchvision's FusedMBConv), False as a plain conv block, None where it does not say
    fused: bool | None = None
    # `uir`: each conv's part (start, expand, depthwise, project, end), and the layer scale's
    # initial value (0: none)
    roles: tuple[str, ...] = ()
    layer_scale: float = 0.0
    attention: AttentionFact | None = None  # `mqa`: convs are the query and output projections
    # a space-to-depth conv before the block's own convs (EfficientNet-X: 2×2, stride 2, to 4×
    # the channels); `convs` then start at its output
    s2d: ConvFact | None = None

    @property
    def in_channels(self) -> int:
        return self.convs[0].in_channels

    @property
    def out_channels(self) -> int:
        return self.convs[-1].out_channels

    @property
    def stride(self) -> int:
        return max(conv.stride for conv in self.convs)


@dataclass(frozen=True)
class ModelFacts:
    """A whole model as read: stem, the model's own stages of blocks, head, classifier."""

    source: str  # "timm:efficientnet_b0"
    name: str  # the network name to write
    library: str  # "timm 1.0.31"
    resolution: int
    in_channels: int
    stem: ConvFact
    stages: tuple[tuple[BlockFact, ...], ...]
    head: ConvFact | None
    head_style: str  # "conv": conv-BN-act before the pool; "post_pool": a 1×1 conv after it
    dropout: float
    classes: int
    params: int  # the model's parameter count, which the written spec must equal


def parameter_count(model: Any) -> int:
    return sum(int(p.numel()) for p in model.parameters())


# ---- reading torch modules every library shares ---------------------------------------------


class Reader:
    """Reading helpers bound to one model, so every refusal names the model."""

    def __init__(self, source: str) -> None:
        self.source = source

    def refuse(self, path: str, module: Any, feature: str) -> ImportRefused:
        kind = type(module).__name__ if module is not None else "missing"
        where = path or "(model)"
        return ImportRefused(f"{self.source}: {where} ({kind}): {feature}", feature=feature)

    def activation(self, path: str, module: Any) -> str | None:
        """The language name of an activation module; `None` for the identity."""
        for cls in type(module).__mro__:
            name = ACTIVATION_CLASSES.get(cls.__name__)
            if name is not None:
                return None if name == "none" else name
        raise self.refuse(path, module, "activation not in the language")

    def squeeze(
        self,
        path: str,
        module: Any,
        reduce: Any,
        act: Any,
        expand: Any,
        gate: Any,
        *,
        attn: Any = None,
        norm: Any = None,
    ) -> SEFact:
        """`module`'s squeeze-and-excitation (its 1×1 convs `reduce`, `expand`, its `act` and
        `gate`), or global context where it has the 1×1 `attn` conv to one channel and the
        layer `norm` in its bottleneck: both or neither, the norm of GCNet's ε (timm's
        `LayerNorm2d`: 1e-6), every 1×1 conv with a bias."""
        if (attn is None) != (norm is None):
            raise self.refuse(path, module, "global context without attention pooling or norm")
        convs = (reduce, expand) if attn is None else (attn, reduce, expand)
        if any(conv.bias is None or tuple(conv.kernel_size) != (1, 1) for conv in convs):
            raise self.refuse(path, module, "squeeze-and-excitation of other than 1×1 convs")
        if attn is not None:
            if int(attn.out_channels) != 1 or int(attn.in_channels) != int(reduce.in_channels):
                raise self.refuse(path, module, "global context of several attention maps")
            shape = tuple(getattr(norm, "normalized_shape", ()))
            if not type(norm).__name__.startswith("LayerNorm") or shape != (
                int(reduce.out_channels),
            ):
                raise self.refuse(path, module, "global context without a layer norm")
            affine = bool(getattr(norm, "elementwise_affine", False))
            if float(norm.eps) != GlobalContextOp.norm_eps or not affine:
                raise self.refuse(path, module, f"global context's layer norm of ε {norm.eps}")
        gate_name = self.activation(f"{path}.gate", gate)
        if gate_name is None:
            raise self.refuse(path, module, "squeeze-and-excitation without a gate")
        return SEFact(
            path=path,
            channels=int(reduce.in_channels),
            squeeze=int(reduce.out_channels),
            act=self.activation(f"{path}.act", act) or "none",
            gate=gate_name,
            kind="se" if attn is None else "gc",
        )

    def conv(
        self,
        path: str,
        conv: Any,
        norm: Any = None,
        act: Any = None,
        *,
        padding: str | None = None,
    ) -> ConvFact:
        """A `Conv2d` with its norm (batch norm, or timm's norm+act in one) and activation."""
        if type(conv).__name__ not in ("Conv2d", "Conv2dSame", "ConvShape"):
            raise self.refuse(path, conv, _feature_of(conv))
        kernel_h, kernel_w = conv.kernel_size
        stride_h, stride_w = conv.stride
        if kernel_h != kernel_w or stride_h != stride_w:
            raise self.refuse(path, conv, "non-square kernel or stride")
        if tuple(conv.dilation) != (1, 1):
            raise self.refuse(path, conv, "dilated convolution")
        if padding is None:
            padding = self._padding(path, conv)
        norm_name: str | None = None
        eps, momentum = 1e-5, 0.1
        activation: str | None = None
        group_size, norm_acts = 0, False
        if norm is not None and type(norm).__name__ != "Identity":
            norm_name, group_size, norm_acts = self._norm(path, norm, int(conv.out_channels))
            eps = float(getattr(norm, "eps", 1e-5))
            momentum = float(getattr(norm, "momentum", 0.1) or 0.1)
            inner = getattr(norm, "act", None)  # timm's BatchNormAct2d carries its activation
            if inner is not None:
                activation = self.activation(f"{path}.act", inner)
            drop = getattr(norm, "drop", None)
            if drop is not None and type(drop).__name__ != "Identity":
                raise self.refuse(path, drop, "dropout inside the norm layer")
        if act is not None:
            outer = self.activation(f"{path}.act", act)
            if outer is not None:
                if activation is not None:
                    raise self.refuse(path, act, "two activations after one convolution")
                activation = outer
        return ConvFact(
            path=path,
            in_channels=int(conv.in_channels),
            out_channels=int(conv.out_channels),
            kernel=int(kernel_h),
            stride=int(stride_h),
            groups=int(conv.groups),
            padding=padding,
            bias=conv.bias is not None,
            norm=norm_name,
            bn_eps=_short(eps),
            bn_momentum=_short(momentum),
            act=activation,
            norm_group_size=group_size,
            norm_acts=norm_acts,
        )

    def _norm(self, path: str, norm: Any, channels: int) -> tuple[str, int, bool]:
        """The language's name of a norm module, its channels per group (group norm,
        EvoNorm-S0) and whether it applies a non-linearity of its own (EvoNorm-S0's `v`)."""
        classes = {cls.__name__ for cls in type(norm).__mro__}
        if "BatchNorm2d" in classes:
            return "batch", 0, False
        if "GroupNorm" in classes:
            return "group", channels // int(norm.num_groups), False
        if classes & {"EvoNorm2dS0", "EvoNormS0"}:
            return "evonorm", channels // int(norm.groups), norm.v is not None
        if "LayerNorm" in classes:
            if tuple(norm.normalized_shape) != (channels,):
                raise self.refuse(path, norm, "layer norm over more than the channels")
            return "layer", 0, False
        return type(norm).__name__, 0, False

    def downsampled(self, fact: ConvFact, path: str, pool: Any) -> ConvFact:
        """`fact` with the pool `pool` (at `path`) after it, where it has one: a strided conv
        of the language's anti-aliased downsampling. A 2×2 average pool without padding is
        `avg`; a blur pool (timm's `BlurPool2d`, effdsl's `BlurPool`) with its 3×3 binomial
        filter over reflected or zero padding, `blur` or `blurpc`."""
        if pool is None or type(pool).__name__ == "Identity":
            return fact
        kind, stride = self._pool(path, pool, fact.out_channels)
        if fact.stride != 1:
            raise self.refuse(path, pool, "a pool after a strided conv")
        return replace(fact, stride=stride, aa=kind)

    def _pool(self, path: str, pool: Any, channels: int) -> tuple[str, int]:
        name = type(pool).__name__
        if name == "AvgPool2d":
            size, step, padding = (
                _pair(pool.kernel_size), _pair(pool.stride), _pair(pool.padding)
            )
            if size != step or padding != (0, 0) or pool.ceil_mode or size[0] != size[1]:
                raise self.refuse(path, pool, "an average pool other than k×k of stride k")
            return "avg", size[0]
        if name in ("BlurPool2d", "BlurPool"):
            mode = getattr(pool, "pad_mode", getattr(pool, "mode", None))
            stride = int(pool.stride)
            if getattr(pool, "filt_size", 3) != 3 or mode not in ("reflect", "constant"):
                raise self.refuse(path, pool, "a blur pool other than 3×3 binomial")
            if pool.channels != channels:  # timm's DepthwiseSeparableConv sizes it by its output
                raise self.refuse(path, pool, "a blur pool of another width than its input")
            return ("blur" if mode == "reflect" else "blurpc"), stride
        raise self.refuse(path, pool, "anti-aliasing layer not in the language")

    def mixed(
        self,
        path: str,
        slices: list[tuple[Any, str | None]],
        norm: Any = None,
        act: Any = None,
    ) -> ConvFact:
        """MixConv: one conv per channel slice, `slices` as (conv, padding) in channel order,
        the outputs concatenated, then the norm and activation. A single slice is a conv."""
        from effdsl.plan import split_channels

        facts = [
            Reader.conv(self, f"{path}.{g}", conv, padding=padding)
            for g, (conv, padding) in enumerate(slices)
        ]
        if len(facts) == 1:
            return Reader.conv(self, path, slices[0][0], norm, act, padding=slices[0][1])
        in_channels = sum(fact.in_channels for fact in facts)
        out_channels = sum(fact.out_channels for fact in facts)
        cut = (split_channels(in_channels, len(facts)), split_channels(out_channels, len(facts)))
        if cut != (
            tuple(fact.in_channels for fact in facts),
            tuple(fact.out_channels for fact in facts),
        ):
            raise self.refuse(path, None, "a MixConv whose channel slices are not near-equal")
        depthwise = all(fact.depthwise for fact in facts)
        if not depthwise and any(fact.groups != 1 for fact in facts):
            raise self.refuse(path, None, "a MixConv slice that is a grouped convolution")
        if len({(fact.stride, fact.padding, fact.bias) for fact in facts}) > 1:
            raise self.refuse(path, None, "MixConv slices of different strides or paddings")
        whole = Reader.conv(self, path, slices[0][0], norm, act, padding=facts[0].padding)
        return replace(
            whole,
            in_channels=in_channels,
            out_channels=out_channels,
            groups=in_channels if depthwise else 1,
            kernels=tuple(fact.kernel for fact in facts),
        )

    def condconv(self, path: str, conv: Any, norm: Any = None, act: Any = None) -> ConvFact:
        """timm's `CondConv2d`: `num_experts` kernels in one weight, mixed per sample."""
        if conv.bias is not None:
            raise self.refuse(path, conv, "CondConv with a bias")
        if tuple(conv.dilation) != (1, 1):
            raise self.refuse(path, conv, "dilated convolution")
        if conv.dynamic_padding:
            padding = "same"
        else:
            half = (conv.kernel_size[0] - 1) // 2
            if tuple(conv.padding) != (half, half):
                raise self.refuse(path, conv, f"padding {tuple(conv.padding)}")
            padding = "symmetric"
        kernel, stride = conv.kernel_size[0], conv.stride[0]
        if (kernel, stride) != (conv.kernel_size[1], conv.stride[1]):
            raise self.refuse(path, conv, "non-square kernel or stride")
        shape = ConvShape(conv.in_channels, conv.out_channels, kernel, stride, conv.groups)
        return self.experts(path, shape, int(conv.num_experts), padding, norm, act)

    def experts(
        self, path: str, shape: ConvShape, experts: int, padding: str, norm: Any, act: Any
    ) -> ConvFact:
        """A CondConv conv of `experts` kernels of `shape`, with its norm and activation."""
        # `Reader.conv`: a subclass's own `conv` reads its library's whole layer
        fact = Reader.conv(self, path, shape, norm, act, padding=padding)
        return replace(fact, experts=experts)

    def _padding(self, path: str, conv: Any) -> str:
        if type(conv).__name__ == "Conv2dSame":  # timm: SAME padding computed per input size
            return "same"
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise self.refuse(path, conv, f"padding {conv.padding!r} ({conv.padding_mode})")
        half = (conv.kernel_size[0] - 1) // 2
        if tuple(conv.padding) != (half, half):
            raise self.refuse(path, conv, f"padding {tuple(conv.padding)} for a k{half * 2 + 1}")
        return "symmetric"


class ConvShape:
    """A `Conv2d`-like view of a conv module of another class (CondConv's), for `conv`."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int, groups: int
    ) -> None:
        self.kernel_size = (kernel, kernel)
        self.stride = (stride, stride)
        self.dilation = (1, 1)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.groups = groups
        self.bias = None


def _feature_of(module: Any) -> str:
    """The language feature a convolution-like module would need."""
    known = {
        "MixedConv2d": "MixConv (a conv split into channel groups, each its own kernel)",
        "CondConv2d": "CondConv (per-sample expert kernels)",
    }
    return known.get(type(module).__name__, "convolution type not in the language")


def _pair(value: Any) -> tuple[int, int]:
    """A pooling size as (height, width), whether given as one number or a pair."""
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _short(value: float) -> float:
    """A float read back from a module, rounded to 10 significant digits.

    torchvision writes MnasNet's momentum as `1 - 0.9997`, which is 0.00029999999999996696 in
    binary; a person writes 0.0003, and so does the spec.
    """
    return float(f"{value:.10g}")
