"""effdsl: a declarative architecture language for EfficientNet-family networks.

    net = effdsl.load("specs/b0.eff")             # text → typed AST
    b3 = effdsl.scale(net, preset="b3")           # compound scaling, a pure AST transform
    plan = effdsl.lower(b3)                       # concrete layers: the one source of truth
    effdsl.check_text(text)                       # every error and warning, as a list
    effdsl.cost(plan).params                      # 12,233,232, no torch needed
    model = effdsl.build(b3)                      # torch.nn.Module (imports torch lazily)

Only the PyTorch backend imports torch, and only when it is used; rendering runs graphviz's
`dot` only when asked for SVG, PNG or PDF.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from effdsl.ast import Network
from effdsl.check import check_text
from effdsl.cost import CostReport, cost
from effdsl.errors import EffError, EffErrors, EffWarning
from effdsl.fmt import format
from effdsl.parser import load, parse
from effdsl.plan import Plan, lower
from effdsl.render import render, to_dot  # eager: the function `render` shadows its module
from effdsl.scaling import Multipliers, multipliers, scale
from effdsl.version import __version__

# Names served lazily, so that `import effdsl` never imports torch or graphviz.
_LAZY = {
    "build": "effdsl.torch_build",
    "optimize_for_inference": "effdsl.torch_build",
    "convert_state_dict": "effdsl.convert",
    "to_python": "effdsl.codegen",
    "import_model": "effdsl.importers",
    "import_family": "effdsl.importers",
}

if TYPE_CHECKING:
    from effdsl.codegen import to_python
    from effdsl.convert import convert_state_dict
    from effdsl.importers import import_family, import_model
    from effdsl.torch_build import build, optimize_for_inference


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'effdsl' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "CostReport",
    "EffError",
    "EffErrors",
    "EffWarning",
    "Multipliers",
    "Network",
    "Plan",
    "__version__",
    "build",
    "check_text",
    "convert_state_dict",
    "cost",
    "format",
    "import_family",
    "import_model",
    "load",
    "lower",
    "multipliers",
    "optimize_for_inference",
    "parse",
    "render",
    "scale",
    "to_dot",
    "to_python",
]
