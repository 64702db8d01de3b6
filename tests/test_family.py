"""The mobile-CNN family specs against timm and torchvision: parameters, MACs, checkpoint
layouts through the converter, and logits (float64, randomised batch-norm statistics).

Counts are taken on the `meta` device (no memory, no arithmetic); logits at a low resolution.
Each spec is followed through the plan, so these also test the language features it uses:
squeeze-and-excitation options, pooled heads, stages of several block lines, width rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import timm
import torch
import torchvision
from timm.models.mobilenetv3 import _gen_mobilenet_v3
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import effdsl
import effdsl.codegen
from effdsl.convert import convert_state_dict
from effdsl.render import to_dot

from .conftest import ROOT, SPECS
from .test_codegen import generated_model
from .test_torch_build import randomise_batch_norm


@dataclass(frozen=True)
class Twin:
    """A spec (and preset) and the timm model it must equal."""

    spec: str
    preset: str | None
    timm: str
    #: timm's `tf_` port of TensorFlow weights: TensorFlow's SAME padding and batch-norm ε 1e-3,
    #: which a spec for those weights would set in its `defaults` line
    tf: bool = False

    def network(self, resolution: int | None = None) -> effdsl.Network:
        network = effdsl.load(SPECS / self.spec)
        if self.tf:
            defaults = network.defaults.model_copy(update={"padding": "same", "bn_eps": 0.001})
            network = network.model_copy(update={"defaults": defaults})
        if self.preset is None and resolution is None:
            return network
        return effdsl.scale(network, preset=self.preset, resolution=resolution)

    def __str__(self) -> str:
        return self.timm


TWINS = [
    Twin("mobilenetv3-large.eff", "large_100", "mobilenetv3_large_100"),
    Twin("mobilenetv3-large.eff", "large_075", "mobilenetv3_large_075"),
    Twin("mobilenetv3-small.eff", "small_100", "mobilenetv3_small_100"),
    Twin("mobilenetv3-small.eff", "small_075", "mobilenetv3_small_075"),
    Twin("mobilenetv3-small.eff", "small_050", "mobilenetv3_small_050"),
    Twin("mobilenetv3-minimal.eff", None, "tf_mobilenetv3_large_minimal_100"),
    Twin("fbnet-c.eff", None, "fbnetc_100"),
    Twin("spnasnet.eff", None, "spnasnet_100"),
    Twin("efficientnet-edgetpu.eff", "es", "efficientnet_es"),
    Twin("efficientnet-edgetpu.eff", "em", "efficientnet_em"),
    Twin("tinynet.eff", "tinynet_a", "tinynet_a"),
    Twin("tinynet.eff", "tinynet_b", "tinynet_b"),
    Twin("tinynet.eff", "tinynet_c", "tinynet_c"),
    Twin("tinynet.eff", "tinynet_d", "tinynet_d"),
    Twin("efficientnetv2-rw-s.eff", None, "efficientnetv2_rw_s"),
    Twin("efficientnetv2-rw-m.eff", None, "efficientnetv2_rw_m"),
    *(Twin("lcnet.eff", name, name) for name in ("lcnet_035", "lcnet_050", "lcnet_075")),
    *(Twin("lcnet.eff", name, name) for name in ("lcnet_100", "lcnet_150")),
    Twin("mobilenetv1-100h.eff", None, "mobilenetv1_100h"),
    Twin("mobilenetv1.eff", "mobilenetv1_100", "mobilenetv1_100"),
    Twin("mobilenetv1.eff", "mobilenetv1_125", "mobilenetv1_125"),
    Twin("mixnet-s.eff", None, "mixnet_s"),
    Twin("mixnet-s.eff", None, "tf_mixnet_s", tf=True),
    *(Twin("mixnet-m.eff", f"mixnet_{size}", f"mixnet_{size}") for size in ("m", "l", "xl", "xxl")),
    *(Twin("mixnet-m.eff", f"mixnet_{size}", f"tf_mixnet_{size}", tf=True) for size in ("m", "l")),
    *(Twin(f"fbnetv3-{size}.eff", None, f"fbnetv3_{size}") for size in ("b", "d", "g")),
]


def macs(model: nn.Module, resolution: int) -> int:
    """Multiply-adds of one image: FlopCounterMode's FLOPs / 2, on whatever device it is."""
    x = torch.zeros(1, 3, resolution, resolution)
    with FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops()) // 2


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layout(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(key, tuple(t.shape)) for key, t in model.state_dict().items()]


def assert_generated_twin(plan: effdsl.Plan, model: nn.Module, size: int) -> None:
    """The module generated from `plan` has the built `model`'s state_dict layout, and with
    its weights gives its output on a `size`×`size` batch."""
    twin = generated_model(plan).eval()
    assert layout(twin) == layout(model)
    twin.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model(x))


def assert_backends_agree(plan: effdsl.Plan, model: nn.Module, size: int) -> None:
    """The cost model counts the built `model`'s parameters and MACs (FlopCounterMode's, at
    `size`), and the generated module is its twin."""
    assert effdsl.cost(plan).params == params(model)
    assert effdsl.cost(plan).macs == macs(model, size)
    assert_generated_twin(plan, model, size)


@pytest.mark.parametrize("twin", TWINS, ids=str)
def test_counts_and_layout_equal_timm(twin: Twin) -> None:
    network = twin.network(resolution=96)
    report = effdsl.cost(effdsl.lower(network))
    with torch.device("meta"):
        theirs = timm.create_model(twin.timm)
        ours = effdsl.build(network)
        assert report.params == params(ours) == params(theirs)
        assert report.macs == macs(ours, 96) == macs(theirs, 96)
        converted = convert_state_dict(theirs.state_dict(), network=network, source="timm")
    assert [(key, tuple(t.shape)) for key, t in converted.items()] == layout(ours)


def assert_same_logits(theirs: nn.Module, network: effdsl.Network, source: str) -> None:
    """Their weights, converted, give our model their logits (float64, within 1e-6), and ours,
    converted back, load into their model strictly."""
    torch.manual_seed(0)
    randomise_batch_norm(theirs)
    theirs = theirs.double().eval()
    ours = effdsl.build(network).double().eval()
    ours.load_state_dict(
        convert_state_dict(theirs.state_dict(), network=network, source=source), strict=True
    )
    size = network.input.size
    x = torch.randn(1, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)
    back = convert_state_dict(ours.state_dict(), network=network, target=source)
    theirs.load_state_dict(back, strict=True)


def twin(name: str, slow: bool = False) -> object:
    found = next(t for t in TWINS if t.timm == name)
    return pytest.param(found, marks=pytest.mark.slow) if slow else found


@pytest.mark.parametrize(
    "twin",
    [
        twin("mobilenetv3_large_100", slow=True),
        twin("mobilenetv3_small_050"),
        twin("tf_mobilenetv3_large_minimal_100"),
        twin("fbnetc_100"),  # e1 blocks that keep their expansion conv
        twin("spnasnet_100"),  # stages of several lines, the first in timm's `ds` block
        twin("efficientnet_em", slow=True),  # mid=, fused blocks
        twin("tinynet_d"),  # repeats rounded to the nearest, the head's floor
        twin("efficientnetv2_rw_s", slow=True),  # fused e1 that keeps its projection
        twin("lcnet_050"),  # separable blocks, SE of the input with a hard-sigmoid gate
        twin("mixnet_s"),  # mixed kernels, grouped 1×1 convs
        twin("tf_mixnet_s"),  # the same with SAME padding: uneven pads per kernel size
        twin("fbnetv3_b"),  # a head conv after the pool with neither norm nor bias
    ],
    ids=str,
)
def test_timm_weights_give_the_same_logits(twin: Twin) -> None:
    # 40: odd sizes (5, 3) on the way, which SAME padding pads unevenly; small, as float64
    # depthwise convolutions take PyTorch's slow path on a CPU
    assert_same_logits(timm.create_model(twin.timm), twin.network(resolution=40), "timm")


def torchvision_eps(network: effdsl.Network) -> effdsl.Network:
    """torchvision's MobileNetV3 uses batch-norm ε = 0.001 (timm's, 1e-5)."""
    defaults = network.defaults.model_copy(update={"bn_eps": 0.001})
    return network.model_copy(update={"defaults": defaults})


@pytest.mark.slow
@pytest.mark.parametrize(
    ("factory", "spec"),
    [
        (torchvision.models.mobilenet_v3_large, "mobilenetv3-large.eff"),
        (torchvision.models.mobilenet_v3_small, "mobilenetv3-small.eff"),
    ],
    ids=["large", "small"],
)
def test_torchvision_weights_give_the_same_logits(
    factory: Callable[[], nn.Module], spec: str
) -> None:
    network = effdsl.scale(torchvision_eps(effdsl.load(SPECS / spec)), resolution=40)
    with torch.device("meta"):
        assert params(effdsl.build(network)) == params(factory())
    assert_same_logits(factory(), network, "torchvision")


@pytest.mark.parametrize("depth", [0.6, 1.4, 2.2])
def test_depth_scaling_of_stages_of_several_lines_equals_timm(depth: float) -> None:
    """timm shares a stage's scaled block count among its lines from the last one back."""
    network = effdsl.scale(effdsl.load(SPECS / "mobilenetv3-large.eff"), depth=depth)
    plan = effdsl.lower(network)
    with torch.device("meta"):
        theirs = _gen_mobilenet_v3("mobilenetv3_large_100", 1.0, depth_multiplier=depth)
    assert [len(stage.blocks) for stage in plan.stages] == [len(s) for s in theirs.blocks]
    assert effdsl.cost(plan).params == params(theirs)


# ---- every new construct through every backend ----------------------------------------------

#: A small net with each construct of the mobile family once: SE from the expanded width,
#: rounded to 8, with its own activation and a hard-sigmoid gate; a stage of three lines with
#: an absolute expanded width, an e1 block that keeps its expansion, a fused e1 block that keeps
#: its projection, a block without norm, an activation-free conv stage, and a head after the
#: pool without norm.
MOBILE = """\
network mobile {
  input    size=32 channels=3
  defaults act=hswish se_from=expanded se_divisor=8 se_act=relu se_gate=hard_sigmoid

  stem  conv         k3 s2 c16 act=swish
  stage mbconv e1    k3 s1 c16 se=0.25 full=yes
  stage mbconv e4    k3 s2 c24 act=relu
  block mbconv       k5 s1 c24 mid=40 se=0.25
  block fused_mbconv e1 k3 s1 c24 full=yes x2
  stage mbconv e2.3  k3 s2 c40 norm=none se=0.25 se_gate=sigmoid
  stage conv         k1 s1 c48 act=none
  head  conv         k1 s1 c64 pool=first norm=none
  classifier dropout=0.1 classes=10
}
"""


@pytest.fixture(scope="module")
def mobile() -> effdsl.Network:
    return effdsl.parse(MOBILE)


def trained_mobile(network: effdsl.Network) -> nn.Module:
    torch.manual_seed(0)
    model = effdsl.build(network)
    randomise_batch_norm(model)
    return model.eval()


def test_the_plan_lowers_each_construct_once(mobile: effdsl.Network) -> None:
    plan = effdsl.lower(mobile)
    first, second, third = plan.stages[:3]
    block = first.blocks[0]
    assert [op.role for op in block.ops] == ["expand", "depthwise", "se", "project"]
    se = block.ops[2]
    assert (se.squeeze, se.act, se.gate) == (8, "relu", "hard_sigmoid")  # make_divisible(4, 8)
    assert [b.mid_channels for b in second.blocks] == [64, 40, 24, 24]
    assert [op.role for op in second.blocks[2].ops] == ["expand", "project"]  # fused, kept 1×1
    assert second.lines == 3 and second.repeats == 4
    assert third.blocks[0].mid_channels == 56  # 24 · 2.3 = 55.2, rounded to 8 as timm does
    assert {op.norm for op in third.blocks[0].ops if op.role != "se"} == {"none"}
    assert plan.stages[3].blocks[0].ops[0].act is None
    assert plan.pooled_head and plan.head.in_size == plan.head.out_size == 1
    assert plan.stem.act == "silu"


def test_build_codegen_and_cost_agree(mobile: effdsl.Network) -> None:
    plan = effdsl.lower(mobile)
    model = trained_mobile(mobile)
    assert_backends_agree(plan, model, 32)


def test_inference_folding_features_and_graph_capture(mobile: effdsl.Network) -> None:
    model = trained_mobile(mobile)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        fast = effdsl.optimize_for_inference(model)
        torch.testing.assert_close(fast(x), expected, rtol=1e-4, atol=1e-5)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x), expected)
        exported = torch.export.export(model, (x,))
        torch.testing.assert_close(exported.module()(x), expected)
        scripted = torch.jit.script(model)
        torch.testing.assert_close(scripted(x), expected)
    features = effdsl.build(mobile, features_only=True).eval()
    with torch.no_grad():
        shapes = [tuple(f.shape) for f in features(x)]
    assert shapes == [(2, 16, 16, 16), (2, 24, 8, 8), (2, 40, 4, 4), (2, 48, 4, 4)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("block mbconv e3 k3 s1 c24", "a `block` line continues the stage right above it"),
        ("stage mbconv e3 k3 s1 c24 mid=72", "give the expansion as a ratio (e) or a width"),
        ("stage conv k3 s1 c24 mid=72", "a `conv` block has no expanded width"),
        ("stage mbconv e3 k3 s1 c24 se_gate=hswish", "unknown se_gate `hswish`"),
        ("stage mbconv e3 k3 s1 c24 se_from=output", "unknown se_from `output`"),
        ("stage mbconv e3 k3 s1 c24 norm=layers", "unknown norm `layers`"),
    ],
)
def test_located_errors(text: str, message: str) -> None:
    spec = MOBILE.replace("  stage conv         k1 s1 c48 act=none", "  " + text)
    if text.startswith("block"):  # nothing above it but the stem
        spec = MOBILE.replace("  stem  conv         k3 s2 c16 act=swish", "  " + text + "\n"
                              "  stem  conv         k3 s2 c16 act=swish")
    with pytest.raises(effdsl.EffError) as caught:
        effdsl.parse(spec, "mobile.eff")
    errors = getattr(caught.value, "errors", (caught.value,))
    assert any(message in e.message and e.span is not None for e in errors), errors


def test_pooled_head_must_be_pointwise() -> None:
    with pytest.raises(effdsl.EffError, match="a head after the pool acts on a 1×1 map"):
        effdsl.parse(MOBILE.replace("head  conv         k1 s1", "head  conv         k3 s1"))


def test_a_head_without_norm_or_bias_through_every_backend() -> None:
    """FBNetV3's head (`norm=none bias=no`): pool, a bias-free 1×1 conv, the activation."""
    text = MOBILE.replace("pool=first norm=none", "pool=first norm=none bias=no")
    network = effdsl.parse(text)
    assert effdsl.format(network).count("bias=no") == 1 and effdsl.parse(effdsl.format(network))
    plan = effdsl.lower(network)
    assert not plan.head.bias and plan.head.norm == "none"
    model = trained_mobile(network)
    assert model.head.conv.bias is None
    assert "Conv 1×1 · no bias, no norm · HardSwish" in to_dot(plan, detail="block")
    with_bias = params(trained_mobile(effdsl.parse(MOBILE)))
    assert effdsl.cost(plan).params == params(model) == with_bias - 64  # the head's 64 biases
    assert_generated_twin(plan, model, 32)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(effdsl.optimize_for_inference(model)(x), model(x))


def test_a_head_without_bias_says_norm_none() -> None:
    text = MOBILE.replace("pool=first norm=none", "pool=first bias=no")
    with pytest.raises(effdsl.EffError) as caught:
        effdsl.parse(text, "mobile.eff")
    errors = getattr(caught.value, "errors", (caught.value,))
    assert [(e.span.line, e.message) for e in errors if e.span] == [
        (12, "`bias=no` is for a head conv without norm: add `norm=none`")
    ]


#: MOBILE without its head conv: the 48 channels of the last stage go to the pool (MobileNetV1).
HEADLESS = MOBILE.replace("head  conv         k1 s1 c64 pool=first norm=none", "head  none")


def test_head_none_lowers_to_no_head_op_and_reads_back() -> None:
    network = effdsl.parse(HEADLESS)
    assert isinstance(network.head, effdsl.ast.NoHead)
    text = effdsl.format(network)
    assert "  head  none\n" in text and effdsl.format(effdsl.parse(text)) == text
    assert effdsl.parse(text) == network
    plan = effdsl.lower(effdsl.scale(network, width=2.0))
    assert plan.head is None and all(op.role != "head" for op in plan.ops())
    assert plan.classifier.in_features == plan.stages[-1].out_channels == 96
    assert effdsl.cost(plan).head == effdsl.cost(plan).head.__class__()


def test_head_none_through_every_backend() -> None:
    network = effdsl.parse(HEADLESS)
    plan = effdsl.lower(network)
    model = trained_mobile(network)
    assert effdsl.cost(plan).params == params(model)
    assert effdsl.cost(plan).macs == macs(model, 32)
    twin = generated_model(plan).eval()
    assert layout(twin) == layout(model)
    twin.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(twin(x), expected)
        fast = effdsl.optimize_for_inference(model)
        torch.testing.assert_close(fast(x), expected, rtol=1e-4, atol=1e-5)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x), expected)
        torch.testing.assert_close(torch.export.export(model, (x,)).module()(x), expected)
    features = effdsl.build(network, features_only=True).eval()
    with torch.no_grad():
        assert tuple(features(x)[-1].shape) == (2, 48, 4, 4)
    dot = to_dot(plan, detail="block")
    assert '"head"' not in dot and "avgpool · dropout" in dot
    with pytest.raises(effdsl.EffError, match="has no head conv"):
        convert_state_dict(model.state_dict(), network=network, target="torchvision")


def test_head_none_takes_nothing_after_it() -> None:
    text = HEADLESS.replace("head  none", "head  none c64")
    with pytest.raises(effdsl.EffError) as caught:
        effdsl.parse(text, "mobile.eff")
    errors = getattr(caught.value, "errors", (caught.value,))
    assert [(e.span.line, e.message, e.hint) for e in errors if e.span] == [
        (
            12,
            "unexpected `c64` in `head`",
            "`head none` stands alone; a head conv is written `head conv k1 c1280 ...`",
        )
    ]


def test_aliases_read_as_the_canonical_names(mobile: effdsl.Network) -> None:
    assert mobile.defaults.act == "hardswish" and mobile.stem.act == "silu"
    text = effdsl.format(mobile)
    assert "act=hswish" not in text and "act=swish" not in text and "act=silu" in text
    assert effdsl.parse(text) == mobile and effdsl.format(effdsl.parse(text)) == text


def test_head_floor_and_rounding_options() -> None:
    spec = MOBILE.replace("pool=first norm=none", "pool=first norm=none shrink=no")
    network = effdsl.scale(effdsl.parse(spec), width=0.35)
    assert network.head.channels == 64  # max(64, round(64 · 0.35))
    no_limit = spec.replace("defaults ", "scaling divisor=8 round_limit=0\n  defaults ")
    assert effdsl.scale(effdsl.parse(no_limit), width=0.35).stem.channels == 8  # 5.6 → 8
    assert effdsl.scale(effdsl.parse(spec), width=0.6).stages[2].channels == 24


def test_walk_through_of_the_docs_equals_the_spec() -> None:
    """docs/language.md writes Table 1 with `mid=` widths: the same network as the spec."""
    docs = (ROOT / "docs" / "language.md").read_text(encoding="utf-8")
    section = docs.split("## Writing a network from its paper")[1]
    text = section.split("```\n")[1]
    walked = effdsl.lower(effdsl.parse(text))
    spec = effdsl.lower(effdsl.load(SPECS / "mobilenetv3-large.eff"))
    assert effdsl.cost(walked) == effdsl.cost(spec)
    assert [(b.mid_channels, b.se_channels) for b in walked.blocks()] == [
        (b.mid_channels, b.se_channels) for b in spec.blocks()
    ]
