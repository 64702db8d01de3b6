"""EfficientNet-X and -H against timm, and space-to-depth (`s2d=yes`) through every backend
and back through the importer.

The specs are followed through the plan as in `test_family`: parameters and MACs on the `meta`
device, the converted timm checkpoint's layout, and logits (float64, randomised batch-norm
statistics) at a low resolution, odd sizes included, where the space-to-depth conv and its 2×2
depthwise conv pad a pixel right and bottom (TF's SAME) whatever the network's padding.
"""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import effdsl
from effdsl.convert import convert_state_dict
from effdsl.errors import CheckpointError, ImportRefused
from effdsl.importers import import_model
from effdsl.render import to_dot

from .test_codegen import generated_model
from .test_family import (
    Twin,
    assert_backends_agree,
    assert_same_logits,
    layout,
    macs,
    params,
)
from .test_import import canonical
from .test_torch_build import randomise_batch_norm

TWINS = [
    Twin("efficientnet-x.eff", "b3", "efficientnet_x_b3"),
    Twin("efficientnet-x.eff", "b5", "efficientnet_x_b5"),
    Twin("efficientnet-h.eff", "b5", "efficientnet_h_b5"),
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
        converted = convert_state_dict(theirs.state_dict(), network=network, source="timm")
    assert [(key, tuple(t.shape)) for key, t in converted.items()] == layout(ours)


def test_counts_at_timm_resolutions() -> None:
    """At timm's resolutions (288, 448, 448), as FlopCounterMode counts timm's models."""
    counts = [effdsl.cost(effdsl.lower(twin.network())) for twin in TWINS]
    assert [(c.params, c.macs) for c in counts] == [
        (13_299_652, 3_873_902_480),
        (33_439_614, 23_209_464_768),
        (45_884_172, 27_014_586_752),
    ]


@pytest.mark.parametrize(
    ("twin", "resolution"),
    [
        # 37: the stem's 19×19 map is odd, so the space-to-depth conv pads right and bottom
        (TWINS[0], 37),
        # float64 depthwise convs take PyTorch's slow path on a CPU: 15-60 s each
        pytest.param(TWINS[0], 40, marks=pytest.mark.slow),
        pytest.param(TWINS[2], 37, marks=pytest.mark.slow),
    ],
    ids=["x_b3-37", "x_b3-40", "h_b5-37"],
)
def test_timm_weights_give_the_same_logits(twin: Twin, resolution: int) -> None:
    network = twin.network(resolution=resolution)
    assert_same_logits(timm.create_model(twin.timm), network, "timm")


def test_the_region_as_timm_builds_it() -> None:
    """The first block runs on 4× its input behind a 2×2 stride-2 conv, with its 3×3 depthwise
    kernel halved and SE of its input before the conv; the region keeps 4× the widths until
    the next stride-2 block, which drops its stride and expands a quarter as much (e6: 1.5)."""
    plan = effdsl.lower(TWINS[0].network())  # b3: two blocks in the first stage
    first, second = plan.stages[0].blocks
    s2d, depthwise, se, project = first.ops
    assert (s2d.role, s2d.kernel, s2d.stride, s2d.in_channels, s2d.out_channels) == (
        "s2d", 2, 2, 40, 160
    )
    assert s2d.act == "silu" and (s2d.in_size, s2d.out_size) == (144, 72)
    assert (depthwise.kernel, depthwise.stride, depthwise.padding) == (2, 1, (0, 1, 0, 1))
    assert (se.channels, se.squeeze) == (160, 10)  # 40 · 0.25
    assert (project.out_channels, first.out_channels, first.residual) == (96, 96, False)
    assert (second.in_channels, second.out_channels, second.se_channels) == (96, 96, 24)
    assert second.residual and second.ops[0].kernel == 3  # the rest of the region as written
    end = plan.stages[1].blocks[0]
    assert (end.stride, end.expand, end.mid_channels, end.out_channels) == (1, 1.5, 144, 32)
    assert (end.se_channels, end.in_size, end.out_size) == (24, 72, 72)
    assert plan.stages[1].blocks[1].mid_channels == 192  # after the region: e6 of 32
    assert [(f.channels, f.reduction) for f in plan.feature_info()][:3] == [
        (96, 4), (32, 4), (48, 8)
    ]
    # EfficientNet-H: e4 of the 4× input keeps the width, and the fused block its expansion
    h = effdsl.lower(TWINS[2].network()).stages[1].blocks[0]
    assert [op.role for op in h.ops] == ["expand", "se", "project"]
    assert (h.in_channels, h.mid_channels) == (128, 128)


# ---- space-to-depth through every backend ---------------------------------------------------

#: Each form once: a separable block and an MBConv (expanding, a 5×5 kernel halved to 3×3,
#: with symmetric padding) that start a region, a region across a stage boundary ended by a
#: fused block, another by an MBConv with e1 (which gains an expansion conv), an odd input.
S2D = """\
network s2d {
  input    size=33 channels=3
  defaults act=relu se=0.25

  stem  conv         k3 s2 c16
  stage separable    k3 s1 c8  s2d=yes
  block mbconv e2    k3 s1 c8  x2
  stage mbconv e1    k3 s1 c16
  stage fused_mbconv e4 k3 s2 c24
  stage mbconv e3    k5 s1 c24 s2d=yes act=silu
  stage mbconv e1    k3 s2 c32 x2
  head  conv         k1 s1 c64
  classifier classes=10
}
"""


@pytest.fixture(scope="module")
def s2d() -> effdsl.Network:
    return effdsl.parse(S2D)


def trained(network: effdsl.Network) -> torch.nn.Module:
    torch.manual_seed(0)
    model = effdsl.build(network)
    randomise_batch_norm(model)
    return model.eval()


def test_the_plan_lowers_each_form_once(s2d: effdsl.Network) -> None:
    plan = effdsl.lower(s2d)
    separable = plan.stages[0].blocks[0]
    assert [op.role for op in separable.ops] == ["s2d", "depthwise", "se", "pointwise"]
    assert separable.ops[0].padding == (0, 1, 0, 1)  # 17×17 → 9×9
    assert [b.out_channels for b in plan.blocks()][:4] == [32, 32, 32, 64]  # 4× in the region
    fused = plan.stages[2].blocks[0]
    assert (fused.stride, fused.mid_channels, fused.out_channels) == (1, 64, 24)
    expanding = plan.stages[3].blocks[0]
    s2d_op, expand, depthwise = expanding.ops[:3]
    assert (s2d_op.out_channels, expand.out_channels) == (96, 288)  # e3 of 4·24
    assert (depthwise.kernel, depthwise.padding) == (3, (1, 1, 1, 1))  # k5 halved, symmetric
    assert expanding.se_channels == 6  # 24 · 0.25, of the input before the conv
    ending = plan.stages[4].blocks[0]
    assert [op.role for op in ending.ops] == ["expand", "depthwise", "se", "project"]
    assert (ending.stride, ending.mid_channels, ending.out_channels) == (1, 24, 32)


def test_build_codegen_and_cost_agree(s2d: effdsl.Network) -> None:
    plan = effdsl.lower(s2d)
    model = trained(s2d)
    assert_backends_agree(plan, model, 33)


def test_inference_folding_features_and_graph_capture(s2d: effdsl.Network) -> None:
    model = trained(s2d)
    x = torch.randn(2, 3, 33, 33)
    with torch.no_grad():
        expected = model(x)
        fast = effdsl.optimize_for_inference(model)
        torch.testing.assert_close(fast(x), expected, rtol=1e-4, atol=1e-5)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x), expected)
        torch.testing.assert_close(torch.export.export(model, (x,)).module()(x), expected)
        torch.testing.assert_close(torch.jit.script(model)(x), expected)
    features = effdsl.build(s2d, features_only=True).eval()
    with torch.no_grad():
        shapes = [tuple(f.shape) for f in features(x)]
    assert shapes == [(2, 32, 9, 9), (2, 64, 9, 9), (2, 24, 9, 9), (2, 96, 5, 5), (2, 32, 5, 5)]


def test_converts_to_timm_names_and_back(s2d: effdsl.Network) -> None:
    model = trained(s2d)
    theirs = convert_state_dict(model.state_dict(), network=s2d, target="timm")
    assert "blocks.0.0.conv_s2d.weight" in theirs and "blocks.0.0.bn_s2d.running_var" in theirs
    assert "blocks.0.0.bn1.weight" in theirs  # the depthwise conv's norm keeps its number
    back = convert_state_dict(theirs, network=s2d, source="timm")
    assert all(torch.equal(back[key], value) for key, value in model.state_dict().items())
    with pytest.raises(CheckpointError, match="torchvision has no space-to-depth conv"):
        convert_state_dict(model.state_dict(), network=s2d, target="torchvision")


def test_format_round_trip_and_drawing(s2d: effdsl.Network) -> None:
    text = effdsl.format(s2d)
    assert text.count("s2d=yes") == 2 and effdsl.parse(text) == s2d
    dot = to_dot(effdsl.lower(s2d), detail="layer")
    assert "s2d 2×2 s2" in dot and "depthwise 2×2" in dot
    assert "MBConv3 s2d · k3" in to_dot(effdsl.lower(s2d), detail="block")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("stage mbconv e3 k5 s2 c24 s2d=yes", "a space-to-depth block has stride 1"),
        ("stage fused_mbconv e3 k5 s1 c24 s2d=yes", "s2d applies to `mbconv` and `separable`"),
        ("stage mbconv e3 k5 s1 c24 s2d=perhaps", "expected yes or no, got `perhaps`"),
    ],
)
def test_located_errors(line: str, message: str) -> None:
    text = S2D.replace("stage mbconv e3    k5 s1 c24 s2d=yes act=silu", line)
    with pytest.raises(effdsl.EffError) as caught:
        effdsl.parse(text, "s2d.eff")
    errors = getattr(caught.value, "errors", (caught.value,))
    assert [(e.span.line, e.span.column) for e in errors if message in e.message] == [
        (10, line.index("s2d=") + 7)
    ]


def test_space_to_depth_inside_a_region_is_a_located_error() -> None:
    text = S2D.replace("stage mbconv e1    k3 s1 c16", "stage mbconv e1    k3 s1 c16 s2d=yes")
    with pytest.raises(effdsl.EffError) as caught:
        effdsl.lower(effdsl.parse(text, "s2d.eff"))
    error = caught.value
    assert error.message == "space-to-depth inside a space-to-depth region"
    assert error.span is not None and error.span.line == 8
    assert error.hint is not None and "starts at line 6" in error.hint


# ---- the importer ---------------------------------------------------------------------------


def test_timm_imports_as_the_spec_at_its_preset() -> None:
    imported = import_model("timm:efficientnet_x_b3")
    written = TWINS[0].network()  # timm's model has no dropout: the preset's is the paper's
    written = written.model_copy(update={"classifier": imported.classifier})
    assert canonical(imported) == canonical(written)
    assert "stage mbconv       e1 k3 s1 c24   x2 s2d=yes" in effdsl.format(imported)


def test_built_and_generated_modules_import_back_as_written(s2d: effdsl.Network) -> None:
    with torch.device("meta"):
        built = effdsl.build(s2d)
        generated = generated_model(effdsl.lower(s2d))
    for model in (built, generated):
        assert canonical(import_model(model)) == canonical(s2d)


def test_a_space_to_depth_conv_the_language_cannot_say_is_refused(s2d: effdsl.Network) -> None:
    with torch.device("meta"):
        model = effdsl.build(s2d)
        model.stages[0].blocks[0].s2d.conv = nn.Conv2d(16, 64, 3, 2, 1, bias=False)
    with pytest.raises(ImportRefused) as caught:
        import_model(model)
    assert caught.value.message == (
        "module:s2d: stages.0.blocks.0.s2d.conv: a space-to-depth conv other than 2×2 to 4× "
        "the channels"
    )
