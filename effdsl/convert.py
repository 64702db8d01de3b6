"""Checkpoint conversion between effdsl's state_dict layout and torchvision's or timm's.

    ours = convert_state_dict(tv.state_dict(), network=net, source="torchvision")
    theirs = convert_state_dict(model.state_dict(), network=net, target="timm")

The mapping is derived from the plan. Walking its ops in forward order, each op's modules in
effdsl (`stages.3.blocks.1.expand.conv`, `.bn`) are paired with the modules that play the same
part in the other library's EfficientNet / EfficientNetV2:

    effdsl                          torchvision                  timm
    stem.{conv,bn}                  features.0.{0,1}             conv_stem, bn1
    stages.i.blocks.j.<op k>.conv   features.<i+1>.j.block.k.0   blocks.i.j.conv_pw|conv_dw|...
    stages.i.blocks.j.<op k>.bn     features.<i+1>.j.block.k.1   blocks.i.j.bn<n>
    stages.i.blocks.j.se.reduce     features.<i+1>.j.block.k.fc1 blocks.i.j.se.conv_reduce
    stages.i.blocks.j.se.attn       (no global context)          blocks.i.j.se.conv_attn
    stages.i.blocks.j.se.norm       (no global context)          blocks.i.j.se.mlp_scale.norm
    stages.i.blocks.j.<op>.convs.g  (no MixConv)                 blocks.i.j.conv_pw.g (MixConv)
    stages.i.blocks.j.<op>.weight   (no CondConv)                blocks.i.j.conv_pw.weight
    stages.i.blocks.j.routing       (no CondConv)                blocks.i.j.routing_fn
    head.{conv,bn}                  features.<S+1>.{0,1}         conv_head, bn2
    classifier                      classifier.1                 classifier

torchvision's MobileNetV2 (`torchvision.mobilenet_v2`) numbers its blocks in one flat
`features` list, each block's layers `conv.k.{0,1}` and the projection `conv.<k>` with its batch
norm `conv.<k+1>`; MnasNet (`torchvision.mnasnet`) is one flat `layers` list: stem `0`/`1`, the
first stage's single separable block `3`/`4`, `6`/`7`, one `Sequential` per later stage at
`<stage + 7>`, whose blocks' layers are `layers.{0,1,3,4,6,7}`, and the head `14`/`15`.

Whatever the norm (batch, group, layer, EvoNorm-S0), it is the `bn` child and takes the
other library's norm module's tensors: timm's `GroupNormAct`, `LayerNormAct2d` and
`EvoNorm2dS0` sit where its batch norms do (`bn1`, ...), with their `weight`, `bias` and
EvoNorm's `v`.

A network whose head comes after the global pool (`head ... pool=first`) is laid out as the
libraries' MobileNetV3 classes lay it out: timm names the head `conv_head` (with `bias`, or
`norm_head` after it); torchvision numbers every block in one flat `features` list
(`features.<n+1>.block.k`, a lone conv block `features.<n+1>.{0,1}`) and has the head as a
`Linear` (`classifier.0`) before the last one (`classifier.3`), whose weight is the head's
1×1 conv weight reshaped.

Every tensor's shape is taken from the op, so a checkpoint is checked key by key and shape by
shape before anything is renamed. No torch: tensors pass through; only `.shape` is read and,
where the layouts' shapes differ, `.reshape` called.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from effdsl import ast
from effdsl.errors import CheckpointError
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
    lower,
)

LIBRARIES = ("torchvision", "timm")

#: torchvision lays its mobile nets out three ways: EfficientNet's and MobileNetV3's
#: (`torchvision`, told apart by the head), MobileNetV2's and MnasNet's. `source="torchvision"`
#: tells them apart by a key only that layout has; `target=` names the layout.
TORCHVISION_LAYOUTS = {
    "torchvision.mobilenet_v2": "features.1.conv.0.0.weight",
    "torchvision.mnasnet": "layers.0.weight",
}

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Entry:
    """One tensor under its effdsl key and the other library's key, with its shape."""

    ours: str
    theirs: str
    shape: Shape
    optional: bool = False  # batch norm's num_batches_tracked: torch fills it in when absent
    their_shape: Shape | None = None  # where the other library's tensor has another shape

    def shape_in(self, into_ours: bool) -> Shape:
        """The shape of the tensor being converted: theirs going into effdsl's layout."""
        return self.their_shape or self.shape if into_ours else self.shape


Move = tuple[str, str, Entry]  # (key in the given state_dict, key in the result, the tensor)


# ---- tensors of each kind of module ---------------------------------------------------------


def _conv_entries(ours: str, theirs: str, op: ConvOp, linear: bool = False) -> Iterator[Entry]:
    """A conv's weight (and bias, where it has one); `linear`: theirs is a `Linear` layer."""
    shape = (op.out_channels, op.in_channels // op.groups, op.kernel, op.kernel)
    their_shape = shape[:2] if linear else None
    yield Entry(f"{ours}.weight", f"{theirs}.weight", shape, their_shape=their_shape)
    if op.bias:
        yield Entry(f"{ours}.bias", f"{theirs}.bias", shape[:1])


def _bn_entries(ours: str, theirs: str, channels: int) -> Iterator[Entry]:
    for name in ("weight", "bias", "running_mean", "running_var"):
        yield Entry(f"{ours}.{name}", f"{theirs}.{name}", (channels,))
    yield Entry(f"{ours}.num_batches_tracked", f"{theirs}.num_batches_tracked", (), optional=True)


def _norm_entries(ours: str, theirs: str, op: ConvOp) -> Iterator[Entry]:
    """The tensors of the norm after `op`'s conv: batch norm's with its statistics; group and
    layer norm's weight and bias; EvoNorm-S0's and, with its non-linearity, `v`."""
    if op.norm == "batch":
        yield from _bn_entries(ours, theirs, op.out_channels)
    else:
        names = ("weight", "bias", "v") if op.norm_acts else ("weight", "bias")
        for name in names:
            yield Entry(f"{ours}.{name}", f"{theirs}.{name}", (op.out_channels,))


def _affine_entries(ours: str, theirs: str, weight: Shape) -> Iterator[Entry]:
    """Weight and bias of a layer with a bias (SE's 1×1 convs, the classifier)."""
    yield Entry(f"{ours}.weight", f"{theirs}.weight", weight)
    yield Entry(f"{ours}.bias", f"{theirs}.bias", weight[:1])


def _op_entries(op: Op, names: Mapping[str, str]) -> Iterator[Entry]:
    """The tensors of `op`, given the other library's name of each of its child modules."""
    if isinstance(op, ConvOp) and op.experts:
        # CondConv: one row of flattened kernel per expert, directly on the op's module
        weights = op.out_channels * (op.in_channels // op.groups) * op.kernel * op.kernel
        yield Entry(f"{op.path}.weight", f"{names['conv']}.weight", (op.experts, weights))
        yield from _bn_entries(f"{op.path}.bn", names["bn"], op.out_channels)
    elif isinstance(op, ConvOp):
        yield from _conv_entries(f"{op.path}.conv", names["conv"], op, "linear" in names)
        if op.norm != "none":  # else there is no norm module, and maybe no name for one
            yield from _norm_entries(f"{op.path}.bn", names["bn"], op)
    elif isinstance(op, MixedConvOp):
        for g, (kernel, cin, cout, groups, _) in enumerate(op.slices()):
            shape = (cout, cin // groups, kernel, kernel)
            yield Entry(f"{op.path}.convs.{g}.weight", f"{names['conv']}.{g}.weight", shape)
        yield from _bn_entries(f"{op.path}.bn", names["bn"], op.out_channels)
    elif isinstance(op, RoutingOp):
        yield from _affine_entries(op.path, names["routing"], (op.experts, op.channels))
    elif isinstance(op, LayerScaleOp):
        yield Entry(f"{op.path}.gamma", f"{names['layer_scale']}.gamma", (op.channels,))
    elif isinstance(op, NormOp):
        yield from _bn_entries(op.path, names["norm"], op.channels)
    elif isinstance(op, AttentionOp):
        yield from _attention_entries(op, names["attn"])
    elif isinstance(op, PoolOp):  # anti-aliasing: a fixed filter, no tensors
        return
    else:
        if isinstance(op, GlobalContextOp):
            yield from _affine_entries(f"{op.path}.attn", names["attn"], (1, op.channels, 1, 1))
        yield from _affine_entries(
            f"{op.path}.reduce", names["reduce"], (op.squeeze, op.channels, 1, 1)
        )
        if isinstance(op, GlobalContextOp):
            for name in ("weight", "bias"):
                yield Entry(f"{op.path}.norm.{name}", f"{names['norm']}.{name}", (op.squeeze,))
        yield from _affine_entries(
            f"{op.path}.expand", names["expand"], (op.channels, op.squeeze, 1, 1)
        )


def _attention_entries(op: AttentionOp, theirs: str) -> Iterator[Entry]:
    """Multi-query attention, laid out as timm's `MultiQueryAttention2d`: `query.proj`;
    `key.down_conv`, `key.norm`, `key.proj`; the same for `value`; `output.proj`."""

    def projection(name: str, their_name: str, cout: int, cin: int) -> Entry:
        return Entry(f"{op.path}.{name}.weight", f"{theirs}.{their_name}.proj.weight",
                     (cout, cin, 1, 1))

    yield projection("query", "query", op.heads * op.key_dim, op.in_channels)
    for name, down, width in (
        ("key", op.key_down, op.key_dim),
        ("value", op.value_down, op.value_dim),
    ):
        if down is not None:
            yield from _conv_entries(f"{down.path}.conv", f"{theirs}.{name}.down_conv", down)
            yield from _bn_entries(f"{down.path}.bn", f"{theirs}.{name}.norm", down.out_channels)
        yield projection(name, name, width, op.in_channels)
    yield projection("output", "output", op.out_channels, op.heads * op.value_dim)


# ---- the other libraries' names of each op's modules ----------------------------------------


def _torchvision_names(plan: Plan) -> Iterator[tuple[Op, dict[str, str]]]:
    """torchvision: `features` holds the stem, one Sequential per stage, and the head; a block's
    layers are `block.0`, `block.1`, ... in forward order (Conv2dNormActivation: `0` conv,
    `1` batch norm; SqueezeExcitation: `fc1`, `fc2`)."""

    def children(op: Op, prefix: str) -> dict[str, str]:
        if isinstance(op, LayerScaleOp | NormOp | AttentionOp) or op.role in ("start", "end"):
            raise CheckpointError(
                f"torchvision has no MobileNetV4 block like `{op.path}` (universal inverted "
                "bottleneck, attention)",
                hint="convert timm checkpoints of such networks with source='timm'",
            )
        if isinstance(op, MixedConvOp | RoutingOp) or (isinstance(op, ConvOp) and op.experts):
            raise CheckpointError(
                f"torchvision has no {type(op).__name__} like `{op.path}` ("
                + ("CondConv" if not isinstance(op, MixedConvOp) else "MixConv")
                + ")",
                hint="convert timm checkpoints of such networks with source='timm'",
            )
        if isinstance(op, GlobalContextOp):
            raise CheckpointError(
                f"torchvision has no global context (GCNet) like `{op.path}`",
                hint="convert timm checkpoints of such networks with source='timm'",
            )
        if isinstance(op, SqueezeExciteOp):
            return {"reduce": f"{prefix}.fc1", "expand": f"{prefix}.fc2"}
        return {"conv": f"{prefix}.0", "bn": f"{prefix}.1"}

    yield plan.stem, children(plan.stem, "features.0")
    flat = plan.pooled_head  # MobileNetV3: one flat list of blocks
    for block in plan.blocks():
        where = (
            f"features.{block.number + 1}" if flat else f"features.{block.stage + 1}.{block.index}"
        )
        for pool in block.pools.values():
            raise CheckpointError(
                f"torchvision has no anti-aliased downsampling like `{pool.path}` "
                f"(aa={pool.kind})",
                hint="convert timm checkpoints of such networks with source='timm'",
            )
        if flat and len(block.layers) == 1:  # a lone Conv2dNormActivation
            yield block.layers[0], children(block.layers[0], where)
            continue
        for k, op in enumerate(block.layers):
            yield op, children(op, f"{where}.block.{k}")
    head = _head_conv(plan, "torchvision")
    if flat:
        yield head, {"conv": "classifier.0", "linear": "yes"}
    else:
        yield head, children(head, f"features.{len(plan.stages) + 1}")


def _head_conv(plan: Plan, library: str) -> ConvOp:
    """The head conv, which every torchvision layout has (timm's may be missing: `head none`)."""
    if plan.head is None:
        raise CheckpointError(
            f"`{plan.name}` has no head conv (`head none`), and {library}'s models all have one"
        )
    return plan.head


def _timm_conv_name(block: BlockPlan, op: ConvOp | MixedConvOp) -> str:
    """timm's name of a block's conv: ConvBnAct `conv`; DepthwiseSeparableConv `conv_dw`,
    `conv_pw`; InvertedResidual (and CondConvResidual) `conv_pw`, `conv_dw`, `conv_pwl`;
    EdgeResidual `conv_exp`, `conv_pwl`. A MixConv's slices are `<name>.0`, `<name>.1`, ..."""
    expanded = any(other.role == "expand" for other in block.ops)
    if op.role == "expand":
        return "conv_exp" if block.kind == "fused_mbconv" else "conv_pw"
    if op.role == "project":
        return "conv_pwl" if expanded else "conv_pw"
    if op.role == "pointwise":
        return "conv_pw"
    return "conv_dw" if op.role == "depthwise" else "conv"


#: timm's `UniversalInvertedResidual` (MobileNetV4): each conv a ConvNormAct (`conv`, `bn`).
_TIMM_UIR = {
    "start": "dw_start",
    "expand": "pw_exp",
    "depthwise": "dw_mid",
    "project": "pw_proj",
    "end": "dw_end",
}


def _timm_names(plan: Plan) -> Iterator[tuple[Op, dict[str, str]]]:
    """timm: `conv_stem`/`bn1`, `blocks.i.j`, `conv_head`/`bn2`; inside a block the batch
    norms are numbered `bn1`, `bn2`, ... in forward order (a space-to-depth conv's is
    `bn_s2d`, with `conv_s2d`) and the SE module is `se`; a
    universal inverted bottleneck's convs are ConvNormAct modules named by `_TIMM_UIR`."""
    yield plan.stem, {"conv": "conv_stem", "bn": "bn1"}
    for block in plan.blocks():
        prefix = f"blocks.{block.stage}.{block.index}"
        convs = 0
        for op in block.layers:
            if isinstance(op, LayerScaleOp):
                yield op, {"layer_scale": f"{prefix}.layer_scale"}
            elif isinstance(op, NormOp):
                yield op, {"norm": f"{prefix}.norm"}
            elif isinstance(op, AttentionOp):
                yield op, {"attn": f"{prefix}.attn"}
            elif block.kind == "uir" and op.role in _TIMM_UIR:
                module = f"{prefix}.{_TIMM_UIR[op.role]}"
                yield op, {"conv": f"{module}.conv", "bn": f"{module}.bn"}
            elif isinstance(op, GlobalContextOp):  # timm's GlobalContext: its MLP `mlp_scale`
                yield op, {
                    "attn": f"{prefix}.se.conv_attn",
                    "reduce": f"{prefix}.se.mlp_scale.fc1",
                    "norm": f"{prefix}.se.mlp_scale.norm",
                    "expand": f"{prefix}.se.mlp_scale.fc2",
                }
            elif isinstance(op, SqueezeExciteOp):
                yield (
                    op,
                    {"reduce": f"{prefix}.se.conv_reduce", "expand": f"{prefix}.se.conv_expand"},
                )
            elif isinstance(op, RoutingOp):
                yield op, {"routing": f"{prefix}.routing_fn"}
            elif op.role == "s2d":  # before the block's numbered norms
                yield op, {"conv": f"{prefix}.conv_s2d", "bn": f"{prefix}.bn_s2d"}
            else:
                assert isinstance(op, ConvOp | MixedConvOp)  # `layers` holds no pools
                convs += 1
                conv = f"{prefix}.{_timm_conv_name(block, op)}"
                yield op, {"conv": conv, "bn": f"{prefix}.bn{convs}"}
    # EfficientNet's head is `conv_head`, `bn2`; MobileNetV3's, after the pool, `norm_head`
    if plan.head is not None:  # `head none`: timm's `num_features=0`, no conv_head
        yield plan.head, {"conv": "conv_head", "bn": "norm_head" if plan.pooled_head else "bn2"}


def _mobilenet_v2_names(plan: Plan) -> Iterator[tuple[Op, dict[str, str]]]:
    """torchvision's MobileNetV2: `features.0` the stem, `features.<n+1>.conv` block n's
    layers (`k.0` conv, `k.1` norm; the projection `k` and its norm `k+1`), then the head."""
    _no_squeeze(plan, "torchvision.mobilenet_v2")
    yield plan.stem, {"conv": "features.0.0", "bn": "features.0.1"}
    for block in plan.blocks():
        where = f"features.{block.number + 1}.conv"
        *layers, project = block.layers
        for k, op in enumerate(layers):
            yield op, {"conv": f"{where}.{k}.0", "bn": f"{where}.{k}.1"}
        k = len(layers)
        yield project, {"conv": f"{where}.{k}", "bn": f"{where}.{k + 1}"}
    last = plan.block_count + 1
    head = _head_conv(plan, "torchvision.mobilenet_v2")
    yield head, {"conv": f"features.{last}.0", "bn": f"features.{last}.1"}


def _mnasnet_names(plan: Plan) -> Iterator[tuple[Op, dict[str, str]]]:
    """torchvision's MnasNet: one flat `layers` list (see the module's docstring)."""
    _no_squeeze(plan, "torchvision.mnasnet")
    first = plan.stages[0].blocks
    if len(first) != 1 or len(first[0].layers) != 2 or len(plan.stages) != 7:
        raise CheckpointError(
            f"`{plan.name}` is not laid out as torchvision's MnasNet: a first stage of one "
            "separable block (depthwise, pointwise), then six stages"
        )
    yield plan.stem, {"conv": "layers.0", "bn": "layers.1"}
    for op, at in zip(first[0].layers, (3, 6), strict=True):
        yield op, {"conv": f"layers.{at}", "bn": f"layers.{at + 1}"}
    for stage in plan.stages[1:]:
        for block in stage.blocks:
            where = f"layers.{stage.index + 7}.{block.index}.layers"
            if len(block.layers) != 3:
                raise CheckpointError(
                    f"`{block.path}` has {len(block.layers)} layers where torchvision's MnasNet "
                    "blocks have three convs"
                )
            for op, at in zip(block.layers, (0, 3, 6), strict=True):
                yield op, {"conv": f"{where}.{at}", "bn": f"{where}.{at + 1}"}
    yield _head_conv(plan, "torchvision.mnasnet"), {"conv": "layers.14", "bn": "layers.15"}


def _no_squeeze(plan: Plan, library: str) -> None:
    """MobileNetV2 and MnasNet have no squeeze-and-excitation, MixConv or CondConv layers."""
    for block in plan.blocks():
        for op in block.ops:
            if not isinstance(op, ConvOp) or op.experts or op.norm != "batch":
                raise CheckpointError(
                    f"{library} has no layer like `{op.path}` ({type(op).__name__})",
                    hint="convert such networks' checkpoints with source='timm'",
                )


def _no_space_to_depth(plan: Plan, library: str) -> None:
    """torchvision has no EfficientNet-X: no block starts with space-to-depth."""
    for op in plan.ops():
        if op.role == "s2d":
            raise CheckpointError(
                f"{library} has no space-to-depth conv like `{op.path}` (EfficientNet-X)",
                hint="convert such networks' checkpoints with source='timm'",
            )


_NAMES = {
    "torchvision": _torchvision_names,
    "timm": _timm_names,
    "torchvision.mobilenet_v2": _mobilenet_v2_names,
    "torchvision.mnasnet": _mnasnet_names,
}


def _classifier_name(plan: Plan, library: str) -> str:
    if library == "timm":
        return "classifier"
    if library in TORCHVISION_LAYOUTS:
        return "classifier.1"  # Dropout, Linear
    # torchvision's classifier: Dropout, Linear; MobileNetV3's: Linear, Hardswish, Dropout, Linear
    return "classifier.3" if plan.pooled_head else "classifier.1"


def layout(plan: Plan, library: str) -> tuple[Entry, ...]:
    """Every tensor of `plan`'s state_dict, in order, under effdsl's and `library`'s keys."""
    if not isinstance(library, str) or library not in _NAMES:  # a dict is no name, unhashable
        raise CheckpointError(
            f"no checkpoint layout `{library}`",
            hint=f"use one of {', '.join((*LIBRARIES, *TORCHVISION_LAYOUTS))}",
        )
    if library != "timm":
        _no_space_to_depth(plan, library)
    entries = [entry for op, names in _NAMES[library](plan) for entry in _op_entries(op, names)]
    classifier = plan.classifier
    entries.extend(
        _affine_entries(
            classifier.path,
            _classifier_name(plan, library),
            (classifier.classes, classifier.in_features),
        )
    )
    return tuple(entries)


# ---- conversion -----------------------------------------------------------------------------


def convert_state_dict(
    state_dict: Mapping[str, Any],
    *,
    network: ast.Network | Plan,
    source: str | None = None,
    target: str | None = None,
) -> dict[str, Any]:
    """Rename `state_dict` from `source`'s layout to effdsl's, or from effdsl's to `target`'s.

    `network` (a scaled `Network`, or a `Plan`) fixes the keys and shapes expected. The tensors
    are not copied. Raises `CheckpointError` naming the first missing or unexpected key, or the
    first key whose shape differs from the network's.
    """
    if source is not None and target is None:
        library, into_ours = source, True
    elif target is not None and source is None:
        library, into_ours = target, False
    else:
        raise CheckpointError(
            "give exactly one of source= (convert into effdsl's layout) and target= (out of it)",
            hint=f"libraries: {', '.join((*LIBRARIES, *TORCHVISION_LAYOUTS))}",
        )
    plan = _plan(network)
    if library == "torchvision" and into_ours:
        library = _torchvision_layout(state_dict)
    entries = layout(plan, library)
    moves = [(e.theirs, e.ours, e) if into_ours else (e.ours, e.theirs, e) for e in entries]
    from_layout = library if into_ours else "effdsl"
    _check_keys(state_dict, moves, from_layout, plan.name)
    _check_shapes(state_dict, moves, plan.name, into_ours)
    return {
        new: _reshaped(state_dict[old], entry.shape_in(not into_ours))
        for old, new, entry in moves
        if old in state_dict
    }


def _torchvision_layout(state_dict: Mapping[str, Any]) -> str:
    """Which of torchvision's layouts a checkpoint is in, by a key only that layout has."""
    for name, key in TORCHVISION_LAYOUTS.items():
        if key in state_dict:
            return name
    return "torchvision"


def _reshaped(tensor: Any, shape: Shape) -> Any:
    """`tensor` itself, or a view of it in `shape` where the layouts' shapes differ."""
    return tensor if tuple(tensor.shape) == shape else tensor.reshape(shape)


def _plan(network: object) -> Plan:
    if isinstance(network, Plan):
        return network
    if isinstance(network, ast.Network):
        return lower(network)
    raise CheckpointError(
        f"network= must be an effdsl Network or Plan, not {type(network).__name__}"
    )


# A key every layout has, by which a checkpoint's layout can be recognised.
_STEM_KEYS = {
    "effdsl": "stem.conv.weight",
    "torchvision": "features.0.0.weight",
    "timm": "conv_stem.weight",
}


def _layout_hint(state_dict: Mapping[str, Any], expected: str) -> str | None:
    """A guess at what went wrong when the keys do not match, if the checkpoint says."""
    for name, key in _STEM_KEYS.items():
        if name == expected:
            continue
        if key in state_dict:
            if name == "effdsl":
                return "this checkpoint is already in effdsl's layout; load it directly"
            return f"this looks like a {name} checkpoint: use source={name!r}"
    if any(key.startswith("module.") for key in state_dict):
        return "strip the `module.` prefix that DistributedDataParallel adds to every key"
    return None


def _check_keys(
    state_dict: Mapping[str, Any], moves: list[Move], from_layout: str, network: str
) -> None:
    expected = {old for old, _, _ in moves}
    missing = [old for old, _, entry in moves if old not in state_dict and not entry.optional]
    unexpected = [key for key in state_dict if key not in expected]
    if not missing and not unexpected:
        return
    problems = []
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        problems.append(f"missing key `{missing[0]}`{more}")
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        problems.append(f"unexpected key `{unexpected[0]}`{more}")
    raise CheckpointError(
        f"the checkpoint does not fit `{network}` in {from_layout}'s layout: "
        + "; ".join(problems),
        hint=_layout_hint(state_dict, from_layout),
    )


def _check_shapes(
    state_dict: Mapping[str, Any], moves: list[Move], network: str, into_ours: bool
) -> None:
    for old, _, entry in moves:
        if old not in state_dict:
            continue
        shape = getattr(state_dict[old], "shape", None)
        if shape is None:
            raise CheckpointError(f"`{old}` is not a tensor but {type(state_dict[old]).__name__}")
        expected = entry.shape_in(into_ours)
        if tuple(shape) != expected:
            ours = f" for `{entry.ours}`" if entry.ours != old else ""
            raise CheckpointError(
                f"`{old}` has shape {_show(tuple(shape))} in the checkpoint, but `{network}` "
                f"needs {_show(expected)}{ours}"
            )


def _show(shape: Shape) -> str:
    return "x".join(map(str, shape)) if shape else "scalar"
