"""`effdsl import`: a timm or torchvision mobile CNN, or a module effdsl built, as a `.eff` spec.

    net = import_model("timm:mobilenetv2_100")          # ast.Network; effdsl.format(net) prints it
    net = import_model("torchvision:efficientnet_b0")
    net = import_model(effdsl.build(spec))               # a live module effdsl built
    family = import_family("timm:efficientnet_b[0-3]")   # one spec, one preset per variant

The model is instantiated on the `meta` device (no weights, no download; torch, timm and
torchvision are imported only here), a reader records what its modules are
(`effdsl.importers.facts`), and `effdsl.importers.compose` writes the spec a person would write
or refuses in one line naming the model, the module path and the missing feature. Every spec
written is compiled back and its parameter count checked against the model's.
"""

from __future__ import annotations

import difflib
from typing import Any

from effdsl import ast
from effdsl.cost import cost
from effdsl.errors import ImportRefused
from effdsl.importers.compose import compose
from effdsl.importers.facts import ModelFacts
from effdsl.importers.family import Family, import_family
from effdsl.plan import lower

#: The libraries a `SOURCE:NAME` may name.
LIBRARIES = ("timm", "torchvision")


def available(library: str) -> list[str]:
    """Every model name the importer knows in `library` (imported or refused alike)."""
    if library == "timm":
        from effdsl.importers import timm_models

        return timm_models.names()
    if library == "torchvision":
        from effdsl.importers import torchvision_models

        return torchvision_models.names()
    raise ImportRefused(
        f"unknown library `{library}`", hint=f"use one of {', '.join(LIBRARIES)}: timm:NAME"
    )


def split_source(source: str) -> tuple[str, str]:
    """`timm:NAME` → ("timm", "NAME"), checking the library and the name exist."""
    library, colon, name = source.partition(":")
    if not colon or not name:
        raise ImportRefused(
            f"`{source}` is not SOURCE:NAME", hint="for example timm:mobilenetv3_large_100"
        )
    known = available(library)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else f"`effdsl import --list {library}`"
        raise ImportRefused(f"{library} has no mobile CNN `{name}`", hint=hint)
    return library, name


def read(source: str | Any) -> ModelFacts:
    """The facts of `source`: `timm:NAME`, `torchvision:NAME` or a module effdsl built."""
    if not isinstance(source, str):
        from effdsl.importers import effdsl_modules

        return effdsl_modules.read(source)
    library, name = split_source(source)
    if library == "timm":
        from effdsl.importers import timm_models

        return timm_models.read(name)
    from effdsl.importers import torchvision_models

    return torchvision_models.read(name)


def header(facts: ModelFacts) -> tuple[str, ...]:
    """The comment a written spec starts with: what it was imported from, and its size."""
    return (
        f"{facts.source}, imported from {facts.library} by `effdsl import`.",
        f"{facts.params:,} parameters, equal to the model's.",
    )


def import_model(source: str | Any) -> ast.Network:
    """The spec of `source` (`timm:NAME`, `torchvision:NAME`, or an effdsl-built module).

    Raises `ImportRefused` (one line) for unknown names, with close names as a hint, and for
    models that use something the language cannot say.
    """
    facts = read(source)
    network = compose(facts)
    params = cost(lower(network)).params
    if params != facts.params:  # a reader or composer bug: never hand out an approximation
        raise ImportRefused(
            f"{facts.source}: the spec written has {params:,} parameters where the model has "
            f"{facts.params:,}; refusing an approximate spec"
        )
    return network.model_copy(update={"comments": tuple(f"# {line}" for line in header(facts))})


__all__ = ["LIBRARIES", "Family", "available", "import_family", "import_model", "read"]
