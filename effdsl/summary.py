"""The summary `effdsl compile` prints: base vs scaled stages and the totals, as text or JSON.

Everything here is read from two plans (the unscaled spec's and the scaled one's) and the cost
model; nothing is recomputed. No torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from effdsl import ast
from effdsl.arguments import checked
from effdsl.cost import CostReport, cost
from effdsl.plan import Plan, StagePlan, lower
from effdsl.scaling import Multipliers, apply
from effdsl.text import printable

BLOCK_NAMES = {
    "conv": "Conv",
    "mbconv": "MBConv",
    "fused_mbconv": "FusedMBConv",
    "mixconv": "MixConv",
    "condconv": "CondConv",
    "separable": "SepConv",
    "uir": "UIB",
    "mqa": "MQA",
}


@dataclass(frozen=True)
class Summary:
    """A scaled network next to its unscaled spec."""

    base: Plan
    scaled: Plan
    base_cost: CostReport
    scaled_cost: CostReport
    alpha: float
    beta: float
    gamma: float

    @property
    def factors(self) -> Multipliers:
        return self.scaled.scaling

    @property
    def macs_ratio(self) -> float:
        return self.scaled_cost.macs / self.base_cost.macs if self.base_cost.macs else math.nan

    @property
    def flops_constant(self) -> float:
        """α·β²·γ²: the factor by which the paper's scaling multiplies FLOPs per unit of φ."""
        return self.alpha * self.beta**2 * self.gamma**2


@checked
def summarize(network: ast.Network, factors: Multipliers) -> Summary:
    """Lower `network` before and after `factors` and cost both."""
    base = lower(network)
    scaled = lower(apply(network, factors), factors)
    return Summary(
        base=base,
        scaled=scaled,
        base_cost=cost(base),
        scaled_cost=cost(scaled),
        alpha=factors.alpha if factors.alpha is not None else network.scaling.alpha,
        beta=factors.beta if factors.beta is not None else network.scaling.beta,
        gamma=factors.gamma if factors.gamma is not None else network.scaling.gamma,
    )


def block_label(stage: StagePlan) -> str:
    """`MBConv6`, `FusedMBConv4`, `Conv`: the paper's way of naming a stage's block."""
    name = BLOCK_NAMES[stage.kind]
    # a stage that starts with space-to-depth (EfficientNet-X) says so: its width is 4× its c
    s2d = " s2d" if any(op.role == "s2d" for op in stage.blocks[0].ops) else ""
    if stage.kind in ast.UNEXPANDED:
        return name + s2d
    expand = f"{stage.expand:g}"
    return f"{name}{expand}{s2d}"


def human(number: float, unit: str = "") -> str:
    """`5.29M`, `385.81M`, `37.75G`: three significant decimals at most."""
    for threshold, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(number) >= threshold:
            return f"{number / threshold:.2f}{suffix}{unit}"
    return f"{number:g}{unit}"


def _arrow(before: object, after: object) -> str:
    return f"{before}" if before == after else f"{before}→{after}"


def _stage_row(base: StagePlan, scaled: StagePlan) -> list[str]:
    return [
        str(scaled.index),
        block_label(scaled),
        ast.kernel_text(scaled.kernel),
        str(scaled.stride),
        f"{scaled.expand:g}",
        f"{scaled.se:g}" if scaled.se else "-",
        _arrow(base.repeats, scaled.repeats),
        _arrow(base.out_channels, scaled.out_channels),
        f"{scaled.out_size}×{scaled.out_size}",
    ]


def table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


@checked
def to_text(summary: Summary) -> str:
    """The human summary: a stage table and the totals."""
    factors = summary.factors
    scaled, base = summary.scaled, summary.base
    title = printable(f"{scaled.name} ({factors.describe()})")
    lines = [f"{title} at {scaled.resolution}×{scaled.resolution}", ""]
    header = ["#", "block", "k", "s", "e", "se", "repeats", "channels", "out"]
    rows = [header, *(_stage_row(b, s) for b, s in zip(base.stages, scaled.stages, strict=True))]
    lines += table(rows)
    lines.append("")
    stem = _arrow(base.stem.out_channels, scaled.stem.out_channels)
    if scaled.head is not None and base.head is not None:
        head = f"head {_arrow(base.head.out_channels, scaled.head.out_channels)} channels"
    else:
        head = "no head conv"
    lines.append(f"stem {stem} channels, {head}, {scaled.classifier.classes} classes")
    lines.append(
        f"params      {summary.scaled_cost.params:,} ({human(summary.scaled_cost.params)})"
    )
    lines.append(
        f"MACs        {summary.scaled_cost.macs:,} ({human(summary.scaled_cost.macs)} "
        "multiply-adds; FLOPs = 2 × MACs)"
    )
    # only what applies: an unscaled spec has no ratios, a preset no φ to predict from
    if scaled.resolution != base.resolution:
        lines.append(f"resolution  {base.resolution} → {scaled.resolution}")
    if factors.width != 1.0 or factors.depth != 1.0:
        lines.append(f"multipliers width {factors.width:.4g}, depth {factors.depth:.4g}")
    if not factors.is_identity:
        ratio = f"MACs ratio  {summary.macs_ratio:.3f}× the unscaled spec"
        if factors.phi is not None:
            ratio += (
                f"; the paper predicts (α·β²·γ²)^φ = {summary.flops_constant**factors.phi:.3f}"
                f" ≈ 2^φ = {2**factors.phi:.3f}"
            )
        lines.append(ratio)
    if factors.phi is not None:
        lines.append(
            f"α·β²·γ²     {summary.flops_constant:.4f} "
            f"(α={summary.alpha:g}, β={summary.beta:g}, γ={summary.gamma:g})"
        )
    return "\n".join(lines) + "\n"


@checked
def to_json(summary: Summary) -> dict[str, Any]:
    """The summary as JSON-ready data (`effdsl compile --json`)."""
    factors = summary.factors
    scaled, base = summary.scaled, summary.base
    stages = []
    for b, s, c in zip(base.stages, scaled.stages, summary.scaled_cost.stages, strict=True):
        stages.append(
            {
                "index": s.index,
                "name": s.name,
                "block": s.kind,
                "kernel": s.kernel,
                "stride": s.stride,
                "expand": s.expand,
                "se": s.se,
                "repeats": s.repeats,
                "base_repeats": b.repeats,
                "out_channels": s.out_channels,
                "base_out_channels": b.out_channels,
                "out_size": s.out_size,
                "params": c.params,
                "macs": c.macs,
                "activation_bytes": c.activation_bytes,
            }
        )
    return {
        "name": scaled.name,
        "scaling": factors.describe(),
        "phi": factors.phi,
        "preset": factors.preset,
        "resolution": scaled.resolution,
        "base_resolution": base.resolution,
        "width_mult": factors.width,
        "depth_mult": factors.depth,
        "alpha": summary.alpha,
        "beta": summary.beta,
        "gamma": summary.gamma,
        "alpha_beta2_gamma2": summary.flops_constant,
        "params": summary.scaled_cost.params,
        "macs": summary.scaled_cost.macs,
        "flops": 2 * summary.scaled_cost.macs,
        "activation_bytes": summary.scaled_cost.activation_bytes,
        "base_params": summary.base_cost.params,
        "base_macs": summary.base_cost.macs,
        "macs_ratio": summary.macs_ratio,
        "predicted_macs_ratio": (
            summary.flops_constant**factors.phi if factors.phi is not None else None
        ),
        "blocks": scaled.block_count,
        "stem_channels": scaled.stem.out_channels,
        "head_channels": scaled.head.out_channels if scaled.head is not None else None,
        "classes": scaled.classifier.classes,
        "dropout": scaled.classifier.dropout,
        "stages": stages,
    }
