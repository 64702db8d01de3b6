"""The words of the `.eff` language and their documentation, read from the parser and the AST.

Statements come from `effdsl.parser.STATEMENTS`, the attributes of each from
`effdsl.parser.attributes`, shorthand letters from `effdsl.parser.SHORTHANDS`, and each
attribute's meaning, default, bounds and allowed values from the AST's JSON Schema (the same
source as `effdsl schema` and the tables of docs/language.md). A block kind, activation or other
value added to the AST therefore appears in completion and hover without a change here; only
the one-line descriptions of enumerated values below are kept by hand, and a value without one
is still offered, with its attribute's description.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from effdsl import ast
from effdsl.parser import FALSE_WORDS, SHORTHANDS, STATEMENTS, TRUE_WORDS, attributes

#: One line for enumerated values whose meaning the AST's schema does not spell out.
VALUE_DOCS = {
    ("kind", "conv"): "k×k convolution, batch norm, activation.",
    ("kind", "mbconv"): "MBConv: 1×1 expansion (skipped when e = 1), depthwise k×k with the "
    "stride, squeeze-and-excitation, 1×1 projection without activation.",
    ("kind", "fused_mbconv"): "Fused-MBConv: k×k expansion conv with the stride, optional SE, "
    "1×1 projection; with e = 1 a single k×k conv-BN-act.",
    ("kind", "separable"): "Depthwise-separable: depthwise k×k with the stride, optional SE, "
    "1×1 pointwise conv, both convs with their activation; no residual (MobileNetV1, LCNet).",
    ("kind", "uir"): "Universal inverted bottleneck (MobileNetV4): optional depthwise "
    "`dw_start` before the 1×1 expansion, the depthwise k×k (k0: none), optional SE, 1×1 "
    "projection, optional depthwise `dw_end`, optional layer scale.",
    ("kind", "mqa"): "Multi-query attention (MobileNetV4 hybrid): batch norm, `heads` query "
    "heads over one shared key and value (downsampled by a depthwise k×k of `kv_stride`), "
    "1×1 output projection, optional layer scale; stride 1.",
    ("act", "silu"): "SiLU (swish): x · sigmoid(x).",
    ("act", "relu"): "ReLU: max(x, 0).",
    ("act", "relu6"): "ReLU6: min(max(x, 0), 6).",
    ("act", "hardswish"): "Hard swish: x · relu6(x + 3) / 6.",
    ("act", "gelu"): "GELU: x · Φ(x).",
    ("padding", "symmetric"): "Pads (k−1)/2 on every side, as PyTorch and torchvision do.",
    ("padding", "same"): "Pads like TensorFlow's SAME (the extra pixel right and bottom).",
    ("fix", "none"): "Scale both channels and repeats.",
    ("fix", "width"): "Keep the channels when scaling.",
    ("fix", "depth"): "Keep the repeats when scaling.",
    ("fix", "all"): "Keep channels and repeats.",
    ("se", "none"): "No squeeze-and-excitation.",
    ("norm", "batch"): "Batch norm (folded into the conv for inference).",
    ("norm", "group"): "GroupNorm of `norm_group_size` channels per group.",
    ("norm", "layer"): "LayerNorm over the channels of each pixel (timm's LayerNorm2d).",
    ("norm", "evonorm"): "EvoNorm-S0: x·σ(v·x) over the group's deviation, then an affine; "
    "its non-linearity replaces the activation.",
    ("norm", "none"): "No norm: the conv has a bias.",
}


@dataclass(frozen=True)
class Attribute:
    """One `key=value` attribute of a statement, documented."""

    name: str
    description: str
    default: str | None  # as written in a spec; None when required or inherited
    bounds: str | None
    values: tuple[str, ...]  # enumerated values, in the AST's order
    shorthand: str | None  # `k` for kernel, where the statement takes shorthands


def statements() -> dict[str, type[ast.Node]]:
    """Statement keyword → AST node type, in the order the language reference lists them."""
    return dict(STATEMENTS)


def statement_doc(keyword: str) -> str:
    """The node's docstring: its example and what it is."""
    node_type = STATEMENTS[keyword]
    return (node_type.__doc__ or keyword).strip()


def is_block(keyword: str) -> bool:
    node_type = STATEMENTS.get(keyword)
    return node_type is not None and issubclass(node_type, ast.Block)


def block_kinds() -> tuple[str, ...]:
    """The block kinds, from the `kind` field of the AST's blocks."""
    return _choices(_schema(ast.Stage)["properties"]["kind"])


def value_doc(attribute: str, value: str) -> str | None:
    return VALUE_DOCS.get((attribute, value))


@functools.cache
def _schema(node_type: type[ast.Node]) -> dict[str, Any]:
    return node_type.model_json_schema()


def _branches(prop: dict[str, Any]) -> list[dict[str, Any]]:
    """The non-null alternatives of a property (`Optional[X]` is `anyOf: [X, null]`)."""
    options = prop.get("anyOf", [prop])
    return [o for o in options if o.get("type") != "null"]


def _choices(prop: dict[str, Any]) -> tuple[str, ...]:
    values: list[str] = []
    for branch in _branches(prop):
        values.extend(str(v) for v in branch.get("enum", ()))
        if branch.get("type") == "boolean":
            values.extend((TRUE_WORDS[0], FALSE_WORDS[0]))
    return tuple(values)


def _number(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _bounds(prop: dict[str, Any]) -> str | None:
    for branch in _branches(prop):
        low = (">", branch["exclusiveMinimum"]) if "exclusiveMinimum" in branch else None
        low = ("≥", branch["minimum"]) if "minimum" in branch else low
        high = ("<", branch["exclusiveMaximum"]) if "exclusiveMaximum" in branch else None
        high = ("≤", branch["maximum"]) if "maximum" in branch else high
        if low and high and low[0] == "≥" and high[0] == "≤" and branch.get("type") == "integer":
            return f"{_number(low[1])} … {_number(high[1])}"
        parts = [f"{bound[0]} {_number(bound[1])}" for bound in (low, high) if bound is not None]
        if "maxLength" in branch:
            parts.append(f"at most {_number(branch['maxLength'])} characters")
        if parts:
            return ", ".join(parts)
    return None


def _default(name: str, prop: dict[str, Any], required: bool) -> str | None:
    if required or "default" not in prop or prop["default"] is None:
        return None
    value = prop["default"]
    if name == "se" and value == 0:
        return "none"
    return _number(value)


@functools.cache
def attribute_table(keyword: str) -> dict[str, Attribute]:
    """The attributes `keyword` takes as `key=value`, documented, in the parser's order."""
    node_type = STATEMENTS[keyword]
    schema = _schema(node_type)
    required = set(schema.get("required", ()))
    letters = {name: letter for letter, name in SHORTHANDS.items()}
    block = issubclass(node_type, ast.Block)
    inherited = _schema(ast.Defaults)["properties"]
    table = {}
    for name in attributes(node_type):
        prop = schema["properties"][name]
        description = prop.get("description", name)
        default = _default(name, prop, name in required)
        if block and name in inherited and keyword != "defaults":
            # a block's option overrides the network's default: say what the option does
            base = inherited[name]
            description = f"{base.get('description', name)} {description}"
            shown = _default(name, base, False)
            default = f"inherited from `defaults` ({shown})" if shown else None
            prop = base
        values = _choices(prop)
        if name == "se":
            values = ("none", *values)
        table[name] = Attribute(
            name=name,
            description=description,
            default=default,
            bounds=_bounds(prop),
            values=values,
            shorthand=letters.get(name) if block else None,
        )
    return table


def attribute_markdown(keyword: str, name: str) -> str:
    """The hover text of an attribute: what it means, its default, bounds and values."""
    info = attribute_table(keyword)[name]
    title = f"`{name}`" + (f" (`{info.shorthand}N`)" if info.shorthand else "")
    lines = [f"**{title}** — `{keyword}`", "", info.description]
    facts = []
    if info.default is not None:
        facts.append(f"default: {info.default}")
    else:
        facts.append("required" if name in _required(keyword) else "optional")
    values = ", ".join(f"`{v}`" for v in info.values)
    if info.values and info.bounds:
        facts.append(f"{values}, or {info.bounds}")
    elif info.values:
        facts.append(f"one of {values}")
    elif info.bounds:
        facts.append(info.bounds)
    lines += ["", " · ".join(facts)]
    return "\n".join(lines)


def _required(keyword: str) -> set[str]:
    return set(_schema(STATEMENTS[keyword]).get("required", ()))
