"""Checkpoint conversion: layouts equal the references, and converted weights give the same logits.

Layouts are checked against the recorded state_dicts of torchvision 0.29 and timm 1.0.31
(`tests/data/reference/*.tsv`); parity against freshly built torchvision and timm models with
random weights and randomised batch-norm statistics, at a low resolution.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

import effdsl
from effdsl.convert import convert_state_dict, layout
from effdsl.errors import CheckpointError

from .conftest import SPECS, reference_layout
from .test_torch_build import randomise_batch_norm


def b0(preset: str = "b0") -> effdsl.Network:
    return effdsl.scale(effdsl.load(SPECS / "b0.eff"), preset=preset)


def v2_s() -> effdsl.Network:
    return effdsl.load(SPECS / "efficientnetv2-s.eff")


def tf_same(network: effdsl.Network, resolution: int) -> effdsl.Network:
    """`network` with TensorFlow's SAME padding (timm's `tf_` ports), lowered at `resolution`:
    SAME padding depends on the input size, so the plan must be made for the size it runs at."""
    defaults = network.defaults.model_copy(update={"padding": "same"})
    return effdsl.scale(network.model_copy(update={"defaults": defaults}), resolution=resolution)


def converted_layout(network: effdsl.Network, target: str) -> list[tuple[str, str]]:
    """(key, shape) rows of `network`'s built state_dict converted to `target`'s layout."""
    with torch.device("meta"):
        model = effdsl.build(network)
    state = convert_state_dict(model.state_dict(), network=network, target=target)
    return [(key, "x".join(map(str, t.shape)) or "scalar") for key, t in state.items()]


@pytest.mark.parametrize(
    ("network", "target", "reference"),
    [
        (b0, "torchvision", "torchvision-efficientnet_b0"),
        (lambda: b0("b3"), "torchvision", "torchvision-efficientnet_b3"),
        (lambda: b0("b7"), "torchvision", "torchvision-efficientnet_b7"),
        (v2_s, "torchvision", "torchvision-efficientnet_v2_s"),
        (b0, "timm", "timm-efficientnet_b0"),
        (lambda: tf_same(v2_s(), 384), "timm", "timm-tf_efficientnetv2_s"),
    ],
    ids=["tv-b0", "tv-b3", "tv-b7", "tv-v2_s", "timm-b0", "timm-tf_v2_s"],
)
def test_converted_layout_equals_reference(network: object, target: str, reference: str) -> None:
    assert converted_layout(network(), target) == reference_layout(reference)  # type: ignore[operator]


def test_layout_pairs_every_key_of_the_built_model_in_order() -> None:
    plan = effdsl.lower(v2_s())
    with torch.device("meta"):
        keys = list(effdsl.build(plan).state_dict())
    for library in ("torchvision", "timm"):
        assert [entry.ours for entry in layout(plan, library)] == keys


def test_round_trip_returns_the_same_tensors() -> None:
    network = b0()
    state = effdsl.build(network).state_dict()
    for library in ("torchvision", "timm"):
        theirs = convert_state_dict(state, network=network, target=library)
        back = convert_state_dict(theirs, network=network, source=library)
        assert list(back) == list(state)
        assert all(back[key] is state[key] for key in state)


# ---- parity with the reference implementations ----------------------------------------------


def assert_same_logits(
    theirs: nn.Module, network: effdsl.Network, source: str, resolution: int
) -> None:
    randomise_batch_norm(theirs)
    theirs.eval()
    state = convert_state_dict(theirs.state_dict(), network=network, source=source)
    ours = effdsl.build(network).eval()
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, resolution, resolution)
    with torch.no_grad():
        expected = theirs(x)
        torch.testing.assert_close(ours(x), expected, rtol=1e-4, atol=1e-4)
    # and back: our weights in their layout give their model the same function
    theirs.load_state_dict(convert_state_dict(ours.state_dict(), network=network, target=source))
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("factory", "network"),
    [
        (torchvision.models.efficientnet_b0, b0),
        (torchvision.models.efficientnet_b3, lambda: b0("b3")),
        (torchvision.models.efficientnet_v2_s, v2_s),
    ],
    ids=["b0", "b3", "v2_s"],
)
def test_torchvision_weights_give_the_same_logits(factory: object, network: object) -> None:
    torch.manual_seed(0)
    assert_same_logits(factory(), network(), "torchvision", 64)  # type: ignore[operator]


def test_timm_efficientnet_b0_weights_give_the_same_logits() -> None:
    torch.manual_seed(0)
    assert_same_logits(timm.create_model("efficientnet_b0", pretrained=False), b0(), "timm", 64)


@pytest.mark.parametrize("resolution", [64, 72])  # 72: odd sizes (9, 5, 3) along the way
def test_timm_tf_efficientnetv2_s_weights_give_the_same_logits(resolution: int) -> None:
    torch.manual_seed(0)
    theirs = timm.create_model("tf_efficientnetv2_s", pretrained=False)
    assert_same_logits(theirs, tf_same(v2_s(), resolution), "timm", resolution)


# ---- errors ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tv_b0_state() -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return torchvision.models.efficientnet_b0().state_dict()


def test_missing_key_is_named(tv_b0_state: dict[str, torch.Tensor]) -> None:
    state = dict(tv_b0_state)
    del state["features.4.1.block.2.fc1.bias"]
    with pytest.raises(CheckpointError, match=r"missing key `features\.4\.1\.block\.2\.fc1\.bias`"):
        convert_state_dict(state, network=b0(), source="torchvision")


def test_unexpected_key_is_named(tv_b0_state: dict[str, torch.Tensor]) -> None:
    state = {**tv_b0_state, "features.9.0.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"unexpected key `features\.9\.0\.weight`"):
        convert_state_dict(state, network=b0(), source="torchvision")


def test_missing_num_batches_tracked_is_accepted(tv_b0_state: dict[str, torch.Tensor]) -> None:
    state = {k: v for k, v in tv_b0_state.items() if not k.endswith("num_batches_tracked")}
    ours = convert_state_dict(state, network=b0(), source="torchvision")
    assert len(ours) == len(state)
    effdsl.build(b0()).load_state_dict(
        {k: torch.zeros(v.shape) for k, v in ours.items()}, strict=True
    )


def test_shape_mismatch_names_the_key_and_both_shapes(
    tv_b0_state: dict[str, torch.Tensor],
) -> None:
    with pytest.raises(
        CheckpointError,
        match=r"`features\.0\.0\.weight` has shape 32x3x3x3 in the checkpoint, but "
        r"`efficientnet_b0` needs 40x3x3x3 for `stem\.conv\.weight`",
    ):
        convert_state_dict(tv_b0_state, network=effdsl.scale(b0(), width=1.2), source="torchvision")


def test_classes_are_checked_against_the_plan(tv_b0_state: dict[str, torch.Tensor]) -> None:
    plan = effdsl.lower(b0())
    with torch.device("meta"):
        ours = effdsl.build(plan, num_classes=10)
    with pytest.raises(CheckpointError, match=r"classifier\.1\.weight.*1000x1280.*10x1280"):
        convert_state_dict(tv_b0_state, network=ours.plan, source="torchvision")


def test_wrong_library_gets_a_hint(tv_b0_state: dict[str, torch.Tensor]) -> None:
    with pytest.raises(CheckpointError) as caught:
        convert_state_dict(tv_b0_state, network=b0(), source="timm")
    assert "missing key `conv_stem.weight`" in caught.value.message
    assert caught.value.hint == "this looks like a torchvision checkpoint: use source='torchvision'"


def test_ddp_prefix_gets_a_hint() -> None:
    with torch.device("meta"):
        state = {f"module.{k}": v for k, v in effdsl.build(b0()).state_dict().items()}
    with pytest.raises(CheckpointError) as caught:
        convert_state_dict(state, network=b0(), target="timm")
    assert caught.value.hint is not None and "module." in caught.value.hint


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "exactly one of source= .* and target="),
        ({"source": "timm", "target": "timm"}, "exactly one of"),
        ({"source": "keras"}, "no checkpoint layout `keras`"),
        ({"target": {"kernel": 4}}, "no checkpoint layout"),  # found by the API fuzzer
        ({"source": ["timm"]}, "no checkpoint layout"),
        ({"source": "timm", "network": "b0"}, "Network or Plan, not str"),
    ],
)
def test_bad_arguments(options: dict[str, object], message: str) -> None:
    options = {"network": b0(), **options}
    with pytest.raises(CheckpointError, match=message):
        convert_state_dict({}, **options)  # type: ignore[arg-type]


def test_not_a_tensor(tv_b0_state: dict[str, torch.Tensor]) -> None:
    state = {**tv_b0_state, "features.0.0.weight": [1, 2, 3]}
    with pytest.raises(CheckpointError, match=r"`features\.0\.0\.weight` is not a tensor"):
        convert_state_dict(state, network=b0(), source="torchvision")
