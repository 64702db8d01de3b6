"""MixConv and CondConv blocks: written, formatted and refused as the language says, and exact
against timm's own MixedConv2d / CondConv2d blocks (parameters, MACs, checkpoints, logits) and
against EfficientNet-CondConv-B0; built, optimised, compiled, exported and drawn like any block."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from timm.models._efficientnet_builder import decode_arch_def
from timm.models.efficientnet import EfficientNet
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import effdsl
from effdsl.check import check_text
from effdsl.convert import convert_state_dict
from effdsl.errors import CheckpointError, OutputError
from effdsl.export import write_output
from effdsl.render import to_dot
from effdsl.torch_build import optimize_for_inference

from .conftest import SPECS
from .test_torch_build import randomise_batch_norm

# Every new option at once: grouped 1×1 convs, mixed kernels (with and without SE), CondConv;
# `PAD` is filled in by `network()`.
MIXED = """\
network mixed {
  input    size=64 channels=3
  defaults act=relu padding=PAD drop_path=0.1

  stem  conv        k3          s2 c16
  stage mbconv   e1 k3          s1 c16 x1
  stage mixconv  e6 k3.5.7      s2 c40 x2 se=0.5 act=silu expand_groups=2 project_groups=2
  stage condconv e6 k5          s2 c48 x2 se=0.25 experts=4
  stage mixconv  e3 k3.5.7.9    s2 c80 x2 project_groups=2
  stage mixconv  e6 k3.5        s1 c88 x1 se=0.25 act=silu expand_groups=2
  head  conv        k1          s1 c64
  classifier classes=10
}
"""

# timm's block strings for the same network (`a1.1`/`p1.1`: 1×1 convs in two groups, `cc4`:
# CondConv with 4 experts); a `ds` block for the expansion-1 MBConv.
TIMM_ARCH = [
    ["ds_r1_k3_s1_e1_c16"],
    ["ir_r2_k3.5.7_a1.1_p1.1_s2_e6_c40_se0.5_nsw"],
    ["ir_r2_k5_s2_e6_c48_se0.25_cc4"],
    ["ir_r2_k3.5.7.9_p1.1_s2_e3_c80"],
    ["ir_r1_k3.5_a1.1_s1_e6_c88_se0.25_nsw"],
]


def network(padding: str = "symmetric") -> effdsl.Network:
    return effdsl.parse(MIXED.replace("PAD", padding))


def macs_of(model: nn.Module, resolution: int) -> int:
    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        model.to("meta")(torch.empty(1, 3, resolution, resolution))
    return int(counter.get_total_flops()) // 2


def params_of(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---- the language ---------------------------------------------------------------------------


def test_kernel_lists_and_options_format_and_read_back() -> None:
    parsed = network()
    stage = parsed.stages[1]
    assert (stage.kind, stage.kernel, stage.kernels) == ("mixconv", (3, 5, 7), (3, 5, 7))
    assert (stage.expand_groups, stage.project_groups, parsed.stages[2].experts) == (2, 2, 4)
    text = effdsl.format(parsed)
    assert "k3.5.7.9 " in text and "experts=4" in text and "expand_groups=2" in text
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
        ("stage mbconv e6 k3.5 s2 c40", "4:19: only a `mixconv` block takes a kernel list"),
        ("stage mixconv e6 k3.4 s2 c40", "4:20: kernel must be odd, got 4"),
        ("stage mixconv e6 k3.0 s2 c40", "4:20: kernel must be ≥ 1, got 0"),
        ("stage mixconv e6.1.2 k3 s2 c40", "4:17: unexpected `e6.1.2` in `stage`"),
        ("stage condconv e6 k3 s2 c40", "4:3: a `condconv` block needs its number of experts"),
        ("stage condconv e6 k3 s2 c40 experts=1", "4:39: experts must be ≥ 2, got 1"),
        ("stage mbconv e6 k3 s2 c40 experts=4", "4:37: experts applies to `condconv`"),
        ("stage fused_mbconv e6 k3 s2 c40 expand_groups=2", "4:49: expand_groups applies to"),
        # 9 kernels over the stem's 8 channels: one slice would be empty
        ("stage mixconv e1 k3.5.7.9.11.13.15.17.19 s1 c8", "4:20: stages.0.blocks.0.depthwise "
         "cuts 8 channels into 9 slices"),
        ("stage mixconv e6 k3 s1 c8 project_groups=9", "4:44: stages.0.blocks.0.project cuts"),
    ],
)
def test_misuse_is_a_located_error(line: str, expected: str) -> None:
    problems = problems_of(line)
    assert any(problem.startswith(expected) for problem in problems), problems


# ---- exact against timm's blocks --------------------------------------------------------------


def timm_twin(padding: str) -> nn.Module:
    """timm's EfficientNet made of `TIMM_ARCH`: its own MixedConv2d and CondConv2d modules."""
    return EfficientNet(
        decode_arch_def(TIMM_ARCH),
        num_features=64,
        stem_size=16,
        num_classes=10,
        act_layer=nn.ReLU,
        pad_type="same" if padding == "same" else "",
        drop_path_rate=0.1,
    )


@pytest.mark.parametrize("padding", ["symmetric", "same"])
def test_parameters_and_macs_equal_timms(padding: str) -> None:
    plan = effdsl.lower(network(padding))
    report = effdsl.cost(plan)
    with torch.device("meta"):
        ours, theirs = effdsl.build(plan), timm_twin(padding)
    assert report.params == params_of(ours) == params_of(theirs) == 455_192
    assert report.macs == macs_of(ours, 64) == macs_of(theirs, 64)


@pytest.mark.parametrize("padding", ["symmetric", "same"])
def test_timm_checkpoints_convert_both_ways_and_give_the_same_logits(padding: str) -> None:
    torch.manual_seed(0)
    spec = network(padding)
    theirs = timm_twin(padding).double().eval()
    randomise_batch_norm(theirs)
    ours = effdsl.build(spec).double().eval()
    ours.load_state_dict(convert_state_dict(theirs.state_dict(), network=spec, source="timm"))
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        expected = theirs(x)
        assert float((ours(x) - expected).abs().max()) <= 1e-6
    back = convert_state_dict(ours.state_dict(), network=spec, target="timm")
    assert sorted(back) == sorted(theirs.state_dict())
    theirs.load_state_dict(back, strict=True)


def test_torchvision_has_no_such_blocks() -> None:
    with pytest.raises(CheckpointError, match="torchvision has no MixedConvOp"):
        convert_state_dict({}, network=network(), target="torchvision")


# ---- EfficientNet-CondConv-B0 ------------------------------------------------------------------


def cc_b0(resolution: int | None = None) -> effdsl.Network:
    spec = effdsl.load(SPECS / "efficientnet-cc-b0.eff")
    return spec if resolution is None else effdsl.scale(spec, resolution=resolution)


def test_efficientnet_cc_b0_4e_is_exact() -> None:
    report = effdsl.cost(effdsl.lower(cc_b0()))
    with torch.device("meta"):
        theirs = timm.create_model("efficientnet_cc_b0_4e")
    assert report.params == params_of(theirs) == 13_314_116
    assert report.macs == macs_of(theirs, 224) == 396_513_888


def test_efficientnet_cc_b0_4e_checkpoint_gives_the_same_logits() -> None:
    torch.manual_seed(0)
    spec = cc_b0(64)
    theirs = timm.create_model("efficientnet_cc_b0_4e").double().eval()
    randomise_batch_norm(theirs)
    ours = effdsl.build(spec).double().eval()
    ours.load_state_dict(convert_state_dict(theirs.state_dict(), network=spec, source="timm"))
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        assert float((ours(x) - theirs(x)).abs().max()) <= 1e-6


# ---- every backend -----------------------------------------------------------------------------


def trained(padding: str = "symmetric") -> nn.Module:
    torch.manual_seed(0)
    model = effdsl.build(network(padding))
    randomise_batch_norm(model)
    return model.eval()


@pytest.mark.parametrize("padding", ["symmetric", "same"])
def test_optimize_for_inference_folds_every_batch_norm(padding: str) -> None:
    model = trained(padding)
    fast = optimize_for_inference(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-5)


def test_features_only_returns_every_stage() -> None:
    extractor = effdsl.build(network(), features_only=True).eval()
    with torch.no_grad():
        features = extractor(torch.randn(2, 3, 64, 64))
    assert [tuple(f.shape[1:]) for f in features] == [
        (16, 32, 32), (40, 16, 16), (48, 8, 8), (80, 4, 4), (88, 4, 4)
    ]


@pytest.mark.slow
def test_torch_compile_fullgraph_matches_eager() -> None:
    model = trained()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("extension", [".pt2", ".pt"])
def test_graph_exports_reload_and_match(tmp_path: Path, extension: str) -> None:
    spec = network("same")
    weights = tmp_path / "w.pth"
    torch.save(trained("same").state_dict(), weights)
    target = tmp_path / f"mixed{extension}"
    # write_output reloads the file and compares it with the module before keeping it
    assert write_output(target, spec, effdsl.lower(spec), weights=weights) == target


def test_onnx_refuses_condconv_with_a_reason(tmp_path: Path) -> None:
    spec = network()
    with pytest.raises(OutputError, match="ONNX cannot express the CondConv conv"):
        write_output(tmp_path / "m.onnx", spec, effdsl.lower(spec))
    assert list(tmp_path.iterdir()) == []


def test_drawings_name_the_kernels_groups_and_experts() -> None:
    plan = effdsl.lower(network())
    block = to_dot(plan, detail="block")
    assert "mixed kernels 3×3:32 · 5×5:32 · 7×7:32 ch" in block
    assert "expand 1×1 in 2 groups" in block and "4 experts · routing" in block
    layer = to_dot(plan, detail="layer")
    assert "depthwise mixed 3×3 | 5×5 | 7×7 s2" in layer
    assert "routing · 4 experts" in layer and "expand 1×1 · 4 experts" in layer
    stage = to_dot(plan)
    assert "MixConv6 k3.5.7 s2" in stage and "CondConv6 k5 s2" in stage


def test_schema_lists_the_kinds_and_their_options() -> None:
    stage = effdsl.Network.model_json_schema()["$defs"]["Stage"]["properties"]
    assert {"mixconv", "condconv"} <= set(stage["kind"]["enum"])
    assert {"expand_groups", "project_groups", "experts"} <= set(stage)
