"""Compound scaling, the plan and the cost model, against torchvision's figures and as data."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

import effdsl
from effdsl import ast
from effdsl.budget import parse_amount, solve_phi
from effdsl.cost import cost
from effdsl.errors import LimitError, ScalingError
from effdsl.plan import conv_geometry, lower
from effdsl.scaling import apply, multipliers, round_channels, round_repeats, round_resolution
from effdsl.summary import summarize, to_json

from .conftest import REFERENCE_NETS, SPECS, reference_counts

DATA = Path(__file__).parent / "data"


def scaled_plan(spec: str, **kwargs: object):  # type: ignore[no-untyped-def]
    network = effdsl.load(SPECS / spec)
    factors = multipliers(network, **kwargs)  # type: ignore[arg-type]
    return lower(apply(network, factors), factors)


# ---- the rounding rules --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channels", "width", "expected"),
    [
        (32, 1.0, 32),
        (32, 1.1, 32),  # 35.2 → 32: within 10%
        (40, 1.1, 48),  # 44 → 48: rounds to nearest, halves go up
        (112, 1.1, 120),  # 123.2 → 120
        (16, 0.5, 8),  # never below the divisor
        (24, 0.35, 8),
        (1280, 4.3, 5504),
        (320, 2.0, 640),
        (96, 0.75, 72),
        (36, 0.9, 32),  # 32.4 → 32: 32 ≥ 0.9 · 32.4
        (20, 0.9, 24),  # 18 → int(22)//8*8 = 16 < 0.9 · 18 = 16.2, so +8
    ],
)
def test_round_channels(channels: int, width: float, expected: int) -> None:
    assert round_channels(channels, width, 8) == expected


def test_round_repeats_rounds_up_and_ignores_float_noise() -> None:
    assert round_repeats(2, 1.1) == 3
    assert round_repeats(1, 3.1) == 4
    assert round_repeats(5, 1.4) == 7  # 5 · 1.4 = 7.000000000000001 in binary
    assert round_repeats(3, 0.5) == 2
    assert round_repeats(1, 0.1) == 1


def test_round_resolution_is_nearest_pixel() -> None:
    assert round_resolution(224, 1.15) == 258
    assert round_resolution(224, 1.15**3) == 341
    assert round_resolution(224, 1 / 1.15) == 195


# ---- fidelity against torchvision ---------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "preset", "model"), REFERENCE_NETS, ids=[m for *_, m in REFERENCE_NETS]
)
def test_params_and_macs_equal_torchvision(spec: str, preset: str | None, model: str) -> None:
    reference = reference_counts()[model]
    network = effdsl.load(SPECS / spec)
    factors = multipliers(network, preset=preset)
    summary = to_json(summarize(network, factors))
    assert summary["resolution"] == reference["res"]
    assert summary["params"] == reference["params"]
    assert summary["macs"] == reference["macs"]


def test_b7_depths_and_widths_match_the_reference() -> None:
    plan = scaled_plan("b0.eff", preset="b7")
    assert [s.repeats for s in plan.stages] == [4, 7, 7, 10, 10, 13, 4]
    assert [s.out_channels for s in plan.stages] == [32, 48, 80, 160, 224, 384, 640]
    assert plan.stem.out_channels == 64 and plan.head.out_channels == 2560
    assert plan.block_count == 55


def test_phi_1_is_b2_shaped() -> None:
    """φ=1 gives width 1.1 and depth 1.2: B2's multipliers, so B2's parameter count."""
    plan = scaled_plan("b0.eff", phi=1)
    assert cost(plan).params == reference_counts()["efficientnet_b2"]["params"]
    assert plan.resolution == 258  # B2 itself uses 260


# ---- scaling as data -----------------------------------------------------------------------


def read_scaling_cases() -> list[tuple[str, str, dict[str, str]]]:
    text = (DATA / "scaling.txt").read_text()
    cases = []
    chunks = re.split(r"^=== (.+)$", text, flags=re.MULTILINE)
    for title, chunk in zip(chunks[1::2], chunks[2::2], strict=True):
        given, expected = chunk.split("---\n")
        fields = dict(line.split(" ", 1) for line in given.strip().splitlines())
        result = dict(line.split(" ", 1) for line in expected.strip().splitlines())
        cases.append((title, fields["spec"] + "|" + fields["scale"], result))
    return cases


SCALING_CASES = read_scaling_cases()


def _kwargs(scale: str) -> dict[str, object]:
    kwargs: dict[str, object] = {}
    for item in scale.split():
        key, value = item.split("=")
        kwargs[key] = (
            value if key == "preset" else int(value) if key == "resolution" else float(value)
        )
    return kwargs


@pytest.mark.parametrize(
    ("title", "given", "expected"), SCALING_CASES, ids=[c[0] for c in SCALING_CASES]
)
def test_scaling_fixture(title: str, given: str, expected: dict[str, str]) -> None:
    spec, scale = given.split("|")
    network = effdsl.load(SPECS / spec)
    summary = summarize(network, multipliers(network, **_kwargs(scale)))  # type: ignore[arg-type]
    plan = summary.scaled
    found = {
        "resolution": str(plan.resolution),
        "width": f"{summary.factors.width:.6g}",
        "depth": f"{summary.factors.depth:.6g}",
        "repeats": " ".join(str(s.repeats) for s in plan.stages),
        "channels": " ".join(str(s.out_channels) for s in plan.stages),
        "stem": str(plan.stem.out_channels),
        "head": str(plan.head.out_channels),
        "params": str(summary.scaled_cost.params),
        "macs": str(summary.scaled_cost.macs),
    }
    assert found == expected


def test_fixture_covers_phi_0_to_7_and_negative() -> None:
    titles = {c[0] for c in SCALING_CASES}
    assert {f"b0.eff phi={p}" for p in range(-1, 8)} <= titles


# ---- the transforms ------------------------------------------------------------------------


def test_scale_is_pure_and_keeps_unscaled_nodes() -> None:
    network = effdsl.load(SPECS / "b0.eff")
    scaled = effdsl.scale(network, phi=2)
    assert network == effdsl.load(SPECS / "b0.eff")
    assert scaled.presets == ()
    assert effdsl.scale(network, width=1.0, depth=1.0).stages[0] is network.stages[0]


def test_resolution_overrides_preset_and_phi() -> None:
    assert scaled_plan("b0.eff", preset="b3", resolution=320).resolution == 320
    assert scaled_plan("b0.eff", phi=3, resolution=256).resolution == 256
    assert scaled_plan("b0.eff", resolution=128).resolution == 128


def test_opt_outs_keep_widths_and_depths() -> None:
    network = effdsl.load(SPECS / "b0.eff")
    stem = network.stem.model_copy(update={"fix": "width"})
    first = network.stages[0].model_copy(update={"fix": "all"})
    last = network.stages[-1].model_copy(update={"fix": "depth"})
    fixed = network.model_copy(
        update={"stem": stem, "stages": (first, *network.stages[1:-1], last)}
    )
    plan = lower(effdsl.scale(fixed, width=2.0, depth=3.1))
    assert plan.stem.out_channels == 32
    assert (plan.stages[0].repeats, plan.stages[0].out_channels) == (1, 16)
    assert (plan.stages[-1].repeats, plan.stages[-1].out_channels) == (1, 640)
    assert plan.stages[1].repeats == 7


def test_preset_sets_dropout() -> None:
    assert scaled_plan("b0.eff", preset="b7").classifier.dropout == 0.5


def test_scaling_errors() -> None:
    network = effdsl.load(SPECS / "b0.eff")
    with pytest.raises(ScalingError, match="no preset `b99`"):
        multipliers(network, preset="b99")
    with pytest.raises(ScalingError, match="choose one way"):
        multipliers(network, phi=1, preset="b1")
    with pytest.raises(ScalingError, match=r"overflows|beyond"):
        multipliers(network, phi=1e6)
    with pytest.raises(ScalingError, match="width must be"):
        multipliers(network, width=float("nan"))


# ---- the plan ------------------------------------------------------------------------------


def test_drop_path_uses_block_count_after_scaling() -> None:
    plan = scaled_plan("b0.eff", preset="b3")
    blocks = list(plan.blocks())
    total = len(blocks)
    assert total == 26
    for block in blocks:
        expected = 0.2 * block.number / total if block.residual else 0.0
        assert block.drop_path == pytest.approx(expected)
    # N counts the 26 blocks of B3, not B0's 16 (the bug of tensorflow/tpu#381)
    assert blocks[-1].drop_path == pytest.approx(0.2 * 25 / 26)
    assert blocks[0].drop_path == 0.0


def test_se_width_comes_from_the_block_input() -> None:
    plan = scaled_plan("b0.eff")
    block = plan.stages[1].blocks[0]  # 16 → 96 expanded → 24 out
    assert (block.in_channels, block.mid_channels, block.se_channels) == (16, 96, 4)


def test_plan_paths_and_residuals() -> None:
    plan = scaled_plan("b0.eff")
    first = plan.stages[0].blocks[0]
    assert [op.path for op in first.ops] == [
        "stages.0.blocks.0.depthwise",
        "stages.0.blocks.0.se",
        "stages.0.blocks.0.project",
    ]
    second = plan.stages[1].blocks[1]
    assert [op.role for op in second.ops] == ["expand", "depthwise", "se", "project"]
    assert second.residual and not plan.stages[1].blocks[0].residual


def test_fused_blocks_lower_to_fused_and_single_convs() -> None:
    plan = lower(effdsl.load(SPECS / "efficientnetv2-s.eff"))
    assert [op.role for op in plan.stages[0].blocks[0].ops] == ["conv"]
    assert [op.role for op in plan.stages[1].blocks[0].ops] == ["expand", "project"]
    assert plan.stages[1].blocks[0].ops[0].kernel == 3


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pad", "out"),
    [
        (224, 3, 2, (0, 1, 0, 1), 112),
        (225, 3, 2, (1, 1, 1, 1), 113),
        (14, 5, 1, (2, 2, 2, 2), 14),
        (7, 5, 2, (2, 2, 2, 2), 4),
    ],
)
def test_same_padding_matches_tensorflow(
    size: int, kernel: int, stride: int, pad: tuple[int, ...], out: int
) -> None:
    assert conv_geometry(size, kernel, stride, "same") == (pad, out)
    if pad[0] == pad[1]:
        assert conv_geometry(size, kernel, stride, "symmetric")[1] == out


def test_cost_parts_add_up() -> None:
    report = cost(scaled_plan("b0.eff"))
    assert report.params == report.total.params == 5_288_548
    assert (
        sum(s.params for s in report.stages)
        + report.stem.params
        + report.head.params
        + report.classifier.params
        == report.params
    )
    assert all(s.activation_bytes > 0 for s in report.stages)


def test_too_many_blocks_is_refused_before_lowering() -> None:
    network = effdsl.load(SPECS / "b0.eff")
    huge = network.model_copy(
        update={"stages": tuple(s.model_copy(update={"repeats": 100_000}) for s in network.stages)}
    )
    with pytest.raises(LimitError, match="700,000 blocks"):
        lower(huge)


# ---- budgets -------------------------------------------------------------------------------


@pytest.mark.parametrize(("what", "amount"), [("macs", 2e9), ("macs", 0.3e9), ("params", 10e6)])
def test_budget_finds_the_largest_phi_that_fits(what: str, amount: float) -> None:
    network = effdsl.load(SPECS / "b0.eff")
    chosen = solve_phi(network, **{what: amount})  # type: ignore[arg-type]
    assert chosen.phi is not None

    def measure(phi: float) -> int:
        report = cost(lower(effdsl.scale(network, phi=phi)))
        return report.macs if what == "macs" else report.params

    assert measure(chosen.phi) <= amount
    assert measure(chosen.phi + 1e-4) > amount


def test_budget_too_small_is_an_error() -> None:
    with pytest.raises(ScalingError, match="no phi"):
        solve_phi(effdsl.load(SPECS / "b0.eff"), params=1000)


def test_a_budget_beyond_any_float_is_refused_in_words() -> None:
    """An int budget too large for a float is named in the error, not an OverflowError."""
    with pytest.raises(ScalingError, match=r"no phi.*macs ≤ -1\.000E\+400 "):
        solve_phi(effdsl.load(SPECS / "b0.eff"), macs=-(10**400))


@pytest.mark.parametrize(
    ("text", "value"),
    [("2G", 2e9), ("385.8M", 385.8e6), ("10m", 10e6), ("5e6", 5e6), ("1500k", 1.5e6)],
)
def test_parse_amount(text: str, value: float) -> None:
    assert math.isclose(parse_amount(text), value)


def test_conv_stage_and_network_without_se() -> None:
    text = (
        "network t {\n  input size=64\n  stem conv k3 s2 c16\n  stage conv k3 s1 c16 x2\n"
        "  head conv k1 c32\n  classifier classes=5\n}\n"
    )
    plan = lower(effdsl.parse(text))
    assert [op.role for op in plan.stages[0].blocks[0].ops] == ["conv"]
    assert plan.stages[0].blocks[1].residual
    assert isinstance(effdsl.parse(text).stages[0], ast.Stage)
