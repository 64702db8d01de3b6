"""Regenerate the pictures of docs/gallery.md: run `python docs/gallery/make.py` (repo root).

Each picture is drawn from a spec in specs/ through the public API, so the gallery shows what
`effdsl render` draws today. Needs graphviz's `dot` (`apt-get install graphviz`).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout, installed or not

from effdsl import load  # noqa: E402
from effdsl.plan import Plan, lower  # noqa: E402
from effdsl.render import render  # noqa: E402
from effdsl.scaling import apply, multipliers  # noqa: E402


def scaled(spec: str, **request: float | str) -> Plan:
    """`specs/<spec>` scaled as requested (nothing: unscaled), lowered to a plan."""
    network = load(ROOT / "specs" / spec)
    factors = multipliers(network, **request)  # type: ignore[arg-type]
    return lower(apply(network, factors), factors)


def main() -> None:
    b0 = scaled("b0.eff")
    pictures = [
        ("b0-stage.svg", b0, None, "stage"),
        ("b0-block.svg", b0, None, "block"),
        ("b0-vs-b3.svg", scaled("b0.eff", preset="b3"), b0, "stage"),
        ("b0-vs-phi3.svg", scaled("b0.eff", phi=3), b0, "stage"),
        ("efficientnetv2-s.svg", scaled("efficientnetv2-s.eff"), None, "stage"),
    ]
    for name, plan, base, detail in pictures:
        written = render(plan, HERE / name, base=base, detail=detail)
        print(f"wrote {written.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
