"""The renderer: golden DOT per detail level, real SVG through graphviz, escaping, failures.

Golden files live in tests/golden/render/; regenerate them after an intended change with

    EFFDSL_UPDATE_GOLDEN=1 python -m pytest tests/test_render.py -q

and read the diff before committing it.
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from functools import cache
from pathlib import Path

import pytest

import effdsl
from effdsl.cost import cost
from effdsl.errors import EffError, OutputError, ToolMissingError
from effdsl.plan import Plan, lower
from effdsl.scaling import apply, multipliers

from .conftest import SPECS

# `effdsl.render` is the function; the module it lives in is reached through sys.modules
renderer = importlib.import_module("effdsl.render")

GOLDEN = Path(__file__).parent / "golden" / "render"
UPDATE = os.environ.get("EFFDSL_UPDATE_GOLDEN") == "1"
SVG = "{http://www.w3.org/2000/svg}"
XLINK = "{http://www.w3.org/1999/xlink}"
HAS_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAS_DOT, reason="graphviz's dot is not installed")


# ---- plans ---------------------------------------------------------------------------------


@cache
def scaled(spec: str, **request: object) -> Plan:
    """`spec` scaled as requested (nothing: unscaled), lowered."""
    network = effdsl.load(SPECS / spec)
    factors = multipliers(network, **request)  # type: ignore[arg-type]
    return lower(apply(network, factors), factors)


def b0() -> Plan:
    return scaled("b0.eff")


def b3() -> Plan:
    return scaled("b0.eff", preset="b3")


HOSTILE = r"""network "evil \"net\" <b>&amp; \\ back\nslash ]] }" {
  input size=64 channels=3
  stem conv k3 s2 c16
  stage mbconv e1 k3 s1 c16 x2 name="a\"<x>&y\\z\nnew\u0000\t line"
  stage fused_mbconv e4 k3 s2 c24 x2 name="\\N \\G \\l \\\\"
  stage conv k3 s1 c24 x1 name="</TD></TR></TABLE>"
  head conv k1 c64
  classifier classes=10
}
"""

#: The hostile stage names as the parser reads them (what the labels must show).
HOSTILE_NAMES = ('a"<x>&y\\z', "\\N \\G \\l \\\\", "</TD></TR></TABLE>")


def hostile() -> Plan:
    return lower(effdsl.parse(HOSTILE, filename="hostile.eff"))


# ---- golden DOT ----------------------------------------------------------------------------

GOLDEN_CASES = {
    "b0-stage": lambda: renderer.to_dot(b0()),
    "b0-block": lambda: renderer.to_dot(b0(), detail="block"),
    "b0-layer": lambda: renderer.to_dot(b0(), detail="layer"),
    "b0-vs-b3": lambda: renderer.to_dot(b3(), base=b0()),
    "b0-stage-lr": lambda: renderer.to_dot(b0(), rankdir="LR"),
    # hard-sigmoid SE gates, ReLU inside SE, a stage of three lines, the head after the pool
    "mobilenetv3-large-block": lambda: renderer.to_dot(
        effdsl.lower(effdsl.load(SPECS / "mobilenetv3-large.eff")), detail="block"
    ),
    "mobilenetv3-large-layer": lambda: renderer.to_dot(
        effdsl.lower(effdsl.load(SPECS / "mobilenetv3-large.eff")), detail="layer"
    ),
}


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_golden_dot(name: str) -> None:
    path = GOLDEN / f"{name}.dot"
    text = GOLDEN_CASES[name]()
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    if not path.exists():
        pytest.fail(f"{path} is missing; create it with EFFDSL_UPDATE_GOLDEN=1")
    assert text == path.read_text(encoding="utf-8"), (
        f"{name} differs from {path}; if intended, regenerate with EFFDSL_UPDATE_GOLDEN=1"
    )


@pytest.mark.parametrize("detail", renderer.DETAILS)
def test_dot_is_deterministic(detail: str) -> None:
    network = effdsl.load(SPECS / "b0.eff")
    first = renderer.to_dot(lower(network), detail=detail)
    second = renderer.to_dot(lower(effdsl.load(SPECS / "b0.eff")), detail=detail)
    assert first == second
    assert "0x" not in first  # no id()-based names


def test_to_dot_imports_neither_torch_nor_graphviz() -> None:
    code = (
        "import sys, effdsl\n"
        "from effdsl.render import to_dot\n"
        "to_dot(effdsl.lower(effdsl.load('specs/b0.eff')), detail='layer')\n"
        "bad = sorted(m for m in ('torch', 'graphviz') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=SPECS.parent,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


# ---- what the DOT says ---------------------------------------------------------------------


def test_stage_detail_has_one_node_per_stage_with_costs_and_shapes() -> None:
    plan = b0()
    dot = renderer.to_dot(plan)
    report = cost(plan)
    for stage, own in zip(plan.stages, report.stages, strict=True):
        # node ids come from plan paths; exact figures ride in the tooltip
        assert f'"stages_{stage.index}" [label=' in dot
        assert f"{own.params:,} params\\n{own.macs:,} MACs" in dot
    assert "MBConv6 k5 s2 · SiLU · SE 0.25 sigmoid" in dot
    assert "4 blocks · 192 ch · 7×7" in dot
    assert "params 2.03M (38.3%)" in dot  # share of the network's parameters
    for shape in ("3×224×224", "32×112×112", "40×28×28", "320×7×7", "1280×7×7"):
        assert f'[label=" {shape}", tooltip="tensor {shape}' in dot
    assert "5.29M params · 385.81M MACs · 16 blocks" in dot  # title totals
    assert "MACs are multiply-adds" in dot
    assert "blocks_" not in dot  # blocks are summarised, not drawn


def test_block_detail_clusters_stages_and_draws_each_residual() -> None:
    plan = b0()
    dot = renderer.to_dot(plan, detail="block")
    residual = [block for block in plan.blocks() if block.residual]
    assert dot.count("style=dashed") == len(residual) == 9
    for stage in plan.stages:
        assert f'subgraph "cluster_stages_{stage.index}"' in dot
    for block in plan.blocks():
        assert f'"{block.path.replace(".", "_")}" [label=' in dot
    assert '"stages_5_blocks_3_fork" -> "stages_5_blocks_3_add" [style=dashed' in dot
    assert "drop-path 0.175" in dot  # rate·14/16 on the last residual add of stage 5
    assert '[label=" 192×7×7", tooltip=' in dot


def test_layer_detail_draws_every_op_clustered_by_block_within_stage() -> None:
    plan = b0()
    dot = renderer.to_dot(plan, detail="layer")
    for op in plan.ops():
        assert f'"{op.path.replace(".", "_")}" [label=' in dot
    assert dot.count('subgraph "cluster_stages_') == len(plan.stages) + plan.block_count
    stage_at = dot.index('subgraph "cluster_stages_3" {')
    assert dot.index('subgraph "cluster_stages_3_blocks_1" {') > stage_at
    for text in ("expand 1×1", "depthwise 5×5 s2", "squeeze-excite", "project 1×1",
                 "96 → 4 → 96 · SiLU", "drop-path 0.025"):
        assert text in dot


def test_compare_aligns_stages_and_highlights_what_scaling_changed() -> None:
    dot = renderer.to_dot(b3(), base=b0())
    for change in ("2 → 3", "40 → 48", "28×28 → 38×38", "224×224 → 300×300",
                   "5.29M → 12.23M", "16 → 26", "0.2 → 0.3"):
        assert change in highlighted(dot), change
    for key in ("stem", "stages_2", "head", "classifier"):
        assert f'{{rank=same; "base_{key}"; "scaled_{key}";}}' in dot
    assert '"scaled_stages_2" -> "scaled_stages_3" [label=" 48×38×38", fontcolor="#c62828"' in dot
    assert "unscaled vs preset b3" in dot
    assert "12.23M" in dot and "5.29M" in dot  # both totals


def highlighted(dot: str) -> list[str]:
    """The runs of label text drawn in the highlight colour."""
    return re.findall(r'<FONT COLOR="#c62828"><B>([^<]*)</B></FONT>', dot)


@pytest.mark.parametrize("detail", ["block", "layer"])
def test_compare_draws_block_and_layer_detail_side_by_side(detail: str) -> None:
    dot = renderer.to_dot(b3(), base=b0(), detail=detail)
    for prefix, plan in (("base", b0()), ("scaled", b3())):
        drawn = plan.blocks() if detail == "block" else plan.ops()
        for item in drawn:
            assert f'"{prefix}_{item.path.replace(".", "_")}" [label=' in dot
    assert f"{detail} detail · " in dot
    # only the tops are levelled: the stages hold different numbers of blocks
    assert '{rank=same; "base_stem"; "scaled_stem";}' in dot
    assert '"base_stages_2"' not in dot.split("{rank=same;", 1)[1]


def test_compare_of_an_unscaled_net_highlights_nothing() -> None:
    dot = renderer.to_dot(b0(), base=b0())
    assert highlighted(dot) == ["red"]  # the legend's word only
    assert "fontcolor=\"#c62828\"" not in dot


def test_colours_follow_the_block_kind_at_every_detail() -> None:
    plan = scaled("efficientnetv2-s.eff")
    fused = renderer.PALETTE["fused_mbconv"].fill
    for detail in renderer.DETAILS:
        dot = renderer.to_dot(plan, detail=detail)
        line = next(line for line in dot.splitlines() if '"stages_1' in line and "label=" in line)
        assert f'fillcolor="{fused}"' in line, detail
        assert "Fused-MBConv" in dot and "MBConv" in dot  # the legend


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: renderer.to_dot(b0(), detail="op"), "unknown detail"),
        (lambda: renderer.to_dot(b0(), rankdir="XY"), "unknown rankdir"),
    ],
)
def test_bad_options_are_eff_errors(call: object, message: str) -> None:
    with pytest.raises(OutputError, match=message):
        call()  # type: ignore[operator]


# ---- escaping ------------------------------------------------------------------------------


def test_escaping_keeps_dot_text_inert() -> None:
    dot = renderer.to_dot(hostile(), detail="layer")
    assert "\x00" not in dot and "\t" not in dot
    assert "&lt;/TD&gt;&lt;/TR&gt;&lt;/TABLE&gt;" in dot  # cannot close the label's table
    assert "&quot;net&quot; &lt;b&gt;&amp;amp;" in dot
    assert "\\&#8288;x00\\&#8288;t line" in dot  # control characters spelled out
    assert renderer.html("a\\N") == "a\\&#8288;N"  # graphviz would expand \N to the node name
    assert renderer.quoted('say "\\N"\n') == '"say \\"\\\\\u2060N\\"\\n"'


@needs_dot
@pytest.mark.parametrize("detail", [*renderer.DETAILS, "compare"])
def test_hostile_names_render_as_written(tmp_path: Path, detail: str) -> None:
    plan = hostile()
    options = {"base": plan} if detail == "compare" else {"detail": detail}
    path = renderer.render(plan, tmp_path / "evil.svg", **options)  # type: ignore[arg-type]
    root = ET.parse(path).getroot()  # well-formed XML, whatever the names held
    texts = [text.replace("\u2060", "") for text in svg_texts(root)]
    for name in HOSTILE_NAMES:
        assert any(name in text for text in texts), name
    assert not any("stages_1" in text for text in texts)  # \N was not expanded
    assert any('evil "net" <b>&amp; \\ back' in text for text in texts)


# ---- real pictures through graphviz --------------------------------------------------------


def svg_texts(root: ET.Element, css_class: str | None = None) -> list[str]:
    """Every text of the SVG, or of its `node`/`edge` groups."""
    groups = [root] if css_class is None else [
        g for g in root.iter(f"{SVG}g") if g.get("class") == css_class]
    return [text.text or "" for group in groups for text in group.iter(f"{SVG}text")]


def red_texts(root: ET.Element) -> list[str]:
    return [t.text or "" for t in root.iter(f"{SVG}text") if t.get("fill") == renderer.HIGHLIGHT]


@needs_dot
def test_stage_svg_shows_stages_and_shapes(tmp_path: Path) -> None:
    path = renderer.render(b0(), tmp_path / "b0.svg")
    assert path == tmp_path / "b0.svg"
    root = ET.parse(path).getroot()
    nodes = svg_texts(root, "node")
    assert [f"stage{i}" for i in range(7)] == [t for t in nodes if re.fullmatch(r"stage\d", t)]
    assert "MBConv6 k5 s2 · SiLU · SE 0.25 sigmoid" in nodes
    edges = [text.strip() for text in svg_texts(root, "edge")]
    assert edges == ["3×224×224", "32×112×112", "16×112×112", "24×56×56", "40×28×28",
                     "80×14×14", "112×14×14", "192×7×7", "320×7×7", "1280×7×7"]
    ids = {g.get("id") for g in root.iter(f"{SVG}g")}
    assert {"stem", "stages_3", "classifier"} <= ids  # deterministic ids reach the SVG


@needs_dot
def test_compare_svg_highlights_changes_and_aligns_stages(tmp_path: Path) -> None:
    root = ET.parse(renderer.render(b3(), tmp_path / "cmp.svg", base=b0())).getroot()
    red = red_texts(root)
    for change in ("2 → 3", "40 → 48", "28×28 → 38×38", "48×38×38"):
        assert any(change in text for text in red), change
    assert not any(change in text for text in red for change in ("MBConv6 k5 s2",))
    tops = node_tops(root)
    for key in ("stem", "stages_0", "stages_3", "stages_6", "head"):
        assert tops[f"base_{key}"] == tops[f"scaled_{key}"], key  # same rank
        assert lefts(root)[f"base_{key}"] < lefts(root)[f"scaled_{key}"]


@needs_dot
def test_compare_lr_puts_the_base_on_top(tmp_path: Path) -> None:
    root = ET.parse(renderer.render(b3(), tmp_path / "lr.svg", base=b0(),
                                    rankdir="LR")).getroot()
    tops = node_tops(root)
    assert tops["base_stages_3"] < tops["scaled_stages_3"]


def node_tops(root: ET.Element) -> dict[str, float]:
    """The y of each node's first text line (SVG y grows downwards)."""
    return {g.get("id", ""): float(next(g.iter(f"{SVG}text")).get("y", "0"))
            for g in root.iter(f"{SVG}g") if g.get("class") == "node"
            and next(g.iter(f"{SVG}text"), None) is not None}


def lefts(root: ET.Element) -> dict[str, float]:
    return {g.get("id", ""): float(next(g.iter(f"{SVG}text")).get("x", "0"))
            for g in root.iter(f"{SVG}g") if g.get("class") == "node"
            and next(g.iter(f"{SVG}text"), None) is not None}


@needs_dot
def test_block_svg_draws_residuals_dashed(tmp_path: Path) -> None:
    root = ET.parse(renderer.render(b0(), tmp_path / "b.svg", detail="block")).getroot()
    dashed = [p for p in root.iter(f"{SVG}path") if p.get("stroke-dasharray")]
    assert len(dashed) == 9
    assert "24×56×56" in [t.strip() for t in svg_texts(root, "edge")]


@needs_dot
def test_b7_layer_detail_renders_in_reasonable_time_and_size(tmp_path: Path) -> None:
    plan = scaled("b0.eff", preset="b7")
    assert plan.block_count == 55
    start = time.perf_counter()
    path = renderer.render(plan, tmp_path / "b7.svg", detail="layer")
    elapsed = time.perf_counter() - start
    size = path.stat().st_size
    assert elapsed < 60, f"{elapsed:.1f} s"
    assert size < 10_000_000, f"{size:,} bytes"
    root = ET.parse(path).getroot()
    clusters = [
        g
        for g in root.iter(f"{SVG}g")
        if g.get("class") == "cluster" and not g.findtext(f"{SVG}title", "").startswith(
            "cluster_column_"
        )
    ]
    assert len(clusters) == len(plan.stages) + plan.block_count


@needs_dot
@pytest.mark.parametrize(("suffix", "magic"), [(".png", b"\x89PNG"), (".pdf", b"%PDF")])
def test_binary_formats(tmp_path: Path, suffix: str, magic: bytes) -> None:
    path = renderer.render(b0(), tmp_path / f"b0{suffix.upper()}")
    assert path.read_bytes().startswith(magic)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind


@needs_dot
def test_svg_is_deterministic(tmp_path: Path) -> None:
    first = renderer.render(b0(), tmp_path / "1.svg", detail="block").read_bytes()
    second = renderer.render(b0(), tmp_path / "2.svg", detail="block").read_bytes()
    assert first == second


# ---- output files and failures -------------------------------------------------------------


def test_dot_output_needs_no_graphviz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    for suffix in (".dot", ".gv"):
        path = renderer.render(b0(), tmp_path / f"b0{suffix}", detail="block")
        assert path.read_text(encoding="utf-8") == renderer.to_dot(b0(), detail="block")


@pytest.mark.parametrize("how", ["which", "PATH"])
def test_missing_dot_writes_the_dot_file_and_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    if how == "which":
        monkeypatch.setattr(renderer.shutil, "which", lambda name: None)
    else:
        monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ToolMissingError) as caught:
        renderer.render(b3(), tmp_path / "cmp.svg", base=b0())
    fallback = tmp_path / "cmp.dot"
    assert fallback.read_text(encoding="utf-8") == renderer.to_dot(b3(), base=b0())
    assert not (tmp_path / "cmp.svg").exists()
    message = caught.value.render()
    assert "\n" not in message
    assert "apt-get install graphviz" in message and "brew install graphviz" in message
    assert str(fallback) in message


@pytest.mark.parametrize("name", ["b0.jpg", "b0", "b0.svg.txt"])
def test_unknown_extension_is_an_output_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(OutputError, match="cannot draw"):
        renderer.render(b0(), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_missing_directory_is_an_output_error(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="does not exist"):
        renderer.render(b0(), tmp_path / "nowhere" / "b0.dot")


def fake_dot(tmp_path: Path, script: str) -> str:
    path = tmp_path / "fake-dot"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_dot_failure_is_an_eff_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    program = fake_dot(tmp_path, 'echo "Error: syntax error in line 3" >&2; exit 3')
    monkeypatch.setattr(renderer.shutil, "which", lambda name: program)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(OutputError, match="exit status 3: Error: syntax error in line 3"):
        renderer.render(b0(), out / "b0.svg")
    assert list(out.iterdir()) == []


def test_dot_timeout_is_an_eff_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    program = fake_dot(tmp_path, "exec sleep 5")
    monkeypatch.setattr(renderer.shutil, "which", lambda name: program)
    monkeypatch.setattr(renderer, "DOT_TIMEOUT", 0.2)
    with pytest.raises(EffError, match="took more than"):
        renderer.render(b0(), tmp_path / "b0.png")
    assert not (tmp_path / "b0.png").exists()


def test_public_api_names_the_functions() -> None:
    code = (
        "import effdsl\n"
        "import effdsl.render\n"
        "effdsl.render, effdsl.to_dot\n"
        "assert callable(effdsl.render) and callable(effdsl.to_dot), type(effdsl.render)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=SPECS.parent,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


# ---- pages: wrapping, raster size, tooltips --------------------------------------------------


def mnasnet() -> Plan:
    return scaled("mnasnet.eff")


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[16:24]
    return int.from_bytes(header[:4], "big"), int.from_bytes(header[4:], "big")


def test_a_long_layer_drawing_wraps_into_columns_in_order() -> None:
    dot = renderer.to_dot(mnasnet(), detail="layer")
    columns = re.findall(r'subgraph "(cluster_column_\d+)"', dot)
    assert columns == [f"cluster_column_{i}" for i in range(4)]
    # stages appear column by column, in forward order
    order = [int(i) for i in re.findall(r'subgraph "cluster_stages_(\d+)" \{', dot)]
    assert order == sorted(order) == list(range(7))
    assert dot.count("constraint=false") == 3  # one edge from each column's foot to the next
    tops = re.search(r"\{rank=same; (\"input\"; [^}]*)\}", dot)
    assert tops is not None and tops.group(1).count("__note") == 3


@pytest.mark.parametrize(("detail", "rankdir"), [("stage", "TB"), ("layer", "TB")])
def test_short_drawings_and_one_column_do_not_wrap(detail: str, rankdir: str) -> None:
    assert "cluster_column" not in renderer.to_dot(b0(), detail=detail, rankdir=rankdir, columns=1)
    assert "cluster_column" not in renderer.to_dot(b0(), rankdir="TB")


def test_an_lr_strip_wraps_into_rows() -> None:
    dot = renderer.to_dot(b0(), rankdir="LR")
    assert dot.count('subgraph "cluster_column_') == 4
    assert dot.index('"cluster_column_0"') < dot.index('"cluster_column_3"')  # input first


@pytest.mark.parametrize("columns", [0, -1, 65, 2.5, True])
def test_bad_columns_are_output_errors(columns: object) -> None:
    # a value of the wrong type is refused by the signature's check (`UsageError`)
    error = OutputError if isinstance(columns, int) and not isinstance(columns, bool) else EffError
    with pytest.raises(error, match="columns must be"):
        renderer.to_dot(b0(), columns=columns)


@needs_dot
def test_mnasnet_layer_png_fits_a_page_at_a_legible_scale(tmp_path: Path) -> None:
    fitted = png_size(renderer.render(mnasnet(), tmp_path / "fit.png", detail="layer"))
    full = png_size(renderer.render(mnasnet(), tmp_path / "full.png", detail="layer", dpi=96))
    assert max(fitted) <= 2500 < max(full)
    # scaled down by at most a quarter: 11 pt text stays 11 px or more
    assert fitted[1] / full[1] >= 0.74, (fitted, full)
    small = png_size(renderer.render(b0(), tmp_path / "b0.png"))
    assert small == png_size(renderer.render(b0(), tmp_path / "b0-96.png", dpi=96))  # not enlarged


@needs_dot
def test_dpi_and_size_set_the_png_resolution(tmp_path: Path) -> None:
    base = png_size(renderer.render(b0(), tmp_path / "a.png", dpi=96))
    double = png_size(renderer.render(b0(), tmp_path / "b.png", dpi=192))
    assert abs(double[0] - 2 * base[0]) <= 2 and abs(double[1] - 2 * base[1]) <= 2
    bounded = png_size(renderer.render(b0(), tmp_path / "c.png", size=800))
    assert max(bounded) <= 800


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("x.svg", {"dpi": 150}, "dpi and size apply to .png output"),
        ("x.dot", {"size": 900}, "dpi and size apply to .png output"),
        ("x.png", {"dpi": 5}, "dpi must be a whole number from 24 to 1200"),
        ("x.png", {"size": 10}, "size must be a whole number from 100"),
    ],
)
def test_bad_raster_options_are_output_errors(
    tmp_path: Path, name: str, options: dict[str, int], message: str
) -> None:
    with pytest.raises(OutputError, match=message):
        renderer.render(b0(), tmp_path / name, **options)
    assert list(tmp_path.iterdir()) == []


@needs_dot
@pytest.mark.parametrize("detail", ["stage", "block", "layer"])
def test_every_node_and_edge_of_an_svg_has_a_tooltip(tmp_path: Path, detail: str) -> None:
    network = effdsl.load(SPECS / "b0.eff")
    path = renderer.render(lower(network), tmp_path / "b0.svg", detail=detail, spec=network)
    root = ET.parse(path).getroot()
    drawn = [g for g in root.iter(f"{SVG}g") if g.get("class") in ("node", "edge")]
    assert len(drawn) > 20
    for g in drawn:
        titles = [a.get(f"{XLINK}title") for a in g.iter(f"{SVG}a")]
        assert titles and all(titles), g.get("id")
    nodes = {g.get("id"): g for g in drawn if g.get("class") == "node"}
    stem = next(a.get(f"{XLINK}title") for a in nodes["stem"].iter(f"{SVG}a"))
    assert stem.endswith(f"from {SPECS / 'b0.eff'}:21: stem conv k3 s2 c32")
    assert "3×224×224 → 32×112×112" in stem
    if detail == "layer":
        expand = next(a.get(f"{XLINK}title") for a in nodes["stages_3_blocks_1_expand"].iter(
            f"{SVG}a"))
        assert expand.splitlines() == [
            "stages.3.blocks.1.expand",
            "expand 1×1 · 80 → 480 ch · SiLU",
            "80×14×14 → 480×14×14",
            "39,360 params",
            "7,526,400 MACs",
            f"from {SPECS / 'b0.eff'}:25: stage mbconv e6 k3 s2 c80 x3",
        ]


def test_render_cli_takes_columns_dpi_and_size(tmp_path: Path) -> None:
    out = tmp_path / "m.dot"
    result = subprocess.run(
        [sys.executable, "-m", "effdsl", "render", str(SPECS / "mnasnet.eff"), "--detail",
         "layer", "--columns", "2", "-o", str(out)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_text().count('subgraph "cluster_column_') == 2
    result = subprocess.run(
        [sys.executable, "-m", "effdsl", "render", str(SPECS / "b0.eff"), "--dpi", "150",
         "-o", str(tmp_path / "b0.svg")],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 1
    assert "dpi and size apply to .png output" in result.stderr
