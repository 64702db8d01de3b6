"""Grouped convolutions (`group_size`) and the choice of norm (`norm=group|layer|evonorm`):
the specs that use them against timm (parameters, MACs, checkpoint layouts through the
converter, float64 logits with randomised norms), the plan's lowering and its errors, and a
small net of every case through every backend.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import effdsl
import effdsl.codegen
from effdsl.errors import EffError
from effdsl.export import write_output
from effdsl.plan import ConvOp, MixedConvOp
from effdsl.torch_build import EvoNormS0, LayerNorm2d

from .test_codegen import load_generated, model_of
from .test_export import RUNTIMES, relative_error
from .test_family import Twin, assert_same_logits, layout, macs, params
from .test_torch_build import randomise_batch_norm

TWINS = [
    Twin("efficientnet-b0-gn.eff", None, "efficientnet_b0_gn"),
    Twin("efficientnet-b0-g8-gn.eff", None, "efficientnet_b0_g8_gn"),
    Twin("efficientnet-b0-g16.eff", None, "efficientnet_b0_g16_evos"),
    Twin("efficientnet-b3-gn.eff", None, "efficientnet_b3_gn"),
    Twin("efficientnet-b3-g8-gn.eff", None, "efficientnet_b3_g8_gn"),
    Twin("mobilenet-edgetpu-v2-xs.eff", None, "mobilenet_edgetpu_v2_xs"),
    Twin("mobilenet-edgetpu-v2-s.eff", None, "mobilenet_edgetpu_v2_s"),
    Twin("mobilenet-edgetpu-v2-m.eff", None, "mobilenet_edgetpu_v2_m"),
    Twin("mobilenet-edgetpu-v2-l.eff", None, "mobilenet_edgetpu_v2_l"),
]


@pytest.mark.parametrize("twin", TWINS, ids=str)
def test_counts_and_layout_equal_timm(twin: Twin) -> None:
    network = twin.network(resolution=96)
    report = effdsl.cost(effdsl.lower(network))
    with torch.device("meta"):
        theirs = timm.create_model(twin.timm)
        ours = effdsl.build(network)
        assert report.params == params(ours) == params(theirs)
        assert report.macs == macs(ours, 96) == macs(theirs, 96)
        converted = effdsl.convert_state_dict(theirs.state_dict(), network=network, source="timm")
    assert [(key, tuple(t.shape)) for key, t in converted.items()] == layout(ours)


def twin(name: str, slow: bool = False) -> object:
    found = next(t for t in TWINS if t.timm == name)
    return pytest.param(found, marks=pytest.mark.slow) if slow else found


@pytest.mark.parametrize(
    "twin",
    [
        twin("efficientnet_b0_g8_gn"),  # grouped depthwise convs, group norm
        twin("mobilenet_edgetpu_v2_s", slow=True),  # grouped fused convs on some lines
        twin("efficientnet_b0_gn", slow=True),
        twin("efficientnet_b0_g16_evos", slow=True),
        twin("efficientnet_b3_g8_gn", slow=True),  # GroupNorm of 16, grouped convs of 8
        twin("mobilenet_edgetpu_v2_l", slow=True),
    ],
    ids=str,
)
def test_timm_weights_give_the_same_logits(twin: Twin) -> None:
    assert_same_logits(timm.create_model(twin.timm), twin.network(resolution=40), "timm")


#: timm's test_efficientnet, which it also builds with group, layer and EvoNorm-S0 norms: the
#: only models of its zoo with the last two.
TEST_EFFICIENTNET = """\
network test_efficientnet {
  input    size=40 channels=3
  scaling  round_limit=0
  defaults act=silu NORM

  stem  conv            k3 s2 c24
  stage conv            k3 s1 c16  x1
  stage fused_mbconv e4 k3 s2 c24  x1
  stage fused_mbconv e4 k3 s2 c32  x1
  stage mbconv       e4 k3 s2 c48  x1 se=0.25
  stage mbconv       e4 k3 s2 c64  x1 se=0.25
  head  conv            k1 s1 c256
  classifier classes=1000
}
"""


@pytest.mark.parametrize(
    ("model", "norm"),
    [
        ("test_efficientnet", ""),
        ("test_efficientnet_gn", "norm=group norm_group_size=8"),
        ("test_efficientnet_ln", "norm=layer"),
        ("test_efficientnet_evos", "norm=evonorm norm_group_size=8"),
    ],
)
def test_timm_test_efficientnets_of_each_norm(model: str, norm: str) -> None:
    network = effdsl.parse(TEST_EFFICIENTNET.replace("NORM", norm))
    theirs = timm.create_model(model)
    assert effdsl.cost(effdsl.lower(network)).params == params(theirs)
    assert macs(effdsl.build(network), 40) == macs(theirs, 40)
    assert_same_logits(theirs, network, "timm")


# ---- the plan -------------------------------------------------------------------------------

#: One block of each kind with a group size, norms of each kind, a default group size that
#: MixConv lines do not take, and a pooled head with EvoNorm-S0.
GROUPED = """\
network grouped {
  input    size=32 channels=3
  defaults act=relu norm=group norm_group_size=4 group_size=8

  stem  conv            k3 s2 c16
  stage conv            k3 s1 c32          group_size=4
  stage separable       k3 s1 c32   se=0.25
  stage mbconv       e3 k3 s2 c32   x2
  block fused_mbconv e2 k3 s1 c32          norm=layer
  stage mixconv      e2 k3.5 s1 c32        norm=batch
  stage mbconv       e2 k5 s2 c48          norm=evonorm group_size=16
  stage fused_mbconv e1 k3 s1 c48   full=yes norm=none
  head  conv            k1 s1 c64   pool=first norm=evonorm norm_group_size=8
  classifier dropout=0.1 classes=10
}
"""


@pytest.fixture(scope="module")
def grouped() -> effdsl.Network:
    return effdsl.parse(GROUPED)


def convs(plan: effdsl.Plan) -> dict[str, ConvOp]:
    return {op.path: op for op in plan.ops() if isinstance(op, ConvOp)}


def test_group_size_sets_the_groups_of_the_kxk_conv_as_timm_counts_them(
    grouped: effdsl.Network,
) -> None:
    ops = convs(effdsl.lower(grouped))
    assert ops["stem"].groups == 1  # the default group size is the blocks'
    assert ops["stages.0.blocks.0.conv"].groups == 16 // 4  # conv: the input width
    assert ops["stages.1.blocks.0.depthwise"].groups == 32 // 8  # separable: the input width
    assert ops["stages.1.blocks.0.pointwise"].groups == 1
    assert ops["stages.2.blocks.0.depthwise"].groups == 96 // 8  # mbconv: the expanded width
    assert ops["stages.2.blocks.0.expand"].groups == ops["stages.2.blocks.0.project"].groups == 1
    assert ops["stages.2.blocks.2.expand"].groups == 64 // 8  # fused: the expanded width
    mixed = effdsl.lower(grouped).stages[3].blocks[0].ops[1]
    assert isinstance(mixed, MixedConvOp) and mixed.depthwise  # not grouped by the default
    assert ops["stages.4.blocks.0.depthwise"].groups == 64 // 16
    assert ops["head"].groups == 1


def test_norms_are_lowered_per_conv(grouped: effdsl.Network) -> None:
    ops = convs(effdsl.lower(grouped))
    stem = ops["stem"]
    assert (stem.norm, stem.norm_group_size, stem.norm_groups) == ("group", 4, 4)
    assert ops["stages.2.blocks.2.project"].norm == "layer"
    assert ops["stages.2.blocks.2.project"].norm_group_size == 0
    evo, project = ops["stages.4.blocks.0.depthwise"], ops["stages.4.blocks.0.project"]
    assert (evo.norm, evo.norm_acts, evo.act_after_norm, evo.act) == (
        "evonorm", True, None, "relu"
    )
    assert (project.norm, project.norm_acts, project.norm_params) == ("evonorm", False, 96)
    assert evo.norm_params == 3 * 64  # weight, bias and v of its 64 channels
    assert ops["stages.5.blocks.0.project"].bias
    assert ops["head"].norm_groups == 64 // 8


@pytest.mark.parametrize(
    ("line", "message", "hint"),
    [
        ("stage mbconv e3 k3 s1 c24 group_size=5", "does not divide the expanded width", "divide"),
        ("stage conv k3 s1 c18 group_size=4", "do not divide the output width", "both"),
        ("stage fused_mbconv e3 k3 s1 c24 group_size=16", "the input width", "both"),
        ("stage mbconv e3 k3 s1 c24 norm=group", "needs the channels per group", "8"),
        ("stage mbconv e3 k3 s1 c20 norm=evonorm norm_group_size=8", "not a multiple", "divisor"),
        ("stage mixconv e3 k3.5 s1 c24 group_size=8", "takes no group_size", None),
    ],
)
def test_bad_groups_are_located_errors(line: str, message: str, hint: str | None) -> None:
    text = (
        "network bad {\n  input size=32\n  stem conv k3 s2 c16\n"
        f"  {line}\n  head conv k1 c32\n  classifier classes=10\n}}\n"
    )
    with pytest.raises(EffError) as caught:
        effdsl.lower(effdsl.parse(text))
    error = caught.value
    errors = getattr(error, "errors", [error])
    first = errors[0]
    assert message in str(first)
    assert first.span is not None and first.span.line == 4
    if hint is not None:
        assert first.hint is not None and hint in first.hint


def test_group_size_is_for_stage_lines_only() -> None:
    text = GROUPED.replace("stem  conv            k3 s2 c16", "stem conv k3 s2 c16 group_size=4")
    with pytest.raises(EffError, match="group_size"):
        effdsl.parse(text)


def test_format_keeps_the_new_options(grouped: effdsl.Network) -> None:
    text = effdsl.format(grouped)
    assert "group_size=16" in text and "norm_group_size=8" in text and "norm=evonorm" in text
    assert effdsl.parse(text) == grouped


# ---- every backend --------------------------------------------------------------------------


def trained(network: effdsl.Network) -> nn.Module:
    torch.manual_seed(0)
    model = effdsl.build(network)
    randomise_batch_norm(model)
    return model.eval()


def test_build_codegen_and_cost_agree(grouped: effdsl.Network) -> None:
    plan = effdsl.lower(grouped)
    model = trained(grouped)
    kinds = {type(m) for m in model.modules()}
    assert {nn.GroupNorm, LayerNorm2d, EvoNormS0, nn.BatchNorm2d} <= kinds
    assert effdsl.cost(plan).params == params(model)
    assert effdsl.cost(plan).macs == macs(model, 32)
    twin = model_of(load_generated(effdsl.codegen.to_python(plan)), plan).eval()
    assert layout(twin) == layout(model)
    twin.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model(x))


def test_inference_folds_batch_norm_only_and_graphs_capture(grouped: effdsl.Network) -> None:
    model = trained(grouped)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        fast = effdsl.optimize_for_inference(model)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
        assert any(isinstance(m, nn.GroupNorm) for m in fast.modules())
        torch.testing.assert_close(fast(x), expected, rtol=1e-4, atol=1e-5)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x), expected)
        exported = torch.export.export(model, (x,))
        torch.testing.assert_close(exported.module()(x), expected)


def test_inference_of_a_net_without_batch_norm() -> None:
    network = effdsl.parse(TEST_EFFICIENTNET.replace("NORM", "norm=layer"))
    model = trained(network)
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(effdsl.optimize_for_inference(model)(x), model(x))


def test_features_only(grouped: effdsl.Network) -> None:
    features = effdsl.build(grouped, features_only=True).eval()
    with torch.no_grad():
        maps = features(torch.randn(1, 3, 32, 32))
    assert [m.shape[1] for m in maps] == [info.channels for info in features.feature_info]


def test_converter_maps_evonorm_v_and_no_statistics(grouped: effdsl.Network) -> None:
    keys = effdsl.convert_state_dict(
        trained(grouped).state_dict(), network=grouped, target="timm"
    ).keys()
    assert "blocks.4.0.bn2.v" in keys and "blocks.4.0.bn3.weight" in keys
    assert "blocks.4.0.bn3.v" not in keys  # after the projection: its affine alone
    assert "bn1.weight" in keys and "bn1.running_mean" not in keys  # the stem's group norm


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("extension", RUNTIMES)
def test_exports_run_in_their_runtimes(
    grouped: effdsl.Network, tmp_path: Path, extension: str
) -> None:
    plan = effdsl.lower(grouped)
    model = trained(grouped)
    weights = tmp_path / "grouped.pth"
    torch.save(model.state_dict(), weights)
    target = tmp_path / f"grouped{extension}"
    write_output(target, grouped, plan, weights=weights, inference=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert relative_error(RUNTIMES[extension](target)(x), model(x)) < 1e-4
