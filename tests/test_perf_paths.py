"""The fast paths of the PyTorch backend compute what the plain ones do.

Benchmarks (bench/) measure speed; these tests only check that every shortcut taken for speed
gives the same numbers: the inference copy (batch norm folded, SE as matrix products,
channels_last) against the module it came from, in-place ops without autograd against the
out-of-place ones with it, training gradients against torchvision's, whole-graph capture by
torch.compile, and `build`'s resource limits checked before anything is allocated.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

import effdsl
from effdsl.cli import main
from effdsl.errors import BuildError, LimitError
from effdsl.limits import Limits
from effdsl.torch_build import ConvAct, ConvBNAct, PooledSqueezeExcite, SqueezeExcite

from .conftest import SPECS
from .test_torch_build import TINY, randomise_batch_norm, tiny

ACTIVATIONS = ["silu", "relu", "relu6", "hardswish", "gelu"]


def trained_like(network: effdsl.Network | effdsl.Plan, **options: object) -> nn.Module:
    """A built module in eval mode whose batch norms do something, as after training."""
    torch.manual_seed(0)
    model = effdsl.build(network, **options)  # type: ignore[arg-type]
    randomise_batch_norm(model)
    return model.eval()


def b0() -> effdsl.Network:
    return effdsl.load(SPECS / "b0.eff")


# ---- optimize_for_inference -----------------------------------------------------------------


@pytest.mark.parametrize("padding", ["symmetric", "same"])
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_inference_copy_equals_the_module(padding: str, act: str) -> None:
    model = trained_like(tiny(padding=padding, act=act))
    fast = effdsl.optimize_for_inference(model)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(fast(x), expected, rtol=1e-5, atol=1e-5)
        channels_last = x.contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(fast(channels_last), expected, rtol=1e-5, atol=1e-5)


def test_inference_copy_of_b0_equals_the_module() -> None:
    model = trained_like(b0())
    fast = effdsl.optimize_for_inference(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-5, atol=1e-5)


def test_inference_copy_of_a_feature_extractor() -> None:
    model = trained_like(tiny(), features_only=True, out_indices=(1, 3))
    fast = effdsl.optimize_for_inference(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for got, expected in zip(fast(x), model(x), strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_inference_copy_structure() -> None:
    model = trained_like(tiny(padding="same"))
    fast = effdsl.optimize_for_inference(model)
    modules = dict(fast.named_modules())
    assert not any(
        isinstance(m, (nn.BatchNorm2d, ConvBNAct, SqueezeExcite)) for m in fast.modules()
    )
    for path, module in model.named_modules():
        if isinstance(module, ConvBNAct):
            assert isinstance(modules[path], ConvAct)  # same path, batch norm folded
            assert (modules[path].act is None) == isinstance(module.act, nn.Identity)
        elif isinstance(module, SqueezeExcite):
            assert isinstance(modules[path], PooledSqueezeExcite)
    # parameter names are build's, less the batch norms, plus the folded convs' biases
    names = set(dict(fast.named_parameters()))
    kept = {n for n, _ in model.named_parameters() if ".bn." not in n}
    assert kept <= names
    assert names - kept == {
        n.replace(".weight", ".bias") for n in kept if n.endswith("conv.weight")
    }
    assert all(
        p.is_contiguous(memory_format=torch.channels_last)
        for p in fast.parameters()
        if p.dim() == 4
    )
    assert not fast.training


def test_compile_inference_uses_optimize_for_inference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import effdsl.torch_build as backend

    calls: list[nn.Module] = []
    real = backend.optimize_for_inference

    def spy(model: nn.Module) -> nn.Module:
        calls.append(model)
        return real(model)

    monkeypatch.setattr(backend, "optimize_for_inference", spy)
    spec = tmp_path / "tiny.eff"
    spec.write_text(TINY)
    target = tmp_path / "tiny.pt2"
    assert main(["compile", str(spec), "-o", str(target), "--inference"]) == 0
    assert len(calls) == 1
    program = torch.export.load(target)
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("batch_norm" in op for op in ops)
    assert any("linear" in op or "addmm" in op for op in ops)  # the pooled SE


# ---- in-place ops only without autograd -----------------------------------------------------


def op_names(run: object) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        run()  # type: ignore[operator]
    return {event.name for event in profile.events()}


def test_activations_write_in_place_only_without_autograd() -> None:
    model = effdsl.build(tiny())
    x = torch.randn(2, 3, 32, 32)
    training = op_names(lambda: model(x))
    # in place under autograd, SiLU would clone its input to keep it for backward
    assert "aten::silu" in training and "aten::silu_" not in training
    assert "aten::clone" not in training
    model.eval()
    with torch.no_grad():
        inference = op_names(lambda: model(x))
    assert "aten::silu_" in inference and "aten::silu" not in inference
    assert "aten::add_" in inference  # the residual sum


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_in_place_and_autograd_paths_agree(act: str) -> None:
    model = trained_like(tiny(act=act))
    x = torch.randn(2, 3, 32, 32)
    kept = x.clone()
    with torch.no_grad():
        in_place = model(x)
    assert torch.equal(x, kept)  # the caller's input is never overwritten
    torch.testing.assert_close(model(x), in_place, rtol=0, atol=0)  # same kernels, same bits


def test_blocks_do_not_overwrite_their_input() -> None:
    model = trained_like(tiny())
    x = torch.randn(2, 8, 16, 16)
    for stage in model.stages:
        for block in stage.blocks:
            kept = x.clone()
            with torch.no_grad():
                out = block(x)
            assert torch.equal(x, kept)
            x = out


def test_training_step_gradients_equal_torchvision() -> None:
    """Same weights, batch statistics, no stochastic depth or dropout: same loss, same grads."""
    network = b0()
    network = network.model_copy(
        update={
            "defaults": network.defaults.model_copy(update={"drop_path": 0.0}),
            "classifier": network.classifier.model_copy(update={"dropout": 0.0}),
        }
    )
    torch.manual_seed(0)
    ours = effdsl.build(network).train()
    theirs = torchvision.models.efficientnet_b0(dropout=0.0, stochastic_depth_prob=0.0).train()
    theirs.load_state_dict(
        effdsl.convert_state_dict(ours.state_dict(), network=network, target="torchvision")
    )
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([3, 7])
    loss = F.cross_entropy(ours(x), y)
    expected = F.cross_entropy(theirs(x), y)
    loss.backward()
    expected.backward()
    torch.testing.assert_close(loss, expected)
    # the gradients in torchvision's names: a state_dict whose parameters are their gradients
    grads = {**ours.state_dict(), **{n: p.grad for n, p in ours.named_parameters()}}
    ours_as_theirs = effdsl.convert_state_dict(grads, network=network, target="torchvision")
    for name, parameter in theirs.named_parameters():
        torch.testing.assert_close(ours_as_theirs[name], parameter.grad, rtol=1e-4, atol=1e-5)


# ---- torch.compile captures one graph -------------------------------------------------------


def graph_breaks(model: nn.Module, x: torch.Tensor) -> int:
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(x)
    return int(explanation.graph_break_count)


@pytest.mark.parametrize(
    "make",
    [
        lambda: trained_like(tiny()).train(),  # stochastic depth, batch statistics
        lambda: trained_like(tiny()),
        lambda: effdsl.optimize_for_inference(trained_like(tiny(padding="same"))),
        lambda: trained_like(tiny(), features_only=True),
    ],
    ids=["train", "eval", "inference-copy", "features"],
)
@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no-grad"])
def test_no_graph_breaks(make: object, grad: bool) -> None:
    model = make()  # type: ignore[operator]
    with torch.set_grad_enabled(grad):
        assert graph_breaks(model, torch.randn(2, 3, 32, 32)) == 0


def test_compiled_inference_copy_equals_eager() -> None:
    fast = effdsl.optimize_for_inference(trained_like(tiny()))
    compiled = torch.compile(fast, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), fast(x))


# ---- build refuses absurd networks before allocating ----------------------------------------

HUGE = TINY.replace("stage conv             k3 s1 c24 x1", "stage conv k3 s1 c300000 x4")


def test_build_refuses_a_huge_net_quickly_without_allocating(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import effdsl.torch_build as backend

    def no_modules(*args: object, **kwargs: object) -> None:
        raise AssertionError("a module was constructed before the limits were checked")

    monkeypatch.setattr(backend, "EfficientNet", no_modules)
    monkeypatch.setattr(backend, "FeatureExtractor", no_modules)
    network = effdsl.parse(HUGE)
    start = time.perf_counter()
    with pytest.raises(LimitError, match="parameters, more than the limit"):
        effdsl.build(network)
    with pytest.raises(LimitError):
        effdsl.build(network, features_only=True)
    assert time.perf_counter() - start < 1.0


def test_build_limits_can_be_raised_or_disabled() -> None:
    with pytest.raises(LimitError, match="MACs per image"):
        effdsl.build(tiny(), limits=Limits(macs=1e3))
    with pytest.raises(LimitError, match="parameters"):
        effdsl.build(tiny(), num_classes=10_000_000, limits=Limits(params=1e6))
    with torch.device("meta"):
        huge = effdsl.build(effdsl.parse(HUGE), limits=None)
    assert sum(p.numel() for p in huge.parameters()) > 2e9
    with pytest.raises(BuildError, match="limits must be"):
        effdsl.build(tiny(), limits={"params": 1})  # type: ignore[arg-type]
