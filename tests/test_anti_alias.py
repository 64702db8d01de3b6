"""Anti-aliased downsampling (`aa=`, timm's `aa_layer`) against timm, and through every backend.

A strided block of an anti-aliased network runs its strided conv at stride 1 and downsamples
after that conv's norm and activation with a pool: a 2×2 average (`avg`) or a binomial blur
(`blur`, reflect padding; `blurpc`, zero padding). The specs are checked against timm as in
`test_family`: parameters and MACs on the meta device, the converted checkpoint's layout, and
float64 logits with randomised batch-norm statistics. MobileNetV4-Conv-L, whose anti-aliased
twin needs it, comes with them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from torch import nn

import effdsl
from effdsl import ast
from effdsl.convert import convert_state_dict
from effdsl.export import write_output
from effdsl.importers import import_model
from effdsl.importers.effdsl_modules import load_generated
from effdsl.plan import PoolOp
from effdsl.render import to_dot

from .conftest import SPECS
from .test_export import RUNTIMES, relative_error
from .test_family import (
    Twin,
    assert_generated_twin,
    assert_same_logits,
    layout,
    macs,
    params,
)
from .test_torch_build import randomise_batch_norm

TWINS = [
    Twin("efficientnet-blur-b0.eff", None, "efficientnet_blur_b0"),
    Twin("mobilenetv4-conv-large.eff", None, "mobilenetv4_conv_large"),
    Twin("mobilenetv4-conv-aa-medium.eff", None, "mobilenetv4_conv_aa_medium"),
    Twin("mobilenetv4-conv-blur-medium.eff", None, "mobilenetv4_conv_blur_medium"),
    Twin("mobilenetv4-conv-aa-large.eff", None, "mobilenetv4_conv_aa_large"),
]


@pytest.mark.parametrize("twin", TWINS, ids=str)
def test_counts_and_layout_equal_timm(twin: Twin) -> None:
    # 97 px: odd maps (49, 25, 13, 7) on the way, where an average pool rounds down and a blur
    # (or a strided conv) up
    network = twin.network(resolution=97)
    report = effdsl.cost(effdsl.lower(network))
    with torch.device("meta"):
        theirs = timm.create_model(twin.timm).eval()
        ours = effdsl.build(network).eval()
        assert report.params == params(ours) == params(theirs)
        assert report.macs == macs(ours, 97) == macs(theirs, 97)
        converted = convert_state_dict(theirs.state_dict(), network=network, source="timm")
    assert [(key, tuple(t.shape)) for key, t in converted.items()] == layout(ours)


def test_counts_at_their_own_sizes() -> None:
    """At each spec's input size (timm's default for the model), as timm counts them
    (FlopCounterMode on the meta device): the blur adds 9 MACs an output pixel and channel;
    the average pool none."""
    counts = {
        twin.timm: (lambda c: (c.params, c.macs))(effdsl.cost(effdsl.lower(twin.network())))
        for twin in TWINS
    }
    assert counts == {
        "efficientnet_blur_b0": (5_288_548, 410_595_424),  # B0: 385,814,752 (+ 6.4%)
        "mobilenetv4_conv_large": (32_590_864, 6_376_220_672),  # 384 px
        "mobilenetv4_conv_aa_medium": (9_715_512, 1_561_798_656),  # 256 px
        "mobilenetv4_conv_blur_medium": (9_715_512, 1_202_577_600),
        "mobilenetv4_conv_aa_large": (32_590_864, 9_537_203_200),  # 448 px
    }


@pytest.mark.parametrize(
    ("twin", "size"),
    [
        (TWINS[0], 40),  # maps of 5 and 3 on the way
        pytest.param(TWINS[2], 40, marks=pytest.mark.slow),  # 5 → 2 by the average pool
        pytest.param(TWINS[3], 40, marks=pytest.mark.slow),
        pytest.param(TWINS[1], 32, marks=pytest.mark.slow),
        pytest.param(TWINS[4], 32, marks=pytest.mark.slow),
    ],
    ids=str,
)
def test_timm_weights_give_the_same_logits(twin: Twin, size: int) -> None:
    assert_same_logits(timm.create_model(twin.timm), twin.network(resolution=size), "timm")


@pytest.mark.parametrize("twin", [TWINS[0], TWINS[2]], ids=str)
def test_timm_model_imports_as_the_spec(twin: Twin) -> None:
    """The importer translates timm's `aa` into the spec's `defaults aa=...`."""
    imported = import_model(f"timm:{twin.timm}")
    written = twin.network()
    assert imported.defaults.aa == written.defaults.aa != "none"
    assert imported.stages == written.stages


# ---- the language -----------------------------------------------------------------------------

#: Every block kind strided once with anti-aliasing, on maps odd and even (97 → 48, 24, ...):
#: `defaults aa=blurpc` reaches every strided line, one line picks the average pool, one the
#: reflecting blur, one turns it off; a uir block strides with its start conv and one with its
#: end conv, a fused block of ratio 1 is one conv, SAME padding on one line.
EVERY_KIND = """\
network aa {
  input    size=97 channels=3
  defaults act=relu se=0.25 aa=blurpc

  stem  conv            k3 s1 c16
  stage conv            k3 s2 c16 x1 aa=avg
  block separable       k3 s1 c24 x1
  stage separable       k5 s2 c24 x2 aa=blur
  stage mbconv       e4 k3 s2 c32 x2 padding=same
  block fused_mbconv e1 k3 s1 c32 x1
  stage fused_mbconv e3 k3 s2 c40 x1 aa=none
  block fused_mbconv e1 k3 s2 c40 x1 skip=no
  stage mixconv      e3 k3.5 s2 c48 x1 expand_groups=2
  stage condconv     e2 k3 s1 c48 x1 experts=3
  stage uir          e2 k0 s2 c56 x1 dw_start=3
  block uir          e2 k0 s2 c56 x1 dw_end=5
  head  conv            k1 s1 c64
  classifier classes=10
}
"""


@pytest.fixture(scope="module")
def every_kind() -> effdsl.Network:
    return effdsl.parse(EVERY_KIND)


def test_the_pool_follows_the_strided_conv_which_runs_at_stride_1(
    every_kind: effdsl.Network,
) -> None:
    plan = effdsl.lower(every_kind)
    pools = {
        block.path: [(op.role, op.kind, op.in_size, op.out_size) for op in block.ops
                     if isinstance(op, PoolOp)]
        for block in plan.blocks()
    }
    assert pools == {
        "stages.0.blocks.0": [("aa", "avg", 97, 48)],  # an average pool rounds down
        "stages.0.blocks.1": [],
        "stages.1.blocks.0": [("aa", "blur", 48, 24)],
        "stages.1.blocks.1": [],
        "stages.2.blocks.0": [("aa", "blurpc", 24, 12)],
        "stages.2.blocks.1": [],
        "stages.2.blocks.2": [],
        "stages.3.blocks.0": [],  # aa=none: the conv strides itself (12 → 6)
        "stages.3.blocks.1": [("aa", "blurpc", 6, 3)],
        "stages.4.blocks.0": [("aa", "blurpc", 3, 2)],  # a blur rounds up
        "stages.5.blocks.0": [],
        "stages.6.blocks.0": [("aa", "blurpc", 2, 1)],
        "stages.6.blocks.1": [("aa", "blurpc", 1, 1)],  # zeros pad a 1×1 map
    }
    roles = [[op.role for op in block.ops] for block in plan.blocks()]
    assert roles[0] == ["conv", "aa"]
    assert roles[2] == ["depthwise", "aa", "se", "pointwise"]
    assert roles[4] == ["expand", "depthwise", "aa", "se", "project"]
    assert roles[8] == ["conv", "aa"]  # a fused block of ratio 1
    assert roles[11] == ["start", "aa", "expand", "se", "project"]
    assert roles[12] == ["expand", "se", "project", "end", "aa"]
    for block in plan.blocks():
        for op in block.ops:
            if isinstance(op, PoolOp):
                assert op.path.endswith(".aa") and block.stride == op.stride == 2
            elif hasattr(op, "stride") and block.pools:
                assert op.stride == 1  # the pool strides instead
    # the pool's channels are its conv's: the depthwise conv's input of a separable block
    assert plan.blocks()[2].ops[1].channels == 24


def test_defaults_reach_strided_lines_only() -> None:
    plan = effdsl.lower(effdsl.load(SPECS / "efficientnet-blur-b0.eff"))
    strided = [block.stride > 1 for block in plan.blocks()]
    assert [bool(block.pools) for block in plan.blocks()] == strided
    assert plan.stem.stride == 2  # the stem strides itself
    assert sum(strided) == 4


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("stage mbconv e4 k3 s1 c24 x1 aa=avg", "aa=avg downsamples a strided block, and this "
         "line has stride 1"),
        ("stage mbconv e4 k3 s2 c24 x1 aa=max", "unknown aa `max`"),
        ("stage mqa k3 s1 c24 x1 heads=2 key_dim=8 aa=blur", "aa=blur downsamples a strided"),
    ],
)
def test_located_errors(line: str, message: str) -> None:
    spec = EVERY_KIND.replace("  stage uir          e2 k0 s2 c56 x1 dw_start=3", "  " + line)
    with pytest.raises(effdsl.EffError) as caught:
        effdsl.parse(spec, "aa.eff")
    errors = getattr(caught.value, "errors", (caught.value,))
    found = [e for e in errors if message in e.message]
    assert found and all(e.span is not None and e.span.line == 15 for e in found), errors


def test_the_stem_takes_no_aa() -> None:
    with pytest.raises(effdsl.EffError, match="aa"):
        effdsl.parse(EVERY_KIND.replace("stem  conv            k3 s1 c16",
                                        "stem  conv k3 s2 c16 aa=avg"))


def test_pools_on_a_1x1_map_are_refused_where_pytorch_cannot_run_them() -> None:
    for kind in ("avg", "blur"):
        text = EVERY_KIND.replace("defaults act=relu se=0.25 aa=blurpc",
                                  f"defaults act=relu se=0.25 aa={kind}")
        with pytest.raises(effdsl.EffError, match=f"aa={kind} needs maps of at least 2×2") as e:
            effdsl.lower(effdsl.parse(text, "aa.eff"))
        assert e.value.span is not None and e.value.hint and "blurpc" in e.value.hint


def test_format_round_trip(every_kind: effdsl.Network) -> None:
    text = effdsl.format(every_kind)
    assert "defaults act=relu se=0.25 aa=blurpc" in text and "aa=none" in text
    assert effdsl.parse(text) == every_kind and effdsl.format(effdsl.parse(text)) == text
    schema = ast.Network.model_json_schema()["$defs"]  # what `effdsl schema` prints
    assert schema["Defaults"]["properties"]["aa"]["enum"] == list(ast.ANTI_ALIASES)
    assert "aa" in schema["Stage"]["properties"] and "aa" not in schema["Stem"]["properties"]


# ---- every backend ------------------------------------------------------------------------------


def trained(network: effdsl.Network) -> nn.Module:
    torch.manual_seed(0)
    model = effdsl.build(network)
    randomise_batch_norm(model)
    return model.eval()


def test_build_codegen_and_cost_agree(every_kind: effdsl.Network) -> None:
    plan = effdsl.lower(every_kind)
    model = trained(every_kind)
    assert effdsl.cost(plan).params == params(model)
    assert effdsl.cost(plan).macs == macs(model, 97)  # the blurs' depthwise convs counted
    assert not any("aa" in key for key in model.state_dict())  # no state: timm's layout
    assert_generated_twin(plan, model, 97)


def test_inference_folding_features_and_graph_capture(every_kind: effdsl.Network) -> None:
    model = trained(every_kind)
    x = torch.randn(2, 3, 97, 97)
    with torch.no_grad():
        expected = model(x)
        fast = effdsl.optimize_for_inference(model)
        torch.testing.assert_close(fast(x), expected, rtol=1e-4, atol=1e-5)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x), expected)
    features = effdsl.build(every_kind, features_only=True).eval()
    with torch.no_grad():
        shapes = [tuple(f.shape)[2:] for f in features(x)]
    assert shapes == [(48, 48), (24, 24), (12, 12), (3, 3), (2, 2), (2, 2), (1, 1)]


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("extension", RUNTIMES)
def test_exports_match_the_module(tmp_path: Path, extension: str) -> None:
    # ONNX cannot say CondConv's per-sample kernels at a dynamic batch: an MBConv instead
    every_kind = effdsl.parse(
        EVERY_KIND.replace("condconv     e2 k3 s1 c48 x1 experts=3", "mbconv       e2 k3 s1 c48 x1")
    )
    model = trained(every_kind)
    weights = tmp_path / "aa.pth"
    torch.save(model.state_dict(), weights)
    target = tmp_path / f"aa{extension}"
    plan = effdsl.lower(every_kind)
    write_output(target, every_kind, plan, weights=weights)
    run = RUNTIMES[extension](target)
    x = torch.randn(2, 3, 97, 97)
    with torch.no_grad():
        assert relative_error(run(x), model(x)) < 1e-4


def test_built_and_generated_modules_import_back(tmp_path: Path) -> None:
    # at 385 px no map is 1×1: the reader runs a generated class once, as it is (training)
    every_kind = effdsl.parse(EVERY_KIND.replace("size=97", "size=385"))
    with torch.device("meta"):
        built = import_model(effdsl.build(every_kind))
    source = tmp_path / "aa.py"
    source.write_text(effdsl.codegen.to_python(effdsl.lower(every_kind)))
    generated = import_model(load_generated(str(source)))
    def pools(network: effdsl.Network) -> list[list[tuple[str, str, int]]]:
        return [
            [(pool.path, pool.kind, pool.in_size) for pool in block.pools.values()]
            for block in effdsl.lower(network).blocks()
        ]

    for imported in (built, generated):
        assert pools(imported) == pools(every_kind)
        assert effdsl.cost(effdsl.lower(imported)) == effdsl.cost(effdsl.lower(every_kind))
    # 5 of the 8 strided lines blur with zero padding: too few for `defaults` (3 in 4)
    assert "aa=avg" in effdsl.format(built) and "aa=none" not in effdsl.format(built)


def test_checkpoints_convert_to_timm_but_not_torchvision(every_kind: effdsl.Network) -> None:
    model = trained(every_kind)
    theirs = convert_state_dict(model.state_dict(), network=every_kind, target="timm")
    back = convert_state_dict(theirs, network=every_kind, source="timm")
    assert list(back) == list(model.state_dict())
    network = effdsl.load(SPECS / "efficientnet-blur-b0.eff")
    with torch.device("meta"):
        state = effdsl.build(network).state_dict()
    with pytest.raises(effdsl.EffError, match="torchvision has no anti-aliased downsampling"):
        convert_state_dict(state, network=network, target="torchvision")


def test_drawn_with_its_pools(every_kind: effdsl.Network) -> None:
    plan = effdsl.lower(every_kind)
    layers = to_dot(plan, detail="layer")
    assert "anti-alias · avgpool 2×2 s2" in layers and "blur pool 3×3 s2" in layers
    assert "reflect pad" in layers and "zero pad" in layers
    blocks = to_dot(plan, detail="block")
    assert "anti-aliased: depthwise s1, then blur pool 3×3 s2" in blocks
    assert "aa=blurpc" in to_dot(plan, detail="stage")
