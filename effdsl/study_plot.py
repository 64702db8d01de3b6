"""`effdsl plot --study`: a scored search's candidates, score against MACs, with the Pareto front.

    result = effdsl.search.status("b0.db", "efficientnet_b0")
    svg = study_svg(result)                     # same study, byte-identical SVG
    effdsl plot --study efficientnet_b0 --storage b0.db -o b0-search.svg

One dot per scored candidate at (exact MACs at φ = 1, score). The Pareto front — the candidates
that no other beats on both counts (as cheap or cheaper, and as good or better) — is joined by a
line and labelled with its α, β, γ; the spec's own coefficients (the paper's, for B0) get a ring,
the best score a filled mark. Candidates not scored yet are counted under the axis. Drawn with
`effdsl.plot`'s axes and text helpers, so the two plots look and escape alike. No torch.
"""

from __future__ import annotations

from collections.abc import Sequence

from effdsl.errors import EffError
from effdsl.plot import (
    EXACT,
    GRID,
    INK,
    MARK,
    NOMINAL,
    Axis,
    _fmt,
    _line,
    _padded,
    _text,
    _tick_label,
)
from effdsl.search import Candidate, SearchResult, result_key
from effdsl.summary import human

WIDTH, HEIGHT = 760, 480
LEFT, RIGHT, TOP, BOTTOM = 80, 30, 88, 64


def pareto_front(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The scored candidates no other dominates (MACs ≤ and score ≥, one strictly), by MACs."""
    scored = [c for c in candidates if c.score is not None]
    front = []
    for c in scored:
        dominated = any(
            o.macs <= c.macs and o.score >= c.score  # type: ignore[operator]
            and (o.macs < c.macs or o.score > c.score)  # type: ignore[operator]
            for o in scored
        )
        if not dominated:
            front.append(c)
    return sorted(front, key=lambda c: (c.macs, c.key))


def _label(c: Candidate) -> str:
    return f"{c.alpha:g}/{c.beta:g}/{c.gamma:g}"


def study_svg(result: SearchResult) -> str:
    """The score-against-MACs plot of a study's result as an SVG document."""
    scored = sorted((c for c in result.ranked if c.score is not None), key=lambda c: c.key)
    if not scored:
        raise EffError("the study has no scored candidate yet: nothing to plot",
                       hint="see `effdsl search --status`")
    x = Axis(*_padded([float(c.macs) for c in scored], False), start=LEFT, end=WIDTH - RIGHT)
    y = Axis(*_padded([float(c.score) for c in scored], False),  # type: ignore[arg-type]
             start=HEIGHT - BOTTOM, end=TOP)
    front = pareto_front(scored)
    spec = result_key(*result.spec)
    best = result.best
    name = result.study.name if result.study else result.network
    title = f"{result.network}: search {name}, score ({result.scorer}) against MACs at φ = 1"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11" fill="{INK}">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        _text(LEFT, 24, title, font_size="14", font_weight="bold"),
        *_legend(46),
    ]
    for tick in x.ticks():
        out.append(_line(x(tick), TOP, x(tick), HEIGHT - BOTTOM, GRID))
        out.append(_text(x(tick), HEIGHT - BOTTOM + 16, _tick_label(tick), "middle"))
    for tick in y.ticks():
        out.append(_line(LEFT, y(tick), WIDTH - RIGHT, y(tick), GRID))
        out.append(_text(LEFT - 6, y(tick) + 4, f"{tick:g}", "end"))
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" '
               f'height="{HEIGHT - TOP - BOTTOM}" fill="none" stroke="{INK}"/>')
    out.append(_text((LEFT + WIDTH - RIGHT) / 2, HEIGHT - BOTTOM + 34, "MACs per image at φ = 1",
                     "middle"))
    out.append(_text(LEFT, TOP - 8, "score (higher is better)", font_weight="bold"))
    points = " ".join(f"{_fmt(x(c.macs))},{_fmt(y(c.score))}" for c in front)  # type: ignore[arg-type]
    out.append(f'<polyline points="{points}" fill="none" stroke="{NOMINAL}" stroke-width="1.8"/>')
    # the best last, so that a candidate tying with it cannot hide its mark
    for c in sorted(scored, key=lambda c: c.key == best.key):
        cx, cy = x(c.macs), y(c.score)  # type: ignore[arg-type]
        colour = MARK if c.key == best.key else EXACT
        out.append(f'<circle cx="{_fmt(cx)}" cy="{_fmt(cy)}" r="4" fill="{colour}" '
                   f'stroke="white"><title>{_label(c)}: score {c.score:.6g}, '
                   f'{human(c.macs)} MACs</title></circle>')
        if c.key == spec:
            out.append(f'<circle cx="{_fmt(cx)}" cy="{_fmt(cy)}" r="8" fill="none" '
                       f'stroke="{INK}" stroke-width="1.5"/>')
    labels: dict[tuple[int, float], list[str]] = {}
    for c in front:  # candidates that tie on both counts share one label
        labels.setdefault((c.macs, c.score), []).append(_label(c))  # type: ignore[arg-type]
    for (macs, score), names in labels.items():
        out.append(_text(x(macs) + 7, y(score) - 7, ", ".join(names), font_size="10"))
    unscored = len(result.ranked) - len(scored)
    foot = f"{len(scored)} candidates scored, {len(front)} on the front"
    if unscored:
        foot += f"; {unscored} not scored yet"
    out.append(_text(WIDTH - RIGHT, HEIGHT - 14, foot, "end", font_size="10"))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _legend(top: float) -> list[str]:
    x = LEFT
    return [
        f'<circle cx="{_fmt(x + 4)}" cy="{_fmt(top)}" r="4" fill="{EXACT}"/>',
        _text(x + 14, top + 4, "candidate"),
        f'<circle cx="{_fmt(x + 94)}" cy="{_fmt(top)}" r="4" fill="{MARK}"/>',
        _text(x + 104, top + 4, "best score"),
        _line(x + 184, top, x + 212, top, NOMINAL),
        _text(x + 218, top + 4, "Pareto front (α/β/γ)"),
        f'<circle cx="{_fmt(x + 360)}" cy="{_fmt(top)}" r="8" fill="none" stroke="{INK}"/>',
        _text(x + 374, top + 4, "the spec's own α, β, γ"),
    ]
