"""`effdsl plot`: the sampled curves, the preset marks, and the SVG (valid, deterministic)."""

from __future__ import annotations

import argparse
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import effdsl
from effdsl import plot as p
from effdsl.budget import solve_phi
from effdsl.cost import cost
from effdsl.errors import OutputError, ScalingError
from effdsl.plan import lower

from .conftest import ROOT, SPECS

SVG = "{http://www.w3.org/2000/svg}"
B0 = SPECS / "b0.eff"


@pytest.fixture(scope="module")
def b0_curves() -> p.ScalingCurves:
    return p.scaling_curves(effdsl.load(B0), (-2.0, 8.0))


def test_samples_are_the_exact_cost_of_the_phi_scaled_net(b0_curves: p.ScalingCurves) -> None:
    network = effdsl.load(B0)
    assert len(b0_curves.samples) == p.SAMPLES
    assert (b0_curves.samples[0].phi, b0_curves.samples[-1].phi) == (-2.0, 8.0)
    for sample in b0_curves.samples[::40]:
        scaled = effdsl.scale(network, phi=sample.phi)
        report = cost(lower(scaled))
        assert (sample.params, sample.macs, sample.resolution) == (
            report.params, report.macs, scaled.input.size
        )
    assert b0_curves.base.macs == cost(lower(network)).macs
    # the curve never goes down as φ grows: α, β, γ ≥ 1
    macs = [s.macs for s in b0_curves.samples]
    assert macs == sorted(macs)


def test_nominal_curves_follow_the_formulas(b0_curves: p.ScalingCurves) -> None:
    base = b0_curves.base
    assert b0_curves.nominal("macs", 0) == base.macs
    assert b0_curves.nominal("macs", 2) == pytest.approx(base.macs * (1.2 * 1.1**2 * 1.15**2) ** 2)
    assert b0_curves.nominal("params", 1) == pytest.approx(base.params * 1.2 * 1.1**2)
    assert b0_curves.nominal("resolution", 3) == pytest.approx(224 * 1.15**3)


def test_presets_sit_at_the_phi_of_equal_macs(b0_curves: p.ScalingCurves) -> None:
    network = effdsl.load(B0)
    marks = {m.name: m for m in b0_curves.presets}
    assert list(marks) == ["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8", "l2"]
    b3 = marks["b3"]
    assert b3.macs == cost(lower(effdsl.scale(network, preset="b3"))).macs
    assert b3.resolution == 300
    step = (p.DEFAULT_RANGE[1] - p.DEFAULT_RANGE[0]) / (p.SAMPLES - 1)
    assert b3.phi is not None and abs(b3.phi - solve_phi(network, macs=b3.macs).phi) <= step
    assert 1.9 < b3.phi < 2.2  # type: ignore[operator]
    assert marks["b0"].phi == 0.0
    assert marks["l2"].phi is not None and marks["l2"].phi > 8  # off the default range


def svg_root(text: str) -> ET.Element:
    return ET.fromstring(text)


def test_svg_is_valid_with_three_panels_and_the_presets_marked(
    b0_curves: p.ScalingCurves,
) -> None:
    root = svg_root(p.to_svg(b0_curves))
    assert root.tag == f"{SVG}svg"
    panels = [g for g in root.iter(f"{SVG}g")]
    assert [g.get("id") for g in panels] == ["panel-params", "panel-macs", "panel-resolution"]
    for panel in panels:
        lines = panel.findall(f"{SVG}polyline")
        assert len(lines) == 2  # nominal (dashed), exact
        assert lines[0].get("stroke-dasharray") and not lines[1].get("stroke-dasharray")
        assert len(lines[1].get("points", "").split()) == p.SAMPLES
        marked = [t.text for t in panel.findall(f"{SVG}text")][1:]
        labels = [label for label in marked if label and label.startswith(("b", "l"))]
        assert labels == ["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "b8"]
        assert len(panel.findall(f"{SVG}circle")) == 9
    texts = [t.text or "" for t in root.iter(f"{SVG}text")]
    assert texts[0].startswith("efficientnet_b0: compound scaling with α=1.2, β=1.1, γ=1.15")
    assert "not shown, outside the range: l2 (φ ≈ 10.88)" in texts
    assert root.findtext(f"{SVG}title") == texts[0]


def test_svg_is_deterministic(tmp_path: Path) -> None:
    network = effdsl.load(B0)
    first, second = tmp_path / "a.svg", tmp_path / "b.svg"
    p.plot(network, first)
    p.plot(effdsl.load(B0), second)
    assert first.read_bytes() == second.read_bytes()
    assert first.read_text() == p.to_svg(p.scaling_curves(network))


def test_axis_ticks() -> None:
    assert p._linear_ticks(-2, 8, 12) == [-2, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert p._linear_ticks(150, 700) == [200, 300, 400, 500, 600, 700]
    assert p._log_ticks(3e6, 1.2e8) == [5e6, 1e7, 2e7, 5e7, 1e8]
    assert p._log_ticks(1e3, 1e9) == [1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9]
    assert [p._tick_label(v) for v in (5e6, 2.5e6, 1e8, 2e9, 300, 1500)] == [
        "5M", "2.5M", "100M", "2G", "300", "1.5k"
    ]


def test_names_are_escaped_and_presets_out_of_range_are_listed() -> None:
    network = effdsl.parse(
        'network "a<b & c" {\n  input size=32\n  preset wide width=3 depth=1 resolution=32\n'
        "  stem conv k3 s2 c8\n  stage mbconv e4 k3 s2 c16 x2\n  head conv k1 c32\n"
        "  classifier classes=10\n}\n"
    )
    curves = p.scaling_curves(network, (0.0, 1.0))
    root = svg_root(p.to_svg(curves))
    texts = [t.text or "" for t in root.iter(f"{SVG}text")]
    assert texts[0].startswith("a<b & c: compound scaling")
    assert not root.findall(f".//{SVG}circle[@r='3.5'][@stroke='white']")
    assert any(t.startswith("not shown, outside the range: wide (φ ≈ ") for t in texts)


@pytest.mark.parametrize(
    ("text", "message"),
    [("8:-2", "LOW < HIGH"), ("2", "not LOW:HIGH"), ("a:b", "not LOW:HIGH"),
     ("-30:30", "spans more than 40"), ("0:inf", "LOW < HIGH")],
)
def test_bad_phi_ranges(text: str, message: str) -> None:
    with pytest.raises(ScalingError, match=message):
        p.parse_phi_range(text)


# ---- the command -----------------------------------------------------------------------------


def parse_args(*argv: str) -> argparse.Namespace:
    """A CLI parser with just `plot`, as cli.build_parser() will register it."""
    root = argparse.ArgumentParser(prog="effdsl")
    p.register_plot(root.add_subparsers(dest="command", required=True))
    return root.parse_args(["plot", *argv])


def test_command_accepts_a_negative_range_and_writes_svg(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "scaling.svg"
    args = parse_args(str(B0), "-o", str(out), "--phi-range", "-1:3")
    assert args.phi_range == "-1:3"
    assert args.run(args) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"
    texts = [t.text for t in svg_root(out.read_text()).iter(f"{SVG}text")]
    assert "−1" in texts and "3" in texts
    assert parse_args(str(B0), "-o", str(out), "--phi-range=-2.5:-0.5").phi_range == "-2.5:-0.5"


def test_command_refuses_bad_outputs(tmp_path: Path) -> None:
    args = parse_args(str(B0), "-o", str(tmp_path / "scaling.png"))
    with pytest.raises(OutputError, match="the plot is SVG"):
        args.run(args)
    spec = tmp_path / "b0.svg"
    spec.write_text(B0.read_text())
    args = parse_args(str(spec), "-o", str(spec))
    with pytest.raises(OutputError, match="refusing to overwrite the input"):
        args.run(args)



def test_docs_plot_is_up_to_date() -> None:
    """docs/scaling-plot.svg is `effdsl plot specs/b0.eff -o docs/scaling-plot.svg`."""
    shipped = ROOT / "docs" / "scaling-plot.svg"
    if not shipped.exists():
        pytest.skip("docs/scaling-plot.svg not generated")
    assert shipped.read_text() == p.to_svg(p.scaling_curves(effdsl.load(B0)))
