"""SVG tooltips in a real browser: headless Chromium hovers a node and an edge of a drawing.

A native tooltip is drawn by the browser outside the page, so a screenshot cannot show it
directly. The page below asks the browser what a pointer at the centre of a node (and of an
edge's label) would hover — `document.elementFromPoint`, the hit test that decides which
tooltip appears — reads that element's `<title>`/`xlink:title`, and writes the text into a
bright box beside it. The test reads the text back from the DOM and finds the box in the
screenshot.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import effdsl

from .browser import CHROMIUM, chromium, png_pixels
from .conftest import SPECS
from .test_render import HAS_DOT, SVG, XLINK, renderer

pytestmark = [
    pytest.mark.skipif(not HAS_DOT, reason="graphviz's dot is not installed"),
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed"),
]

TIP_COLOUR = (255, 230, 0)  # the box the page draws each hovered tooltip in

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><style>
  body {{ margin: 0; background: #fff; }}
  .tip {{ position: absolute; background: rgb{colour}; color: #000; white-space: pre;
          font: 16px sans-serif; padding: 6px; border: 0; }}
</style></head><body>
<div id="drawing">{svg}</div>
<script>
  const XLINK = "http://www.w3.org/1999/xlink";
  const found = {{}};
  for (const [name, id] of Object.entries({targets})) {{
    const g = document.getElementById(id);
    const box = (g.querySelector("text") || g).getBoundingClientRect();
    const x = box.left + box.width / 2, y = box.top + box.height / 2;
    const hit = document.elementFromPoint(x, y);
    const link = hit && hit.closest("a");
    const text = link ? (link.getAttributeNS(XLINK, "title") || link.getAttribute("title")) : "";
    found[name] = text;
    const tip = document.createElement("div");
    tip.className = "tip"; tip.id = "tip-" + name; tip.textContent = text;
    // beside the drawing, level with what was hovered (the edge's a little above)
    tip.style.left = "420px"; tip.style.top = (y + (name === "edge" ? -110 : 20)) + "px";
    document.body.appendChild(tip);
  }}
  const out = document.createElement("pre");
  out.id = "found"; out.textContent = JSON.stringify(found);
  document.body.appendChild(out);
</script></body></html>
"""


@pytest.mark.slow
def test_hovering_a_node_and_an_edge_shows_their_tooltips(tmp_path: Path) -> None:
    network = effdsl.load(SPECS / "b0.eff")
    plan = effdsl.lower(network)
    svg_path = renderer.render(plan, tmp_path / "b0.svg", spec=network)
    svg = svg_path.read_text(encoding="utf-8")
    svg = svg[svg.index("<svg") :]  # inline: drop the XML declaration and doctype
    root = ET.fromstring(svg)
    edge = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "edge")
    edge_tip = next(a.get(f"{XLINK}title") for a in edge.iter(f"{SVG}a"))
    targets = {"node": "stem", "edge": edge.get("id")}
    page = tmp_path / "page.html"
    page.write_text(
        PAGE.format(svg=svg, targets=json.dumps(targets), colour=TIP_COLOUR), encoding="utf-8"
    )
    size = (1000, 1900)

    dom = chromium(page, tmp_path / "profile", "--dump-dom", size=size)
    found = json.loads(dom.split('<pre id="found">', 1)[1].split("</pre>", 1)[0])
    assert found["node"] == (
        "stem\nstem 3×3 s2 · 3 → 32 ch · SiLU\n3×224×224 → 32×112×112\n928 params\n"
        "10,838,016 MACs\nfrom " + str(SPECS / "b0.eff") + ":21: stem conv k3 s2 c32"
    )
    assert found["edge"] == edge_tip and edge_tip.startswith("tensor 3×224×224\nfrom input")

    shot = Path(os.environ.get("EFFDSL_SCREENSHOT", tmp_path / "shot.png"))
    chromium(page, tmp_path / "profile2", f"--screenshot={shot}", size=size)
    width, height, rows = png_pixels(shot)
    assert (width, height) == size
    tip = bytes((*TIP_COLOUR, 255))
    painted = sum(row.count(tip) for row in rows[::4])
    assert painted > 2_000, "the tooltip boxes are not in the screenshot"
