"""Global context (GCNet, `se_kind=gc`) against timm, and through every backend.

timm's `gc_efficientnetv2_rw_t` puts its `GlobalContext` where `efficientnetv2_rw_t` has
squeeze-and-excitation; the specs of both are checked as in `test_family`: parameters and MACs
on the `meta` device, the converted checkpoint's layout, logits (float64, randomised batch-norm
statistics) at a low resolution, and the importer, which reads the model back to the spec.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import timm
import torch
from timm.layers import GlobalContext
from timm.models.efficientnet import _gen_efficientnetv2_s
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import effdsl
import effdsl.codegen
from effdsl.convert import convert_state_dict
from effdsl.cost import op_cost
from effdsl.errors import ImportRefused
from effdsl.export import write_output
from effdsl.importers import import_model
from effdsl.importers.timm_models import TimmReader
from effdsl.plan import GlobalContextOp, SqueezeExciteOp
from effdsl.render import to_dot

from .conftest import SPECS
from .test_codegen import generated_model
from .test_export import run_onnx
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
    Twin("gc-efficientnetv2-rw-t.eff", None, "gc_efficientnetv2_rw_t"),
    Twin("efficientnetv2-rw-t.eff", None, "efficientnetv2_rw_t"),
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


def test_counts_at_224_are_timms() -> None:
    """At the models' 224 px: global context costs 28,325 parameters and 5.2M MACs more than
    squeeze-and-excitation (each block's attention conv and layer norm, and the C·HW MACs of
    the attention conv and of the weighted sum, a batched matrix product)."""
    gc = effdsl.cost(effdsl.lower(TWINS[0].network()))
    se = effdsl.cost(effdsl.lower(TWINS[1].network()))
    assert (gc.params, gc.macs) == (13_677_713, 1_918_088_736)
    assert (se.params, se.macs) == (13_649_388, 1_912_879_840)


@pytest.mark.slow  # float64 depthwise convs take PyTorch's slow path on a CPU
@pytest.mark.parametrize("twin", TWINS, ids=str)
def test_timm_weights_give_the_same_logits(twin: Twin) -> None:
    assert_same_logits(timm.create_model(twin.timm), twin.network(resolution=40), "timm")


@pytest.mark.parametrize("twin", TWINS, ids=str)
def test_import_writes_the_spec(twin: Twin) -> None:
    """The spec, but for the first stage: the paper's Fused-MBConv1, a single 3×3 conv with a
    residual, is timm's `ConvBnAct`, which the importer writes as the conv block it is."""
    imported = import_model(f"timm:{twin.timm}")
    text = (SPECS / twin.spec).read_text()
    written = "stage fused_mbconv e1 k3 s1 c24"
    assert written in text
    expected = effdsl.parse(text.replace(written, "stage conv k3 s1 c24"))
    assert canonical(imported) == canonical(expected)


# ---- the op against timm's module -----------------------------------------------------------


@pytest.mark.parametrize(("act", "gate"), [("silu", "sigmoid"), ("relu", "hard_sigmoid")])
def test_the_layer_equals_timms_global_context(act: str, gate: str) -> None:
    """One `GlobalContextOp` built, and timm's `GlobalContext` as the EfficientNet builder
    makes it (`rd_ratio`: the block's `se` over its expansion, `rd_divisor` 1), agree in
    parameters, MACs and output (float64)."""
    from effdsl.torch_build import ACTIVATIONS, GATES, layer

    op = GlobalContextOp("se", 96, 6, act, 7, gate)
    torch.manual_seed(0)
    theirs = GlobalContext(
        96, rd_ratio=0.25 / 4, act_layer=ACTIVATIONS[act], gate_layer=GATES[gate]
    )
    for parameter in theirs.parameters():  # the norm's and the biases' too, not their init
        nn.init.normal_(parameter)
    ours = layer(op)
    mapping = {"conv_attn": "attn", "mlp_scale.fc1": "reduce", "mlp_scale.norm": "norm"}
    mapping["mlp_scale.fc2"] = "expand"
    state = theirs.state_dict()
    ours.load_state_dict(
        {
            next(key.replace(t, o) for t, o in mapping.items() if key.startswith(t)): value
            for key, value in state.items()
        },
        strict=True,
    )
    x = torch.randn(2, 96, 7, 7, dtype=torch.float64)
    ours, theirs = ours.double(), theirs.double()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-12)
    assert op_cost(op).params == params(theirs) == params(ours)
    with FlopCounterMode(display=False) as counter:
        theirs(x[:1])  # one image
    assert op_cost(op).macs == counter.get_total_flops() // 2 == 2 * 96 * 49 + 2 * 96 * 6


# ---- through every backend ------------------------------------------------------------------

#: Global context in each kind of block that has SE, beside plain SE: from the defaults on a
#: fused block, on a block line after a line of SE (`se_kind=se`) in one stage, in a separable
#: block with a hard-sigmoid gate and its own activation, in a uir block; at 19 px the maps are
#: 10, 5 and 3 wide.
MIXED = """\
network mixed {
  input    size=19 channels=3
  defaults act=relu se_kind=gc

  stem  conv            k3 s2 c16
  stage fused_mbconv e4 k3 s1 c16 se=0.25
  stage mbconv       e4 k3 s2 c24 se=0.25 se_kind=se
  block mbconv       e6 k5 s1 c24 se=0.25
  stage separable       k3 s2 c32 se=0.5 se_gate=hard_sigmoid se_act=silu
  stage uir          e2 k3 s1 c32 se=0.25
  stage mbconv       e4 k3 s1 c40
  head  conv            k1 s1 c64
  classifier classes=10
}
"""


@pytest.fixture(scope="module")
def mixed() -> effdsl.Network:
    return effdsl.parse(MIXED)


def trained(network: effdsl.Network) -> nn.Module:
    torch.manual_seed(0)
    model = effdsl.build(network)
    randomise_batch_norm(model)
    return model.eval()


def test_the_plan_lowers_gc_where_se_was(mixed: effdsl.Network) -> None:
    plan = effdsl.lower(mixed)
    kinds = [
        [type(op).__name__ for op in block.ops if isinstance(op, SqueezeExciteOp)]
        for block in plan.blocks()
    ]
    assert kinds == [
        ["GlobalContextOp"],
        ["SqueezeExciteOp"],
        ["GlobalContextOp"],
        ["GlobalContextOp"],
        ["GlobalContextOp"],
        [],  # no `se`: nothing for the defaults' se_kind to replace
    ]
    fused, _, wide, separable, uir, _ = plan.blocks()
    assert (fused.ops[1].channels, fused.ops[1].squeeze, fused.ops[1].act) == (64, 4, "relu")
    assert (wide.ops[2].channels, wide.ops[2].squeeze) == (144, 6)  # 24 · 0.25 of 24 · 6
    assert (separable.ops[1].act, separable.ops[1].gate) == ("silu", "hard_sigmoid")
    assert uir.se_channels == 8


def test_build_codegen_and_cost_agree(mixed: effdsl.Network) -> None:
    plan = effdsl.lower(mixed)
    model = trained(mixed)
    assert_backends_agree(plan, model, 19)


def test_generated_code_has_only_the_classes_it_uses() -> None:
    only_gc = effdsl.lower(effdsl.load(SPECS / "gc-efficientnetv2-rw-t.eff"))
    source = effdsl.codegen.to_python(only_gc)
    assert "class GlobalContext(" in source and "class LayerNorm2d(" in source
    assert "class SqueezeExcite(" not in source and "context=" not in source
    both = effdsl.codegen.to_python(effdsl.lower(effdsl.parse(MIXED)))
    assert "class SqueezeExcite(" in both and "context=True" in both


@pytest.mark.slow  # torch.compile, torch.export, TorchScript and ONNX: 25-65 s on two cores
def test_inference_folding_features_export_and_graph_capture(
    mixed: effdsl.Network, tmp_path: Path
) -> None:
    model = trained(mixed)
    x = torch.randn(2, 3, 19, 19)
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
    features = effdsl.build(mixed, features_only=True).eval()
    with torch.no_grad():
        shapes = [tuple(f.shape) for f in features(x)]
    assert shapes == [(2, 16, 10, 10), (2, 24, 5, 5), (2, 32, 3, 3), (2, 32, 3, 3), (2, 40, 3, 3)]
    weights = tmp_path / "mixed.pth"
    torch.save(model.state_dict(), weights)
    target = write_output(tmp_path / "mixed.onnx", mixed, effdsl.lower(mixed), weights=weights)
    torch.testing.assert_close(run_onnx(target)(x), expected, rtol=1e-4, atol=1e-5)


def test_converts_to_timm_names_and_back(mixed: effdsl.Network) -> None:
    model = trained(mixed)
    theirs = convert_state_dict(model.state_dict(), network=mixed, target="timm")
    for key in (
        "blocks.0.0.se.conv_attn.weight",
        "blocks.0.0.se.mlp_scale.fc1.bias",
        "blocks.0.0.se.mlp_scale.norm.weight",
        "blocks.0.0.se.mlp_scale.fc2.weight",
        "blocks.1.0.se.conv_reduce.weight",  # plain SE beside it
    ):
        assert key in theirs, key
    back = convert_state_dict(theirs, network=mixed, source="timm")
    assert list(back) == list(model.state_dict())
    with pytest.raises(effdsl.EffError, match="torchvision has no global context"):
        convert_state_dict(model.state_dict(), network=mixed, target="torchvision")


def test_drawn_and_labelled(mixed: effdsl.Network) -> None:
    plan = effdsl.lower(mixed)
    layers = to_dot(plan, detail="layer")
    assert "global context" in layers and "attention pool · 64 → 4 → 64" in layers
    assert "layer norm · ReLU · sigmoid gate" in layers
    assert "squeeze-excite" in layers  # the SE block beside them
    stages = to_dot(plan)
    assert "GC 0.25 sigmoid" in stages and "SE/GC 0.25 sigmoid" in stages
    assert "GC 4 sigmoid" in to_dot(plan, detail="block")


def test_format_and_schema(mixed: effdsl.Network) -> None:
    text = effdsl.format(mixed)
    assert "defaults act=relu se_kind=gc" in text and "se_kind=se" in text
    assert effdsl.parse(text) == mixed and effdsl.format(effdsl.parse(text)) == text
    from effdsl.ast import Network

    schema = str(Network.model_json_schema())
    assert "se_kind" in schema and "'gc'" in schema


def test_the_importer_reads_built_and_generated_modules_back(mixed: effdsl.Network) -> None:
    with torch.device("meta"):
        built = effdsl.build(mixed)
    assert canonical(import_model(built)) == canonical(mixed)
    generated = generated_model(effdsl.lower(mixed))
    assert canonical(import_model(generated)) == canonical(mixed)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("stage conv k3 s1 c40 se_kind=gc", "a `conv` block has no squeeze-and-excitation"),
        ("stage mbconv e4 k3 s1 c40 se_kind=global", "unknown se_kind `global`"),
    ],
)
def test_located_errors(line: str, message: str) -> None:
    spec = MIXED.replace("  stage mbconv       e4 k3 s1 c40", "  " + line)
    with pytest.raises(effdsl.EffError) as caught:
        effdsl.parse(spec, "mixed.eff")
    errors = getattr(caught.value, "errors", (caught.value,))
    found = [e for e in errors if message in e.message]
    assert found and all(e.span is not None and e.span.line == 11 for e in found), errors


def test_gc_on_a_line_without_se_is_a_located_error(mixed: effdsl.Network) -> None:
    line = "  stage mbconv e4 k3 s1 c40 se_kind=gc"
    spec = MIXED.replace("  stage mbconv       e4 k3 s1 c40", line)
    with pytest.raises(effdsl.EffError) as caught:
        effdsl.lower(effdsl.parse(spec, "mixed.eff"))
    error = caught.value
    assert "`se_kind=gc` on a stage line without squeeze-and-excitation" in error.message
    assert error.span is not None and error.span.line == 11 and "se=0.25" in (error.hint or "")


# ---- what the importer still refuses ----------------------------------------------------------


def test_global_context_fused_by_addition_is_refused() -> None:
    """timm's `gca`, GCNet's own fusion (the context added, not gating), is not the language's."""
    with torch.device("meta"):
        model = _gen_efficientnetv2_s("gca_t", 0.8, 0.9, se_layer="gca")
    with pytest.raises(ImportRefused) as caught:
        TimmReader("gca_t").model(model)
    assert caught.value.message == (
        "timm:gca_t: blocks.3.0.se (GlobalContext): global context without attention "
        "pooling, or fused by addition"
    )


def test_global_context_without_attention_pooling_is_refused() -> None:
    layer = partial(GlobalContext, use_attn=False)
    with torch.device("meta"):
        model = _gen_efficientnetv2_s("gc_mean", 0.8, 0.9, se_layer=layer)
    with pytest.raises(ImportRefused, match="global context without attention pooling"):
        TimmReader("gc_mean").model(model)
