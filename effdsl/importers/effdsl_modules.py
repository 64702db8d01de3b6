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
    AttentionFact,
    BlockFact,
    ConvFact,
    ConvShape,
    ModelFacts,
    Reader,
    SEFact,
    parameter_count,
)


def version() -> str:
    import effdsl

    return f"effdsl {effdsl.__version__}"


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
        """effdsl's conv-norm-act layers: `conv`, `bn`, `act` (and `pad` for TF's SAME);
        MixConv's `convs` (one per channel slice, each after its `pads`); CondConv's expert
        kernels as the rows of `weight`; any of them with the pool `aa` that downsamples
        after it (anti-aliasing)."""
        fact = self._layer(path, module)
        return self.downsampled(fact, f"{path}.aa", getattr(module, "aa", None))

    def _layer(self, path: str, module: Any) -> ConvFact:
        if hasattr(module, "convs") and hasattr(module, "bn"):
            pads = list(getattr(module, "pads", [None] * len(module.convs)))
            slices = [
                (conv, "same" if _padded(pad) else None)
                for conv, pad in zip(module.convs, pads, strict=True)
            ]
            return self.mixed(f"{path}.convs", slices, module.bn, module.act)
        if hasattr(module, "weight") and hasattr(module, "shape") and hasattr(module, "bn"):
            out_channels, per_group, kernel, _ = module.shape
            shape = ConvShape(
                per_group * module.groups, out_channels, kernel, module.stride, module.groups
            )
            mode = "same" if _padded(getattr(module, "pad", None)) else "symmetric"
            experts = int(module.weight.shape[0])
            return self.experts(path, shape, experts, mode, module.bn, module.act)
        if not (hasattr(module, "conv") and hasattr(module, "bn")):
            raise self.refuse(path, module, "a conv layer of another layout")
        return super().conv(
            f"{path}.conv",
            module.conv,
            module.bn,
            module.act,
            padding="same" if _padded(getattr(module, "pad", None)) else None,
        )

    def attention(self, path: str, block: Any) -> BlockFact:
        """An `mqa` block: `norm` (batch norm), `attn` (1×1 convs `query`, `key`, `value`,
        `output`; `key_down`, `value_down` conv-norms where the keys are downsampled),
        `layer_scale`."""
        attn = block.attn
        channels = int(block.norm.num_features)
        shape = ConvShape(channels, channels, 1, 1, 1)  # the norm read as a 1×1 conv's
        norm = Reader.conv(self, f"{path}.norm", shape, block.norm, padding="symmetric")
        projections = {
            name: Reader.conv(self, f"{path}.attn.{name}", getattr(attn, name))
            for name in ("query", "key", "value", "output")
        }
        key_dim = projections["key"].out_channels
        value_dim = projections["value"].out_channels
        heads = projections["query"].out_channels // key_dim
        kv_kernel, kv_stride, kv_padding = None, 1, "symmetric"
        if getattr(attn, "key_down", None) is not None:
            down = self.conv(f"{path}.attn.key_down", attn.key_down)
            kv_kernel, kv_stride, kv_padding = down.kernel, down.stride, down.padding
        scale = getattr(block, "layer_scale", None)
        init = 0.0 if scale is None else float(getattr(scale, "init", 0.0))
        if scale is not None and not init:
            raise self.refuse(f"{path}.layer_scale", scale, "layer scale of unknown init")
        return BlockFact(
            path=path,
            kind="mqa",
            convs=(projections["query"], projections["output"]),
            se=None,
            residual=bool(block.residual),
            drop_path=float(block.drop_rate),
            layer_scale=init,
            attention=AttentionFact(
                path=f"{path}.attn",
                heads=heads,
                key_dim=key_dim,
                value_dim=value_dim,
                kv_stride=kv_stride,
                kv_kernel=kv_kernel,
                kv_padding=kv_padding,
                bn_eps=norm.bn_eps,
                bn_momentum=norm.bn_momentum,
            ),
        )

    def se(self, path: str, module: Any) -> SEFact:
        """`SqueezeExcite`, or `GlobalContext` with its `attn` conv and layer `norm`."""
        return self.squeeze(
            path,
            module,
            module.reduce,
            module.act,
            module.expand,
            module.gate,
            attn=getattr(module, "attn", None),
            norm=getattr(module, "norm", None),
        )

    def block(self, path: str, block: Any, kind_hint: str | None = None) -> BlockFact:
        """One block; `kind_hint` is the plan's kind where the module carries its plan (a
        `uir` block without its extra depthwise convs has an MBConv's layers)."""
        if getattr(block, "attn", None) is not None:
            return self.attention(path, block)
        names = ("routing", "conv", "start", "expand", "depthwise", "se", "pointwise", "project")
        parts = {
            name: getattr(block, name)
            for name in (*names, "end", "layer_scale")
            if getattr(block, name, None) is not None
            and type(getattr(block, name)).__name__ != "Identity"  # generated code's "absent"
        }
        uir = (
            kind_hint == "uir"
            or type(block).__name__ == "UniversalInvertedResidual"
            or bool({"start", "end", "layer_scale"} & set(parts))
        )
        convs = tuple(
            self.conv(f"{path}.{name}", module)
            for name, module in parts.items()
            if name not in ("se", "routing", "layer_scale")
        )
        se = self.se(f"{path}.se", parts["se"]) if "se" in parts else None
        if uir:
            roles = tuple(name for name in parts if name not in ("se", "layer_scale"))
            scale = parts.get("layer_scale")
            init = 0.0 if scale is None else float(getattr(scale, "init", 0.0))
            if scale is not None and not init:
                raise self.refuse(f"{path}.layer_scale", scale, "layer scale of unknown init")
            return BlockFact(
                path=path,
                kind="uir",
                convs=convs,
                se=se,
                residual=bool(block.residual),
                drop_path=float(block.drop_rate),
                roles=roles,
                layer_scale=init,
            )
        present = set(parts) - {"se", "routing"}
        kinds = {
            frozenset({"conv"}): "conv",
            frozenset({"depthwise", "project"}): "ds",
            frozenset({"depthwise", "pointwise"}): "ds",
            frozenset({"expand", "depthwise", "project"}): "ir",
            frozenset({"expand", "project"}): "er",
        }
        kind = kinds.get(frozenset(present))
        if kind is None:
            raise self.refuse(path, block, f"block with layers {', '.join(parts)}")
        module = getattr(block, "s2d", None)  # space-to-depth: before the block's own convs
        s2d = self.conv(f"{path}.s2d", module) if module is not None else None
        routing = parts.get("routing")
        if routing is not None and int(routing.in_features) != convs[0].in_channels:
            raise self.refuse(f"{path}.routing", routing, "routing not on the block input")
        return BlockFact(
            path=path,
            kind=kind,
            convs=convs,
            se=se,
            residual=bool(block.residual),
            drop_path=float(block.drop_rate),
            routing=0 if routing is None else int(routing.out_features),
            s2d=s2d,
        )

    def model(self, model: Any) -> ModelFacts:
        stem = self.conv("stem", model.stem)
        plan = getattr(model, "plan", None)
        kinds = [[b.kind for b in stage.blocks] for stage in plan.stages] if plan else None
        stages = tuple(
            tuple(
                self.block(f"stages.{i}.blocks.{j}", b, kinds[i][j] if kinds else None)
                for j, b in enumerate(stage.blocks)
            )
            for i, stage in enumerate(model.stages)
        )
        module = getattr(model, "head", None)
        none = module is None or type(module).__name__ == "Identity"  # `head none`
        head = None if none else self.conv("head", module)
        return ModelFacts(
            source=self.source,
            name=self.name,
            library=version(),
            resolution=_resolution(model),
            in_channels=stem.in_channels,
            stem=stem,
            stages=stages,
            head=head,
            head_style="post_pool" if head is not None and _pooled_head(model) else "conv",
            dropout=float(model.dropout.p),
            classes=int(model.classifier.out_features),
            params=parameter_count(model),
        )


def _padded(pad: Any) -> bool:
    """Whether a layer's `pad` is TF's SAME padding (a `ZeroPad2d`) rather than absent."""
    return pad is not None and type(pad).__name__ == "ZeroPad2d"


def _pooled_head(model: Any) -> bool:
    """Whether the head runs after the global pool: `effdsl.build`'s `pooled_head`, else (a
    generated class) whether the head sees a 1×1 map in a forward pass on the model's device
    (no arithmetic on the meta device)."""
    pooled = getattr(model, "pooled_head", None)
    if pooled is not None:
        return bool(pooled)
    import torch

    seen: list[tuple[int, ...]] = []
    hook = model.head.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape))
    training = model.training  # a batch norm in training refuses a batch of one 1×1 map
    try:
        size = _resolution(model)
        with torch.no_grad():
            device = next(model.parameters()).device
            model.eval()(torch.zeros(1, model.stem.conv.in_channels, size, size, device=device))
    finally:
        hook.remove()
        model.train(training)
    return tuple(seen[0][-2:]) == (1, 1)


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
