"""Regenerate the reference figures the tests compare against, from the installed libraries.

Writes, beside this file:

- `torchvision-counts.jsonl`: for each of the 13 reference networks, torchvision's resolution,
  parameter count, and the FLOPs that `torch.utils.flop_counter.FlopCounterMode` counts in one
  forward pass at batch 1 (MACs = FLOPs / 2);
- `<library>-<model>.tsv`: the (key, shape) rows of a reference model's state_dict, the layouts
  checkpoint conversion must reproduce.

Everything is built on the `meta` device (no weights, no arithmetic), so a run takes seconds.
`tests/test_reference_data.py` rebuilds the same rows and checks the stored copy still matches
the installed torchvision and timm; after upgrading either, run
`python tests/data/reference/make.py` and review the diff.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import timm
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

HERE = Path(__file__).resolve().parent

#: torchvision model name and the input resolution its weights were trained at
COUNTED: tuple[tuple[str, int], ...] = (
    ("efficientnet_b0", 224),
    ("efficientnet_b1", 240),
    ("efficientnet_b2", 260),
    ("efficientnet_b3", 300),
    ("efficientnet_b4", 380),
    ("efficientnet_b5", 456),
    ("efficientnet_b6", 528),
    ("efficientnet_b7", 600),
    ("efficientnet_v2_s", 384),
    ("efficientnet_v2_m", 480),
    ("efficientnet_v2_l", 480),
    ("mobilenet_v2", 224),
    ("mnasnet1_0", 224),
)

#: file stem → builder of the model whose state_dict layout is recorded
LAYOUTS: dict[str, Callable[[], nn.Module]] = {
    "torchvision-efficientnet_b0": lambda: torchvision.models.efficientnet_b0(),
    "torchvision-efficientnet_b3": lambda: torchvision.models.efficientnet_b3(),
    "torchvision-efficientnet_b7": lambda: torchvision.models.efficientnet_b7(),
    "torchvision-efficientnet_v2_s": lambda: torchvision.models.efficientnet_v2_s(),
    "timm-efficientnet_b0": lambda: timm.create_model("efficientnet_b0"),
    "timm-efficientnetv2_rw_s": lambda: timm.create_model("efficientnetv2_rw_s"),
    "timm-tf_efficientnetv2_s": lambda: timm.create_model("tf_efficientnetv2_s"),
}


def count(model_name: str, resolution: int) -> dict[str, int | str]:
    """One `torchvision-counts.jsonl` row: parameters and FLOPs of a forward pass at batch 1."""
    with torch.device("meta"):
        model = torchvision.models.get_model(model_name).eval()
        params = sum(p.numel() for p in model.parameters())
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, resolution, resolution))
    flops = counter.get_total_flops()
    return {
        "model": model_name,
        "res": resolution,
        "params": params,
        "flops": flops,
        "macs": flops // 2,
    }


def counts_text() -> str:
    """The whole `torchvision-counts.jsonl`, one JSON object per line."""
    return "".join(json.dumps(count(name, res)) + "\n" for name, res in COUNTED)


def layout_text(stem: str) -> str:
    """The whole `<stem>.tsv`: a header, then `key<TAB>shape` per state_dict entry."""
    with torch.device("meta"):
        state = LAYOUTS[stem]().state_dict()
    rows = ["key\tshape"]
    rows += [f"{key}\t{'x'.join(map(str, t.shape)) or 'scalar'}" for key, t in state.items()]
    return "\n".join(rows) + "\n"


def expected_files() -> dict[str, Callable[[], str]]:
    """File name → function producing its contents from the installed libraries."""
    files: dict[str, Callable[[], str]] = {"torchvision-counts.jsonl": counts_text}
    for stem in LAYOUTS:
        files[f"{stem}.tsv"] = lambda stem=stem: layout_text(stem)  # type: ignore[misc]
    return files


def main() -> None:
    for name, produce in expected_files().items():
        (HERE / name).write_text(produce())
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
