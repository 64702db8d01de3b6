"""The `separable` block kind (depthwise k×k, optional SE, 1×1 pointwise with its activation, no
residual: MobileNetV1, LCNet, timm's `dsa`): written, formatted and refused as the language says,
lowered to its three ops, exact against timm's DepthwiseSeparableConv (parameters, MACs,
checkpoints, logits), and built, generated, optimised, compiled, exported and drawn like any
block. The LCNet and MobileNetV1 specs themselves are tested in test_family.py."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from timm.layers import get_act_layer
from timm.models._efficientnet_builder import decode_arch_def
from timm.models.efficientnet import EfficientNet
from timm.models.mobilenetv3 import SqueezeExcite
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import effdsl
import effdsl.codegen
from effdsl.check import check_text
from effdsl.convert import convert_state_dict
from effdsl.export import write_output
from effdsl.render import to_dot
from effdsl.torch_build import optimize_for_inference

from .test_codegen import generated_model
from .test_torch_build import randomise_batch_norm

# Separable blocks with and without SE (ReLU inside, hard-sigmoid gate), a stride, a kernel of
# 5 and one that keeps its width (no residual even so), between an ordinary conv stem and head.
SEPARABLE = """\
network separable {
  input    size=64 channels=3
  defaults act=hardswish se_act=relu se_gate=hard_sigmoid padding=PAD

  stem  conv      k3 s2 c16
  stage separable k3 s1 c32 x1
  stage separable k3 s2 c48 x2
  block separable k5 s1 c48 x1 se=0.25
  stage separable k5 s2 c64 x2 se=0.25
  head  conv      k1 s1 c96
  classifier classes=10
}
"""

# timm's block strings for the same network.
TIMM_ARCH = [
    ["dsa_r1_k3_s1_c32"],
    ["dsa_r2_k3_s2_c48", "dsa_r1_k5_s1_c48_se0.25"],
    ["dsa_r2_k5_s2_c64_se0.25"],
]


def network(padding: str = "symmetric") -> effdsl.Network:
    return effdsl.parse(SEPARABLE.replace("PAD", padding))


def timm_twin(padding: str = "symmetric", head: int = 96) -> nn.Module:
    """timm's EfficientNet made of `TIMM_ARCH`: its DepthwiseSeparableConv blocks, with LCNet's
    squeeze-and-excitation; `head=0`: no head conv (MobileNetV1's `num_features=0`)."""
    return EfficientNet(
        decode_arch_def(TIMM_ARCH),
        num_features=head,
        stem_size=16,
        num_classes=10,
        act_layer=get_act_layer("hard_swish"),
        se_layer=partial(SqueezeExcite, gate_layer="hard_sigmoid", force_act_layer=nn.ReLU),
        pad_type="same" if padding == "same" else "",
    )


def macs_of(model: nn.Module, resolution: int) -> int:
    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        model.to("meta")(torch.empty(1, 3, resolution, resolution))
    return int(counter.get_total_flops()) // 2


def params_of(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layout(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(key, tuple(t.shape)) for key, t in model.state_dict().items()]


def trained(padding: str = "symmetric") -> nn.Module:
    torch.manual_seed(0)
    model = effdsl.build(network(padding))
    randomise_batch_norm(model)
    return model.eval()


# ---- the language ---------------------------------------------------------------------------


def test_separable_lines_format_and_read_back() -> None:
    parsed = network()
    assert [s.kind for s in parsed.stages] == ["separable"] * 3
    text = effdsl.format(parsed)
    assert "stage separable k3 s2 c48 x2" in text and " e1 " not in text
    assert effdsl.parse(text) == parsed and effdsl.format(effdsl.parse(text)) == text


def problems_of(line: str) -> list[str]:
    """Every error `effdsl check` reports for a spec with `line` as its only stage."""
    text = (
        "network n {\n  input size=64\n  stem conv k3 s2 c8\n"
        f"  {line}\n  head conv k1 c16\n  classifier classes=3\n}}\n"
    )
    return [f"{e.span.line}:{e.span.column}: {e.message}" for e in check_text(text) if e.span]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("stage separable e6 k3 s2 c40", "4:3: a `separable` block has no expansion ratio"),
        ("stage separable k3 s2 c40 mid=40", "4:3: a `separable` block has no expanded width"),
        ("stage separable k3 s2 c40 full=yes", "4:3: a `separable` block has no expansion"),
        ("stage separable k3.5 s2 c40", "4:19: only a `mixconv` block takes a kernel list"),
        ("stage separable k3 s2 c40 project_groups=2", "4:44: project_groups applies to"),
        ("stage separable k3 s2 c40 experts=4", "4:37: experts applies to `condconv`"),
    ],
)
def test_misuse_is_a_located_error(line: str, expected: str) -> None:
    problems = problems_of(line)
    assert any(problem.startswith(expected) for problem in problems), problems


def test_schema_lists_the_kind() -> None:
    stage = effdsl.Network.model_json_schema()["$defs"]["Stage"]["properties"]
    assert "separable" in stage["kind"]["enum"]


# ---- the plan ---------------------------------------------------------------------------------


def test_the_plan_lowers_a_block_to_depthwise_se_pointwise_without_residual() -> None:
    plan = effdsl.lower(network())
    plain, same_width = plan.stages[1].blocks[0], plan.stages[1].blocks[2]
    assert [op.role for op in plain.ops] == ["depthwise", "pointwise"]
    assert [op.role for op in same_width.ops] == ["depthwise", "se", "pointwise"]
    depthwise, se, pointwise = same_width.ops
    assert (depthwise.in_channels, depthwise.groups, depthwise.kernel) == (48, 48, 5)
    assert (se.channels, se.squeeze, se.act, se.gate) == (48, 12, "relu", "hard_sigmoid")
    assert (pointwise.kernel, pointwise.act) == (1, "hardswish")
    # 48 → 48 at stride 1, yet no residual connection: MobileNetV1's block has none
    assert same_width.in_channels == same_width.out_channels and not same_width.residual
    assert all(not block.residual for block in plan.blocks())


# ---- exact against timm's blocks --------------------------------------------------------------


@pytest.mark.parametrize("padding", ["symmetric", "same"])
def test_parameters_macs_and_layout_equal_timms(padding: str) -> None:
    spec = network(padding)
    report = effdsl.cost(effdsl.lower(spec))
    with torch.device("meta"):
        ours, theirs = effdsl.build(spec), timm_twin(padding)
        converted = convert_state_dict(theirs.state_dict(), network=spec, source="timm")
    assert report.params == params_of(ours) == params_of(theirs)
    assert report.macs == macs_of(ours, 64) == macs_of(theirs, 64)
    assert [(key, tuple(t.shape)) for key, t in converted.items()] == layout(ours)


@pytest.mark.parametrize(("padding", "head"), [("symmetric", 96), ("same", 96), ("same", 0)])
def test_timm_checkpoints_convert_both_ways_and_give_the_same_logits(
    padding: str, head: int
) -> None:
    torch.manual_seed(0)
    spec = network(padding)
    if not head:  # `head none`: timm's num_features=0, the last stage pooled as it is
        spec = effdsl.parse(effdsl.format(spec).replace("head  conv      k1 s1 c96", "head none"))
    theirs = timm_twin(padding, head).double().eval()
    randomise_batch_norm(theirs)
    ours = effdsl.build(spec).double().eval()
    ours.load_state_dict(convert_state_dict(theirs.state_dict(), network=spec, source="timm"))
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)
    back = convert_state_dict(ours.state_dict(), network=spec, target="timm")
    theirs.load_state_dict(back, strict=True)


# ---- every backend -----------------------------------------------------------------------------


def test_generated_module_equals_the_built_one() -> None:
    plan = effdsl.lower(network())
    model = trained()
    source = effdsl.codegen.to_python(plan)
    assert "class SeparableConv(nn.Module):" in source
    twin = generated_model(plan).eval()
    assert layout(twin) == layout(model)
    twin.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model(x))


def test_optimize_for_inference_folds_every_batch_norm() -> None:
    model = trained()
    fast = optimize_for_inference(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)


def test_features_only_and_graph_capture() -> None:
    model = trained()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x), expected)
        torch.testing.assert_close(torch.export.export(model, (x,)).module()(x), expected)
    extractor = effdsl.build(network(), features_only=True).eval()
    with torch.no_grad():
        shapes = [tuple(f.shape[1:]) for f in extractor(x)]
    assert shapes == [(32, 32, 32), (48, 16, 16), (64, 8, 8)]


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("extension", [".pt2", ".onnx"])
def test_exports_reload_and_match(tmp_path: Path, extension: str) -> None:
    spec = network("same")
    weights = tmp_path / "w.pth"
    torch.save(trained("same").state_dict(), weights)
    target = tmp_path / f"separable{extension}"
    # write_output reloads the file and compares it with the module before keeping it
    assert write_output(target, spec, effdsl.lower(spec), weights=weights) == target


def test_drawings_name_the_block_and_its_pointwise_conv() -> None:
    plan = effdsl.lower(network())
    assert "SepConv k3 s2" in to_dot(plan)
    block = to_dot(plan, detail="block")
    assert "1.2 SepConv k5" in block and "48 → 48 ch · HardSwish · SE 12 hard-sigmoid" in block
    assert "pointwise 1×1" in to_dot(plan, detail="layer")
