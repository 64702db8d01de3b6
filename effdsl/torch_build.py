"""The PyTorch backend: a `Plan` becomes an `nn.Module` whose module paths are the plan's paths.

    model = build(network)                       # lower, then one module per op of the plan
    model = build(network, features_only=True)   # stem and stages only; forward → feature maps
    fast = optimize_for_inference(model)         # eval copy, batch norm folded, channels_last

The module tree is a contract shared with the code generator and the checkpoint converter:
each `ConvOp` at path `P` is a module with children `conv`, `bn` (whichever norm the op has:
batch, group, layer, EvoNorm-S0, or the identity), `act` (a CondConv one has
its experts' kernels as `weight`, then `bn`, `act`); each `MixedConvOp` has `convs.{g}` (one
per channel slice), `bn`, `act`; a conv followed by a `PoolOp` (anti-aliased downsampling) has
that pool as its child `aa`; each `SqueezeExciteOp` has 1×1 convs `reduce` and `expand`;
a `GlobalContextOp` has as well the 1×1 conv `attn` and the layer norm `norm`; a
`RoutingOp` is a linear layer (`weight`, `bias`); blocks live at `stages.{i}.blocks.{j}`
with their ops named by the last component of the op's path; then `head`, `dropout`,
`classifier`. So `stages.3.blocks.1.expand.conv.weight` is a state_dict key.

Everything is built from the plan (`effdsl.plan.lower`); nothing here recomputes a channel
count, a stride or a padding. This module imports torch; `import effdsl` does not import it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from effdsl import ast
from effdsl.arguments import checked
from effdsl.errors import BuildError
from effdsl.limits import Limits, check_plan
from effdsl.plan import (
    BLUR_KERNEL,
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
    lower,
)
from effdsl.scaling import Multipliers

# ---- layers ---------------------------------------------------------------------------------


def overwritable(x: Tensor) -> bool:
    """Whether an op may write its result over `x`: no gradient flows through it.

    Under autograd, PyTorch saves what an in-place op overwrites by cloning it first when the
    backward pass needs the input (SiLU, Hardswish), which costs a copy and saves no memory;
    and an in-place op on a tensor another node saved fails in backward. Without autograd
    (`torch.no_grad`, `torch.inference_mode`, frozen parameters) writing in place spares an
    allocation and a pass over memory. Only tensors a layer made itself are ever overwritten.
    """
    return not x.requires_grad


class SiLU(nn.SiLU):
    """SiLU, in place when no gradient flows through it (see `overwritable`)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(x, inplace=overwritable(x))


class Hardswish(nn.Hardswish):
    """Hardswish, in place when no gradient flows through it (see `overwritable`)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.hardswish(x, inplace=overwritable(x))


# ReLU's backward reads its output, so it runs in place under autograd too, without a copy.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "silu": SiLU,
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": lambda: nn.ReLU6(inplace=True),
    "hardswish": Hardswish,
    "gelu": nn.GELU,
    # max(0, min(1, x/6 + 1/2)): torchvision's and timm's `hard_sigmoid` (timm's own fallback,
    # relu6(x + 3) / 6, is the same function)
    "hard_sigmoid": nn.Hardsigmoid,
}

#: The gate functions of squeeze-and-excitation.
GATES: dict[str, Callable[[], nn.Module]] = {"sigmoid": nn.Sigmoid, "hard_sigmoid": nn.Hardsigmoid}


def activation(name: str | None) -> nn.Module:
    """The activation module of `name`; `None` is the identity."""
    if name is None:
        return nn.Identity()
    make = ACTIVATIONS.get(name)
    if make is None:
        raise BuildError(
            f"the PyTorch backend has no activation `{name}`",
            hint=f"use one of {', '.join(ACTIVATIONS)}",
        )
    return make()


class ConvBNAct(nn.Module):
    """Convolution, normalisation, activation: a `ConvOp` with symmetric padding.

    The conv has no bias (the norm's shift does a bias's job) unless the op has no
    normalisation (`norm="none"`), and then `bn` is the identity. `bn` holds whichever norm the
    op has (batch, group, layer, EvoNorm-S0); where EvoNorm-S0 applies its own non-linearity,
    `act` is the identity.
    """

    def __init__(self, op: ConvOp, padding: int, aa: PoolOp | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            op.in_channels,
            op.out_channels,
            op.kernel,
            op.stride,
            padding,
            groups=op.groups,
            bias=op.bias,
        )
        self.bn = norm_layer(op)
        self.act = activation(op.act_after_norm)
        self.aa = downsampling(aa)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.act(self.bn(self.conv(x)))
        if self.aa is not None:
            out = self.aa(out)  # N, C_out, H/s, W/s (anti-aliased: the conv kept H, W)
        return out


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of an N, C, H, W tensor (timm's
    `LayerNorm2d`): the channels moved last, normalised, moved back."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)  # N, H, W, C
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # N, C, H, W


class EvoNormS0(nn.Module):
    """EvoNorm-S0 (Liu et al., 2020) as timm's `EvoNorm2dS0`: x·σ(v·x) divided by the standard
    deviation of x over its group of channels and the pixels, then a per-channel affine
    (`weight`, `bias`). Without its non-linearity (`act=False`, after a linear projection) it
    is the affine alone and has no `v`, as in timm."""

    def __init__(self, channels: int, groups: int, eps: float, act: bool) -> None:
        super().__init__()
        self.groups = groups
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.v = nn.Parameter(torch.ones(channels)) if act else None

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1, 1, 1)
        if self.v is not None:
            x = x * torch.sigmoid(x * self.v.view(shape)) / self.group_std(x)
        return x * self.weight.view(shape) + self.bias.view(shape)

    def group_std(self, x: Tensor) -> Tensor:
        """√(var + ε) over each group's channels and pixels, per sample: N, C, H, W."""
        batch, channels, height, width = x.shape
        grouped = x.reshape(batch, self.groups, channels // self.groups, height, width)
        # half precision has too few bits for a variance: at least float32, as timm does
        if grouped.dtype not in (torch.float32, torch.float64):
            grouped = grouped.float()
        var = grouped.var(dim=(2, 3, 4), unbiased=False, keepdim=True)
        std = var.add(self.eps).sqrt().to(x.dtype)
        return std.expand(grouped.shape).reshape(batch, channels, height, width)


def norm_layer(op: ConvOp) -> nn.Module:
    """The normalisation after `op`'s conv."""
    channels, eps = op.out_channels, op.bn_eps
    if op.norm == "none":
        return nn.Identity()
    if op.norm == "batch":
        return nn.BatchNorm2d(channels, eps=eps, momentum=op.bn_momentum)
    if op.norm == "group":
        return nn.GroupNorm(op.norm_groups, channels, eps=eps)
    if op.norm == "layer":
        return LayerNorm2d(channels, eps=eps)
    if op.norm == "evonorm":
        return EvoNormS0(channels, op.norm_groups, eps, op.norm_acts)
    raise BuildError(f"the PyTorch backend has no normalisation `{op.norm}`")


class PaddedConvBNAct(ConvBNAct):
    """A `ConvOp` with TensorFlow's SAME padding, whose extra pixel (right, bottom) a conv's own
    symmetric `padding=` cannot express, so a parameter-free pad runs first."""

    def __init__(self, op: ConvOp, aa: PoolOp | None = None) -> None:
        super().__init__(op, padding=0, aa=aa)
        self.pad = nn.ZeroPad2d(op.padding)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.act(self.bn(self.conv(self.pad(x))))
        if self.aa is not None:
            out = self.aa(out)  # N, C_out, H/s, W/s
        return out


def conv_bn_act(op: ConvOp, aa: PoolOp | None = None) -> ConvBNAct:
    """The module of `op`, and of the pool that downsamples after it where it has one."""
    symmetric = op.symmetric_padding
    return PaddedConvBNAct(op, aa) if symmetric is None else ConvBNAct(op, symmetric, aa)


class BlurPool(nn.Module):
    """Blur, then subsample (Zhang, 2019; timm's `BlurPool2d`): each channel convolved by the
    fixed binomial filter [1, 2, 1] ⊗ [1, 2, 1] / 16 at the op's stride, over one pixel of
    padding, reflected (`blur`) or zeros (`blurpc`). The filter is made where it is used, in
    the input's dtype and on its device, not kept as a buffer: a model built on the meta
    device and given a checkpoint (`load_state_dict(assign=True)`) has no buffer to fill."""

    def __init__(self, op: PoolOp) -> None:
        super().__init__()
        self.channels, self.stride = op.channels, op.stride
        self.padding = [(BLUR_KERNEL - 1) // 2] * 4
        self.mode = op.padding_mode

    def forward(self, x: Tensor) -> Tensor:
        taps = torch.tensor([0.25, 0.5, 0.25], dtype=x.dtype, device=x.device)  # [1, 2, 1] / 4
        kernel = (taps[:, None] * taps[None, :]).expand(self.channels, 1, 3, 3)  # C, 1, 3, 3
        x = F.pad(x, self.padding, mode=self.mode)  # N, C, H + 2, W + 2
        return F.conv2d(x, kernel, stride=self.stride, groups=self.channels)  # N, C, H/s, W/s


def downsampling(op: PoolOp | None) -> nn.Module | None:
    """The pool of an anti-aliased conv: a blur pool, or a stride×stride average pool."""
    if op is None:
        return None
    if op.blur:
        return BlurPool(op)
    return nn.AvgPool2d(op.stride, op.stride)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: gate each channel by a function of the global average.

    `reduce` and `expand` are 1×1 convs, so checkpoints keep torchvision's and timm's shapes.
    """

    def __init__(self, op: SqueezeExciteOp) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(op.channels, op.squeeze, 1)
        self.act = activation(op.act)
        self.expand = nn.Conv2d(op.squeeze, op.channels, 1)
        if op.gate not in GATES:
            raise BuildError(f"the PyTorch backend has no gate `{op.gate}`")
        self.gate = GATES[op.gate]()

    def forward(self, x: Tensor) -> Tensor:
        scale = x.mean((2, 3), keepdim=True)  # N, C, 1, 1
        scale = self.act(self.reduce(scale))  # N, squeeze, 1, 1
        scale = self.expand(scale)  # N, C, 1, 1
        out: Tensor = x * self.gate(scale)  # N, C, H, W
        return out


class GlobalContext(nn.Module):
    """GCNet's global context in SE's place: each channel's attention-weighted sum over the
    positions (one softmax map shared by the channels, from the 1×1 conv `attn`), through
    `reduce`, a layer norm, the activation and `expand`, gates the channels."""

    def __init__(self, op: GlobalContextOp) -> None:
        super().__init__()
        self.attn = nn.Conv2d(op.channels, 1, 1)
        self.reduce = nn.Conv2d(op.channels, op.squeeze, 1)
        self.norm = LayerNorm2d(op.squeeze, eps=op.norm_eps)
        self.act = activation(op.act)
        self.expand = nn.Conv2d(op.squeeze, op.channels, 1)
        if op.gate not in GATES:
            raise BuildError(f"the PyTorch backend has no gate `{op.gate}`")
        self.gate = GATES[op.gate]()

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        attn = self.attn(x).reshape(n, 1, h * w, 1).softmax(dim=2)  # N, 1, HW, 1
        context = (x.reshape(n, 1, c, h * w) @ attn).reshape(n, c, 1, 1)  # N, C, 1, 1
        scale = self.act(self.norm(self.reduce(context)))  # N, squeeze, 1, 1
        scale = self.expand(scale)  # N, C, 1, 1
        out: Tensor = x * self.gate(scale)  # N, C, H, W
        return out


class MixedConvBNAct(nn.Module):
    """MixConv: the channels cut into slices, each convolved by its own conv (`convs`), the
    outputs concatenated, then batch norm and the activation: a `MixedConvOp`."""

    def __init__(self, op: MixedConvOp, aa: PoolOp | None = None) -> None:
        super().__init__()
        convs: list[nn.Module] = []
        pads: list[nn.Module] = []
        for kernel, cin, cout, groups, padding in op.slices():
            left, right, top, bottom = padding
            symmetric = left == right == top == bottom
            # TF's SAME padding puts the odd pixel right and bottom, which Conv2d cannot
            pads.append(nn.Identity() if symmetric else nn.ZeroPad2d(padding))
            convs.append(
                nn.Conv2d(
                    cin, cout, kernel, op.stride, left if symmetric else 0, groups=groups,
                    bias=False,
                )
            )
        self.pads = nn.ModuleList(pads)
        self.convs = nn.ModuleList(convs)
        self.splits = list(op.in_splits)
        # a module, not a BatchNorm2d: optimize_for_inference folds it into the convs
        self.bn: nn.Module = nn.BatchNorm2d(
            op.out_channels, eps=op.bn_eps, momentum=op.bn_momentum
        )
        self.act = activation(op.act)
        self.aa = downsampling(aa)

    def mixed(self, x: Tensor) -> Tensor:
        """The slices' convolutions, concatenated: N, C_out, H/s, W/s."""
        slices = torch.split(x, self.splits, 1)
        outs: list[Tensor] = []
        for index, (pad, conv) in enumerate(zip(self.pads, self.convs, strict=True)):
            outs.append(conv(pad(slices[index])))
        return torch.cat(outs, 1)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.act(self.bn(self.mixed(x)))
        if self.aa is not None:
            out = self.aa(out)  # N, C_out, H/s, W/s
        return out


class Routing(nn.Linear):
    """CondConv's routing function: the weights of each expert kernel, per sample, from the
    global average of the block's input (a `RoutingOp`)."""

    def __init__(self, op: RoutingOp) -> None:
        super().__init__(op.channels, op.experts)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(F.linear(x.mean((2, 3)), self.weight, self.bias))  # N, experts


class CondConvBNAct(nn.Module):
    """CondConv: a conv whose kernel is, per sample, the routing-weighted sum of `experts`
    kernels (the rows of `weight`), then batch norm and the activation (a `ConvOp` with
    `experts`). The samples of a batch run as one grouped convolution."""

    def __init__(self, op: ConvOp, aa: PoolOp | None = None) -> None:
        super().__init__()
        self.shape = (op.out_channels, op.in_channels // op.groups, op.kernel, op.kernel)
        self.weight = nn.Parameter(torch.empty(op.experts, math.prod(self.shape)))
        self.bias: nn.Parameter | None = None  # optimize_for_inference folds the bn into one
        self.stride = op.stride
        left, right, top, bottom = op.padding
        symmetric = left == right == top == bottom
        self.padding = left if symmetric else 0
        # TF's SAME padding puts the odd pixel right and bottom, which conv2d cannot
        self.pad: nn.Module = nn.Identity() if symmetric else nn.ZeroPad2d(op.padding)
        self.groups = op.groups
        # a module, not a BatchNorm2d: optimize_for_inference folds it into the convs
        self.bn: nn.Module = nn.BatchNorm2d(
            op.out_channels, eps=op.bn_eps, momentum=op.bn_momentum
        )
        self.act = activation(op.act)
        self.aa = downsampling(aa)

    def routed(self, x: Tensor, routing: Tensor) -> Tensor:
        """Each sample convolved by its own mixture of the experts: N, C_out, H/s, W/s."""
        batch, channels, height, width = x.shape
        weight = torch.matmul(routing, self.weight)  # N, C_out·C_in/g·k·k
        out_channels, in_channels, kernel, _ = self.shape
        weight = weight.reshape(batch * out_channels, in_channels, kernel, kernel)
        bias = None if self.bias is None else self.bias.repeat(batch)
        x = self.pad(x)
        height, width = x.shape[2], x.shape[3]
        out = F.conv2d(
            x.reshape(1, batch * channels, height, width),
            weight,
            bias,
            self.stride,
            self.padding,
            groups=self.groups * batch,
        )
        return out.reshape(batch, out_channels, out.shape[-2], out.shape[-1])

    def forward(self, x: Tensor, routing: Tensor) -> Tensor:
        out: Tensor = self.act(self.bn(self.routed(x, routing)))
        if self.aa is not None:
            out = self.aa(out)  # N, C_out, H/s, W/s
        return out


class LayerScale(nn.Module):
    """Layer scale: each channel times a learnt factor `gamma` (a `LayerScaleOp`)."""

    def __init__(self, op: LayerScaleOp) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((op.channels,), op.init))
        self.init = op.init

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma.view(1, -1, 1, 1)  # N, C, H, W


class MultiQueryAttention(nn.Module):
    """Multi-query attention over a feature map (an `AttentionOp`): `heads` queries per
    position attend over one shared key and value, computed (after `key_down`, `value_down`:
    stride-s depthwise convs with batch norm, where there are any) at every key position.

    The heads' outputs are concatenated head by head (channel h·value_dim + i), as timm's
    `MultiQueryAttention2d` lays them out, then projected by `output`.
    """

    def __init__(self, op: AttentionOp) -> None:
        super().__init__()
        self.heads, self.key_dim, self.value_dim = op.heads, op.key_dim, op.value_dim
        # assigned in forward order, so state_dict keys come out so
        self.query = nn.Conv2d(op.in_channels, op.heads * op.key_dim, 1, bias=False)
        self.key_down = conv_bn_act(op.key_down) if op.key_down is not None else None
        self.key = nn.Conv2d(op.in_channels, op.key_dim, 1, bias=False)
        self.value_down = conv_bn_act(op.value_down) if op.value_down is not None else None
        self.value = nn.Conv2d(op.in_channels, op.value_dim, 1, bias=False)
        self.output = nn.Conv2d(op.heads * op.value_dim, op.out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        batch, _, height, width = x.shape
        q = self.query(x).reshape(batch, self.heads, self.key_dim, height * width)
        q = q.transpose(-1, -2)  # N, heads, H·W, key_dim
        k = x if self.key_down is None else self.key_down(x)
        k = self.key(k).flatten(2).transpose(1, 2).unsqueeze(1)  # N, 1, h·w, key_dim
        v = x if self.value_down is None else self.value_down(x)
        v = self.value(v).flatten(2).transpose(1, 2).unsqueeze(1)  # N, 1, h·w, value_dim
        # explicit products rather than scaled_dot_product_attention, whose CPU kernels
        # FlopCounterMode counts for some shapes and not others
        weights = (q * self.key_dim**-0.5) @ k.transpose(-1, -2)  # N, heads, H·W, h·w
        out = weights.softmax(dim=-1) @ v  # N, heads, H·W, value_dim
        out = out.transpose(1, 2).reshape(batch, height, width, self.heads * self.value_dim)
        result: Tensor = self.output(out.permute(0, 3, 1, 2))  # N, C_out, H, W
        return result


def layer(op: Op, aa: PoolOp | None = None) -> nn.Module:
    """The module of `op`; `aa`: the pool that downsamples after it (a conv's only)."""
    if isinstance(op, ConvOp):
        return CondConvBNAct(op, aa) if op.experts else conv_bn_act(op, aa)
    if isinstance(op, MixedConvOp):
        return MixedConvBNAct(op, aa)
    if aa is not None or isinstance(op, PoolOp):
        raise BuildError(f"`{(aa or op).path}` downsamples after a conv, not after `{op.path}`")
    if isinstance(op, RoutingOp):
        return Routing(op)
    if isinstance(op, LayerScaleOp):
        return LayerScale(op)
    if isinstance(op, NormOp):
        return nn.BatchNorm2d(op.channels, eps=op.bn_eps, momentum=op.bn_momentum)
    if isinstance(op, AttentionOp):
        return MultiQueryAttention(op)
    if isinstance(op, GlobalContextOp):
        return GlobalContext(op)
    return SqueezeExcite(op)


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth in "row" mode: drop the residual branch of whole samples.

    Each sample's branch is kept with probability 1-rate and then scaled by 1/(1-rate), so its
    expectation is unchanged and evaluation needs no rescaling. The mask is drawn on the
    tensor's device, with no host synchronisation.
    """
    if not training or rate == 0.0:
        return x
    keep = 1.0 - rate
    mask = x.new_empty([x.shape[0]] + [1] * (x.dim() - 1)).bernoulli_(keep)  # N, 1, 1, 1
    return x * mask.div_(keep)


# ---- blocks, stages, networks ---------------------------------------------------------------

# The order in which a block runs its ops; every block kind's ops are a subsequence of it
# (mbconv: expand?, depthwise, se?, project; fused: expand, se?, project; conv: conv;
# separable: depthwise, se?, pointwise; uir: start?, expand, depthwise?, se?, project, end?,
# layer_scale?; mqa: norm, attn, layer_scale?; a condconv block starts with its routing; a
# block may start with a space-to-depth conv, `s2d`).
OP_ORDER = (
    "s2d", "routing", "conv", "start", "expand", "depthwise", "se", "pointwise", "project", "end",
    "norm", "attn", "layer_scale",
)


def _block_layers(block: BlockPlan) -> dict[str, nn.Module]:
    """The block's layers by the last component of their path, checked against `OP_ORDER`.
    A `PoolOp` is built into the module of the conv before it, whose child `aa` it is."""
    pools, ops = block.pools, block.layers
    names = [op.path.rsplit(".", 1)[-1] for op in ops]
    known = [name for name in OP_ORDER if name in names]
    if names != known or not pools.keys() <= {op.path for op in ops}:
        raise BuildError(
            f"block `{block.path}` has ops {', '.join(names)}; the PyTorch backend builds a "
            f"subsequence of {', '.join(OP_ORDER)}, each at most once, and a pool only after "
            "a conv"
        )
    return {name: layer(op, pools.get(op.path)) for name, op in zip(names, ops, strict=True)}


class Block(nn.Module):
    """One block of a stage: its ops in plan order, then the residual connection if any.

    Absent ops are `None` attributes, not modules: TorchScript and torch.compile resolve the
    `is not None` tests when they compile, and eager mode pays one comparison each.
    """

    def __init__(self, block: BlockPlan) -> None:
        super().__init__()
        if not 0.0 <= block.drop_path < 1.0:
            raise BuildError(f"block `{block.path}` has drop_path {block.drop_path}, not in [0, 1)")
        layers = _block_layers(block)
        # assigned in OP_ORDER, so state_dict keys come out in forward order
        self.s2d = layers.get("s2d")
        self.routing = layers.get("routing")
        self.conv = layers.get("conv")
        self.start = layers.get("start")
        self.expand = layers.get("expand")
        self.depthwise = layers.get("depthwise")
        self.se = layers.get("se")
        self.pointwise = layers.get("pointwise")
        self.project = layers.get("project")
        self.end = layers.get("end")
        self.norm = layers.get("norm")
        self.attn = layers.get("attn")
        self.layer_scale = layers.get("layer_scale")
        self.residual = block.residual
        self.drop_rate = block.drop_path

    def forward(self, x: Tensor) -> Tensor:
        out = x
        if self.s2d is not None:
            out = self.s2d(out)  # N, 4·C_in, H/2, W/2 (space-to-depth)
        if self.conv is not None:
            out = self.conv(out)  # N, C_out, H/s, W/s
        if self.start is not None:
            out = self.start(out)  # N, C_in, H/s, W/s (uir: depthwise before the expansion)
        if self.expand is not None:
            out = self.expand(out)  # N, C_mid, H (fused: H/s), W
        if self.depthwise is not None:
            out = self.depthwise(out)  # N, C_mid, H/s, W/s
        if self.se is not None:
            out = self.se(out)  # N, C_mid, H/s, W/s
        if self.pointwise is not None:
            out = self.pointwise(out)  # N, C_out, H/s, W/s (separable: with its activation)
        if self.project is not None:
            out = self.project(out)  # N, C_out, H/s, W/s
        if self.end is not None:
            out = self.end(out)  # N, C_out, H/s, W/s (uir: depthwise after the projection)
        if self.norm is not None:
            out = self.norm(out)  # N, C_in, H, W (mqa: the pre-norm)
        if self.attn is not None:
            out = self.attn(out)  # N, C_out, H, W
        if self.layer_scale is not None:
            out = self.layer_scale(out)  # N, C_out, H/s, W/s
        return self._residual(out, x)

    def _residual(self, out: Tensor, x: Tensor) -> Tensor:
        if self.residual:
            out = drop_path(out, self.drop_rate, self.training)
            # `out` is this block's own tensor; nothing reads it once the sum is taken
            out = out.add_(x) if overwritable(out) else out + x
        return out


class RoutedBlock(Block):
    """A block that starts with a routing op (CondConv): its convs each mix their expert
    kernels by the weights the routing computes from the block's input."""

    def forward(self, x: Tensor) -> Tensor:
        assert self.routing is not None
        assert self.depthwise is not None and self.project is not None
        routing = self.routing(x)  # N, experts
        out = x
        if self.expand is not None:
            out = self.expand(out, routing)  # N, C_mid, H, W
        out = self.depthwise(out, routing)  # N, C_mid, H/s, W/s
        if self.se is not None:
            out = self.se(out)  # N, C_mid, H/s, W/s
        out = self.project(out, routing)  # N, C_out, H/s, W/s
        return self._residual(out, x)


def block_module(block: BlockPlan) -> Block:
    routed = any(isinstance(op, RoutingOp) for op in block.ops)
    return RoutedBlock(block) if routed else Block(block)


class Stage(nn.Module):
    """The blocks of one stage, in order."""

    def __init__(self, stage: StagePlan) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(block_module(block) for block in stage.blocks)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class EfficientNet(nn.Module):
    """Stem, stages, head, global average pool, dropout, linear classifier.

    With a pooled head (`plan.pooled_head`, MobileNetV3) the pool comes before the head, which
    then acts on a 1×1 map. `plan` is the plan it was built from; `feature_info` describes
    every stage's output.
    """

    def __init__(self, plan: Plan) -> None:
        super().__init__()
        self.stem = conv_bn_act(plan.stem)
        self.stages = nn.ModuleList(Stage(stage) for stage in plan.stages)
        # `head none` (MobileNetV1): the last stage's output is pooled as it is
        self.head = conv_bn_act(plan.head) if plan.head is not None else nn.Identity()
        self.dropout = nn.Dropout(plan.classifier.dropout, inplace=True)
        self.classifier = nn.Linear(plan.classifier.in_features, plan.classifier.classes)
        self.plan = plan
        self.feature_info = plan.feature_info()
        self.pooled_head = plan.pooled_head

    def forward_features(self, x: Tensor) -> Tensor:
        """The feature map before the global pool: after the head, or (pooled head) before."""
        x = self.stem(x)  # N, C_stem, H/2, W/2
        for stage in self.stages:
            x = stage(x)
        if not self.pooled_head:
            x = self.head(x)  # N, C_head, H/32, W/32
        return x

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_features(x)
        if self.pooled_head:
            x = self.head(x.mean((2, 3), keepdim=True))  # N, C_head, 1, 1
        x = x.mean((2, 3))  # N, C_head
        logits: Tensor = self.classifier(self.dropout(x))  # N, classes
        return logits


class FeatureExtractor(nn.Module):
    """Stem and stages up to the last one wanted; forward returns the wanted stages' outputs.

    `feature_info` describes them (stage, channels, reduction) in the order they are returned.
    """

    def __init__(self, plan: Plan, out_indices: Sequence[int]) -> None:
        super().__init__()
        self.stem = conv_bn_act(plan.stem)
        self.stages = nn.ModuleList(Stage(stage) for stage in plan.stages[: max(out_indices) + 1])
        self.out_indices = list(out_indices)
        self.plan = plan
        self.feature_info = tuple(plan.feature_info()[i] for i in out_indices)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        features: list[Tensor] = []
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index in self.out_indices:
                features.append(x)  # N, C_i, H/r_i, W/r_i
        return features


# ---- build ----------------------------------------------------------------------------------

#: What `build` refuses by default: `Limits()`, frozen, so one instance serves every call.
DEFAULT_LIMITS = Limits()


def build(
    network: ast.Network | Plan,
    *,
    in_channels: int | None = None,
    num_classes: int | None = None,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    scaling: Multipliers | None = None,
    limits: Limits | None = DEFAULT_LIMITS,
) -> nn.Module:
    """The PyTorch module of `network` (a scaled `Network`, or a `Plan`), freshly initialised.

    `in_channels` and `num_classes` override the spec's input channels and classes.
    `features_only=True` builds a `FeatureExtractor` returning the outputs of the stages in
    `out_indices` (default: all). `scaling` records how `network` was scaled, in `model.plan`.
    Before any module is made, the plan's parameters, MACs and activation memory are checked
    against `limits` (`effdsl.limits.check_plan`; `None` checks nothing), which raises
    `LimitError`. To build without allocating memory, use `with torch.device("meta"): ...`.
    """
    plan = _plan(network, scaling)
    plan = _with_overrides(plan, in_channels, num_classes)
    if limits is not None:
        if not isinstance(limits, Limits):
            raise BuildError(f"limits must be an effdsl.limits.Limits or None, not {limits!r}")
        check_plan(plan, limits)
    model: nn.Module
    if features_only:
        if num_classes is not None:
            raise BuildError(
                "num_classes has no effect with features_only=True: there is no classifier"
            )
        model = FeatureExtractor(plan, _out_indices(plan, out_indices))
    else:
        if out_indices is not None:
            raise BuildError("out_indices only applies with features_only=True")
        model = EfficientNet(plan)
    initialise(model)
    return model


def _plan(network: object, scaling: Multipliers | None) -> Plan:
    if isinstance(network, Plan):
        if scaling is not None:
            raise BuildError("scaling= applies to a Network; a Plan already records its scaling")
        return network
    if isinstance(network, ast.Network):
        return lower(network, scaling)
    raise BuildError(
        f"build() takes an effdsl Network or Plan, not {type(network).__name__}",
        hint="parse a spec with effdsl.load(path) or effdsl.parse(text)",
    )


def _check_count(name: str, value: object, upper: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= upper:
        raise BuildError(f"{name} must be an integer in [1, {upper}], got {value!r}")
    return value


def _with_overrides(plan: Plan, in_channels: int | None, num_classes: int | None) -> Plan:
    """The plan with the stem's input channels and the classifier's classes replaced."""
    if in_channels is not None:
        channels = _check_count("in_channels", in_channels, ast.MAX_CHANNELS)
        plan = replace(plan, in_channels=channels, stem=replace(plan.stem, in_channels=channels))
    if num_classes is not None:
        classes = _check_count("num_classes", num_classes, ast.MAX_CLASSES)
        plan = replace(plan, classifier=replace(plan.classifier, classes=classes))
    return plan


def _out_indices(plan: Plan, out_indices: Sequence[int] | None) -> tuple[int, ...]:
    """Stage indices in increasing order; negative ones count from the end, as in Python."""
    count = len(plan.stages)
    if out_indices is None:
        return tuple(range(count))
    if isinstance(out_indices, (str, bytes)) or not isinstance(out_indices, Sequence):
        raise BuildError(f"out_indices must be a sequence of stage indices, got {out_indices!r}")
    chosen: set[int] = set()
    for index in out_indices:
        if isinstance(index, bool) or not isinstance(index, int) or not -count <= index < count:
            raise BuildError(
                f"out_indices: {index!r} is not a stage of `{plan.name}`: valid indices are "
                f"0 to {count - 1} (or -{count} to -1)",
                hint=f"it has {count} stages; negative indices count from the last",
            )
        if index % count in chosen:
            raise BuildError(f"out_indices names stage {index % count} twice")
        chosen.add(index % count)
    if not chosen:
        raise BuildError("out_indices is empty; name at least one stage")
    return tuple(sorted(chosen))


def initialise(model: nn.Module) -> None:
    """torchvision's EfficientNet initialisation.

    Convs (and each CondConv expert): He normal with fan-out (their outputs keep unit variance
    through the ReLU-like activations); biases zero; batch norm the identity; the classifier
    uniform in ±1/√classes, as the TF reference does.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, CondConvBNAct):
            for index in range(module.weight.shape[0]):  # each expert as a kernel of its own
                nn.init.kaiming_normal_(module.weight[index].view(module.shape), mode="fan_out")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            bound = 1.0 / math.sqrt(module.out_features)
            nn.init.uniform_(module.weight, -bound, bound)
            nn.init.zeros_(module.bias)
        elif isinstance(module, LayerScale):
            nn.init.constant_(module.gamma, module.init)


# ---- inference ------------------------------------------------------------------------------


class ConvAct(nn.Module):
    """A `ConvBNAct` whose batch norm is folded into the conv's weight and bias: pad?, conv,
    act?, aa? (the parameter-free pad of TF's SAME padding, the activation and the
    anti-aliasing pool, when there are any)."""

    def __init__(self, layer: ConvBNAct) -> None:
        super().__init__()
        self.pad = layer.pad if isinstance(layer, PaddedConvBNAct) else None
        self.conv = layer.conv
        self.act = None if isinstance(layer.act, nn.Identity) else layer.act
        self.aa = layer.aa

    def forward(self, x: Tensor) -> Tensor:
        if self.pad is not None:
            x = self.pad(x)
        x = self.conv(x)  # N, C_out, H/s, W/s
        if self.act is not None:
            x = self.act(x)
        if self.aa is not None:
            x = self.aa(x)  # N, C_out, H/s, W/s (anti-aliased: the conv kept H, W)
        return x


class PooledSqueezeExcite(nn.Module):
    """A `SqueezeExcite` for inference: its 1×1 convs act on a 1×1 map, so they run as matrix
    products on the pooled vector, which skip the set-up a convolution pays on every call (on
    a CPU, most of their time). The rounding differs from the convs' in the last bits."""

    def __init__(self, layer: SqueezeExcite) -> None:
        super().__init__()
        self.reduce = layer.reduce
        self.act = layer.act
        self.expand = layer.expand
        self.gate = layer.gate

    def forward(self, x: Tensor) -> Tensor:
        scale = x.mean((2, 3))  # N, C
        scale = F.linear(scale, self.reduce.weight.flatten(1), self.reduce.bias)  # N, squeeze
        scale = F.linear(self.act(scale), self.expand.weight.flatten(1), self.expand.bias)
        out: Tensor = x * self.gate(scale)[:, :, None, None]  # N, C, H, W
        return out


@checked
def optimize_for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode copy of an effdsl-built `model` for inference: every batch norm folded into
    its conv (`ConvAct`; a MixConv's into its slices, a CondConv's into its experts; group,
    layer and EvoNorm-S0 norms are kept, as they depend on their input),
    squeeze-and-excitation on the pooled vector (`PooledSqueezeExcite`),
    channels_last memory format. Outputs match the original's in eval mode (fp32: ~1e-6).

    The module paths and the parameters' names stay those of `build`, less the batch norms.
    """
    if not isinstance(model, nn.Module):
        raise BuildError(
            f"optimize_for_inference() takes a torch.nn.Module, not {type(model).__name__}"
        )
    fused = copy.deepcopy(model).eval()
    found = 0
    for parent in list(fused.modules()):
        for name, child in list(parent.named_children()):
            # only a batch norm is a fixed affine map at inference; group, layer and EvoNorm
            # depend on the tensor they normalise and stay as they are
            if isinstance(child, ConvBNAct) and isinstance(child.bn, nn.BatchNorm2d):
                _fold_batch_norm(child.conv, child.bn)
                setattr(parent, name, ConvAct(child))
                found += 1
            elif isinstance(child, MixedConvBNAct | CondConvBNAct) and isinstance(
                child.bn, nn.BatchNorm2d
            ):
                _fold_sliced_batch_norm(child)
                found += 1
            elif isinstance(child, ConvBNAct) and not isinstance(child.bn, nn.Identity | _Folded):
                found += 1  # a norm that cannot be folded
            elif isinstance(child, SqueezeExcite):
                setattr(parent, name, PooledSqueezeExcite(child))
    if not found:
        raise BuildError(
            "found no convolution followed by batch norm to fold",
            hint="pass a model made by effdsl.build() that was not optimised already",
        )
    return fused.to(memory_format=torch.channels_last)


class _Folded(nn.Module):
    """A no-op standing in for a batch norm folded into the weights before it."""

    def forward(self, x: Tensor) -> Tensor:
        return x


@torch.no_grad()
def _fold_sliced_batch_norm(layer: MixedConvBNAct | CondConvBNAct) -> None:
    """Fold `layer.bn` into its convs: a MixConv's slices each take their channels' share; a
    CondConv's experts each take all of it (the mixture is linear in the kernels, the shift
    is the same for every sample)."""
    bn = layer.bn
    if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None or bn.running_var is None:
        raise BuildError("cannot fold a batch norm that keeps no running statistics")
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.double() - bn.running_mean.double() * scale
    if isinstance(layer, CondConvBNAct):
        experts = layer.weight.double().reshape(layer.weight.shape[0], layer.shape[0], -1)
        folded = (experts * scale.reshape(1, -1, 1)).reshape(layer.weight.shape)
        layer.weight = nn.Parameter(folded.to(layer.weight.dtype))
        layer.bias = nn.Parameter(shift.to(layer.weight.dtype))
    else:
        start = 0
        for conv in layer.convs:
            assert isinstance(conv, nn.Conv2d)
            end = start + conv.out_channels
            part = scale[start:end].reshape(-1, 1, 1, 1)
            dtype = conv.weight.dtype
            conv.weight = nn.Parameter((conv.weight.double() * part).to(dtype))
            conv.bias = nn.Parameter(shift[start:end].to(dtype))
            start = end
    layer.bn = _Folded()


@torch.no_grad()
def _fold_batch_norm(conv: nn.Conv2d, bn: nn.Module) -> None:
    """conv → bn becomes one conv: w·γ/σ and β - μ·γ/σ (σ = √(var + ε)), computed in float64."""
    if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None or bn.running_var is None:
        raise BuildError("cannot fold a batch norm that keeps no running statistics")
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    weight = conv.weight.double() * scale.reshape(-1, 1, 1, 1)
    bias = bn.bias.double() - bn.running_mean.double() * scale
    if conv.bias is not None:
        bias = bias + conv.bias.double() * scale
    dtype = conv.weight.dtype
    conv.weight = nn.Parameter(weight.to(dtype))
    conv.bias = nn.Parameter(bias.to(dtype))
