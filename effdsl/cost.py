"""The analytic cost model: parameters, multiply-adds and activation memory, from the plan alone.

Conventions, chosen so that the numbers equal what PyTorch reports for the built module:

- **parameters**: conv weights (`out · in/groups · k²`; a CondConv conv has E of them),
  the norm's weight and bias (`2 · out`, batch, group or layer norm; running statistics are
  buffers, not parameters; EvoNorm-S0 with its non-linearity also has `v`, `3 · out`) or a
  conv's bias where it has no norm, SE convs and CondConv's routing layer with their biases, the
  linear layer with its bias, layer scale's factors. Exactly
  `sum(p.numel() for p in model.parameters())`.
- **MACs** (multiply-accumulates): convolutions (`out_h · out_w · out · in/groups · k²`, SE convs
  on their 1×1 input), the linear layer (`in · classes`) and attention's two batched matrix
  products (`heads · queries · keys · (key_dim + value_dim)`), per image. A MixConv counts each
  slice's conv; a CondConv conv also counts mixing its E expert kernels (`E · weights`, a matrix
  product) and its routing function's linear layer (`in · E`); a blur pool (anti-aliased
  downsampling) counts its depthwise 3×3 conv (`out_h · out_w · C · 9`). This is the convention
  of `torch.utils.flop_counter.FlopCounterMode`, which reports 2 FLOPs per MAC; norms,
  activations, pooling (average pools too), the SE gate and residual additions are not
  counted.
- **activation memory**: the elements of every op's output tensor (conv after BN and
  activation, the SE-gated tensor), per image, in bytes at `bytes_per_element` (4: fp32); the
  sum over a stage is what a training step keeps for that stage's backward pass, roughly.

No torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from effdsl import ast
from effdsl.arguments import checked
from effdsl.plan import (
    BLUR_KERNEL,
    AttentionOp,
    ClassifierPlan,
    ConvOp,
    GlobalContextOp,
    LayerScaleOp,
    MixedConvOp,
    NormOp,
    Op,
    Plan,
    PoolOp,
    RoutingOp,
    SqueezeExciteOp,
    StagePlan,
    check_blocks,
    lower,
)


@dataclass(frozen=True)
class Cost:
    """Parameters, MACs and activation bytes (per image) of a part of the network."""

    params: int = 0
    macs: int = 0
    activation_bytes: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.params + other.params,
            self.macs + other.macs,
            self.activation_bytes + other.activation_bytes,
        )

    def times(self, count: int) -> Cost:
        return Cost(self.params * count, self.macs * count, self.activation_bytes * count)


def op_cost(op: Op, bytes_per_element: int = 4) -> Cost:
    """The cost of one op of the plan."""
    if isinstance(op, ConvOp):
        weights = op.out_channels * (op.in_channels // op.groups) * op.kernel * op.kernel
        # + the norm's weight and bias (EvoNorm-S0 with its non-linearity: and v), or the
        # conv's bias where there is no norm (if it has one)
        params = weights + op.norm_params
        macs = weights * op.out_size * op.out_size
        if op.experts:
            # every expert's kernel is a parameter; mixing them is a (1×E)·(E×weights) product
            params += (op.experts - 1) * weights
            macs += op.experts * weights
        activation = op.out_channels * op.out_size * op.out_size
        return Cost(params, macs, activation * bytes_per_element)
    if isinstance(op, MixedConvOp):
        weights = sum(cout * (cin // groups) * k * k for k, cin, cout, groups, _ in op.slices())
        activation = op.out_channels * op.out_size * op.out_size
        return Cost(
            weights + 2 * op.out_channels,
            weights * op.out_size * op.out_size,
            activation * bytes_per_element,
        )
    if isinstance(op, RoutingOp):
        weights = op.channels * op.experts
        return Cost(weights + op.experts, weights, op.experts * bytes_per_element)
    if isinstance(op, LayerScaleOp):  # an elementwise product: no MACs, as FlopCounterMode
        return Cost(op.channels, 0, op.channels * op.size * op.size * bytes_per_element)
    if isinstance(op, NormOp):
        return Cost(2 * op.channels, 0, op.channels * op.size * op.size * bytes_per_element)
    if isinstance(op, AttentionOp):
        return attention_cost(op, bytes_per_element)
    if isinstance(op, PoolOp):  # the blur is a depthwise conv by a fixed filter; avg: no MACs
        activation = op.channels * op.out_size * op.out_size
        macs = activation * BLUR_KERNEL * BLUR_KERNEL if op.blur else 0
        return Cost(0, macs, activation * bytes_per_element)
    assert isinstance(op, SqueezeExciteOp)
    reduce = op.channels * op.squeeze + op.squeeze
    expand = op.squeeze * op.channels + op.channels
    macs = 2 * op.channels * op.squeeze
    activation = op.channels * op.size * op.size  # the gated tensor
    if isinstance(op, GlobalContextOp):
        # the attention conv's C·HW, and as many for the weighted sum (a batched matrix
        # product); the layer norm's weight and bias, whose arithmetic, like the softmax's,
        # FlopCounterMode does not count
        attn = op.channels + 1
        return Cost(
            attn + reduce + 2 * op.squeeze + expand,
            macs + 2 * activation,
            activation * bytes_per_element,
        )
    return Cost(reduce + expand, macs, activation * bytes_per_element)


def attention_cost(op: AttentionOp, bytes_per_element: int = 4) -> Cost:
    """Multi-query attention: its 1×1 projections (the query and the output at every query
    position, the key and the value at every key position), the key's and value's
    downsampling convs, and the two batched matrix products, queries × keys and weights ×
    values: heads · positions · key positions · (key_dim + value_dim) MACs."""
    channels, heads = op.in_channels, op.heads
    queries, keys = op.size * op.size, op.kv_size * op.kv_size
    query = channels * heads * op.key_dim
    key = channels * op.key_dim
    value = channels * op.value_dim
    output = heads * op.value_dim * op.out_channels
    total = Cost(
        query + key + value + output,
        (query + output) * queries
        + (key + value) * keys
        + heads * queries * keys * (op.key_dim + op.value_dim),
        op.out_channels * queries * bytes_per_element,
    )
    for down in op.downs:
        total += op_cost(down, bytes_per_element)
    return total


def classifier_cost(classifier: ClassifierPlan, bytes_per_element: int = 4) -> Cost:
    weights = classifier.in_features * classifier.classes
    return Cost(
        weights + classifier.classes,
        weights,
        (classifier.in_features + classifier.classes) * bytes_per_element,
    )


def stage_cost(stage: StagePlan, bytes_per_element: int = 4) -> Cost:
    total = Cost()
    for block in stage.blocks:
        for op in block.ops:
            total += op_cost(op, bytes_per_element)
    return total


@dataclass(frozen=True)
class CostReport:
    """Costs of the stem, each stage, the head and the classifier, and their total."""

    stem: Cost
    stages: tuple[Cost, ...]
    head: Cost
    classifier: Cost

    @property
    def total(self) -> Cost:
        total = self.stem + self.head + self.classifier
        for stage in self.stages:
            total += stage
        return total

    @property
    def params(self) -> int:
        return self.total.params

    @property
    def macs(self) -> int:
        return self.total.macs

    @property
    def activation_bytes(self) -> int:
        return self.total.activation_bytes


@checked
def cost(plan: Plan, bytes_per_element: int = 4) -> CostReport:
    """The cost of every part of `plan`."""
    return CostReport(
        stem=op_cost(plan.stem, bytes_per_element),
        stages=tuple(stage_cost(s, bytes_per_element) for s in plan.stages),
        head=op_cost(plan.head, bytes_per_element) if plan.head is not None else Cost(),
        classifier=classifier_cost(plan.classifier, bytes_per_element),
    )


@checked
def network_cost(network: ast.Network, bytes_per_element: int = 4) -> CostReport:
    """`cost(lower(network))`, without lowering every block: what plots and budget searches need
    for hundreds of scaled nets.

    Blocks after the first of a block line are identical in cost (stride 1, the line's
    channels in and out, the same size), so a line of r blocks costs its first block plus
    r - 1 times its second. The network is lowered with at most three blocks a line; where a
    line's second and third blocks differ (a construct for which the rule does not hold) the
    whole network is lowered instead. The block limit is checked on the real count.
    """
    check_blocks(network)
    short = network.model_copy(update={"stages": tuple(_shortened(s) for s in network.stages)})
    plan = lower(short)
    stages = []
    for stage, planned in zip(network.stages, plan.stages, strict=True):
        total, start = Cost(), 0
        for line in stage.all_lines():
            kept = min(line.repeats, 3)
            costs = [
                _block_cost(block.ops, bytes_per_element)
                for block in planned.blocks[start : start + kept]
            ]
            start += kept
            if len(costs) == 3 and costs[1] != costs[2]:
                return cost(lower(network), bytes_per_element)
            rest = costs[1].times(line.repeats - 1) if len(costs) > 1 else Cost()
            total += costs[0] + rest
        stages.append(total)
    return CostReport(
        stem=op_cost(plan.stem, bytes_per_element),
        stages=tuple(stages),
        head=op_cost(plan.head, bytes_per_element) if plan.head is not None else Cost(),
        classifier=classifier_cost(plan.classifier, bytes_per_element),
    )


def _shortened(stage: ast.Stage) -> ast.Stage:
    """`stage` with at most three blocks in each of its lines."""
    lines = tuple(line.model_copy(update={"repeats": min(line.repeats, 3)}) for line in stage.lines)
    return stage.model_copy(update={"repeats": min(stage.repeats, 3), "lines": lines})


def _block_cost(ops: tuple[Op, ...], bytes_per_element: int) -> Cost:
    total = Cost()
    for op in ops:
        total += op_cost(op, bytes_per_element)
    return total
