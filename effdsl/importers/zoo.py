"""Measure how exactly effdsl writes a reference model: the rows of `docs/zoo.md`.

    row = measure("timm:mobilenetv2_100")    # import, counts, conversion, logits

For one `SOURCE:NAME`, the reference model is counted on the meta device (parameters, and
MACs as `torch.utils.flop_counter.FlopCounterMode` total / 2 at the model's input size), then
imported; the spec's parameters and MACs come from effdsl's cost model. For the logits, the
reference is built on the CPU in float64 with random weights and randomised batch-norm
statistics, its state_dict converted with `effdsl.convert_state_dict(source=LIBRARY)` and loaded
strictly into `effdsl.build` of the spec at 96×96, and both run on the same 2×3×96×96 input.
A model is *exact* when the parameters, MACs and logits all agree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from effdsl import ast
from effdsl.cost import cost
from effdsl.errors import EffError
from effdsl.plan import lower
from effdsl.scaling import scale

#: Side of the input the logits are compared at, and the tolerance (relative to the largest
#: logit) within which float64 results count as equal.
LOGITS_SIZE = 96
LOGITS_TOLERANCE = 1e-9
#: timm's EvoNorm-S0 computes its group variance in float32 whatever the input's precision
#: (`x.float().var(...)` in `timm.layers.evo_norm.group_std`), so a model with one is compared
#: within float32's precision.
LOGITS_TOLERANCE_FLOAT32 = 1e-5
FLOAT32_INSIDE = ("EvoNorm2dS0",)

#: Models above this many parameters would be compared by counts only. Every builder model
#: is below it: in float64 at 96 px the largest (EfficientNet-L2, 480M parameters) takes about
#: a minute on two cores; most take seconds.
LOGITS_MAX_PARAMS = 1_000_000_000


@dataclass(frozen=True)
class Row:
    """One model's line of the zoo table."""

    source: str
    status: str  # "exact", "counts" (exact counts, logits not run), "refused", "inexact"
    reason: str  # the refusal, or what differs
    feature: str  # the missing feature alone (refusals), for grouping; else the reason
    params: int  # the reference's
    macs: int  # the reference's, FlopCounterMode / 2
    spec_params: int | None = None
    spec_macs: int | None = None
    logits: float | None = None  # max |difference| / max |logit|
    seconds: float = 0.0

    @property
    def exact(self) -> bool:
        return self.status == "exact"


def create(source: str, *, meta: bool) -> Any:
    """The reference model of `timm:NAME` or `torchvision:NAME`, on meta or on the CPU."""
    import torch

    library, _, name = source.partition(":")
    with torch.device("meta" if meta else "cpu"):
        if library == "timm":
            import timm

            return timm.create_model(name, pretrained=False)
        from torchvision import models

        return models.get_model(name, weights=None)


def reference_counts(model: Any, resolution: int) -> tuple[int, int]:
    """Parameters, and MACs as FlopCounterMode's FLOPs / 2, of `model` (on meta) per image."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(int(p.numel()) for p in model.parameters())
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.empty(1, 3, resolution, resolution, device="meta"))
    return params, int(counter.get_total_flops()) // 2


def randomise_batch_norm(model: Any, generator: Any) -> None:
    """Random affine parameters and running statistics in every batch norm, so that a
    converter that swaps two norms, or a backend that ignores one, changes the logits."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            mean, var = module.running_mean, module.running_var
            assert mean is not None and var is not None  # tracked: every norm read here is
            shape, dtype = mean.shape, mean.dtype
            mean.copy_(torch.randn(shape, generator=generator, dtype=dtype) * 0.1)
            var.copy_(torch.rand(shape, generator=generator, dtype=dtype) * 0.5 + 0.75)
            if module.weight is not None:
                module.weight.data.copy_(
                    torch.rand(shape, generator=generator, dtype=dtype) * 0.5 + 0.75
                )
                module.bias.data.copy_(torch.randn(shape, generator=generator, dtype=dtype) * 0.1)


def logits_difference(source: str, network: ast.Network) -> float:
    """max |logits(reference) − logits(effdsl)| / max |logits|, after converting the
    reference's random checkpoint with `convert_state_dict`. Raises `CheckpointError` when the
    checkpoint does not convert."""
    import torch

    import effdsl

    library = source.partition(":")[0]
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        torch.manual_seed(0)
        reference = create(source, meta=False).double().eval()
        randomise_batch_norm(reference, generator)
        small = scale(network, resolution=LOGITS_SIZE)
        state = effdsl.convert_state_dict(reference.state_dict(), network=small, source=library)
        with torch.device("meta"):
            ours = effdsl.build(small)
        ours.load_state_dict(state, strict=True, assign=True)
        ours = ours.double().eval()
        x = torch.randn(2, 3, LOGITS_SIZE, LOGITS_SIZE, generator=generator, dtype=torch.float64)
        expected = reference(x)
        got = ours(x)
    return float((expected - got).abs().max() / expected.abs().max())


def measure(source: str, *, logits: bool | None = None) -> Row:
    """The zoo row of `source`: imported or refused, counts on both sides, logits.

    `logits=None` compares logits for models up to `LOGITS_MAX_PARAMS` parameters.
    """
    from effdsl.importers import import_model

    start = time.perf_counter()
    reference = create(source, meta=True)
    try:
        network = import_model(source)
    except EffError as refusal:
        resolution = _resolution(reference)
        params, macs = reference_counts(reference, resolution)
        reason = refusal.message.removeprefix(f"{source}: ")
        feature = getattr(refusal, "feature", reason)
        return Row(
            source, "refused", reason, feature, params, macs, seconds=time.perf_counter() - start
        )
    params, macs = reference_counts(reference, network.input.size)
    report = cost(lower(network))
    row = Row(
        source,
        "exact",
        "",
        "",
        params,
        macs,
        spec_params=report.params,
        spec_macs=report.macs,
    )
    problems = []
    if report.params != params:
        problems.append("parameters differ")
    if report.macs != macs:
        problems.append("MACs differ")
    difference: float | None = None
    if logits is None:
        logits = params <= LOGITS_MAX_PARAMS
    if logits:
        try:
            difference = logits_difference(source, network)
        except EffError as error:
            problems.append(f"checkpoint does not convert: {error.message}")
        else:
            if not difference <= tolerance(reference):
                problems.append("logits differ")
    status = "inexact" if problems else ("exact" if logits else "counts")
    return Row(
        row.source,
        status,
        "; ".join(problems),
        problems[0].split(":")[0] if problems else "",
        row.params,
        row.macs,
        row.spec_params,
        row.spec_macs,
        difference,
        time.perf_counter() - start,
    )


def tolerance(model: Any) -> float:
    """The logits tolerance for a reference model: float32's where a layer of it computes in
    float32 even in a float64 model, else float64's."""
    inside = {type(module).__name__ for module in model.modules()}
    return LOGITS_TOLERANCE_FLOAT32 if inside & set(FLOAT32_INSIDE) else LOGITS_TOLERANCE


def _resolution(model: Any) -> int:
    config = getattr(model, "pretrained_cfg", None) or {}
    return int(config.get("input_size", (3, 224, 224))[-1])
