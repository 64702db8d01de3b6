"""Hypothesis strategies for valid specs: whole `Network` ASTs built from the typed nodes."""

from __future__ import annotations

from hypothesis import assume
from hypothesis import strategies as st

from effdsl import ast
from effdsl.errors import EffSemanticError, LimitError
from effdsl.limits import check_plan
from effdsl.plan import lower

names = st.text(min_size=1, max_size=12)
words = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True).filter(
    lambda w: w != "network"
)
rates = st.floats(min_value=0.0, max_value=0.9, allow_nan=False).map(lambda v: round(v, 3))
ratios = st.floats(min_value=0.01, max_value=1.0, allow_nan=False).map(lambda v: round(v, 4))
multipliers = st.floats(min_value=0.1, max_value=5.0, allow_nan=False)
odd_kernels = st.sampled_from([1, 3, 5, 7])
maybe = st.none

inputs = st.builds(ast.Input, size=st.integers(8, 640), channels=st.integers(1, 4))
scalings = st.builds(
    ast.Scaling,
    alpha=st.floats(1.0, 2.0),
    beta=st.floats(1.0, 2.0),
    gamma=st.floats(1.0, 2.0),
    divisor=st.sampled_from([1, 4, 8, 16]),
    round_limit=st.sampled_from([0.0, 0.9]),
    depth_round=st.sampled_from(["up", "nearest"]),
)
defaults = st.builds(
    ast.Defaults,
    act=st.sampled_from(ast.ACTIVATIONS),
    se=st.one_of(st.just(0.0), ratios),
    bn_eps=st.sampled_from([1e-5, 1e-3, 0.001]),
    bn_momentum=st.sampled_from([0.1, 0.01, 0.0003]),
    drop_path=rates,
    padding=st.sampled_from(ast.PADDINGS),
    se_from=st.sampled_from(["input", "expanded"]),
    se_divisor=st.one_of(maybe(), st.sampled_from([1, 8])),
    se_act=st.one_of(maybe(), st.sampled_from(ast.ACTIVATIONS)),
    se_gate=st.sampled_from(ast.GATES),
    se_kind=st.sampled_from(ast.SQUEEZE_KINDS),
    norm=st.sampled_from(ast.NORMS),
    norm_group_size=st.one_of(maybe(), st.sampled_from([1, 2])),
    group_size=st.one_of(maybe(), st.sampled_from([1, 2])),
    layer_scale=st.sampled_from([0.0, 1e-5]),
    aa=st.sampled_from(ast.ANTI_ALIASES),
)
presets = st.builds(
    ast.Preset,
    name=st.one_of(words, names),
    width=multipliers,
    depth=multipliers,
    resolution=st.one_of(maybe(), st.integers(8, 1024)),
    dropout=st.one_of(maybe(), rates),
)


def _options() -> dict[str, st.SearchStrategy[object]]:
    return {
        "act": st.one_of(maybe(), st.sampled_from(ast.ACTIVATIONS)),
        "bn_eps": st.one_of(maybe(), st.just(1e-3)),
        "bn_momentum": st.one_of(maybe(), st.just(0.01)),
        "drop_path": st.one_of(maybe(), rates),
        "padding": st.one_of(maybe(), st.sampled_from(ast.PADDINGS)),
        "fix": st.sampled_from(ast.FIXES),
        "se_gate": st.one_of(maybe(), st.sampled_from(ast.GATES)),
        "se_act": st.one_of(maybe(), st.sampled_from(ast.ACTIVATIONS)),
        "norm": st.one_of(maybe(), st.sampled_from(ast.NORMS)),
        "norm_group_size": st.one_of(maybe(), st.sampled_from([1, 2, 4])),
    }


conv_blocks = {
    "kind": st.just("conv"),
    "kernel": odd_kernels,
    "stride": st.integers(1, 2),
    "channels": st.integers(1, 64),
    **_options(),
}
stems = st.builds(ast.Stem, **conv_blocks)  # type: ignore[arg-type]
heads = st.one_of(
    st.builds(ast.Head, **conv_blocks),  # type: ignore[arg-type]
    st.builds(
        ast.Head,
        **{**conv_blocks, "kernel": st.just(1), "stride": st.just(1)},  # type: ignore[arg-type]
        pool=st.just("first"),
        shrink=st.booleans(),
    ),
    st.builds(ast.NoHead),  # `head none`
    st.builds(  # FBNetV3's: neither norm nor bias (here before the pool)
        ast.Head,
        **{**conv_blocks, "norm": st.just("none")},  # type: ignore[arg-type]
        bias=st.booleans(),
    ),
)


@st.composite
def lines(draw: st.DrawFn, line: type[ast.Line]) -> dict[str, object]:
    """The fields of a `stage` or `block` line."""
    kind = draw(st.sampled_from(ast.BLOCK_KINDS))
    expanded = kind not in ast.UNEXPANDED  # the kinds with an expansion ratio
    expand = 1.0 if not expanded else draw(st.sampled_from([1.0, 1.5, 3.0, 4.0, 6.0]))
    se = None if kind in ("conv", "mqa") else draw(st.one_of(maybe(), st.just(0.0), ratios))
    kernel: ast.Kernel = draw(odd_kernels)
    kind_options: dict[str, object] = {}
    if kind == "mixconv":
        kernel = draw(st.one_of(odd_kernels, st.lists(odd_kernels, min_size=2, max_size=4)))
        kernel = tuple(kernel) if isinstance(kernel, list) else kernel
        kind_options = {
            "expand_groups": draw(st.integers(1, 3)),
            "project_groups": draw(st.integers(1, 3)),
        }
    elif kind == "condconv":
        kind_options = {"experts": draw(st.integers(2, 5))}
    elif kind == "uir":  # each depthwise conv optional; one strides (timm: middle, start, end)
        kernel = draw(st.sampled_from([0, 3, 5]))
        kind_options = {
            "dw_start": draw(st.one_of(maybe(), odd_kernels)),
            "dw_end": draw(st.one_of(maybe(), odd_kernels)),
            "layer_scale": draw(st.one_of(maybe(), st.just(0.0), st.sampled_from([1e-5, 0.5]))),
        }
        if not (kernel or kind_options["dw_start"] or kind_options["dw_end"]):
            kernel = 3
    elif kind == "mqa":  # keeps the map size; the kernel is the keys' and values' downsampling
        kind_options = {
            "heads": draw(st.integers(1, 4)),
            "key_dim": draw(st.integers(1, 16)),
            "value_dim": draw(st.one_of(maybe(), st.integers(1, 16))),
            "kv_stride": draw(st.integers(1, 2)),
            "layer_scale": draw(st.one_of(maybe(), st.just(0.0), st.just(1e-5))),
        }
    else:
        kind_options = {"group_size": draw(st.one_of(maybe(), st.sampled_from([1, 2, 4])))}
    stride = 1 if kind == "mqa" else draw(st.integers(1, 2))
    # anti-aliasing on a strided line (a stride-1 line may only say `aa=none`)
    aa = draw(st.one_of(maybe(), st.sampled_from(ast.ANTI_ALIASES if stride > 1 else ("none",))))
    fields: dict[str, object] = dict(
        kind=kind,
        kernel=kernel,
        **kind_options,
        stride=stride,
        aa=aa,
        channels=draw(st.integers(1, 64)),
        repeats=draw(st.integers(1, 4)),
        se=se,
        skip=draw(st.booleans()),
        **{key: draw(strategy) for key, strategy in _options().items()},
    )
    if se:  # `se_kind` on a line without SE is an error
        fields["se_kind"] = draw(st.one_of(maybe(), st.sampled_from(ast.SQUEEZE_KINDS)))
    if expanded and draw(st.booleans()):
        fields["mid"] = draw(st.integers(1, 96))
    else:
        fields["expand"] = expand
    if kind in ("mbconv", "fused_mbconv"):  # the kinds whose e1 form may keep its 1×1 conv
        fields["full"] = draw(st.booleans())
    if kind in ast.SPACE_TO_DEPTH and fields["stride"] == 1:  # now and then space-to-depth
        fields["s2d"] = draw(st.sampled_from([False, False, False, True]))
    if kind in ("mixconv", "condconv"):  # always batch-normalised, whatever the defaults say
        fields["norm"] = "batch"
    return fields


@st.composite
def stages(draw: st.DrawFn) -> ast.Stage:
    more = draw(st.lists(lines(ast.BlockLine), max_size=2))
    return ast.Stage(
        **draw(lines(ast.Stage)),  # type: ignore[arg-type]
        name=draw(st.one_of(maybe(), words, names)),
        lines=tuple(ast.BlockLine(**fields) for fields in more),  # type: ignore[arg-type]
    )


classifiers = st.builds(ast.Classifier, dropout=rates, classes=st.integers(1, 2000))


@st.composite
def networks(draw: st.DrawFn, max_stages: int = 5) -> ast.Network:
    stage_list = draw(st.lists(stages(), min_size=1, max_size=max_stages))
    named = [s.name for s in stage_list if s.name is not None]
    if len(set(named)) != len(named):  # names must be unique: drop the names instead
        stage_list = [s.model_copy(update={"name": None}) for s in stage_list]
    preset_list = draw(st.lists(presets, max_size=3, unique_by=lambda p: p.name))
    optional: dict[str, object] = {}
    if draw(st.booleans()):
        optional["scaling"] = draw(scalings)
    if draw(st.booleans()):
        optional["defaults"] = draw(defaults)
    network = ast.Network(
        name=draw(st.one_of(words, names)),
        input=draw(inputs),
        presets=tuple(preset_list),
        stem=draw(stems),
        stages=tuple(stage_list),
        head=draw(heads),
        classifier=draw(classifiers),
        **optional,  # type: ignore[arg-type]
    )
    try:  # a MixConv needs a channel for each of its slices, group sizes must divide widths
        plan = lower(network)
    except EffSemanticError:
        network = _ungrouped(network)
        try:
            plan = lower(network)
        except EffSemanticError:
            assume(False)
    try:  # attention over every position of a large map is quadratic in its size
        check_plan(plan)
    except LimitError:
        assume(False)
    return network


def _ungrouped(network: ast.Network) -> ast.Network:
    """`network` with no grouped convs and one channel per norm group, which divide any width."""

    def line(node: ast.Line) -> ast.Line:
        return node.model_copy(update={"group_size": None, "norm_group_size": None})

    stages = tuple(
        stage.model_copy(update={"group_size": None, "norm_group_size": None,
                                 "lines": tuple(line(block) for block in stage.lines)})
        for stage in network.stages
    )
    defaults = network.defaults.model_copy(update={"group_size": None, "norm_group_size": 1})
    ends = {
        name: getattr(network, name).model_copy(update={"norm_group_size": None})
        for name in ("stem", "head")
        if isinstance(getattr(network, name), ast.Block)  # not `head none`
    }
    return network.model_copy(update={"stages": stages, "defaults": defaults, **ends})
