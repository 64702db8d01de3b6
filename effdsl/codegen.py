"""Plan → standalone PyTorch source: the `.py` file that `effdsl compile -o model.py` writes.

`to_python(plan)` returns the text of one module that needs only `torch`: a docstring saying
what the network is (name, scaling, parameters, MACs), one class per kind of layer the plan
uses (`ConvBNAct`, `SqueezeExcite`, `MBConv`, `FusedMBConv`, `ConvBlock`, `Stage`), and a model
class whose `__init__` lists every block with literal numbers read from the plan and whose
`forward` reads like nanoGPT's, one operation per line with the tensor shape beside it::

    x = self.stem(x)       # (N, 32, 112, 112)
    x = self.stages[0](x)  # (N, 16, 112, 112)

The module tree is the one `effdsl.build` makes, so both have the same state_dict keys and
shapes. Generation never imports torch, and the same plan always gives the same bytes.

Names in a spec may hold any text (quotes, newlines, `\"\"\"`, backslashes); they reach the
output only through `repr()` in string literals and comments, or escaped in the docstring, so
the file always parses and defines only the names listed in `top_level_names`.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Iterable
from dataclasses import dataclass

from effdsl.arguments import checked
from effdsl.ast import UNEXPANDED, kernel_text
from effdsl.cost import cost
from effdsl.errors import BuildError
from effdsl.plan import (
    AttentionOp,
    BlockPlan,
    ConvOp,
    GlobalContextOp,
    LayerScaleOp,
    MixedConvOp,
    NormOp,
    Plan,
    PoolOp,
    SqueezeExciteOp,
    StagePlan,
)
from effdsl.scaling import Multipliers
from effdsl.version import __version__

#: The torch module of each activation the language names.
ACTIVATION_MODULES = {
    "silu": "nn.SiLU",
    "relu": "nn.ReLU",
    "relu6": "nn.ReLU6",
    "hardswish": "nn.Hardswish",
    "gelu": "nn.GELU",
    "hard_sigmoid": "nn.Hardsigmoid",
}

#: The torch module of each squeeze-and-excitation gate.
GATE_MODULES = {"sigmoid": "nn.Sigmoid", "hard_sigmoid": "nn.Hardsigmoid"}

#: The norms beyond batch norm and none, in the order `norm_layer` tests them.
OTHER_NORMS = ("group", "layer", "evonorm")

#: The generated block class of each (block kind, roles of its ops) the plan can produce.
BLOCK_CLASSES = {
    ("conv", ("conv",)): "ConvBlock",
    ("fused_mbconv", ("conv",)): "ConvBlock",  # expansion 1: a single k×k conv
    ("fused_mbconv", ("expand", "se", "project")): "FusedMBConv",
    ("fused_mbconv", ("expand", "project")): "FusedMBConv",
    **{
        ("separable", (*s2d, "depthwise", *se, "pointwise")): "SeparableConv"
        for s2d in ((), ("s2d",))
        for se in ((), ("se",))
    },
    **{
        (kind, (*s2d, *routing, *expand, "depthwise", *se, "project")): name
        for kind, name, routing, s2ds in (
            ("mbconv", "MBConv", (), ((), ("s2d",))),
            ("mixconv", "MixConv", (), ((),)),
            ("condconv", "CondConv", ("routing",), ((),)),
        )
        for s2d in s2ds
        for expand in ((), ("expand",))
        for se in ((), ("se",))
    },
}

#: The block classes in the order they are defined.
BLOCK_ORDER = (
    "ConvBlock", "MBConv", "FusedMBConv", "MixConv", "CondConv", "SeparableConv",
    "UniversalInvertedResidual", "AttentionBlock",
)

# Names the generated module may define besides the model class.
_FIXED_NAMES = (
    "math",
    "torch",
    "nn",
    "ACTIVATIONS",
    "drop_path",
    "ConvBNAct",
    "Stage",
    "main",
)
_OPTIONAL_NAMES = (
    "SqueezeExcite", "GlobalContext", "GATES", "MixedConvBNAct", "mixed_conv", "Routing",
    "CondConvBNAct", "norm_layer", "LayerNorm2d", "EvoNormS0", "LayerScale",
    "MultiQueryAttention", "BlurPool", "downsample", *BLOCK_ORDER,
)


# ---- names ----------------------------------------------------------------------------------


def scaling_label(factors: Multipliers) -> str:
    """A short, filename-safe label of a scaling: `phi3`, `b3`, `w1.2_d1.4`, `r300`, or ``.

    A preset is named by itself (its characters outside `[A-Za-z0-9._-]` become `_`); the
    resolution is added only where it was asked for on its own, as in `Multipliers.describe`.
    """
    parts = []
    if factors.preset is not None:
        parts.append(re.sub(r"[^A-Za-z0-9._-]", "_", factors.preset)[:64])
    elif factors.phi is not None:
        parts.append(f"phi{factors.phi:g}")
    else:
        parts.extend(
            f"{letter}{value:g}"
            for letter, value in (("w", factors.width), ("d", factors.depth))
            if value != 1.0
        )
        if factors.resolution is not None:
            parts.append(f"r{factors.resolution}")
    return "_".join(parts)


def class_name(plan: Plan) -> str:
    """The model class's name: the network's name and scaling in CamelCase (`EfficientnetB0Phi3`).

    Only ASCII letters and digits survive; `-` and `.` of a scaling label become `m` and `p`
    (`phi-1.5` → `Phim1p5`). A name that would start with a digit, be empty, be a keyword or
    collide with another name of the generated module gets a prefix or suffix.
    """
    label = scaling_label(plan.scaling).replace("-", "m").replace(".", "p")
    words = re.findall(r"[A-Za-z0-9]+", plan.name) + re.findall(r"[A-Za-z0-9]+", label)
    name = "".join(word.capitalize() for word in words) or "Network"
    if name[0].isdigit():
        name = "Net" + name
    if keyword.iskeyword(name) or name in _FIXED_NAMES + _OPTIONAL_NAMES:
        name += "Model"
    return name


def top_level_names(plan: Plan) -> frozenset[str]:
    """Every name the module generated for `plan` defines at its top level."""
    used = _Used.of(plan)
    optional = {
        "SqueezeExcite": "se" in used.se_kinds,
        "GlobalContext": "gc" in used.se_kinds,
        "GATES": used.squeeze_excite,
        "MixedConvBNAct": "MixConv" in used.blocks,
        "mixed_conv": "MixConv" in used.blocks,
        "Routing": "CondConv" in used.blocks,
        "CondConvBNAct": "CondConv" in used.blocks,
        "norm_layer": bool(used.norms),
        "LayerNorm2d": used.layer_norm,
        "EvoNormS0": "evonorm" in used.norms,
        "LayerScale": used.layer_scale,
        "MultiQueryAttention": "AttentionBlock" in used.blocks,
        **{block: block in used.blocks for block in BLOCK_ORDER},
    }
    return frozenset(
        (*_FIXED_NAMES, class_name(plan), *(name for name, on in optional.items() if on))
    )


# ---- escaping -------------------------------------------------------------------------------


def one_line(text: str) -> str:
    """`text` with every non-printable character (newlines included) written as an escape."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def _docstring_body(text: str) -> str:
    """Source text that, between triple double quotes, reads back as `text`.

    Backslashes are doubled and a `"` that another follows is escaped, so no run of three
    quotes can close the docstring early; callers end the body with a newline.
    """
    return re.sub(r'"(?=")', r'\\"', text.replace("\\", "\\\\"))


# ---- what the plan uses ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Used:
    """The parts of the generated module that `plan` needs."""

    activations: tuple[str, ...]  # in the order of ACTIVATION_MODULES
    asymmetric_padding: bool
    squeeze_excite: bool
    blocks: tuple[str, ...]  # block classes, in the order they are defined
    gates: tuple[str, ...] = ("sigmoid",)  # in the order of GATE_MODULES
    unnormalised: bool = False  # some conv has no norm (and so a bias)
    unbiased: bool = False  # some conv has neither a norm nor a bias (FBNetV3's head)
    se_options: bool = False  # some SE has an activation other than its block's
    full: bool = False  # some MBConv keeps its expansion conv at expansion 1
    norms: tuple[str, ...] = ()  # the norms of OTHER_NORMS used: `norm` is then a name
    grouped: bool = False  # some block's k×k conv has groups other than its class's default
    layer_scale: bool = False  # some block ends in a layer scale
    s2d: bool = False  # some block starts with a space-to-depth conv
    pools: tuple[str, ...] = ()  # the kinds of anti-aliasing pool used (`aa`), sorted
    se_kinds: tuple[str, ...] = ()  # "se" (SqueezeExcite), "gc" (GlobalContext): those used

    @property
    def layer_norm(self) -> bool:
        """Whether `LayerNorm2d` is needed: a conv's norm, or global context's."""
        return "layer" in self.norms or "gc" in self.se_kinds

    @property
    def context_arg(self) -> bool:
        """Whether the block classes choose between SE and global context (`context=`)."""
        return self.se_kinds == ("se", "gc")

    @classmethod
    def of(cls, plan: Plan) -> _Used:
        ops = list(plan.ops())
        acts = {
            op.act
            for op in ops
            if isinstance(op, ConvOp | MixedConvOp | SqueezeExciteOp) and op.act is not None
        }
        unknown = sorted(acts - ACTIVATION_MODULES.keys())
        if unknown:
            raise BuildError(f"code generation does not know the activation `{unknown[0]}`")
        # with the attention's downsampling convs, which are ConvBNActs too
        convs = [op for op in ops if isinstance(op, ConvOp)] + [
            down for op in ops if isinstance(op, AttentionOp) for down in op.downs
        ]
        unknown = sorted({op.norm for op in convs} - {"batch", "none", *OTHER_NORMS})
        if unknown:
            raise BuildError(f"code generation does not know the normalisation `{unknown[0]}`")
        gates = {op.gate for op in ops if isinstance(op, SqueezeExciteOp)}
        unknown = sorted(gates - GATE_MODULES.keys())
        if unknown:
            raise BuildError(f"code generation does not know the gate `{unknown[0]}`")
        blocks = {block_class(block) for block in plan.blocks()}
        return cls(
            activations=tuple(name for name in ACTIVATION_MODULES if name in acts),
            asymmetric_padding=any(
                op.symmetric_padding is None for op in convs if not op.experts
            ),
            squeeze_excite=bool(gates),
            blocks=tuple(name for name in BLOCK_ORDER if name in blocks),
            gates=tuple(name for name in GATE_MODULES if name in gates),
            unnormalised=any(op.norm == "none" for op in convs),
            unbiased=any(op.norm == "none" and not op.bias for op in convs),
            se_options=any(_se_options(block) for block in plan.blocks()),
            full=any(_keeps_expansion(block) for block in plan.blocks()),
            norms=tuple(name for name in OTHER_NORMS if any(op.norm == name for op in convs)),
            grouped=any(_groups_arg(block) is not None for block in plan.blocks()),
            layer_scale=any(isinstance(op, LayerScaleOp) for op in ops),
            s2d=any(op.role == "s2d" for op in ops),
            pools=tuple(sorted({op.kind for op in ops if isinstance(op, PoolOp)})),
            se_kinds=tuple(
                kind
                for kind, ran in (
                    ("se", any(type(op) is SqueezeExciteOp for op in ops)),
                    ("gc", any(isinstance(op, GlobalContextOp) for op in ops)),
                )
                if ran
            ),
        )


def _se_options(block: BlockPlan) -> bool:
    """Whether the block's squeeze-and-excitation has an activation other than the block's."""
    act = None if block.act == "none" else block.act
    return any(isinstance(op, SqueezeExciteOp) and op.act != act for op in block.ops)


def _keeps_expansion(block: BlockPlan) -> bool:
    """An MBConv with expansion 1 that keeps its 1×1 expansion conv (of the block's input, or
    of the space-to-depth conv's output)."""
    return block.kind == "mbconv" and any(
        op.role == "expand" and op.in_channels == op.out_channels for op in block.ops
    )


def block_class(block: BlockPlan) -> str:
    """The generated class that builds `block`, from the roles of its ops."""
    if block.kind == "uir":  # its optional convs are arguments of one class
        return "UniversalInvertedResidual"
    if block.kind == "mqa":
        return "AttentionBlock"
    roles = tuple(op.role for op in block.layers)
    name = BLOCK_CLASSES.get((block.kind, roles))
    if name is None:
        raise BuildError(f"code generation cannot express block {block.path} with ops {roles}")
    return name


# ---- the module's parts ---------------------------------------------------------------------


def _title(plan: Plan) -> str:
    """`EfficientNet-family network 'efficientnet_b0', phi=3`, on one line."""
    return f"EfficientNet-family network {plan.name!r}, {one_line(plan.scaling.describe())}"


def _header(plan: Plan, source_name: str | None, spec_text: str | None) -> str:
    report = cost(plan)
    factors = plan.scaling
    origin = f" from {source_name!r}" if source_name is not None else ""
    lines = [
        f"{_title(plan)}: standalone PyTorch.",
        "",
        f"Generated by effdsl {__version__}{origin}. Regenerate it from the spec rather than",
        "editing it by hand.",
        "",
        f"    scaling      {one_line(factors.describe())}: width ×{factors.width:.6g}, "
        f"depth ×{factors.depth:.6g}",
        f"    input        {plan.in_channels}×{plan.resolution}×{plan.resolution}",
        f"    parameters   {report.params:,}",
        f"    MACs         {report.macs:,} per image",
        f"    classes      {plan.classifier.classes}",
        "",
        "The module tree, and so every state_dict key and shape, is the one `effdsl.build`",
        "makes, so a checkpoint of either loads into the other. This file holds no weights:",
        "    model.load_state_dict(torch.load(path, weights_only=True))",
    ]
    if spec_text is not None:
        lines += ["", "The spec it was compiled from:", ""]
        lines += [f"    {one_line(line)}".rstrip() for line in spec_text.splitlines()]
    return '"""' + _docstring_body("\n".join(lines) + "\n") + '"""'


_IMPORTS = """\
import math

import torch
from torch import nn"""


def _activations(used: _Used) -> str:
    entries = "".join(f'    "{name}": {ACTIVATION_MODULES[name]},\n' for name in used.activations)
    comment = "# The activations the spec uses, by their names in the spec."
    return f"{comment}\nACTIVATIONS = {{\n{entries}}}"


_DROP_PATH = '''\
def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop each sample's residual branch with probability `rate`.

    Only while training; the kept branches are scaled by 1/(1 - rate) so that the expected
    output is unchanged. The mask is drawn on the tensor's device: no host synchronisation.
    """
    if not training or rate == 0.0:
        return x
    keep = 1.0 - rate
    mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask.div_(keep)'''


def _anti_alias(used: _Used, conv: str) -> tuple[str, str, str, str]:
    """`ConvBNAct`'s `aa` argument, its stride's conv, the pool's line and its forward step,
    where the plan has anti-aliased downsampling; `conv` is the call making the conv."""
    if not used.pools:
        return "", conv, "", "return self.act(self.bn({call}))"
    return (
        "\n        aa: str | None = None,",
        _AA_STRIDE[1:] + "\n" + conv,
        _AA_LAYER,
        "out = self.act(self.bn({call}))\n        return out if self.aa is None else self.aa(out)",
    )


def _downsample(used: _Used) -> str:
    """The pools of anti-aliased downsampling the plan uses: `BlurPool` where it blurs."""
    blur = [kind for kind in used.pools if kind != "avg"]
    if not blur:
        return '''\
def downsample(kind: str, channels: int, stride: int) -> nn.Module:
    """The pool that downsamples after an anti-aliased conv: a stride×stride average."""
    return nn.AvgPool2d(stride, stride)'''
    avg = (
        '''
    if kind == "avg":
        return nn.AvgPool2d(stride, stride)'''
        if "avg" in used.pools
        else ""
    )
    kinds = " or ".join(f"`{kind}`" for kind in used.pools)
    return f'''\
class BlurPool(nn.Module):
    """Blur, then subsample (Zhang, 2019): each channel convolved by the binomial filter
    [1, 2, 1] ⊗ [1, 2, 1] / 16 at the stride, over one pixel of padding (`reflect`, or zeros:
    `constant`). The filter is made in the input's dtype and device; it has no state."""

    def __init__(self, channels: int, stride: int, mode: str) -> None:
        super().__init__()
        self.channels, self.stride, self.mode = channels, stride, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        taps = torch.tensor([0.25, 0.5, 0.25], dtype=x.dtype, device=x.device)
        kernel = (taps[:, None] * taps[None, :]).expand(self.channels, 1, 3, 3)
        x = nn.functional.pad(x, [1, 1, 1, 1], mode=self.mode)
        return nn.functional.conv2d(x, kernel, stride=self.stride, groups=self.channels)


def downsample(kind: str, channels: int, stride: int) -> nn.Module:
    """The pool that downsamples after an anti-aliased conv: {kinds}."""{avg}
    return BlurPool(channels, stride, "reflect" if kind == "blur" else "constant")'''


def _conv_bn_act(used: _Used) -> str:
    if used.norms:
        return _conv_norm_act(used)
    bias = "not norm" if used.unnormalised else "False"
    if used.unbiased:
        bias = "bias and not norm"
    if used.asymmetric_padding:
        layers = f'''\
        # a tuple is (left, right, top, bottom): TF "same" padding, with the odd pixel on the
        # right and bottom, which Conv2d cannot do itself
        asymmetric = isinstance(padding, tuple)
        self.pad = nn.ZeroPad2d(padding) if asymmetric else nn.Identity()
        self.conv = nn.Conv2d(
            cin, cout, kernel, stride, 0 if asymmetric else padding, groups=groups, bias={bias}
        )'''
        signature = "padding: int | tuple[int, int, int, int] = 0"
        call = "self.conv(self.pad(x))"
    else:
        layers = f'''\
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias={bias})'''
        signature = "padding: int = 0"
        call = "self.conv(x)"
    if used.unnormalised:
        doc = (
            "Convolution, batch norm, then the activation (`act=None`: none); with "
            "`norm=False`\n    no batch norm, and the conv has a bias instead."
        )
        norm_arg = "\n        norm: bool = True,"
        if used.unbiased:
            norm_arg += "\n        bias: bool = True,"
            doc += " `bias=False`\n    leaves it without one too."
        bn = "nn.BatchNorm2d(cout, eps=eps, momentum=momentum) if norm else nn.Identity()"
    else:
        doc = "Convolution without bias, batch norm, then the activation (`act=None`: none)."
        norm_arg = ""
        bn = "nn.BatchNorm2d(cout, eps=eps, momentum=momentum)"
    aa_arg, layers, aa_layer, step = _anti_alias(used, layers)
    return f'''\
class ConvBNAct(nn.Module):
    """{doc}"""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int = 1,
        {signature},
        groups: int = 1,
        act: str | None = None,
        eps: float = 1e-5,
        momentum: float = 0.1,{norm_arg}{aa_arg}
    ) -> None:
        super().__init__()
{layers}
        self.bn = {bn}
        self.act = ACTIVATIONS[act]() if act else nn.Identity(){aa_layer}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        {step.format(call=call)}'''


_LAYER_NORM = '''\
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of each pixel: channels moved last, normalised, moved back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)  # (N, H, W, C)
        x = nn.functional.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)  # (N, C, H, W)'''

_EVO_NORM = '''\
class EvoNormS0(nn.Module):
    """EvoNorm-S0: x·sigmoid(v·x) over the standard deviation of x in its group of channels,
    then a per-channel affine. Without its non-linearity (`act=False`) only the affine."""

    def __init__(self, channels: int, groups: int, eps: float, act: bool) -> None:
        super().__init__()
        self.groups, self.eps = groups, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.v = nn.Parameter(torch.ones(channels)) if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1)
        if self.v is not None:
            n, c, h, w = x.shape
            grouped = x.reshape(n, self.groups, c // self.groups, h, w)
            var = grouped.var(dim=(2, 3, 4), unbiased=False, keepdim=True)
            std = var.add(self.eps).sqrt().expand(grouped.shape).reshape(n, c, h, w)
            x = x * torch.sigmoid(x * self.v.view(shape)) / std
        return x * self.weight.view(shape) + self.bias.view(shape)'''


def _norm_layer(used: _Used) -> str:
    """`norm_layer`: the norm module of each name the spec uses."""
    branches = {
        "group": "return nn.GroupNorm(channels // group_size, channels, eps=eps)",
        "layer": "return LayerNorm2d(channels, eps=eps)",
        "evonorm": "return EvoNormS0(channels, channels // group_size, eps, act)",
    }
    tests = "".join(
        f'    if norm == "{name}":\n        {branches[name]}\n' for name in used.norms
    )
    names = ["batch", *used.norms, *(["none"] if used.unnormalised else [])]
    end = (
        "    return nn.Identity()  # none: the conv has a bias instead"
        if used.unnormalised
        else '    raise ValueError(f"unknown norm {norm!r}")'
    )
    return f'''\
def norm_layer(
    norm: str, channels: int, eps: float, momentum: float, group_size: int, act: bool
) -> nn.Module:
    """The norm after a conv, by name: {", ".join(names)}."""
    if norm == "batch":
        return nn.BatchNorm2d(channels, eps=eps, momentum=momentum)
{tests}{end}'''


def _conv_norm_act(used: _Used) -> str:
    """`ConvBNAct` where the spec uses norms other than batch norm: `norm` names one."""
    if used.asymmetric_padding:
        layers = '''\
        # a tuple is (left, right, top, bottom): TF "same" padding, with the odd pixel on the
        # right and bottom, which Conv2d cannot do itself
        asymmetric = isinstance(padding, tuple)
        self.pad = nn.ZeroPad2d(padding) if asymmetric else nn.Identity()
        self.conv = nn.Conv2d(
            cin, cout, kernel, stride, 0 if asymmetric else padding, groups=groups, bias=bias
        )'''
        signature = "padding: int | tuple[int, int, int, int] = 0"
        call = "self.conv(self.pad(x))"
    else:
        layers = '''\
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=bias)'''
        signature = "padding: int = 0"
        call = "self.conv(x)"
    if "evonorm" in used.norms:
        act = """\
        # EvoNorm-S0 applies a non-linearity of its own in place of the activation
        self.act = ACTIVATIONS[act]() if act and norm != "evonorm" else nn.Identity()"""
    else:
        act = "        self.act = ACTIVATIONS[act]() if act else nn.Identity()"
    bias = " With norm none, the conv has a bias." if used.unnormalised else ""
    bias_arg, bias_line = "", '        bias = norm == "none"'
    if used.unbiased:
        bias += " `bias=False`\n    leaves it without one too."
        bias_arg = "\n        bias: bool = True,"
        bias_line = '        bias = bias and norm == "none"'
    aa_arg, layers, aa_layer, step = _anti_alias(used, layers)
    return f'''\
class ConvBNAct(nn.Module):
    """Convolution without bias, its norm (`norm_layer`; `norm_size`: channels per group),
    then the activation (`act=None`: none).{bias}"""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int = 1,
        {signature},
        groups: int = 1,
        act: str | None = None,
        eps: float = 1e-5,
        momentum: float = 0.1,
        norm: str = "batch",
        norm_size: int = 0,{bias_arg}{aa_arg}
    ) -> None:
        super().__init__()
{bias_line}
{layers}
        self.bn = norm_layer(norm, cout, eps, momentum, norm_size, act is not None)
{act}{aa_layer}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        {step.format(call=call)}'''


def _squeeze_excite(used: _Used) -> str:
    gates = "".join(f'    "{name}": {GATE_MODULES[name]},\n' for name in used.gates)
    classes = [
        *([_SQUEEZE_EXCITE] if "se" in used.se_kinds else []),
        *([_GLOBAL_CONTEXT] if "gc" in used.se_kinds else []),
    ]
    return f'''\
# The gates of squeeze-and-excitation the spec uses.
GATES = {{
{gates}}}


''' + "\n\n\n".join(classes)


_SQUEEZE_EXCITE = '''\
class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: scale each channel by a gate computed from the channel means."""

    def __init__(
        self, channels: int, squeeze: int, act: str | None, gate: str = "sigmoid"
    ) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.act = ACTIVATIONS[act]() if act else nn.Identity()
        self.expand = nn.Conv2d(squeeze, channels, 1)
        self.gate = GATES[gate]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)  # (N, C, 1, 1)
        scale = self.act(self.reduce(scale))  # (N, squeeze, 1, 1)
        scale = self.gate(self.expand(scale))  # (N, C, 1, 1)
        return x * scale'''

_GLOBAL_CONTEXT = f'''\
class GlobalContext(nn.Module):
    """Global context (GCNet): squeeze-and-excitation whose channels are pooled by a softmax
    attention over the positions, with a layer norm in its bottleneck."""

    def __init__(
        self, channels: int, squeeze: int, act: str | None, gate: str = "sigmoid"
    ) -> None:
        super().__init__()
        self.attn = nn.Conv2d(channels, 1, 1)
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.norm = LayerNorm2d(squeeze, eps={GlobalContextOp.norm_eps!r})
        self.act = ACTIVATIONS[act]() if act else nn.Identity()
        self.expand = nn.Conv2d(squeeze, channels, 1)
        self.gate = GATES[gate]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        attn = self.attn(x).reshape(n, 1, h * w, 1).softmax(dim=2)  # (N, 1, HW, 1)
        context = (x.reshape(n, 1, c, h * w) @ attn).reshape(n, c, 1, 1)  # (N, C, 1, 1)
        scale = self.act(self.norm(self.reduce(context)))  # (N, squeeze, 1, 1)
        scale = self.gate(self.expand(scale))  # (N, C, 1, 1)
        return x * scale'''


_RESIDUAL = """\
        if self.residual:
            out = x + drop_path(out, self.drop_rate, self.training)
        return out"""

def _norm(used: _Used) -> tuple[str, str]:
    """The `norm` parameter of the block classes and what they pass on to their convs: a
    flag where the only other norm is none, else the norm's name and its group size."""
    if used.norms:
        return (
            '\n        norm: str = "batch",\n        norm_size: int = 0,',
            ", **norm_args",
        )
    if not used.unnormalised:
        return "", ""
    return "\n        norm: bool = True,", ", norm=norm"


def _norm_setup(used: _Used) -> str:
    """The line a block class starts with where its convs' norms are given by name."""
    if not used.norms:
        return ""
    return "\n        norm_args = dict(norm=norm, norm_size=norm_size)  # every conv's norm"


def _groups_param(used: _Used, default: str) -> tuple[str, str, str]:
    """The `groups` parameter of a block class (where some block's k×k conv has groups other
    than its class's default), the value its k×k conv takes, and the line that sets it."""
    if not used.grouped:
        return "", default, ""
    if default == "1":
        return "\n        groups: int = 1,", "groups", ""
    return (
        "\n        groups: int | None = None,",
        "groups",
        f"\n        groups = {default} if groups is None else groups  # None: depthwise",
    )


def _conv_block(used: _Used, padding: str) -> str:
    norm_arg, norm = _norm(used)
    aa = _aa_parts(used)
    more = norm + aa["{aa}"]  # the strided conv's keywords
    setup = _norm_setup(used)
    groups_arg, groups, _ = _groups_param(used, "1")
    grouped = f", groups={groups}" if used.grouped else ""
    return f'''\
class ConvBlock(nn.Module):
    """One k×k conv-BN-act, with a residual where shapes allow.

    The block of a `conv` stage, and a fused MBConv with expansion 1.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int,
        padding: {padding},
        act: str | None,
        eps: float,
        momentum: float,
        drop_rate: float,
        residual: bool,{groups_arg}{norm_arg}{aa["{aa_arg}"]}
    ) -> None:
        super().__init__(){setup}
        self.conv = ConvBNAct(
            cin, cout, kernel, stride, padding{grouped}, act=act, eps=eps, momentum=momentum{more}
        )
        self.drop_rate = drop_rate
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
{_RESIDUAL}'''


def _space_to_depth(used: _Used, padding: str) -> tuple[str, str, str, str]:
    """The `s2d` argument of a block class that may start with space-to-depth, the layer it
    makes, and the name its first conv reads (`x`, or the conv's output `out`)."""
    if not used.s2d:
        return "", "", "", "x"
    _, norm = _norm(used)
    arg = f"\n        s2d: {padding} | None = None,"
    layer = f"""
        # space-to-depth (`s2d`: its padding): a 2×2 stride-2 conv to 4× the channels, on
        # which the rest of the block runs
        self.s2d = None
        if s2d is not None:
            self.s2d = ConvBNAct(
                cin, 4 * cin, 2, 2, s2d, act=act, eps=eps, momentum=momentum{norm}
            )
            cin = 4 * cin"""
    step = "        out = x if self.s2d is None else self.s2d(x)\n"
    return arg, layer, step, "out"


def _separable(used: _Used, padding: str) -> str:
    norm_arg, norm = _norm(used)
    setup = _norm_setup(used)
    s2d_arg, s2d_layer, s2d_step, first = _space_to_depth(used, padding)
    groups_arg, groups, grouping = _groups_param(used, "cin")
    se = _se_parts(used, channels="cin")
    aa = _aa_parts(used)
    return f'''\
class SeparableConv(nn.Module):
    """Depthwise-separable conv: k×k depthwise, squeeze-and-excitation, 1×1 pointwise, both
    convs with their activation (MobileNetV1's block; `residual` is always False)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int,
        padding: {padding},{se["{squeeze_arg}"]}
        act: str | None,
        eps: float,
        momentum: float,
        drop_rate: float,
        residual: bool,{se["{gate_arg}"]}{groups_arg}{norm_arg}{s2d_arg}{aa["{aa_arg}"]}
    ) -> None:
        super().__init__(){setup}{s2d_layer}{grouping}
        self.depthwise = ConvBNAct(
            cin, cin, kernel, stride, padding, groups={groups}, act=act, eps=eps,
            momentum=momentum{norm}{aa["{aa}"]}
        ){se["{se_layer}"]}
        self.pointwise = ConvBNAct(cin, cout, 1, act=act, eps=eps, momentum=momentum{norm})
        self.drop_rate = drop_rate
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
{s2d_step}        out = self.depthwise({first}){se["{se_step}"]}
        out = self.pointwise(out)
{_RESIDUAL}'''


_LAYER_SCALE = '''\
class LayerScale(nn.Module):
    """Each channel times a learnt factor `gamma`, initialised to `init`."""

    def __init__(self, channels: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1)'''


def _universal(used: _Used, padding: str) -> str:
    """MobileNetV4's universal inverted bottleneck: its three depthwise convs are optional."""
    norm_arg, norm = _norm(used)
    se = _se_parts(used)
    aa = _aa_parts(used)["{aa}"]
    return f'''\
class UniversalInvertedResidual(nn.Module):
    """Universal inverted bottleneck (MobileNetV4): depthwise (no activation), 1×1 expand,
    depthwise, squeeze-and-excitation, 1×1 project, depthwise (no activation), layer scale.
    The depthwise convs' `kernels` are (start, middle, end); a kernel 0 leaves its conv out.
    """

    def __init__(
        self,
        cin: int,
        mid: int,
        cout: int,
        kernels: tuple[int, int, int],
        strides: tuple[int, int, int],
        paddings: tuple[{padding}, ...],{se["{squeeze_arg}"]}
        act: str | None,
        eps: float,
        momentum: float,
        drop_rate: float,
        residual: bool,{se["{gate_arg}"]}
        layer_scale: float = 0.0,{norm_arg}{_aa_parts(used)["{aa_arg}"]}
    ) -> None:
        super().__init__(){_norm_setup(used)}
        bn = dict(eps=eps, momentum=momentum{norm})
        start, kernel, end = kernels
        self.start = None
        if start:
            self.start = ConvBNAct(cin, cin, start, strides[0], paddings[0], groups=cin, **bn{aa})
        self.expand = ConvBNAct(cin, mid, 1, act=act, **bn)
        self.depthwise = None
        if kernel:
            self.depthwise = ConvBNAct(
                mid, mid, kernel, strides[1], paddings[1], groups=mid, act=act, **bn{aa}
            ){se["{se_layer}"]}
        # linear bottleneck: no activation after the projection
        self.project = ConvBNAct(mid, cout, 1, **bn)
        self.end = None
        if end:
            self.end = ConvBNAct(cout, cout, end, strides[2], paddings[2], groups=cout, **bn{aa})
        self.layer_scale = LayerScale(cout, layer_scale) if layer_scale else None
        self.drop_rate = drop_rate
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.start is None else self.start(x)
        out = self.expand(out)
        if self.depthwise is not None:
            out = self.depthwise(out){se["{se_step}"]}
        out = self.project(out)
        if self.end is not None:
            out = self.end(out)
        if self.layer_scale is not None:
            out = self.layer_scale(out)
{_RESIDUAL}'''


def _attention(padding: str) -> str:
    """Multi-query attention and the block around it (MobileNetV4's hybrid models)."""
    return f'''\
class MultiQueryAttention(nn.Module):
    """Multi-query attention: `heads` queries per position attend over one shared key and one
    shared value, each first downsampled by a depthwise conv with batch norm where
    `kv_stride` > 1; the heads' outputs, concatenated head by head, are projected."""

    def __init__(
        self,
        cin: int,
        cout: int,
        heads: int,
        key_dim: int,
        value_dim: int,
        kv_stride: int,
        kernel: int,
        padding: {padding},
        eps: float,
        momentum: float,
    ) -> None:
        super().__init__()
        self.heads, self.key_dim, self.value_dim = heads, key_dim, value_dim
        bn = dict(eps=eps, momentum=momentum)
        # keys and values downsampled by depthwise convs where kv_stride > 1
        down = (cin, cin, kernel, kv_stride, padding, cin)
        self.query = nn.Conv2d(cin, heads * key_dim, 1, bias=False)
        self.key_down = ConvBNAct(*down, **bn) if kv_stride > 1 else None
        self.key = nn.Conv2d(cin, key_dim, 1, bias=False)
        self.value_down = ConvBNAct(*down, **bn) if kv_stride > 1 else None
        self.value = nn.Conv2d(cin, value_dim, 1, bias=False)
        self.output = nn.Conv2d(heads * value_dim, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        q = self.query(x).reshape(n, self.heads, self.key_dim, h * w).transpose(-1, -2)
        k = x if self.key_down is None else self.key_down(x)
        k = self.key(k).flatten(2).transpose(1, 2).unsqueeze(1)  # (N, 1, keys, key_dim)
        v = x if self.value_down is None else self.value_down(x)
        v = self.value(v).flatten(2).transpose(1, 2).unsqueeze(1)  # (N, 1, keys, value_dim)
        weights = (q * self.key_dim**-0.5) @ k.transpose(-1, -2)  # (N, heads, h·w, keys)
        out = weights.softmax(dim=-1) @ v  # (N, heads, h·w, value_dim)
        out = out.transpose(1, 2).reshape(n, h, w, self.heads * self.value_dim)
        return self.output(out.permute(0, 3, 1, 2))


class AttentionBlock(nn.Module):
    """Batch norm, multi-query attention, layer scale, then the residual."""

    def __init__(
        self,
        cin: int,
        cout: int,
        heads: int,
        key_dim: int,
        value_dim: int,
        kv_stride: int,
        kernel: int,
        padding: {padding},
        eps: float,
        momentum: float,
        drop_rate: float,
        residual: bool,
        layer_scale: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(cin, eps=eps, momentum=momentum)
        self.attn = MultiQueryAttention(
            cin, cout, heads, key_dim, value_dim, kv_stride, kernel, padding, eps, momentum
        )
        self.layer_scale = LayerScale(cout, layer_scale) if layer_scale else None
        self.drop_rate = drop_rate
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.attn(self.norm(x))
        if self.layer_scale is not None:
            out = self.layer_scale(out)
{_RESIDUAL}'''


def _inverted_residual(name: str, used: _Used, padding: str) -> str:
    """MBConv or FusedMBConv: they differ in where the k×k conv is and what it sees."""
    norm_arg, norm = _norm(used)
    setup = _norm_setup(used)
    se = _se_parts(used)
    aa = _aa_parts(used)
    more = norm + aa["{aa}"]  # the strided conv's keywords
    full = name == "MBConv" and used.full
    full_arg = "\n        full: bool = False," if full else ""
    s2d_arg, s2d_layer, s2d_step, first = (
        _space_to_depth(used, padding) if name == "MBConv" else ("", "", "", "x")
    )
    groups_arg, groups, grouping = _groups_param(used, "mid" if name == "MBConv" else "1")
    if name == "MBConv":
        doc = "Inverted residual: 1×1 expand, k×k depthwise, squeeze-and-excitation, 1×1 project."
        keep = " or full" if full else ""
        wrap = f",\n            {norm[2:]}," if norm else ""
        why = (
            "expansion ratio 1: no expand conv (unless `full`), the depthwise conv reads the "
            "input"
            if full
            else "expansion ratio 1: no expand conv, the depthwise conv reads the input itself"
        )
        depthwise = (
            f"mid, mid, kernel, stride, padding, groups={groups}, act=act, eps=eps, "
            f"momentum=momentum{aa['{aa}']}{wrap}"
        )
        layers = f"""\
        # {why}
        self.expand = nn.Identity()
        if mid != cin{keep}:
            self.expand = ConvBNAct(cin, mid, 1, act=act, eps=eps, momentum=momentum{norm})
        self.depthwise = ConvBNAct(
            {depthwise}
        )"""
        steps = f"{s2d_step}        out = self.expand({first})\n        out = self.depthwise(out)"
    else:
        doc = "Fused inverted residual: k×k expand, squeeze-and-excitation, 1×1 project."
        grouped = f", groups={groups}" if used.grouped else ""
        layers = f"""\
        self.expand = ConvBNAct(
            cin, mid, kernel, stride, padding{grouped}, act=act, eps=eps, momentum=momentum{more}
        )"""
        steps = "        out = self.expand(x)"
    return f'''\
class {name}(nn.Module):
    """{doc}"""

    def __init__(
        self,
        cin: int,
        mid: int,
        cout: int,
        kernel: int,
        stride: int,
        padding: {padding},{se["{squeeze_arg}"]}
        act: str | None,
        eps: float,
        momentum: float,
        drop_rate: float,
        residual: bool,{se["{gate_arg}"]}{full_arg}{groups_arg}{norm_arg}{s2d_arg}{aa["{aa_arg}"]}
    ) -> None:
        super().__init__(){setup}{s2d_layer}{grouping}
{layers}{se["{se_layer}"]}
        # linear bottleneck: no activation after the projection
        self.project = ConvBNAct(mid, cout, 1, eps=eps, momentum=momentum{norm})
        self.drop_rate = drop_rate
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
{steps}{se["{se_step}"]}
        out = self.project(out)
{_RESIDUAL}'''


_MIXED_CONV = '''\
Padding = int | tuple[int, int, int, int]


def split_channels(channels: int, slices: int) -> list[int]:
    """Near-equal slices, the remainder to the first: 80 into 3 is [28, 26, 26]."""
    share = channels // slices
    return [channels - share * (slices - 1)] + [share] * (slices - 1)


class MixedConvBNAct(nn.Module):
    """MixConv: the channels cut into slices, each convolved by its own kernel size, the
    outputs concatenated, then batch norm and the activation."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernels: list[int],
        stride: int = 1,
        paddings: list[Padding] | None = None,
        depthwise: bool = False,
        act: str | None = None,
        eps: float = 1e-5,
        momentum: float = 0.1,{aa_arg}
    ) -> None:
        super().__init__(){aa_stride}
        self.splits = split_channels(cin, len(kernels))
        outs = split_channels(cout, len(kernels))
        paddings = paddings or [0] * len(kernels)
        # a tuple is (left, right, top, bottom): TF "same" padding, which Conv2d cannot do
        self.pads = nn.ModuleList(
            nn.ZeroPad2d(p) if isinstance(p, tuple) else nn.Identity() for p in paddings
        )
        self.convs = nn.ModuleList(
            nn.Conv2d(
                i, o, k, stride, 0 if isinstance(p, tuple) else p,
                groups=i if depthwise else 1, bias=False,
            )
            for k, i, o, p in zip(kernels, self.splits, outs, paddings, strict=True)
        )
        self.bn = nn.BatchNorm2d(cout, eps=eps, momentum=momentum)
        self.act = ACTIVATIONS[act]() if act else nn.Identity(){aa_layer}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slices = torch.split(x, self.splits, 1)
        outs = [
            conv(pad(part)) for pad, conv, part in zip(self.pads, self.convs, slices, strict=True)
        ]
        out = self.act(self.bn(torch.cat(outs, 1))){aa_step}
        return out


def mixed_conv(
    cin: int, cout: int, kernels: list[int], stride: int, paddings: list[Padding], **options
) -> nn.Module:
    """A MixConv, or a plain conv where there is a single kernel."""
    if len(kernels) == 1:
        groups = cin if options.pop("depthwise", False) else 1
        return ConvBNAct(cin, cout, kernels[0], stride, paddings[0], groups=groups, **options)
    return MixedConvBNAct(cin, cout, kernels, stride, paddings, **options)'''

_MIX_CONV_BLOCK = f'''\
class MixConv(nn.Module):
    """Inverted residual with mixed kernels: 1×1 expand (maybe in groups), depthwise convs of
    several kernel sizes over slices of the channels, squeeze-and-excitation, 1×1 project."""

    def __init__(
        self,
        cin: int,
        mid: int,
        cout: int,
        kernels: list[int],
        stride: int,
        paddings: list[Padding],
        expand_groups: int,
        project_groups: int,{{squeeze_arg}}
        act: str,
        eps: float,
        momentum: float,
        drop_rate: float,
        residual: bool,{{gate_arg}}{{aa_arg}}
    ) -> None:
        super().__init__()
        bn = dict(eps=eps, momentum=momentum)
        # expansion ratio 1: no expand conv, the depthwise convs read the input itself
        self.expand = nn.Identity()
        if mid != cin:
            ones = [1] * expand_groups
            self.expand = mixed_conv(cin, mid, ones, 1, [0] * expand_groups, act=act, **bn)
        self.depthwise = mixed_conv(
            mid, mid, kernels, stride, paddings, depthwise=True, act=act, **bn{{aa}}
        ){{se_layer}}
        # linear bottleneck: no activation after the projection
        self.project = mixed_conv(mid, cout, [1] * project_groups, 1, [0] * project_groups, **bn)
        self.drop_rate = drop_rate
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(x)
        out = self.depthwise(out){{se_step}}
        out = self.project(out)
{_RESIDUAL}'''

_COND_CONV = '''\
class Routing(nn.Linear):
    """CondConv's routing: a weight per expert kernel, per sample, from the pooled input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(super().forward(x.mean((2, 3))))  # (N, experts)


class CondConvBNAct(nn.Module):
    """CondConv: per sample, the routing-weighted sum of `experts` kernels (the rows of
    `weight`) convolves the input; then batch norm and the activation. The samples of a
    batch run as one grouped convolution."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int,
        padding: {padding},
        groups: int,
        experts: int,
        act: str | None = None,
        eps: float = 1e-5,
        momentum: float = 0.1,{aa_arg}
    ) -> None:
        super().__init__(){aa_stride}
        self.shape = (cout, cin // groups, kernel, kernel)
        self.weight = nn.Parameter(torch.empty(experts, math.prod(self.shape)))
        for expert in range(experts):
            nn.init.kaiming_normal_(self.weight.data[expert].view(self.shape), mode="fan_out")
        self.stride, self.groups = stride, groups
        # a tuple is (left, right, top, bottom): TF "same" padding, which conv2d cannot do
        asymmetric = isinstance(padding, tuple)
        self.pad = nn.ZeroPad2d(padding) if asymmetric else nn.Identity()
        self.padding = 0 if asymmetric else padding
        self.bn = nn.BatchNorm2d(cout, eps=eps, momentum=momentum)
        self.act = ACTIVATIONS[act]() if act else nn.Identity(){aa_layer}

    def forward(self, x: torch.Tensor, routing: torch.Tensor) -> torch.Tensor:
        x = self.pad(x)
        n, c, h, w = x.shape
        weight = torch.matmul(routing, self.weight)  # (N, cout·cin/groups·k·k)
        weight = weight.reshape(n * self.shape[0], *self.shape[1:])
        out = nn.functional.conv2d(
            x.reshape(1, n * c, h, w), weight, None, self.stride, self.padding,
            groups=self.groups * n,
        )
        out = self.act(self.bn(out.reshape(n, self.shape[0], *out.shape[-2:]))){aa_step}
        return out'''

_COND_CONV_BLOCK = f'''\
class CondConv(nn.Module):
    """Inverted residual whose convs each mix `experts` kernels per sample, weighted by a
    routing function of the block's input: 1×1 expand, depthwise, squeeze-and-excitation,
    1×1 project."""

    def __init__(
        self,
        cin: int,
        mid: int,
        cout: int,
        kernel: int,
        stride: int,
        padding: {{padding}},
        experts: int,{{squeeze_arg}}
        act: str,
        eps: float,
        momentum: float,
        drop_rate: float,
        residual: bool,{{gate_arg}}{{aa_arg}}
    ) -> None:
        super().__init__()
        bn = dict(eps=eps, momentum=momentum)
        self.routing = Routing(cin, experts)
        # expansion ratio 1: no expand conv, the depthwise conv reads the input itself
        self.expand = None
        if mid != cin:
            self.expand = CondConvBNAct(cin, mid, 1, 1, 0, 1, experts, act=act, **bn)
        self.depthwise = CondConvBNAct(
            mid, mid, kernel, stride, padding, mid, experts, act=act, **bn{{aa}}
        ){{se_layer}}
        # linear bottleneck: no activation after the projection
        self.project = CondConvBNAct(mid, cout, 1, 1, 0, 1, experts, **bn)
        self.drop_rate = drop_rate
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        routing = self.routing(x)  # (N, experts)
        out = x if self.expand is None else self.expand(x, routing)
        out = self.depthwise(out, routing){{se_step}}
        out = self.project(out, routing)
{_RESIDUAL}'''

_STAGE = '''\
class Stage(nn.Module):
    """A stage: blocks in sequence; only the first may change the stride or the width."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x'''


def _se_parts(used: _Used, channels: str = "mid") -> dict[str, str]:
    """The squeeze-and-excitation arguments, layer and step of a block class's source: its
    width, its own activation and its gate where the plan has them; it gates the tensor of
    `channels` channels (the name of the constructor's argument)."""
    if not used.squeeze_excite:
        return {"{squeeze_arg}": "", "{gate_arg}": "", "{se_layer}": "", "{se_step}": ""}
    se_act = "se_act" if used.se_options else "act"
    gates = used.gates != ("sigmoid",)
    choice = ""
    if used.context_arg:
        choice = "\n        squeeze_layer = GlobalContext if context else SqueezeExcite"
        layer = "squeeze_layer"
    else:
        layer = "GlobalContext" if used.se_kinds == ("gc",) else "SqueezeExcite"
    return {
        "{squeeze_arg}": "\n        squeeze: int,"
        + ("\n        se_act: str | None," if used.se_options else ""),
        "{gate_arg}": ('\n        gate: str = "sigmoid",' if gates else "")
        + ("\n        context: bool = False," if used.context_arg else ""),
        "{se_layer}": f"{choice}\n        self.se = {layer}({channels}, squeeze, {se_act}"
        f"{', gate' if gates else ''}) if squeeze else nn.Identity()",
        "{se_step}": "\n        out = self.se(out)",
    }


# A conv class's lines for anti-aliased downsampling: the conv runs at stride 1, and the pool
# after its norm and activation takes the stride.
_AA_STRIDE = """
        # anti-aliased (`aa`): the conv keeps the size; a pool after its norm downsamples
        pool, stride = (stride, 1) if aa and stride > 1 else (1, stride)"""
_AA_LAYER = "\n        self.aa = downsample(aa, cout, pool) if aa and pool > 1 else None"


def _aa_parts(used: _Used) -> dict[str, str]:
    """A block class's `aa` argument and what passes it to its strided conv, where the plan
    has anti-aliased downsampling; the pool's line and step in a conv class of its own."""
    if not used.pools:
        return {"{aa_arg}": "", "{aa}": "", "{aa_stride}": "", "{aa_layer}": "", "{aa_step}": ""}
    return {
        "{aa_arg}": "\n        aa: str | None = None,",
        "{aa}": ", aa=aa",
        "{aa_stride}": _AA_STRIDE,
        "{aa_layer}": _AA_LAYER,
        "{aa_step}": "\n        if self.aa is not None:\n            out = self.aa(out)",
    }


def _filled(template: str, parts: dict[str, str]) -> str:
    for key, value in parts.items():
        template = template.replace(key, value)
    return template


def _block_classes(used: _Used) -> list[str]:
    padding = "int | tuple[int, int, int, int]" if used.asymmetric_padding else "int"
    parts = {"{padding}": padding, **_se_parts(used), **_aa_parts(used)}
    classes = [_LAYER_SCALE] if used.layer_scale else []
    for name in used.blocks:
        if name == "ConvBlock":
            classes.append(_conv_block(used, padding))
        elif name == "MixConv":
            classes += [_filled(_MIXED_CONV, parts), _filled(_MIX_CONV_BLOCK, parts)]
        elif name == "CondConv":
            any_padding = {**parts, "{padding}": "int | tuple[int, int, int, int]"}
            classes += [_filled(_COND_CONV, any_padding), _filled(_COND_CONV_BLOCK, any_padding)]
        elif name == "SeparableConv":
            classes.append(_separable(used, padding))
        elif name == "UniversalInvertedResidual":
            classes.append(_universal(used, padding))
        elif name == "AttentionBlock":
            classes.append(_attention(padding))
        else:
            classes.append(_inverted_residual(name, used, padding))
    return classes


# ---- the model class ------------------------------------------------------------------------


def _pad_literal(padding: tuple[int, int, int, int]) -> str:
    left, right, top, bottom = padding
    return str(left) if left == right == top == bottom else str(padding)


def _padding(op: ConvOp) -> str:
    return _pad_literal(op.padding)


def _norm_args(op: ConvOp, used: _Used) -> list[str]:
    """The keyword arguments that give a conv's norm, where it is not batch norm."""
    if op.norm == "batch":
        return []
    unbiased = ["bias=False"] if op.norm == "none" and not op.bias else []
    if not used.norms:
        return ["norm=False", *unbiased]
    size = [f"norm_size={op.norm_group_size}"] if op.norm_group_size else []
    return [f'norm="{op.norm}"', *size, *unbiased]


def _conv_call(op: ConvOp, used: _Used) -> str:
    """`ConvBNAct(...)` building `op` (the stem and the head)."""
    groups = f", groups={op.groups}" if op.groups != 1 else ""
    act = f'act="{op.act}", ' if op.act is not None else ""
    norm = "".join(f", {arg}" for arg in _norm_args(op, used))
    return (
        f"ConvBNAct({op.in_channels}, {op.out_channels}, {op.kernel}, {op.stride}, "
        f"{_padding(op)}{groups}, {act}eps={op.bn_eps!r}, momentum={op.bn_momentum!r}{norm})"
    )


#: The block classes that take `norm=` (MixConv and CondConv are always batch-normalised).
_NORM_BLOCKS = (
    "ConvBlock", "MBConv", "FusedMBConv", "SeparableConv", "UniversalInvertedResidual"
)

#: The groups of each block class's k×k conv unless told otherwise: None, one per channel.
_DEFAULT_GROUPS = {"ConvBlock": 1, "FusedMBConv": 1, "MBConv": None, "SeparableConv": None}

#: The op of each block class whose kernel, stride and padding the block's row gives.
SPATIAL_ROLES = {
    "ConvBlock": "conv",
    "MBConv": "depthwise",
    "FusedMBConv": "expand",
    "MixConv": "depthwise",
    "CondConv": "depthwise",
    "SeparableConv": "depthwise",
}


def _shape_of(op: ConvOp | MixedConvOp) -> tuple[tuple[int, ...], int, tuple[str, ...]]:
    """Kernels, stride and padding literals of a conv, whatever its kind."""
    if isinstance(op, MixedConvOp):
        return op.kernels, op.stride, tuple(_pad_literal(pad) for pad in op.paddings)
    return (op.kernel,), op.stride, (_padding(op),)


def _spatial_op(block: BlockPlan, name: str) -> ConvOp | MixedConvOp:
    """The block's k×k conv, after checking what the generated class assumes of the others.

    A row gives one kernel, stride, padding, activation and norm setting: every other conv
    must be 1×1 with stride 1 and no padding, the projection without activation, and all must
    share the norm setting. The plan builds blocks so; this says so aloud.
    """
    convs = [op for op in block.ops if isinstance(op, ConvOp | MixedConvOp)]
    spatial = next(op for op in convs if op.role == SPATIAL_ROLES[name])
    for op in convs:
        kernels, stride, paddings = _shape_of(op)
        plain = op is spatial or (set(kernels), stride, set(paddings)) == ({1}, 1, {"0"})
        if op.role == "s2d":  # the class makes it from the block's input width
            plain = (kernels, stride, op.out_channels) == ((2,), 2, 4 * op.in_channels)
        act = None if op.role == "project" else spatial.act
        same_norm = (op.bn_eps, op.bn_momentum, op.norm, op.norm_group_size) == (
            spatial.bn_eps,
            spatial.bn_momentum,
            spatial.norm,
            spatial.norm_group_size,
        )
        if not (plain and op.act == act and same_norm):
            raise BuildError(f"code generation cannot express {op.path} as a {name} layer")
    return spatial


def _rate(rate: float) -> str:
    """A drop-path rate to 12 significant digits: `0.055`, not `0.05500000000000001`.

    The plan's rates are products like 0.2 · 11/40; the float noise they carry changes nothing
    that a Bernoulli draw could show.
    """
    return repr(float(f"{rate:.12g}"))


def _groups_arg(block: BlockPlan) -> int | None:
    """The groups of the block's k×k conv where its class would not make them by itself."""
    name = block_class(block)
    if name not in _DEFAULT_GROUPS:
        return None
    spatial = next(op for op in block.ops if op.role == SPATIAL_ROLES[name])
    if not isinstance(spatial, ConvOp):
        return None
    default = _DEFAULT_GROUPS[name]
    own = spatial.in_channels if default is None else default  # None: depthwise
    return None if spatial.groups == own else spatial.groups


def _groups(block: BlockPlan, role: str) -> int:
    """How many channel slices the block's 1×1 conv of `role` has (1 where it has none)."""
    op = next((op for op in block.ops if op.role == role), None)
    return len(op.kernels) if isinstance(op, MixedConvOp) else 1


def _attention_call(block: BlockPlan) -> str:
    """The constructor call of a multi-query attention block, from the plan's ops."""
    norm = next(op for op in block.ops if isinstance(op, NormOp))
    attn = next(op for op in block.ops if isinstance(op, AttentionOp))
    downs = attn.downs
    kernel, stride, padding = 1, 1, "0"
    if downs:
        down = downs[0]
        kernel, stride, padding = down.kernel, down.stride, _padding(down)
        if any((op.bn_eps, op.bn_momentum) != (norm.bn_eps, norm.bn_momentum) for op in downs):
            raise BuildError(f"code generation cannot express {attn.path}'s batch norms")
    args = [
        str(attn.in_channels),
        str(attn.out_channels),
        str(attn.heads),
        str(attn.key_dim),
        str(attn.value_dim),
        str(stride),
        str(kernel),
        padding,
        repr(norm.bn_eps),
        repr(norm.bn_momentum),
        _rate(block.drop_path),
        str(block.residual),
    ]
    scale = next((op for op in block.ops if isinstance(op, LayerScaleOp)), None)
    if scale is not None:
        args.append(f"layer_scale={scale.init!r}")
    return f"AttentionBlock({', '.join(args)})"


def _universal_call(block: BlockPlan, used: _Used) -> str:
    """The constructor call of a universal inverted bottleneck, from the plan's ops."""
    convs = {op.role: op for op in block.ops if isinstance(op, ConvOp)}
    expand = convs["expand"]
    spatial = [convs.get(role) for role in ("start", "depthwise", "end")]
    for op in convs.values():
        act = expand.act if op.role in ("expand", "depthwise") else None
        same = (op.bn_eps, op.bn_momentum, op.norm) == (
            expand.bn_eps, expand.bn_momentum, expand.norm
        )
        if op.act != act or not same or (op.role in ("expand", "project") and op.kernel != 1):
            raise BuildError(f"code generation cannot express {op.path} as a uir layer")
    pools = block.pools
    kernels = ", ".join(str(op.kernel if op else 0) for op in spatial)
    strides = ", ".join(str(_stride(op, pools) if op else 1) for op in spatial)
    paddings = ", ".join(_padding(op) if op else "0" for op in spatial)
    args = [
        str(block.in_channels),
        str(block.mid_channels),
        str(block.out_channels),
        f"({kernels})",
        f"({strides})",
        f"({paddings})",
    ]
    args += _squeeze_and_conv_args(block, used, expand, squeeze=True)
    scale = next((op for op in block.ops if isinstance(op, LayerScaleOp)), None)
    if scale is not None:
        args.append(f"layer_scale={scale.init!r}")
    args += _norm_args(expand, used)
    args += [f'aa="{pool.kind}"' for pool in pools.values()]
    return f"UniversalInvertedResidual({', '.join(args)})"


def _squeeze_and_conv_args(
    block: BlockPlan, used: _Used, conv: ConvOp | MixedConvOp, *, squeeze: bool
) -> list[str]:
    """The arguments every block class takes after its shape, in order: the SE width (and
    its activation where the net needs it; `squeeze`: the class takes them), `conv`'s
    activation and batch-norm settings, the drop-path rate, the residual flag, then the SE
    gate and the global-context switch where they are not the default."""
    args: list[str] = []
    se = next((op for op in block.ops if isinstance(op, SqueezeExciteOp)), None)
    if squeeze and used.squeeze_excite:
        args.append(str(block.se_channels))
        if used.se_options:
            se_act = se.act if se is not None else conv.act
            args.append(f'"{se_act}"' if se_act else "None")
    args += [
        f'"{conv.act}"' if conv.act else "None",
        repr(conv.bn_eps),
        repr(conv.bn_momentum),
        _rate(block.drop_path),
        str(block.residual),
    ]
    if se is not None and se.gate != "sigmoid":
        args.append(f'gate="{se.gate}"')
    if used.context_arg and isinstance(se, GlobalContextOp):
        args.append("context=True")
    return args


def _block_call(block: BlockPlan, used: _Used) -> str:
    """The constructor call of one block, every argument a literal from the plan."""
    name = block_class(block)
    if name == "UniversalInvertedResidual":
        return _universal_call(block, used)
    if name == "AttentionBlock":
        return _attention_call(block)
    spatial = _spatial_op(block, name)
    kernels, _, paddings = _shape_of(spatial)
    stride = _stride(spatial, block.pools)
    args = [str(block.in_channels)]
    if name not in ("ConvBlock", "SeparableConv"):
        args.append(str(block.mid_channels))
    args.append(str(block.out_channels))
    if name == "MixConv":
        args += [
            f"[{', '.join(map(str, kernels))}]",
            str(stride),
            f"[{', '.join(paddings)}]",
            str(_groups(block, "expand")),
            str(_groups(block, "project")),
        ]
    else:
        args += [str(kernels[0]), str(stride), paddings[0]]
    if name == "CondConv":
        assert isinstance(spatial, ConvOp)
        args.append(str(spatial.experts))
    args += _squeeze_and_conv_args(block, used, spatial, squeeze=name != "ConvBlock")
    if _keeps_expansion(block):
        args.append("full=True")
    groups = _groups_arg(block)
    if groups is not None:
        args.append(f"groups={groups}")
    if isinstance(spatial, ConvOp):
        args += _norm_args(spatial, used)
    s2d = next((op for op in block.ops if op.role == "s2d"), None)
    if isinstance(s2d, ConvOp):
        args.append(f"s2d={_padding(s2d)}")
    args += [f'aa="{pool.kind}"' for pool in block.pools.values()]
    return f"{name}({', '.join(args)})"


def _stride(op: ConvOp | MixedConvOp, pools: dict[str, PoolOp]) -> int:
    """The stride a generated block passes for `op`: the pool's after an anti-aliased conv,
    which then runs at stride 1 itself (`ConvBNAct`'s `aa`)."""
    pool = pools.get(op.path)
    return pool.stride if pool is not None else op.stride


def _stage_comment(stage: StagePlan) -> str:
    expand = "" if stage.kind in UNEXPANDED else f" e{stage.expand:g}"
    return (
        f"# {stage.index} {stage.name!r}: {stage.kind}{expand} k{kernel_text(stage.kernel)} "
        f"s{stage.stride} c{stage.out_channels} x{stage.repeats}, "
        f"{stage.in_size}×{stage.in_size} → {stage.out_size}×{stage.out_size}"
    )


def _signatures(used: _Used) -> list[str]:
    """Comment lines naming the arguments of the block rows below them."""
    squeeze = " squeeze," if used.squeeze_excite else ""
    if used.squeeze_excite and used.se_options:
        squeeze += " se_act,"
    lines = []
    for name in used.blocks:
        if name == "AttentionBlock":
            lines += [
                "# AttentionBlock(in, out, heads, key_dim, value_dim, kv_stride, kernel, padding,",
                "#                bn_eps, bn_momentum, drop_rate, residual, layer_scale=)",
            ]
            continue
        channels = "in, out" if name in ("ConvBlock", "SeparableConv") else "in, mid, out"
        extra = "" if name == "ConvBlock" else squeeze
        shape = {
            "MixConv": "kernels, stride, paddings, expand_groups, project_groups,",
            "CondConv": "kernel, stride, padding, experts,",
            "UniversalInvertedResidual": "kernels, strides, paddings,",
        }.get(name, "kernel, stride, padding,")
        options = [
            *([" gate="] if name != "ConvBlock" and used.gates not in ((), ("sigmoid",)) else []),
            *([" context="] if name != "ConvBlock" and used.context_arg else []),
            *([" full="] if name == "MBConv" and used.full else []),
            *([" groups="] if used.grouped and name in _DEFAULT_GROUPS else []),
            *([" norm="] if (used.unnormalised or used.norms) and name in _NORM_BLOCKS else []),
            *([" norm_size="] if used.norms and name in _NORM_BLOCKS else []),
            *([" s2d="] if name in ("MBConv", "SeparableConv") and used.s2d else []),
            *([" layer_scale="] if name == "UniversalInvertedResidual" and used.layer_scale
              else []),
            *([" aa="] if used.pools else []),
        ]
        more = f",{','.join(options)}" if options else ""
        lines += [
            f"# {name}({channels}, {shape}{extra}",
            f"#{' ' * len(name)}  act, bn_eps, bn_momentum, drop_rate, residual{more})",
        ]
    return lines


def _with_comments(rows: Iterable[tuple[str, str]], indent: str) -> list[str]:
    """Code lines with their comments lined up in one column."""
    rows = list(rows)
    width = max(len(code) for code, _ in rows)
    return [f"{indent}{code.ljust(width)}  # {comment}" for code, comment in rows]


def _forward(plan: Plan) -> list[str]:
    def shape(channels: int, size: int | None = None) -> str:
        return f"(N, {channels}, {size}, {size})" if size is not None else f"(N, {channels})"

    head = plan.head
    last = plan.stages[-1]
    features = plan.classifier.in_features
    if head is None:  # `head none`: the last stage is pooled as it is
        ending = [("x = x.mean((2, 3))", shape(features))]
    elif plan.pooled_head:  # the global pool first, then the head on a 1×1 map
        ending = [
            ("x = x.mean((2, 3), keepdim=True)", shape(last.out_channels, 1)),
            ("x = self.head(x)", shape(features, 1)),
            ("x = x.flatten(1)", shape(features)),
        ]
    else:
        ending = [
            ("x = self.head(x)", shape(features, head.out_size)),
            ("x = x.mean((2, 3))", shape(features)),  # global average pool
        ]
    rows = [
        ("x = self.stem(x)", shape(plan.stem.out_channels, plan.stem.out_size)),
        *(
            (f"x = self.stages[{s.index}](x)", shape(s.out_channels, s.out_size))
            for s in plan.stages
        ),
        *ending,
        ("x = self.dropout(x)", shape(features)),
        ("x = self.classifier(x)", shape(plan.classifier.classes)),
    ]
    size = plan.resolution
    return [
        f"    def forward(self, x: torch.Tensor) -> torch.Tensor:  "
        f"# {shape(plan.in_channels, size)}",
        *_with_comments(rows, " " * 8),
        "        return x",
    ]


_INIT_WEIGHTS = '''\
    def _init_weights(self) -> None:
        """Initialise as torchvision's EfficientNet does."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                bound = 1.0 / math.sqrt(module.out_features)
                nn.init.uniform_(module.weight, -bound, bound)
                nn.init.zeros_(module.bias)'''


def _model(plan: Plan, used: _Used) -> str:
    classifier = plan.classifier
    lines = [
        f"class {class_name(plan)}(nn.Module):",
        f'    """{_docstring_body(_title(plan))}."""',
        "",
        f"    network = {plan.name!r}",
        f"    scaling = {plan.scaling.describe()!r}",
        f"    resolution = {plan.resolution}",
        "",
        "    def __init__(self) -> None:",
        "        super().__init__()",
        f"        self.stem = {_conv_call(plan.stem, used)}",
        *(f"        {line}" for line in _signatures(used)),
        "        self.stages = nn.ModuleList([",
    ]
    for stage in plan.stages:
        lines.append(f"            {_stage_comment(stage)}")
        lines.append("            Stage([")
        lines += [f"                {_block_call(block, used)}," for block in stage.blocks]
        lines.append("            ]),")
    lines.append("        ])")
    if plan.head is not None:
        lines.append(f"        self.head = {_conv_call(plan.head, used)}")
    lines += [
        f"        self.dropout = nn.Dropout({classifier.dropout!r})",
        f"        self.classifier = nn.Linear({classifier.in_features}, {classifier.classes})",
        "        self._init_weights()",
        "",
        _INIT_WEIGHTS,
        "",
        *_forward(plan),
    ]
    return "\n".join(lines)


# ---- the whole file -------------------------------------------------------------------------


def _main(plan: Plan) -> str:
    """`python model.py`: build the model, print what it is, run one forward pass.

    So a user sent the file can check it in one command: the parameter count is compared with
    the one effdsl's cost model computed when the file was generated.
    """
    name, size, channels = class_name(plan), plan.resolution, plan.in_channels
    params = cost(plan).params
    shape = f"{channels}×{size}×{size}"
    return f"""\
def main() -> None:
    \"\"\"Build {name}, print its size, and run one forward pass on random input.\"\"\"
    model = {name}().eval()
    params = sum(p.numel() for p in model.parameters())
    check = "as generated" if params == {params:_} else "expected {params:,}"
    print(f"{name}: {{params:,}} parameters ({{check}}), input {shape}")
    with torch.no_grad():
        logits = model(torch.randn(1, {channels}, {size}, {size}))
    print(f"one forward pass on random input: output {{tuple(logits.shape)}}")


if __name__ == "__main__":
    main()"""


@checked
def to_python(plan: Plan, *, source_name: str | None = None, spec_text: str | None = None) -> str:
    """The standalone PyTorch source of `plan`: deterministic, needs only torch to run.

    `source_name` (the spec's path) and `spec_text` (its text), when given, are recorded in the
    module's docstring.
    """
    used = _Used.of(plan)
    parts = [
        _header(plan, source_name, spec_text),
        _IMPORTS + "\n\n" + _activations(used),  # isort: one blank line after imports
        _DROP_PATH,
        *([_LAYER_NORM] if used.layer_norm else []),
        *([_EVO_NORM] if "evonorm" in used.norms else []),
        *([_norm_layer(used)] if used.norms else []),
        *([_downsample(used)] if used.pools else []),
        _conv_bn_act(used),
        *([_squeeze_excite(used)] if used.squeeze_excite else []),
        *_block_classes(used),
        _STAGE,
        _model(plan, used),
        _main(plan),
    ]
    header, *code = parts
    return header + "\n\n" + "\n\n\n".join(code) + "\n"
