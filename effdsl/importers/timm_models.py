"""Read a timm model of the EfficientNet builder (`efficientnet.py`, `mobilenetv3.py`,
HardCoReNAS) into `ModelFacts`.

timm builds every such model from block strings (`ir_r2_k3_s2_e6_c24_se0.25`) into a handful of
block classes: `ConvBnAct` (cn), `DepthwiseSeparableConv` (ds, dsa), `InvertedResidual` (ir),
`EdgeResidual` (er), plus `CondConvResidual`, `UniversalInvertedResidual` and `MobileAttention`.
`model.blocks` holds one `Sequential` per stage, so the model's stages are read as they are.
Every submodule a block has is read or refused: an anti-aliasing layer or a layer scale that
the reader does not know is a refusal naming its path, never ignored. A space-to-depth conv
(`conv_s2d`, `bn_s2d`: EfficientNet-X) is read where timm builds one, in `ds` and `ir` blocks.
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

#: timm's modules whose models use the EfficientNet builder.
MODULES = ("efficientnet", "mobilenetv3", "hardcorenas")

#: Block classes that need language features the reader cannot express, by timm class name.
_UNSUPPORTED_BLOCKS: dict[str, str] = {}


def names() -> list[str]:
    """Every model name of timm's EfficientNet builder, sorted."""
    import timm

    return sorted(timm.list_models(module=list(MODULES)))


def version() -> str:
    import timm

    return f"timm {timm.__version__}"


def create(name: str) -> Any:
    """The model `name`, instantiated on the meta device: no weights, nothing downloaded."""
    import timm
    import torch

    with torch.device("meta"):
        return timm.create_model(name, pretrained=False)


class TimmReader(Reader):
    def __init__(self, name: str) -> None:
        super().__init__(f"timm:{name}")
        self.name = name

    def model(self, model: Any) -> ModelFacts:
        kind = type(model).__name__
        if kind not in ("EfficientNet", "MobileNetV3"):
            raise self.refuse(
                "", model, f"model class {kind} is not built by the EfficientNet builder"
            )
        stem = self.conv("conv_stem", model.conv_stem, model.bn1)
        stages = tuple(
            tuple(self.block(f"blocks.{i}.{j}", block) for j, block in enumerate(stage))
            for i, stage in enumerate(model.blocks)
        )
        head: ConvFact | None
        if kind == "EfficientNet":
            head_style = "conv"
            head = (
                None
                if type(model.conv_head).__name__ == "Identity"
                else self.conv("conv_head", model.conv_head, model.bn2)
            )
        else:
            head_style = "post_pool"
            head = (
                None
                if type(model.conv_head).__name__ == "Identity"
                else self.conv("conv_head", model.conv_head, model.norm_head, model.act2)
            )
        pool = model.global_pool
        if getattr(pool, "pool_type", "avg") != "avg":
            raise self.refuse("global_pool", pool, f"global pool `{pool.pool_type}`")
        classifier = model.classifier
        if type(classifier).__name__ != "Linear":
            raise self.refuse("classifier", classifier, "classifier that is not one linear layer")
        size = model.pretrained_cfg.get("input_size", (3, 224, 224))
        return ModelFacts(
            source=self.source,
            name=self.name,
            library=version(),
            resolution=int(size[-1]),
            in_channels=int(model.conv_stem.in_channels),
            stem=stem,
            stages=stages,
            head=head,
            head_style=head_style,
            dropout=float(model.drop_rate),
            classes=int(classifier.out_features),
            params=parameter_count(model),
        )

    def _anti_aliased(
        self, path: str, block: Any, kind: str, convs: tuple[ConvFact, ...]
    ) -> tuple[ConvFact, ...]:
        """The block's convs with its `aa` pool (anti-aliased downsampling) after the conv
        timm runs it after: a ConvBnAct's conv, the depthwise conv of a depthwise-separable
        block or an inverted residual, an EdgeResidual's k×k expansion."""
        pool = getattr(block, "aa", None)
        if pool is None or type(pool).__name__ == "Identity":
            return convs
        if kind == "CondConvResidual":  # its forward never calls `self.aa`
            raise self.refuse(f"{path}.aa", pool, "anti-aliasing that timm's CondConv skips")
        at = 1 if kind in ("InvertedResidual",) else 0
        pooled = self.downsampled(convs[at], f"{path}.aa", pool)
        return (*convs[:at], pooled, *convs[at + 1 :])

    def _absent(self, path: str, block: Any, *names: str) -> None:
        """Refuse optional parts a block may carry that the reader does not translate."""
        features = {
            "conv_s2d": "space-to-depth",
            "layer_scale": "layer scale",
        }
        for name in names:
            part = getattr(block, name, None)
            if part is not None and type(part).__name__ != "Identity":
                raise self.refuse(f"{path}.{name}", part, features[name])

    def layer(self, path: str, conv: Any, norm: Any) -> ConvFact:
        """A block's conv: a `Conv2d`, a `MixedConv2d` (one conv per channel slice, children
        `0`, `1`, ...) or a `CondConv2d`, with its norm-and-activation."""
        kind = type(conv).__name__
        if kind == "MixedConv2d":
            return self.mixed(path, [(child, None) for child in conv.values()], norm)
        if kind == "CondConv2d":
            return self.condconv(path, conv, norm)
        return self.conv(path, conv, norm)

    def uir(self, path: str, block: Any) -> BlockFact:
        """MobileNetV4's block: `dw_start`, `pw_exp`, `dw_mid`, `se`, `pw_proj`, `dw_end`
        (each a `ConvNormAct` or the identity), `layer_scale`."""
        parts = (
            ("start", "dw_start"),
            ("expand", "pw_exp"),
            ("depthwise", "dw_mid"),
            ("project", "pw_proj"),
            ("end", "dw_end"),
        )
        roles, convs = [], []
        for role, name in parts:
            module = getattr(block, name)
            if type(module).__name__ == "Identity":
                continue
            if type(module).__name__ != "ConvNormAct":
                raise self.refuse(f"{path}.{name}", module, "a UIR layer of another layout")
            roles.append(role)
            conv = self.conv(f"{path}.{name}.conv", module.conv, module.bn)
            convs.append(self.downsampled(conv, f"{path}.{name}.aa", getattr(module, "aa", None)))
        scale = block.layer_scale
        layer_scale = 0.0
        if type(scale).__name__ != "Identity":
            layer_scale = float(getattr(scale, "init_values", 0.0))
            if not layer_scale:
                raise self.refuse(f"{path}.layer_scale", scale, "layer scale of unknown init")
        drop = block.drop_path
        return BlockFact(
            path=path,
            kind="uir",
            convs=tuple(convs),
            se=self.se(f"{path}.se", block.se),
            residual=bool(block.has_skip),
            drop_path=0.0 if type(drop).__name__ == "Identity" else float(drop.drop_prob),
            roles=tuple(roles),
            layer_scale=layer_scale,
        )

    def attention(self, path: str, block: Any) -> BlockFact:
        """MobileNetV4's attention block: `norm`, `attn` (`MultiQueryAttention2d`: `query`,
        `key`, `value`, `output`, each a `Sequential` ending in its 1×1 `proj`; the key's and
        value's `down_conv` and `norm` where they are downsampled), `layer_scale`."""
        attn = block.attn
        if type(attn).__name__ != "MultiQueryAttention2d":
            raise self.refuse(f"{path}.attn", attn, "attention other than multi-query (MHA)")
        channels = int(block.norm.num_features)
        shape = ConvShape(channels, channels, 1, 1, 1)  # the norm read as a 1×1 conv's
        norm = self.conv(f"{path}.norm", shape, block.norm, padding="symmetric")
        if norm.norm != "batch" or norm.act is not None:
            raise self.refuse(f"{path}.norm", block.norm, "attention block without batch norm")
        layers = {}
        for name in ("query", "key", "value", "output"):
            part = getattr(attn, name)
            children = dict(part.named_children())
            allowed = {"proj", "drop"}
            if name in ("key", "value"):
                allowed |= {"down_conv", "norm"}
            if set(children) - allowed:
                raise self.refuse(f"{path}.attn.{name}", part, "attention with query pooling")
            layers[name] = self.conv(f"{path}.attn.{name}.proj", children["proj"])
        downs = [getattr(attn, name).named_children() for name in ("key", "value")]
        kv = [dict(children).get("down_conv") for children in downs]
        kv_kernel, kv_stride, kv_padding = None, 1, "symmetric"
        if kv[0] is not None:
            facts = [
                self.conv(f"{path}.attn.{name}.down_conv", conv, getattr(attn, name).norm)
                for name, conv in zip(("key", "value"), kv, strict=True)
            ]
            if any(not fact.depthwise or fact.act is not None for fact in facts) or (
                facts[0].kernel,
                facts[0].stride,
                facts[0].padding,
            ) != (facts[1].kernel, facts[1].stride, facts[1].padding):
                raise self.refuse(f"{path}.attn", attn, "keys and values downsampled unlike")
            kv_kernel, kv_stride, kv_padding = facts[0].kernel, facts[0].stride, facts[0].padding
        heads = int(attn.num_heads)
        key_dim, value_dim = int(attn.key_dim), int(attn.value_dim)
        shapes = (
            layers["query"].out_channels,
            layers["key"].out_channels,
            layers["value"].out_channels,
            layers["output"].in_channels,
        )
        if shapes != (heads * key_dim, key_dim, value_dim, heads * value_dim):
            raise self.refuse(f"{path}.attn", attn, "attention of another layout")
        scale = block.layer_scale
        layer_scale = 0.0
        if type(scale).__name__ != "Identity":
            layer_scale = float(getattr(scale, "init_values", 0.0))
        drop = block.drop_path
        return BlockFact(
            path=path,
            kind="mqa",
            convs=(layers["query"], layers["output"]),
            se=None,
            residual=bool(block.has_skip),
            drop_path=0.0 if type(drop).__name__ == "Identity" else float(drop.drop_prob),
            layer_scale=layer_scale,
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

    def se(self, path: str, se: Any) -> SEFact | None:
        if type(se).__name__ == "Identity":
            return None
        if type(se).__name__ == "GlobalContext":
            return self.global_context(path, se)
        if type(se).__name__ != "SqueezeExcite":
            raise self.refuse(path, se, "attention module in place of squeeze-and-excitation")
        if self.activation(f"{path}.act1", se.act1) is None:
            raise self.refuse(path, se, "squeeze-and-excitation without an activation or gate")
        return self.squeeze(path, se, se.conv_reduce, se.act1, se.conv_expand, se.gate)

    def global_context(self, path: str, gc: Any) -> SEFact:
        """timm's `GlobalContext` as the language has it: attention pooling (`use_attn`) and
        the gating MLP (`fuse_scale`), without the added one (`fuse_add`, GCNet's own fusion)."""
        if gc.conv_attn is None or gc.mlp_scale is None or gc.mlp_add is not None:
            raise self.refuse(
                path, gc, "global context without attention pooling, or fused by addition"
            )
        mlp = gc.mlp_scale
        if type(mlp.drop).__name__ != "Identity" and float(getattr(mlp.drop, "p", 0.0)):
            raise self.refuse(f"{path}.mlp_scale.drop", mlp.drop, "dropout in global context")
        if self.activation(f"{path}.mlp_scale.act", mlp.act) is None:
            raise self.refuse(path, gc, "global context without an activation")
        return self.squeeze(
            path, gc, mlp.fc1, mlp.act, mlp.fc2, gc.gate, attn=gc.conv_attn, norm=mlp.norm
        )

    def block(self, path: str, block: Any) -> BlockFact:
        kind = type(block).__name__
        if kind in _UNSUPPORTED_BLOCKS:
            raise self.refuse(path, block, _UNSUPPORTED_BLOCKS[kind])
        if kind == "UniversalInvertedResidual":
            return self.uir(path, block)
        if kind == "MobileAttention":
            return self.attention(path, block)
        self._absent(path, block, "layer_scale")
        s2d: ConvFact | None = None
        if kind in ("DepthwiseSeparableConv", "InvertedResidual"):
            if getattr(block, "conv_s2d", None) is not None:
                s2d = self.conv(f"{path}.conv_s2d", block.conv_s2d, block.bn_s2d)
        else:
            self._absent(path, block, "conv_s2d")
        se: SEFact | None = None
        convs: tuple[ConvFact, ...]
        if kind == "ConvBnAct":
            fact_kind = "conv"
            convs = (self.conv(f"{path}.conv", block.conv, block.bn1),)
        elif kind == "DepthwiseSeparableConv":
            fact_kind = "ds"
            convs = (
                self.layer(f"{path}.conv_dw", block.conv_dw, block.bn1),
                self.layer(f"{path}.conv_pw", block.conv_pw, block.bn2),
            )
            se = self.se(f"{path}.se", block.se)
        elif kind in ("InvertedResidual", "CondConvResidual"):
            fact_kind = "ir"
            convs = (
                self.layer(f"{path}.conv_pw", block.conv_pw, block.bn1),
                self.layer(f"{path}.conv_dw", block.conv_dw, block.bn2),
                self.layer(f"{path}.conv_pwl", block.conv_pwl, block.bn3),
            )
            se = self.se(f"{path}.se", block.se)
        elif kind == "EdgeResidual":
            fact_kind = "er"
            convs = (
                self.layer(f"{path}.conv_exp", block.conv_exp, block.bn1),
                self.layer(f"{path}.conv_pwl", block.conv_pwl, block.bn2),
            )
            se = self.se(f"{path}.se", block.se)
        else:
            raise self.refuse(path, block, "block class not in the EfficientNet builder")
        convs = self._anti_aliased(path, block, kind, convs)
        drop = block.drop_path
        rate = 0.0 if type(drop).__name__ == "Identity" else float(drop.drop_prob)
        routing = 0
        if kind == "CondConvResidual":
            routing_fn = block.routing_fn
            if int(routing_fn.in_features) != convs[0].in_channels:
                raise self.refuse(
                    f"{path}.routing_fn", routing_fn, "routing not on the block input"
                )
            routing = int(routing_fn.out_features)
        return BlockFact(
            path=path,
            kind=fact_kind,
            convs=convs,
            se=se,
            residual=bool(block.has_skip),
            drop_path=rate,
            routing=routing,
            fused=False if fact_kind == "conv" else None,
            s2d=s2d,
        )


def read(name: str) -> ModelFacts:
    """The facts of timm's model `name` (instantiated on the meta device)."""
    try:
        model = create(name)
    except ImportRefused:
        raise
    except Exception as error:  # timm raises plain exceptions for models it cannot build
        raise ImportRefused(f"timm:{name}: timm could not build it: {error}") from None
    return TimmReader(name).model(model)
