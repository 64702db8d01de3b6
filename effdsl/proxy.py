"""The built-in proxy scorer of `effdsl search`: a short training run on synthetic images.

    score = train_score(model, resolution)   # −(held-out cross-entropy) after 60 Adam steps
    effdsl search specs/b0.eff --score proxy  # the same, once per candidate

A smoke-level proxy, NOT ImageNet accuracy. The dataset is generated on the fly from a fixed
seed: oriented sinusoidal gratings, one class per orientation, each with a random colour,
frequency and phase, over Gaussian noise. The net is trained for 60 Adam steps at a
small fixed resolution (32 px by default, whatever `resolution` the candidate asks for: training
at 260 px on a CPU would take minutes per candidate) and scored by the negative cross-entropy on
held-out images, which is higher for better nets and, unlike accuracy, rarely ties. It says
"this net trains and learns something quickly"; it cannot say which net is best on real data,
and, training at a fixed size, it does not see the resolution coefficient γ at all: candidates
that differ only in γ build the same net and get the same score.

Knobs, for tests and for patience: keyword arguments, else the environment variables
`EFFDSL_PROXY_STEPS`, `EFFDSL_PROXY_RESOLUTION`, `EFFDSL_PROXY_BATCH`, else the defaults.
Imports torch (only `effdsl search --score` loads this module).
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor, nn

from effdsl.errors import EffError

STEPS = 60
IMAGE_SIZE = 32
BATCH = 16
CLASSES = 4
HELD_OUT = 128
LEARNING_RATE = 3e-3
SEED = 0
NOISE = 0.25
RECALIBRATION = 4  # batches of training images that re-estimate batch-norm statistics


def _knob(value: int | None, variable: str, default: int, low: int, high: int) -> int:
    """A keyword argument, else the environment variable, else the default; within bounds."""
    if value is None:
        text = os.environ.get(variable)
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            raise EffError(f"{variable}={text!r} is not an integer") from None
    if not low <= value <= high:
        raise EffError(f"the proxy's {variable.removeprefix('EFFDSL_PROXY_').lower()} must be "
                       f"in [{low}, {high}], got {value}")
    return value


def synthetic_images(
    count: int, size: int, channels: int, classes: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """`count` noisy coloured gratings of `size`² pixels; the label is the grating's orientation.

    Orientation k of `classes` is the angle k·π/classes; colour (one amplitude per channel),
    spatial frequency (1.5–4 cycles per image) and phase are random, so only the orientation
    tells the classes apart.
    """
    labels = torch.randint(0, classes, (count,), generator=generator)
    angle = labels.float() * (math.pi / classes)  # N
    cycles = 1.5 + 2.5 * torch.rand(count, generator=generator)  # N
    phase = 2 * math.pi * torch.rand(count, generator=generator)  # N
    colour = 0.5 + 0.5 * torch.rand(count, channels, generator=generator)  # N, C
    colour = colour * torch.where(torch.rand(count, channels, generator=generator) < 0.5, -1, 1)
    axis = torch.linspace(-0.5, 0.5, size)
    y, x = torch.meshgrid(axis, axis, indexing="ij")  # H, W
    along = x * angle.cos()[:, None, None] + y * angle.sin()[:, None, None]  # N, H, W
    wave = torch.sin(2 * math.pi * cycles[:, None, None] * along + phase[:, None, None])
    images = colour[:, :, None, None] * wave[:, None]  # N, C, H, W
    images = images + NOISE * torch.randn(images.shape, generator=generator)
    return images, labels


def _in_channels(model: nn.Module) -> int:
    """The input channels of an effdsl model (its plan says), else RGB."""
    plan = getattr(model, "plan", None)
    return int(getattr(plan, "in_channels", 3))


def train_score(
    model: nn.Module,
    resolution: int,
    *,
    steps: int | None = None,
    image_size: int | None = None,
    batch: int | None = None,
    seed: int = SEED,
) -> float:
    """Train `model` briefly on synthetic gratings; return −(held-out cross-entropy).

    `resolution` is the candidate's input size; the proxy trains at `image_size` instead (see the
    module docstring). The first `CLASSES` logits serve as the classes, so any classifier width
    of at least 2 works. The model is trained in place.
    """
    del resolution  # deliberately unused: the proxy trains at a small fixed size
    steps = _knob(steps, "EFFDSL_PROXY_STEPS", STEPS, 1, 100_000)
    size = _knob(image_size, "EFFDSL_PROXY_RESOLUTION", IMAGE_SIZE, 8, 1024)
    batch = _knob(batch, "EFFDSL_PROXY_BATCH", BATCH, 2, 4096)
    generator = torch.Generator().manual_seed(seed)
    channels = _in_channels(model)
    train_x, train_y = synthetic_images(steps * batch, size, channels, CLASSES, generator)
    test_x, test_y = synthetic_images(HELD_OUT, size, channels, CLASSES, generator)
    torch.manual_seed(seed)  # dropout and drop-path masks
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    model.train()
    for step in range(steps):
        x = train_x[step * batch : (step + 1) * batch]  # B, C, size, size
        y = train_y[step * batch : (step + 1) * batch]  # B
        loss = _loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    recalibrate_batch_norm(model, train_x[-RECALIBRATION * batch :])
    model.eval()
    with torch.no_grad():
        held_out = _loss(model(test_x), test_y)
    return -float(held_out)


def recalibrate_batch_norm(model: nn.Module, images: Tensor) -> None:
    """Re-estimate every batch norm's running statistics on `images` with the final weights.

    After a few dozen steps the running averages (momentum 0.1) still mix in the first steps'
    statistics, and an eval-mode net scores at chance however well it trained; averaging fresh
    statistics ("precise BN") fixes that. Dropout and drop-path stay off meanwhile.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.eval()
    momenta = []
    for norm in norms:
        norm.reset_running_stats()
        momenta.append(norm.momentum)
        norm.momentum = None  # a cumulative average over the batches below
        norm.train()
    with torch.no_grad():
        model(images)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum


def _loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy over the first `CLASSES` logits."""
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise EffError(
            f"the proxy needs a classifier with at least 2 outputs, got logits of shape "
            f"{tuple(logits.shape)}"
        )
    return nn.functional.cross_entropy(logits[:, :CLASSES], labels)
