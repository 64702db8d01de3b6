"""MobileNetV4 against timm, and its universal inverted bottleneck (`uir`) through every backend.

The specs are followed through the plan as in `test_family`: parameters and MACs on the `meta`
device, the converted timm checkpoint's layout, and logits (float64, randomised batch-norm
statistics) at a low resolution.
"""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import effdsl
import effdsl.codegen
from effdsl.convert import convert_state_dict
from effdsl.render import to_dot

from .test_family import (
    Twin,
    assert_backends_agree,
    assert_generated_twin,
    assert_same_logits,
    layout,
    macs,
    params,
)
from .test_torch_build import randomise_batch_norm

TWINS = [
    Twin("mobilenetv4-conv-small.eff", "small_100", "mobilenetv4_conv_small"),
    Twin("mobilenetv4-conv-small.eff", "small_050", "mobilenetv4_conv_small_050"),
    Twin("mobilenetv4-conv-small.eff", "small_035", "mobilenetv4_conv_small_035"),
    Twin("mobilenetv4-conv-medium.eff", None, "mobilenetv4_conv_medium"),
    Twin("mobilenetv4-hybrid-medium.eff", None, "mobilenetv4_hybrid_medium"),
    Twin("mobilenetv4-hybrid-large.eff", None, "mobilenetv4_hybrid_large"),
]


@pytest.mark.parametrize("twin", TWINS, ids=str)
def test_counts_and_layout_equal_timm(twin: Twin) -> None:
    network = twin.network(resolution=96)
    report = effdsl.cost(effdsl.lower(network))
    with torch.device("meta"):
        theirs = timm.create_model(twin.timm).eval()  # its head's batch norm sees a 1×1 map
        ours = effdsl.build(network).eval()
        assert report.params == params(ours) == params(theirs)
        assert report.macs == macs(ours, 96) == macs(theirs, 96)
        converted = convert_state_dict(theirs.state_dict(), network=network, source="timm")
    assert [(key, tuple(t.shape)) for key, t in converted.items()] == layout(ours)


def test_counts_at_224_are_the_papers() -> None:
    """At 224 px, as timm counts them (the paper's Table: 3.8M/0.2G and 9.2M/1.0G MACs)."""
    small = effdsl.cost(effdsl.lower(TWINS[0].network()))
    medium = effdsl.cost(effdsl.lower(TWINS[3].network()))
    hybrid = effdsl.cost(effdsl.lower(TWINS[4].network()))
    assert (small.params, small.macs) == (3_774_024, 186_005_568)
    assert (medium.params, medium.macs) == (9_715_512, 827_649_984)
    # of which 24,586,240 the attention's products (FlopCounterMode's `bmm` on timm's model)
    assert (hybrid.params, hybrid.macs) == (11_074_648, 966_311_360)
    # the large hybrid at its own 384 px (FlopCounterMode on timm's model counts the same)
    large = effdsl.cost(effdsl.lower(TWINS[5].network()))
    assert (large.params, large.macs) == (37_764_624, 7_711_877_120)


@pytest.mark.slow  # float64 depthwise convs take PyTorch's slow path on a CPU: 15-60 s each
# the large hybrid's logits (72 s at load 8) are compared by docs/zoo.py, not on each CI run
@pytest.mark.parametrize("twin", [TWINS[0], TWINS[3], TWINS[4]], ids=str)
def test_timm_weights_give_the_same_logits(twin: Twin) -> None:
    # 32 px: every stage still has a map (1×1 at the end); float64 depthwise convs are slow
    assert_same_logits(timm.create_model(twin.timm), twin.network(resolution=32), "timm")


# ---- the universal inverted bottleneck through every backend --------------------------------

#: Each form of the block once: ExtraDW (start and middle), IB (middle), ConvNeXt-like (start,
#: striding), FFN (neither), a block striding with its end conv, SE, layer scale from the
#: defaults and turned off on one line, a block without norm, TF's SAME padding.
UIR = """\
network uir {
  input    size=33 channels=3
  defaults act=relu layer_scale=1e-5 padding=same

  stem  conv    k3 s2 c16
  stage uir  e4 k5 s2 c24 dw_start=3
  block uir  e2 k3 s1 c24 se=0.25 layer_scale=none
  stage uir  e4 k0 s2 c32 dw_start=5
  block uir  e2 k0 s1 c32
  stage uir  e3 k0 s2 c40 dw_end=3 norm=none
  block uir  e4 k3 s1 c40 dw_start=3 dw_end=5
  head  conv    k1 s1 c64 pool=first
  classifier dropout=0.1 classes=10
}
"""


@pytest.fixture(scope="module")
def uir() -> effdsl.Network:
    return effdsl.parse(UIR)


def trained(network: effdsl.Network) -> nn.Module:
    torch.manual_seed(0)
    model = effdsl.build(network)
    randomise_batch_norm(model)
    for name, parameter in model.named_parameters():
        if name.endswith("gamma"):  # layer scale at 1e-5 would hide the rest of the block
            nn.init.uniform_(parameter, 0.5, 1.5)
    return model.eval()


def test_the_plan_lowers_each_form_once(uir: effdsl.Network) -> None:
    plan = effdsl.lower(uir)
    roles = [[op.role for op in block.ops] for block in plan.blocks()]
    assert roles == [
        ["start", "expand", "depthwise", "project", "layer_scale"],
        ["expand", "depthwise", "se", "project"],
        ["start", "expand", "project", "layer_scale"],
        ["expand", "project", "layer_scale"],
        ["expand", "project", "end", "layer_scale"],
        ["start", "expand", "depthwise", "project", "end", "layer_scale"],
    ]
    first, _, convnext, _, ending, _ = plan.blocks()
    # the middle conv strides when there is one, else the start conv, else the end conv
    assert [op.stride for op in first.ops[:3]] == [1, 1, 2]
    assert convnext.ops[0].stride == 2 and ending.ops[2].stride == 2
    assert first.ops[0].act is None and first.ops[1].act == "relu"  # the extra dw: no act
    assert first.mid_channels == 64 and not first.residual
    assert plan.blocks()[1].se_channels == 6  # a quarter of its 24 input channels
    assert plan.blocks()[3].residual
    assert {op.norm for op in ending.ops if op.role != "layer_scale"} == {"none"}


def test_build_codegen_and_cost_agree(uir: effdsl.Network) -> None:
    plan = effdsl.lower(uir)
    model = trained(uir)
    assert_backends_agree(plan, model, 33)


def test_inference_folding_features_and_graph_capture(uir: effdsl.Network) -> None:
    model = trained(uir)
    x = torch.randn(2, 3, 33, 33)
    with torch.no_grad():
        expected = model(x)
        fast = effdsl.optimize_for_inference(model)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
        torch.testing.assert_close(fast(x), expected, rtol=1e-4, atol=1e-5)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x), expected)
        exported = torch.export.export(model, (x,))
        torch.testing.assert_close(exported.module()(x), expected)
    features = effdsl.build(uir, features_only=True).eval()
    with torch.no_grad():
        shapes = [tuple(f.shape) for f in features(x)]
    assert shapes == [(2, 24, 9, 9), (2, 32, 5, 5), (2, 40, 3, 3)]


def test_converts_to_timm_names_and_back(uir: effdsl.Network) -> None:
    model = trained(uir)
    theirs = convert_state_dict(model.state_dict(), network=uir, target="timm")
    assert "blocks.0.0.dw_start.conv.weight" in theirs
    assert "blocks.0.0.dw_mid.bn.running_var" in theirs
    assert "blocks.2.0.dw_end.conv.weight" in theirs
    assert "blocks.2.1.layer_scale.gamma" in theirs
    assert "blocks.0.1.se.conv_reduce.weight" in theirs
    back = convert_state_dict(theirs, network=uir, source="timm")
    assert list(back) == list(model.state_dict())
    with pytest.raises(effdsl.EffError, match="torchvision has no MobileNetV4 block"):
        convert_state_dict(model.state_dict(), network=uir, target="torchvision")


def test_format_round_trip(uir: effdsl.Network) -> None:
    text = effdsl.format(uir)
    assert "layer_scale=none" in text and "k0" in text and "dw_end=3" in text
    assert effdsl.parse(text) == uir and effdsl.format(effdsl.parse(text)) == text


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("stage mbconv e4 k3 s1 c40 dw_start=3", "dw_start applies to `uir` blocks"),
        ("stage mbconv e4 k3 s1 c40 dw_end=3", "dw_end applies to `uir` blocks"),
        ("stage mbconv e4 k0 s1 c40", "`k0`, no middle depthwise conv, is for `uir`"),
        ("stage uir e4 k0 s2 c40", "a strided `uir` block needs a depthwise conv"),
        ("stage uir e4 k3 s1 c40 dw_start=4", "kernel must be odd"),
        ("stage uir e4 k3 s1 c40 full=yes", "`full=` is for mbconv and fused_mbconv"),
        ("stage mbconv e4 k3 s1 c40 layer_scale=0.1", "layer_scale applies to `uir` blocks"),
    ],
)
def test_located_errors(line: str, message: str) -> None:
    spec = UIR.replace("  stage uir  e3 k0 s2 c40 dw_end=3 norm=none", "  " + line)
    with pytest.raises(effdsl.EffError) as caught:
        effdsl.parse(spec, "uir.eff")
    errors = getattr(caught.value, "errors", (caught.value,))
    found = [e for e in errors if message in e.message]
    assert found and all(e.span is not None and e.span.line == 10 for e in found), errors


def test_drawn_with_its_depthwise_kernels_and_layer_scale(uir: effdsl.Network) -> None:
    dot = to_dot(effdsl.lower(uir), detail="layer")
    assert "UIB4 dw 3·5·– s2" in dot  # its depthwise kernels before, between, after the 1×1s
    assert "UIB3 dw –·–·3 s2" in dot and "UIB2 dw –·–·–" in dot
    assert "layer scale" in dot and "start 3×3" in dot and "end 3×3 s2" in dot


# ---- multi-query attention through every backend ---------------------------------------------

#: Attention with and without downsampled keys and values, with a value width of its own, a
#: layer scale and none, after a uir block; at 17 px the maps are 9, 5 and 3 wide.
MQA = """\
network mqa {
  input    size=17 channels=3
  defaults act=relu layer_scale=1e-5

  stem  conv    k3 s2 c16
  stage uir  e2 k3 s2 c24
  block mqa     k3 s1 c24 heads=2 key_dim=8 kv_stride=2
  block mqa     k3 s1 c32 heads=3 key_dim=8 value_dim=4 layer_scale=none
  stage mqa     k5 s1 c32 heads=4 key_dim=16 kv_stride=3
  head  conv    k1 s1 c48 pool=first
  classifier classes=10
}
"""


@pytest.fixture(scope="module")
def mqa() -> effdsl.Network:
    return effdsl.parse(MQA)


def test_attention_is_lowered_to_norm_attention_and_layer_scale(mqa: effdsl.Network) -> None:
    plan = effdsl.lower(mqa)
    _, down, wide, strided = plan.blocks()
    assert [op.role for op in down.ops] == ["norm", "attention", "layer_scale"]
    assert [op.role for op in wide.ops] == ["norm", "attention"]
    attention = down.ops[1]
    assert attention.key_down is not None and attention.key_down.stride == 2
    assert (attention.size, attention.kv_size) == (5, 3)
    assert wide.ops[1].key_down is None and wide.ops[1].value_dim == 4
    assert down.residual and not wide.residual  # 24 → 32 channels
    assert strided.ops[1].kv_size == 2 and strided.residual  # (5 + 2·2 - 5) // 3 + 1
    # 5·5 queries × 3·3 keys × 2 heads × (8 + 8): the attention's two matrix products
    from effdsl.cost import op_cost

    projections = (24 * 16 + 16 * 24) * 25 + (24 * 8 + 24 * 8) * 9
    downsampling = 2 * 24 * 9 * 9
    assert op_cost(attention).macs == projections + downsampling + 2 * 25 * 9 * 16


def test_attention_build_codegen_and_cost_agree(mqa: effdsl.Network) -> None:
    plan = effdsl.lower(mqa)
    model = trained(mqa)
    assert_backends_agree(plan, model, 17)  # on a CPU, not only on meta


def test_attention_with_tf_same_padding_generates_what_build_makes() -> None:
    """At 16 px the keys' 3×3, stride-2 downsampling under TF's SAME padding pads only right
    and bottom, which generated code once passed to `nn.Conv2d` as a 4-tuple."""
    network = effdsl.parse(  # the only conv of the net with an odd pixel's padding
        MQA.replace("size=17", "size=16").replace("kv_stride=2", "kv_stride=2 padding=same")
    )
    plan = effdsl.lower(network)
    assert plan.blocks()[1].ops[1].key_down.padding == (0, 1, 0, 1)
    model = trained(network)
    assert_generated_twin(plan, model, 16)


def test_attention_folds_exports_and_compiles(mqa: effdsl.Network) -> None:
    model = trained(mqa)
    x = torch.randn(2, 3, 17, 17)
    with torch.no_grad():
        expected = model(x)
        fast = effdsl.optimize_for_inference(model)
        # the keys' and values' downsampling convs fold; the pre-norm has no conv before it
        assert sum(isinstance(m, nn.BatchNorm2d) for m in fast.modules()) == 3
        torch.testing.assert_close(fast(x), expected, rtol=1e-4, atol=1e-5)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x), expected)
        exported = torch.export.export(model, (x,))
        torch.testing.assert_close(exported.module()(x), expected)
    features = effdsl.build(mqa, features_only=True).eval()
    with torch.no_grad():
        assert [tuple(f.shape) for f in features(x)] == [(2, 32, 5, 5), (2, 32, 5, 5)]


def test_attention_converts_to_timm_names(mqa: effdsl.Network) -> None:
    model = trained(mqa)
    theirs = convert_state_dict(model.state_dict(), network=mqa, target="timm")
    for key in (
        "blocks.0.1.norm.running_mean",
        "blocks.0.1.attn.query.proj.weight",
        "blocks.0.1.attn.key.down_conv.weight",
        "blocks.0.1.attn.key.norm.weight",
        "blocks.0.1.attn.value.proj.weight",
        "blocks.0.1.attn.output.proj.weight",
        "blocks.0.1.layer_scale.gamma",
    ):
        assert key in theirs, key
    assert "blocks.0.2.attn.key.down_conv.weight" not in theirs
    back = convert_state_dict(theirs, network=mqa, source="timm")
    assert list(back) == list(model.state_dict())


def test_attention_is_drawn_and_formatted(mqa: effdsl.Network) -> None:
    dot = to_dot(effdsl.lower(mqa), detail="layer")
    assert "multi-query attention · 2 heads" in dot and "MQA 2×8 kv 3×3 s2" in dot
    assert "key, value: depthwise 3×3 s2 → 3×3" in dot
    text = effdsl.format(mqa)
    assert "heads=3 key_dim=8 value_dim=4" in text
    assert effdsl.parse(text) == mqa and effdsl.format(effdsl.parse(text)) == text


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("stage mqa k3 s1 c32 key_dim=8", "an `mqa` block needs its heads"),
        ("stage mqa k3 s1 c32 heads=2", "an `mqa` block needs its key_dim"),
        ("stage mqa k3 s2 c32 heads=2 key_dim=8", "an `mqa` block keeps the map size"),
        ("stage mqa e4 k3 s1 c32 heads=2 key_dim=8", "a `mqa` block has no expansion ratio"),
        ("stage mqa k3 s1 c32 heads=2 key_dim=8 se=0.25", "a `mqa` block has no squeeze"),
        ("stage mqa k3 s1 c32 heads=2 key_dim=8 group_size=8", "takes no group_size"),
        ("stage mbconv e4 k3 s1 c32 heads=2", "heads applies to `mqa` blocks"),
        ("stage uir e4 k3 s1 c32 kv_stride=2", "kv_stride applies to `mqa` blocks"),
    ],
)
def test_attention_errors_are_located(line: str, message: str) -> None:
    spec = MQA.replace("  stage mqa     k5 s1 c32 heads=4 key_dim=16 kv_stride=3", "  " + line)
    with pytest.raises(effdsl.EffError) as caught:
        effdsl.parse(spec, "mqa.eff")
    errors = getattr(caught.value, "errors", (caught.value,))
    found = [e for e in errors if message in e.message]
    assert found and all(e.span is not None and e.span.line == 9 for e in found), errors


def test_attention_needs_batch_norm(mqa: effdsl.Network) -> None:
    spec = MQA.replace("kv_stride=3", "kv_stride=3 norm=none")
    with pytest.raises(effdsl.EffError, match="always batch-normalised"):
        effdsl.lower(effdsl.parse(spec))


GROUPED_UIR = """
network grouped_uir {
  input    size=32 channels=3
  defaults act=relu
  stem  conv k3 s2 c32
  stage uir  e4 k5 s2 c48 x2 dw_start=3 dw_end=3 group_size=16
  head  conv k1 s1 c64 pool=first
  classifier classes=10
}
"""


def test_group_size_groups_each_depthwise_conv_as_timm() -> None:
    """timm's `UniversalInvertedResidual(group_size=16)` groups its start, middle and end
    convs at 16 channels each: the same parameters, and its weights give the same output."""
    from timm.models._efficientnet_blocks import UniversalInvertedResidual

    network = effdsl.parse(GROUPED_UIR)
    block = effdsl.lower(network).blocks()[0]
    assert [op.groups for op in block.ops] == [2, 1, 8, 1, 3]  # 32, 128 and 48 channels / 16
    ours = trained(network).stages[0].blocks[0].double()
    theirs = UniversalInvertedResidual(
        32, 48, dw_kernel_size_start=3, dw_kernel_size_mid=5, dw_kernel_size_end=3,
        stride=2, exp_ratio=4.0, group_size=16, act_layer=nn.ReLU, layer_scale_init_value=None,
    ).double().eval()
    assert params(ours) == params(theirs)
    renamed = {
        k.replace("start.", "dw_start.").replace("expand.", "pw_exp.")
        .replace("depthwise.", "dw_mid.").replace("project.", "pw_proj.")
        .replace("end.", "dw_end."): v
        for k, v in ours.state_dict().items()
    }
    theirs.load_state_dict(renamed, strict=True)
    x = torch.randn(2, 32, 15, 15, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-9, atol=1e-9)


def test_grouped_uir_is_imported_back() -> None:
    network = effdsl.parse(GROUPED_UIR)
    back = effdsl.import_model(effdsl.build(network))
    assert effdsl.lower(back) == effdsl.lower(network)
    assert back.defaults.group_size == 16  # one size for the whole net: written as a default


def test_group_size_that_does_not_divide_a_uir_width_is_located() -> None:
    spec = GROUPED_UIR.replace("group_size=16", "group_size=12")  # 48 and 96, not 32
    with pytest.raises(effdsl.EffError, match=r"group_size=12 does not divide the input width"):
        effdsl.lower(effdsl.parse(spec, "grouped.eff"))
