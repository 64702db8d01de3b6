"""Read a live module built by effdsl (`effdsl.build`, or a generated `.py`) into `ModelFacts`.

The simplest case of the importer: effdsl's own tree is `stem`, `stages.i.blocks.j` with ops
`conv` | `expand`, `depthwise`, `se`, `project`, then `head`, `dropout`, `classifier`. The
structure is read from the modules like any other library's; only the network's name and
input size, which no module carries, come from the `plan` the model was built from (a module
without one is named `imported` at 224 pixels).
"""

from __future__ import annotations

from typing import Any

from effdsl.errors import ImportRefused
from effdsl.importers.facts import (
    BlockFact,
    ConvFact,
    ModelFacts,
    Reader,
    SEFact,
    parameter_count,
)


def version() -> str:
    import effdsl

    return f"effdsl {effdsl.__version__}"


#: effdsl's layers that the reader cannot read back yet, by class, and what they are.
_UNREAD_LAYERS = {
    "MixedConvBNAct": "MixConv (mixed kernels or grouped 1×1 convs)",
    "CondConvBNAct": "CondConv (per-sample expert kernels)",
}


class EffdslReader(Reader):
    def __init__(self, name: str) -> None:
        super().__init__(f"module:{name}")
        self.name = name

    def conv(
        self,
        path: str,
        module: Any,
        norm: Any = None,
        act: Any = None,
        *,
        padding: str | None = None,
    ) -> ConvFact:
        """effdsl's conv-BN-act: children `conv`, `bn`, `act`, and `pad` for TF's SAME."""
        if not (hasattr(module, "conv") and hasattr(module, "bn")):
            # MixConv's sliced convs and CondConv's expert kernels have other children
            feature = _UNREAD_LAYERS.get(type(module).__name__, "a conv layer of another layout")
            raise self.refuse(path, module, f"{feature}, which the importer does not read yet")
        pad = getattr(module, "pad", None)
        return super().conv(
            f"{path}.conv",
            module.conv,
            module.bn,
            module.act,
            padding="same" if pad is not None else None,
        )

    def se(self, path: str, module: Any) -> SEFact:
        act = self.activation(f"{path}.act", module.act)
        if act is None:
            raise self.refuse(path, module, "squeeze-and-excitation without an activation")
        return SEFact(
            path=path,
            channels=int(module.reduce.in_channels),
            squeeze=int(module.reduce.out_channels),
            act=act,
            gate="sigmoid",
        )

    def block(self, path: str, block: Any) -> BlockFact:
        parts = {
            name: getattr(block, name)
            for name in ("conv", "expand", "depthwise", "se", "project")
            if getattr(block, name, None) is not None
            and type(getattr(block, name)).__name__ != "Identity"  # generated code's "absent"
        }
        convs = tuple(
            self.conv(f"{path}.{name}", module) for name, module in parts.items() if name != "se"
        )
        present = set(parts) - {"se"}
        kinds = {
            frozenset({"conv"}): "conv",
            frozenset({"depthwise", "project"}): "ds",
            frozenset({"expand", "depthwise", "project"}): "ir",
            frozenset({"expand", "project"}): "er",
        }
        kind = kinds.get(frozenset(present))
        if kind is None:
            raise self.refuse(path, block, f"block with layers {', '.join(parts)}")
        se = self.se(f"{path}.se", parts["se"]) if "se" in parts else None
        return BlockFact(
            path=path,
            kind=kind,
            convs=convs,
            se=se,
            residual=bool(block.residual),
            drop_path=float(block.drop_rate),
        )

    def model(self, model: Any) -> ModelFacts:
        stem = self.conv("stem", model.stem)
        stages = tuple(
            tuple(self.block(f"stages.{i}.blocks.{j}", b) for j, b in enumerate(stage.blocks))
            for i, stage in enumerate(model.stages)
        )
        head = self.conv("head", model.head)
        return ModelFacts(
            source=self.source,
            name=self.name,
            library=version(),
            resolution=_resolution(model),
            in_channels=stem.in_channels,
            stem=stem,
            stages=stages,
            head=head,
            head_style="conv",
            dropout=float(model.dropout.p),
            classes=int(model.classifier.out_features),
            params=parameter_count(model),
        )


def _name(model: Any) -> str:
    """The network's name: `effdsl.build`'s `plan`, or a generated class's `network`."""
    plan = getattr(model, "plan", None)
    if plan is not None:
        return str(plan.name)
    return str(getattr(model, "network", "imported"))


def _resolution(model: Any) -> int:
    plan = getattr(model, "plan", None)
    if plan is not None:
        return int(plan.resolution)
    return int(getattr(model, "resolution", 224))


def load_generated(path: str) -> Any:
    """The network class of a `.py` file written by `effdsl compile -o`, instantiated on the
    meta device."""
    import importlib.util
    import sys

    import torch

    spec = importlib.util.spec_from_file_location(f"_effdsl_generated_{abs(hash(path))}", path)
    if spec is None or spec.loader is None:
        raise ImportRefused(f"module:{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and typing look a module up by name
    try:
        spec.loader.exec_module(module)
    except FileNotFoundError:
        raise ImportRefused(f"module:{path}: no such file") from None
    finally:
        sys.modules.pop(spec.name, None)
    classes = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, torch.nn.Module)
        and isinstance(getattr(value, "network", None), str)
    ]
    if len(classes) != 1:
        raise ImportRefused(
            f"module:{path}: expected one network class written by `effdsl compile -o`, "
            f"found {len(classes)}"
        )
    with torch.device("meta"):
        return classes[0]()


def read(model: Any) -> ModelFacts:
    """The facts of an effdsl-built module."""
    reader = EffdslReader(_name(model))
    for part in ("stem", "stages", "head", "dropout", "classifier"):
        if not hasattr(model, part):
            raise reader.refuse(part, None, "not a module built by effdsl (no `" + part + "`)")
    return reader.model(model)
