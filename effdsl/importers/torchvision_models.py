"""Read a torchvision mobile network (EfficientNet, EfficientNetV2, MobileNetV2/V3, MnasNet)
into `ModelFacts`.

torchvision lays these models out differently from each other: EfficientNet's `features` holds
the stem, one `Sequential` per stage and the head conv; MobileNetV2/V3's `features` is a flat
list of blocks (a stage is a run of blocks with one output width after a stride);
MnasNet's `layers` is a flat `Sequential` of convs, norms and activations with one
`Sequential` stack per stage. Each is read into the same facts.
"""

from __future__ import annotations

from collections.abc import Sequence
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

#: The names this reader imports: torchvision's builders of these prefixes.
PREFIXES = ("efficientnet_", "mobilenet_v2", "mobilenet_v3_", "mnasnet")


def names() -> list[str]:
    from torchvision import models

    return sorted(name for name in models.list_models() if name.startswith(PREFIXES))


def version() -> str:
    import torchvision

    return f"torchvision {torchvision.__version__.split('+')[0]}"


def create(name: str) -> Any:
    """The model `name` on the meta device, without weights."""
    import torch
    from torchvision import models

    with torch.device("meta"):
        return models.get_model(name, weights=None)


def resolution(name: str) -> int:
    """The crop size of the model's default weights' transforms (no download), else 224."""
    from torchvision import models

    try:
        weights = models.get_model_weights(name).DEFAULT
        return int(weights.transforms.keywords["crop_size"])
    except (AttributeError, KeyError, ValueError):
        return 224


class TorchvisionReader(Reader):
    def __init__(self, name: str) -> None:
        super().__init__(f"torchvision:{name}")
        self.name = name

    # ---- shared pieces ------------------------------------------------------------------

    def cna(self, path: str, module: Any) -> ConvFact:
        """`Conv2dNormActivation`: `0` conv, `1` norm, `2` activation (absent for projections)."""
        if type(module).__name__ != "Conv2dNormActivation":
            raise self.refuse(path, module, "expected a conv-norm-activation layer")
        children = list(module)
        act = children[2] if len(children) > 2 else None
        return self.conv(f"{path}.0", children[0], children[1], act)

    def se(self, path: str, module: Any) -> SEFact:
        act = self.activation(f"{path}.activation", module.activation)
        gate = self.activation(f"{path}.scale_activation", module.scale_activation)
        if act is None or gate is None:
            raise self.refuse(path, module, "squeeze-and-excitation without an activation or gate")
        return SEFact(
            path=path,
            channels=int(module.fc1.in_channels),
            squeeze=int(module.fc1.out_channels),
            act=act,
            gate=gate,
        )

    def layers(
        self, path: str, modules: Sequence[Any]
    ) -> tuple[tuple[ConvFact, ...], SEFact | None]:
        """A block's `block` Sequential: conv-norm-act layers and at most one SE, in order."""
        convs: list[ConvFact] = []
        se: SEFact | None = None
        for k, module in enumerate(modules):
            if type(module).__name__ == "SqueezeExcitation":
                se = self.se(f"{path}.{k}", module)
            else:
                convs.append(self.cna(f"{path}.{k}", module))
        return tuple(convs), se

    def block(
        self,
        path: str,
        convs: tuple[ConvFact, ...],
        se: SEFact | None,
        residual: bool,
        drop: float,
        fused: bool = False,
    ) -> BlockFact:
        """Name the block's structure from its convs, as the composer expects."""
        if len(convs) == 1:
            kind = "conv"
        elif len(convs) == 2 and convs[0].depthwise:
            kind = "ds"
        elif len(convs) == 2:
            kind = "er"
        elif len(convs) == 3 and convs[1].depthwise:
            kind = "ir"
        else:
            raise self.refuse(path, None, f"block of {len(convs)} convolutions")
        return BlockFact(
            path=path,
            kind=kind,
            convs=convs,
            se=se,
            residual=residual,
            drop_path=drop,
            fused=fused if kind == "conv" else None,
        )

    @staticmethod
    def split(blocks: Sequence[BlockFact]) -> tuple[tuple[BlockFact, ...], ...]:
        """Stages of a flat block list: a new stage at each stride or change of width."""
        stages: list[list[BlockFact]] = []
        for block in blocks:
            if not stages or block.stride > 1 or block.out_channels != stages[-1][-1].out_channels:
                stages.append([])
            stages[-1].append(block)
        return tuple(tuple(stage) for stage in stages)

    def facts(
        self,
        model: Any,
        stem: ConvFact,
        stages: Any,
        head: ConvFact | None,
        head_style: str,
        dropout: float,
        classifier: Any,
        path: str,
    ) -> ModelFacts:
        if type(classifier).__name__ != "Linear":
            raise self.refuse(path, classifier, "classifier that is not one linear layer")
        return ModelFacts(
            source=self.source,
            name=self.name,
            library=version(),
            resolution=resolution(self.name),
            in_channels=stem.in_channels,
            stem=stem,
            stages=stages,
            head=head,
            head_style=head_style,
            dropout=dropout,
            classes=int(classifier.out_features),
            params=parameter_count(model),
        )

    # ---- the model families -------------------------------------------------------------

    def model(self, model: Any) -> ModelFacts:
        kind = type(model).__name__
        if kind == "EfficientNet":
            return self.efficientnet(model)
        if kind == "MobileNetV2":
            return self.mobilenet(model, "conv")
        if kind == "MobileNetV3":
            return self.mobilenet(model, "post_pool")
        if kind == "MNASNet":
            return self.mnasnet(model)
        raise self.refuse("", model, f"model class {kind}")

    def _dropout(self, path: str, module: Any) -> float:
        if type(module).__name__ != "Dropout":
            raise self.refuse(path, module, "expected dropout before the classifier")
        return float(module.p)

    def efficientnet(self, model: Any) -> ModelFacts:
        features = list(model.features)
        stem = self.cna("features.0", features[0])
        stages = []
        for i, stage in enumerate(features[1:-1], start=1):
            blocks = []
            for j, block in enumerate(stage):
                path = f"features.{i}.{j}"
                convs, se = self.layers(f"{path}.block", list(block.block))
                drop = float(block.stochastic_depth.p)
                fused = type(block).__name__ == "FusedMBConv"
                blocks.append(
                    self.block(path, convs, se, bool(block.use_res_connect), drop, fused)
                )
            stages.append(tuple(blocks))
        last = len(features) - 1
        head = self.cna(f"features.{last}", features[-1])
        dropout = self._dropout("classifier.0", model.classifier[0])
        return self.facts(
            model, stem, tuple(stages), head, "conv", dropout, model.classifier[1], "classifier.1"
        )

    def mobilenet(self, model: Any, head_style: str) -> ModelFacts:
        features = list(model.features)
        stem = self.cna("features.0", features[0])
        blocks = []
        for i, block in enumerate(features[1:-1], start=1):
            path = f"features.{i}"
            if head_style == "conv":  # MobileNetV2: `conv` holds CNA layers, then conv and BN
                *cnas, project, norm = list(block.conv)
                convs = tuple(self.cna(f"{path}.conv.{k}", m) for k, m in enumerate(cnas))
                k = len(cnas)
                convs += (self.conv(f"{path}.conv.{k}", project, norm),)
                se = None
            else:
                convs, se = self.layers(f"{path}.block", list(block.block))
            blocks.append(self.block(path, convs, se, bool(block.use_res_connect), 0.0))
        last = len(features) - 1
        final = self.cna(f"features.{last}", features[-1])
        classifier = list(model.classifier)
        if head_style == "conv":
            dropout = self._dropout("classifier.0", classifier[0])
            return self.facts(
                model,
                stem,
                self.split(blocks),
                final,
                "conv",
                dropout,
                classifier[1],
                "classifier.1",
            )
        # MobileNetV3: the last 1×1 conv-BN-act is a stage of its own; after the pool, a
        # linear layer and an activation are the head, then dropout and the classifier
        lone = self.block(f"features.{last}", (final,), None, False, 0.0)
        hidden = classifier[0]
        head = ConvFact(
            path="classifier.0",
            in_channels=int(hidden.in_features),
            out_channels=int(hidden.out_features),
            kernel=1,
            stride=1,
            groups=1,
            padding="symmetric",
            bias=hidden.bias is not None,
            norm=None,
            bn_eps=1e-5,
            bn_momentum=0.1,
            act=self.activation("classifier.1", classifier[1]),
        )
        dropout = self._dropout("classifier.2", classifier[2])
        stages = (*self.split(blocks), (lone,))
        return self.facts(
            model, stem, stages, head, "post_pool", dropout, classifier[3], "classifier.3"
        )

    def mnasnet(self, model: Any) -> ModelFacts:
        layers = list(model.layers)
        stem = self.conv("layers.0", layers[0], layers[1], layers[2])
        separable = self.block(
            "layers.3",
            (
                self.conv("layers.3", layers[3], layers[4], layers[5]),
                self.conv("layers.6", layers[6], layers[7]),
            ),
            None,
            False,
            0.0,
        )
        stages: list[tuple[BlockFact, ...]] = [(separable,)]
        for i in range(8, 14):
            blocks = []
            for j, block in enumerate(layers[i]):
                path = f"layers.{i}.{j}"
                inner = list(block.layers)
                convs = (
                    self.conv(f"{path}.layers.0", inner[0], inner[1], inner[2]),
                    self.conv(f"{path}.layers.3", inner[3], inner[4], inner[5]),
                    self.conv(f"{path}.layers.6", inner[6], inner[7]),
                )
                blocks.append(self.block(path, convs, None, bool(block.apply_residual), 0.0))
            stages.append(tuple(blocks))
        head = self.conv("layers.14", layers[14], layers[15], layers[16])
        dropout = self._dropout("classifier.0", model.classifier[0])
        return self.facts(
            model, stem, tuple(stages), head, "conv", dropout, model.classifier[1], "classifier.1"
        )


def read(name: str) -> ModelFacts:
    try:
        model = create(name)
    except Exception as error:  # torchvision raises plain exceptions for what it cannot build
        raise ImportRefused(
            f"torchvision:{name}: torchvision could not build it: {error}"
        ) from None
    return TorchvisionReader(name).model(model)
