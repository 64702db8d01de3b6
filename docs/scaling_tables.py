"""Print the φ and preset tables of docs/scaling.md from the shipped B0 spec.

    python docs/scaling_tables.py > /tmp/tables.md

Every figure is the exact cost model (`effdsl.cost`) of the scaled, rounded network.
"""

from __future__ import annotations

from pathlib import Path

import effdsl
from effdsl.summary import summarize, to_json

SPEC = Path(__file__).resolve().parent.parent / "specs" / "b0.eff"
HEADER = (
    "| {what} | width | depth | resolution | repeats | channels (stem · stages · head) "
    "| params | MACs | MACs / B0 |\n|---|---|---|---|---|---|---|---|---|"
)


def row(label: str, summary: dict[str, object]) -> str:
    stages = summary["stages"]
    assert isinstance(stages, list)
    repeats = " ".join(str(s["repeats"]) for s in stages)
    channels = " ".join(str(s["out_channels"]) for s in stages)
    return (
        f"| {label} | {summary['width_mult']:.4g} | {summary['depth_mult']:.4g} "
        f"| {summary['resolution']} | {repeats} "
        f"| {summary['stem_channels']} · {channels} · {summary['head_channels']} "
        f"| {summary['params']:,} | {summary['macs']:,} | {summary['macs_ratio']:.2f} |"
    )


def main() -> None:
    network = effdsl.load(SPEC)
    print(HEADER.format(what="φ"))
    for phi in range(-1, 8):
        print(row(str(phi), to_json(summarize(network, effdsl.multipliers(network, phi=phi)))))
    print()
    print(HEADER.format(what="preset"))
    for preset in network.presets:
        factors = effdsl.multipliers(network, preset=preset.name)
        print(row(preset.name, to_json(summarize(network, factors))))


if __name__ == "__main__":
    main()
