"""The PyTorch backend: built modules agree with the plan, the cost model and torchvision.

Big networks are built on the meta device (shapes, no memory); anything that runs a forward
pass uses a tiny spec or a low resolution.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import effdsl
from effdsl.errors import BuildError, UsageError
from effdsl.plan import ConvOp, Plan, SqueezeExciteOp
from effdsl.torch_build import (
    Block,
    ConvBNAct,
    EfficientNet,
    FeatureExtractor,
    PaddedConvBNAct,
    SqueezeExcite,
    drop_path,
)

from .conftest import REFERENCE_NETS, ROOT, SPECS, reference_counts

# Every block kind and option the backend distinguishes: fused e1 (a single conv) and e4,
# mbconv with and without expansion, a plain conv stage, residuals, SE, drop path.
TINY = """
network tiny {
  input    size=32 channels=3
  defaults act=silu se=0.25 drop_path=0.5
  stem  conv             k3 s2 c8
  stage fused_mbconv e1  k3 s1 c8  x2
  stage fused_mbconv e4  k3 s2 c16 x2
  stage mbconv       e1  k3 s1 c16 x1
  stage mbconv       e4  k5 s2 c24 x2
  stage conv             k3 s1 c24 x1
  head  conv             k1    c32
  classifier dropout=0.1 classes=10
}
"""

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


def tiny(**defaults: object) -> effdsl.Network:
    net = effdsl.parse(TINY)
    if defaults:
        net = net.model_copy(update={"defaults": net.defaults.model_copy(update=defaults)})
    return net


def reference_net(spec: str, preset: str | None) -> effdsl.Network:
    net = effdsl.load(SPECS / spec)
    return effdsl.scale(net, preset=preset) if preset else net


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_eval(network: effdsl.Network | Plan, **options: object) -> nn.Module:
    torch.manual_seed(0)
    return effdsl.build(network, **options).eval()  # type: ignore[arg-type]


# ---- agreement with the plan, the cost model and torchvision --------------------------------


@pytest.mark.parametrize(
    ("spec", "preset", "name"), REFERENCE_NETS, ids=[n for *_, n in REFERENCE_NETS]
)
def test_parameters_equal_cost_model_and_torchvision(
    spec: str, preset: str | None, name: str
) -> None:
    plan = effdsl.lower(reference_net(spec, preset))
    with torch.device("meta"):
        model = effdsl.build(plan)
    assert parameter_count(model) == effdsl.cost(plan).params == reference_counts()[name]["params"]


@pytest.mark.parametrize(
    ("spec", "preset", "name"), REFERENCE_NETS, ids=[n for *_, n in REFERENCE_NETS]
)
def test_every_op_is_a_module_at_its_path(spec: str, preset: str | None, name: str) -> None:
    plan = effdsl.lower(reference_net(spec, preset))
    with torch.device("meta"):
        modules = dict(effdsl.build(plan).named_modules())
    for op in plan.ops():
        module = modules[op.path]
        if isinstance(op, ConvOp):
            assert isinstance(module, ConvBNAct)
            assert module.conv.weight.shape == (
                op.out_channels,
                op.in_channels // op.groups,
                op.kernel,
                op.kernel,
            )
            assert (module.conv.stride, module.conv.groups) == ((op.stride, op.stride), op.groups)
        else:
            assert isinstance(module, SqueezeExcite)
            assert module.reduce.weight.shape == (op.squeeze, op.channels, 1, 1)
    for block in plan.blocks():
        names = [name for name, _ in modules[block.path].named_children()]
        assert names == [op.path.rsplit(".", 1)[-1] for op in block.ops]


def test_state_dict_keys_follow_the_plan() -> None:
    plan = effdsl.lower(reference_net("b0.eff", None))
    with torch.device("meta"):
        keys = list(effdsl.build(plan).state_dict())
    assert keys[:2] == ["stem.conv.weight", "stem.bn.weight"]
    assert "stages.3.blocks.1.expand.conv.weight" in keys
    assert "stages.3.blocks.1.depthwise.bn.running_var" in keys
    assert "stages.3.blocks.1.se.reduce.bias" in keys
    assert "stages.0.blocks.0.expand.conv.weight" not in keys  # e1: no expansion
    bn = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert keys[-8:-2] == ["head.conv.weight", *(f"head.bn.{name}" for name in bn)]
    assert keys[-2:] == ["classifier.weight", "classifier.bias"]


def test_flop_counter_sees_twice_the_analytic_macs() -> None:
    plan = effdsl.lower(reference_net("b0.eff", None))
    model = build_eval(plan)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, plan.resolution, plan.resolution))
    assert (
        counter.get_total_flops()
        == 2 * effdsl.cost(plan).macs
        == reference_counts()["efficientnet_b0"]["flops"]
    )


def test_flop_counter_with_tf_same_padding() -> None:
    plan = effdsl.lower(tiny(padding="same"))
    model = build_eval(plan)
    assert any(isinstance(m, PaddedConvBNAct) for m in model.modules())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 32, 32))
    assert counter.get_total_flops() == 2 * effdsl.cost(plan).macs


def test_importing_effdsl_does_not_import_torch() -> None:
    code = (
        "import sys, effdsl; effdsl.cost(effdsl.lower(effdsl.load('specs/b0.eff'))); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# ---- the module's behaviour -----------------------------------------------------------------


def test_same_padding_gives_the_planned_sizes() -> None:
    plan = effdsl.lower(tiny(padding="same"))
    model = build_eval(plan, features_only=True)
    features = model(torch.randn(2, 3, 32, 32))
    assert [f.shape[-1] for f in features] == [s.out_size for s in plan.stages]


def test_features_only() -> None:
    plan = effdsl.lower(tiny())
    model = build_eval(plan, features_only=True, out_indices=(3, 1))
    assert isinstance(model, FeatureExtractor)
    assert len(model.stages) == 4  # stages after the last one wanted are not built
    assert not hasattr(model, "head") and not hasattr(model, "classifier")
    features = model(torch.randn(2, 3, 32, 32))
    info = model.feature_info
    assert [(i.stage, i.channels, i.reduction) for i in info] == [(1, 16, 4), (3, 24, 8)]
    assert [tuple(f.shape) for f in features] == [
        (2, i.channels, 32 // i.reduction, 32 // i.reduction) for i in info
    ]


def test_features_only_defaults_to_every_stage_and_matches_the_full_model() -> None:
    net = tiny()
    full, features = build_eval(net), build_eval(net, features_only=True)
    assert features.feature_info == effdsl.lower(net).feature_info()
    features.load_state_dict(full.state_dict(), strict=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = full.stem(x)
        for stage in full.stages:
            expected = stage(expected)
        torch.testing.assert_close(features(x)[-1], expected)


def test_in_channels_and_num_classes() -> None:
    model = build_eval(tiny(), in_channels=1, num_classes=7)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    assert model.plan.in_channels == model.plan.stem.in_channels == 1
    assert parameter_count(model) == effdsl.cost(model.plan).params


def test_reference_net_with_grayscale_input_and_ten_classes() -> None:
    model = build_eval(reference_net("b0.eff", None), in_channels=1, num_classes=10)
    assert model.stem.conv.weight.shape == (32, 1, 3, 3)
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 10)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"in_channels": 0}, "in_channels must be an integer"),
        ({"in_channels": True}, "in_channels must be an integer"),
        ({"num_classes": -1}, "num_classes must be an integer"),
        ({"num_classes": "10"}, "num_classes must be an integer"),
        ({"out_indices": (0,)}, "only applies with features_only"),
        ({"features_only": True, "out_indices": (5,)}, "5 is not a stage"),
        ({"features_only": True, "out_indices": (-6,)}, "-6 is not a stage"),
        ({"features_only": True, "out_indices": (1, -4)}, "stage 1 twice"),
        ({"features_only": True, "out_indices": ()}, "empty"),
        ({"features_only": True, "out_indices": 2}, "sequence of stage indices"),
        ({"features_only": True, "num_classes": 3}, "no effect with features_only"),
        ({"scaling": effdsl.Multipliers()}, None),  # fine for a Network
    ],
)
def test_bad_options_raise_build_error(options: dict[str, object], message: str | None) -> None:
    if message is None:
        effdsl.build(tiny(), **options)  # type: ignore[arg-type]
        return
    with pytest.raises(BuildError, match=message):
        effdsl.build(tiny(), **options)  # type: ignore[arg-type]


def test_bad_network_raises_build_error() -> None:
    with pytest.raises(BuildError, match="Network or Plan, not str"):
        effdsl.build("specs/b0.eff")  # type: ignore[arg-type]
    with pytest.raises(BuildError, match="already records its scaling"):
        effdsl.build(effdsl.lower(tiny()), scaling=effdsl.Multipliers())


@pytest.mark.parametrize(
    ("act", "module"),
    [
        ("silu", nn.SiLU),
        ("relu", nn.ReLU),
        ("relu6", nn.ReLU6),
        ("hardswish", nn.Hardswish),
        ("gelu", nn.GELU),
    ],
)
def test_activations(act: str, module: type[nn.Module]) -> None:
    model = build_eval(tiny(act=act))
    assert isinstance(model.stem.act, module)
    assert isinstance(model.stages[3].blocks[0].se.act, module)
    assert isinstance(model.stages[3].blocks[0].project.act, nn.Identity)
    assert model(torch.randn(1, 3, 32, 32)).isfinite().all()


def test_batch_norm_options_and_initialisation() -> None:
    net = tiny(bn_eps=1e-3, bn_momentum=0.01)
    model = build_eval(net)
    bn = model.stages[1].blocks[0].expand.bn
    assert (bn.eps, bn.momentum) == (1e-3, 0.01)
    assert bn.weight.eq(1).all() and bn.bias.eq(0).all()
    se = model.stages[1].blocks[0].se
    assert se.reduce.bias.eq(0).all() and se.expand.bias.eq(0).all()
    bound = 1 / 10**0.5
    assert model.classifier.weight.abs().max() <= bound and model.classifier.bias.eq(0).all()
    # He normal, fan-out: std = sqrt(2 / (out · k²)); a 192×64 1×1 conv has 12,288 samples
    b0 = build_eval(reference_net("b0.eff", None))
    weight = b0.stages[3].blocks[0].expand.conv.weight
    assert weight.std().item() == pytest.approx((2 / weight.shape[0]) ** 0.5, rel=0.05)


def test_drop_path_drops_whole_samples_and_keeps_the_expectation() -> None:
    torch.manual_seed(0)
    x = torch.ones(4000, 3, 2, 2)
    out = drop_path(x, 0.25, training=True)
    per_sample = out.flatten(1)
    assert (per_sample == per_sample[:, :1]).all()  # one decision per sample
    assert per_sample[:, 0].unique().tolist() == pytest.approx([0.0, 1 / 0.75])
    assert out.mean().item() == pytest.approx(1.0, abs=0.05)
    assert drop_path(x, 0.25, training=False) is x
    assert drop_path(x, 0.0, training=True) is x


def test_stochastic_depth_in_training_only() -> None:
    model = build_eval(tiny())
    block = model.stages[3].blocks[1]
    assert isinstance(block, Block) and block.residual and block.drop_rate > 0
    x = torch.randn(64, 24, 4, 4)
    with torch.no_grad():
        full = block(x)  # eval: input + branch
        torch.testing.assert_close(block(x), full)
        block.training = True  # the block only: its batch norms keep their statistics
        dropped_or_scaled = block(x)
    branch = full - x
    dropped = (dropped_or_scaled - x).flatten(1).abs().amax(1) == 0
    assert 0 < dropped.sum() < 64  # rate 0.375: some samples of 64 dropped, some kept
    torch.testing.assert_close(
        (dropped_or_scaled - x)[~dropped], branch[~dropped] / (1 - block.drop_rate)
    )


def test_training_step_runs_and_updates_batch_norm() -> None:
    model = effdsl.build(tiny()).train()
    loss = model(torch.randn(4, 3, 32, 32)).logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.stem.bn.num_batches_tracked.item() == 1


def test_model_carries_its_plan() -> None:
    plan = effdsl.lower(tiny())
    model = effdsl.build(plan)
    assert isinstance(model, EfficientNet) and model.plan is plan
    assert model.feature_info == plan.feature_info()


# ---- compilers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_pair() -> tuple[nn.Module, torch.Tensor]:
    model = build_eval(tiny(padding="same"))
    return model, torch.randn(2, 3, 32, 32)


def test_torchscript(tiny_pair: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = tiny_pair
    scripted = torch.jit.script(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


def test_torchscript_features_only() -> None:
    model = build_eval(tiny(), features_only=True, out_indices=(0, 2))
    scripted = torch.jit.script(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for a, b in zip(scripted(x), model(x), strict=True):
            torch.testing.assert_close(a, b)


def test_torch_export(tiny_pair: tuple[nn.Module, torch.Tensor]) -> None:
    model, x = tiny_pair
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x))


def test_torch_compile_fullgraph_eval_and_train() -> None:
    # aot_eager: dynamo must capture one graph (no breaks, no host syncs) and AOT autograd
    # must trace the backward, without the minutes inductor's C++ build takes on a CPU
    model = build_eval(tiny())
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
    model.train()
    compiled(x).sum().backward()
    assert model.stem.conv.weight.grad is not None


@pytest.mark.slow
def test_torch_compile_inductor() -> None:
    model = build_eval(tiny(padding="same"))
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


# ---- inference ------------------------------------------------------------------------------


def randomise_batch_norm(model: nn.Module) -> None:
    """Non-trivial running statistics and affine parameters, so folding has work to do; group,
    layer and EvoNorm-S0 norms (effdsl's or timm's) get random affine parameters (and `v`),
    so that a checkpoint mapped to the wrong norm shows in the logits."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
            elif isinstance(module, nn.GroupNorm | nn.LayerNorm) or type(
                module
            ).__name__.startswith("EvoNorm"):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
                if getattr(module, "v", None) is not None:
                    module.v.uniform_(0.5, 1.5)


@pytest.mark.parametrize("padding", ["symmetric", "same"])
def test_optimize_for_inference(padding: str) -> None:
    model = build_eval(tiny(padding=padding))
    randomise_batch_norm(model)
    model.train()  # the copy must be in eval mode whatever the original's
    fast = effdsl.optimize_for_inference(model)
    assert model.training and not fast.training
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # original untouched
    assert fast.stem.conv.bias is not None
    assert fast.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model.eval()(x), rtol=1e-5, atol=1e-5)


def test_optimize_for_inference_b0() -> None:
    model = build_eval(reference_net("b0.eff", None))
    randomise_batch_norm(model)
    fast = effdsl.optimize_for_inference(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)


def test_optimize_for_inference_rejects_foreign_or_optimised_models() -> None:
    with pytest.raises(BuildError, match="no convolution followed by batch norm"):
        effdsl.optimize_for_inference(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)))
    fast = effdsl.optimize_for_inference(build_eval(tiny()))
    with pytest.raises(BuildError, match="no convolution followed by batch norm"):
        effdsl.optimize_for_inference(fast)
    with pytest.raises(UsageError, match=r"model must be Module, not str"):
        effdsl.optimize_for_inference("model")  # type: ignore[arg-type]


def test_squeeze_excite_op_is_mean_and_two_convs() -> None:
    op = SqueezeExciteOp("se", channels=6, squeeze=2, act="relu", size=4)
    se = SqueezeExcite(op)
    x = torch.randn(3, 6, 4, 4)
    with torch.no_grad():
        gate = torch.sigmoid(se.expand(torch.relu(se.reduce(x.mean((2, 3), keepdim=True)))))
        torch.testing.assert_close(se(x), x * gate)
