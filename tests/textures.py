"""A synthetic image-folder data set for the `--data` scorer's tests: three texture classes.

    make_textures(tmp_path / "textures", per_class=40)   # textures/CLASS/NNN.png

Horizontal stripes, vertical stripes and checks, 32 px, each image with a random period
(4–8 px), phase, contrast and colour, over noise. Colour and brightness say nothing about the
class, only the pattern's orientation does, so a net must see the structure — and a net that
looks at the images at a few pixels cannot (the stripes blur into grey).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("checks", "horizontal", "vertical")


def texture(kind: str, size: int, rng: random.Random) -> Image.Image:
    period = rng.uniform(4, 8)
    phase_x, phase_y = rng.uniform(0, period), rng.uniform(0, period)
    axis = np.arange(size, dtype=np.float64)
    x = np.sin(2 * np.pi * (axis[None, :] + phase_x) / period)  # 1, W
    y = np.sin(2 * np.pi * (axis[:, None] + phase_y) / period)  # H, 1
    pattern = {"horizontal": y + 0 * x, "vertical": x + 0 * y, "checks": np.sign(x * y)}[kind]
    colour = np.array([rng.uniform(0.3, 1.0) for _ in range(3)])
    contrast = rng.uniform(0.25, 0.45)
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 0.08, (size, size, 3))
    pixels = 0.5 + contrast * pattern[:, :, None] * colour[None, None, :] + noise
    return Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8))


def make_textures(root: Path, per_class: int = 40, size: int = 32, seed: int = 0,
                  val_per_class: int = 0) -> Path:
    """Write the data set under `root` (with train/ and val/ when `val_per_class` > 0)."""
    rng = random.Random(seed)
    splits = {"": per_class} if val_per_class == 0 else {"train": per_class, "val": val_per_class}
    for split, count in splits.items():
        for kind in CLASSES:
            folder = root / split / kind if split else root / kind
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                texture(kind, size, rng).save(folder / f"{index:03d}.png")
    return root
