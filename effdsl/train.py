"""The `--data DIR` scorer: train a candidate on an image-folder data set, score its val top-1.

    recipe = Recipe(epochs=5, batch=64)
    data = ImageData.open("textures/", recipe)             # train/val split, given or seeded
    top1 = train_score(scaled_network, data, recipe)       # 0.0 … 1.0, higher is better

The data set is torchvision's `ImageFolder` layout: `DIR/train/CLASS/*.png` and `DIR/val/CLASS/…`
(or `DIR/validation/`), or just `DIR/CLASS/…`, split here into train and validation per class
with a fixed seed (`val_fraction` of each class). The candidate is built by effdsl at its own
scaled resolution with as many outputs as the data set has classes, and trained with the
recipe below — the paper's ingredients at small scale:

- optimizer: SGD with Nesterov momentum 0.9 (default) or RMSprop (decay 0.9, momentum 0.9,
  ε = 10⁻³, the paper's), weight decay 10⁻⁵; learning rate `lr` (default 0.1 · batch/256 for
  SGD, 0.016 · batch/256 for RMSprop: the paper's 0.256 at 4096), cosine decay to 0 over every
  step with a one-epoch linear warm-up;
- loss: cross-entropy with label smoothing 0.1;
- regularisation: the network's own dropout and drop-path (from the spec), random resized
  crops (scale 0.35–1) and horizontal flips;
- evaluation: resize to resolution/0.875 and centre-crop, batch-norm statistics re-estimated
  on training images first ("precise BN": after a few hundred steps the running averages still
  remember the first ones), top-1 accuracy on the validation split after the last epoch.

On a GPU it trains in channels_last with bfloat16 autocast (float16 with a grad scaler where
bfloat16 is not supported). Model weights, data order and augmentations follow fixed seeds, so a
candidate scores the same again on the same machine with the same `workers` and processes.

Under torchrun (`effdsl.distributed`) every process of the group trains the same candidate: the
model in DistributedDataParallel, `batch` images per step split evenly between the processes
(so the recipe, learning rate included, means the same whatever the number of devices), each
process its share of the training images per epoch (DistributedSampler) and of the validation
images; losses and correct/total counts are summed over the group, so every process reports
and returns the same global figures. Batch-norm statistics are re-estimated by every process on
the same images, so the replicas stay identical.
Imports torch and torchvision.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from effdsl import ast
from effdsl.distributed import Group, join
from effdsl.errors import EffError

OPTIMIZERS = ("sgd", "rmsprop")
BASE_LR = {"sgd": 0.1, "rmsprop": 0.016}  # per 256 images
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-5
LABEL_SMOOTHING = 0.1
CROP_SCALE = (0.35, 1.0)
CENTRE_CROP = 0.875
MEAN = (0.485, 0.456, 0.406)  # ImageNet's: the usual choice for photographs
STD = (0.229, 0.224, 0.225)
PRECISE_BN_IMAGES = 512
SEED = 0

# (epoch done, epochs, mean training loss, validation images right, validation images seen)
Report = Callable[[int, int, float, int, int], None]


@dataclass(frozen=True)
class Recipe:
    """How each candidate is trained; everything but `workers` is part of a study's identity."""

    epochs: int = 5
    batch: int = 64
    lr: float | None = None
    optimizer: str = "sgd"
    val_fraction: float = 0.2
    workers: int = 0  # data-loading processes

    def __post_init__(self) -> None:
        if not 1 <= self.epochs <= 10_000:
            raise EffError(f"--epochs must be in [1, 10000], got {self.epochs}")
        if not 1 <= self.batch <= 65_536:
            raise EffError(f"--batch must be in [1, 65536], got {self.batch}")
        if self.lr is not None and not (math.isfinite(self.lr) and 0 < self.lr <= 100):
            raise EffError(f"--lr must be a positive number, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise EffError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}")
        if not 0 < self.val_fraction < 1:
            raise EffError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if not 0 <= self.workers <= 256:
            raise EffError(f"--workers must be in [0, 256], got {self.workers}")

    def check_split(self, processes: int) -> None:
        """Refuse a batch that `processes` training together cannot share evenly."""
        if self.batch % processes:
            raise EffError(f"--batch {self.batch} cannot be split evenly between {processes} "
                           "processes", hint=f"give a multiple of {processes}")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else BASE_LR[self.optimizer] * self.batch / 256

    def identity(self) -> dict[str, Any]:
        """What changes a score: recorded in the study, checked when a worker joins it."""
        data = asdict(self)
        del data["workers"]
        data["lr"] = self.learning_rate
        return data


@dataclass(frozen=True)
class ImageData:
    """An image-folder data set split into train and validation file lists."""

    root: Path
    classes: tuple[str, ...]
    train: tuple[tuple[str, int], ...]  # (path, class index)
    val: tuple[tuple[str, int], ...]
    split: str  # "given" or "seeded"

    @classmethod
    def open(cls, root: str | Path, recipe: Recipe) -> ImageData:
        from torchvision.datasets import ImageFolder

        root = Path(root)
        if not root.is_dir():
            raise EffError(f"--data {root}: not a directory")
        train_dir = root / "train"
        val_dir = next((root / n for n in ("val", "validation") if (root / n).is_dir()), None)
        try:
            if train_dir.is_dir():
                if val_dir is None:
                    raise EffError(f"--data {root}: has train/ but no val/ (or validation/)")
                train = ImageFolder(str(train_dir))
                val = ImageFolder(str(val_dir))
                if val.classes != train.classes:
                    raise EffError(f"--data {root}: train/ and {val_dir.name}/ have different "
                                   f"classes ({len(train.classes)} and {len(val.classes)})")
                return cls(root, tuple(train.classes), _samples(train.samples),
                           _samples(val.samples), "given")
            full = ImageFolder(str(root))
        except (FileNotFoundError, OSError) as error:
            raise EffError(f"--data {root}: {error}",
                           hint="lay it out as DIR/CLASS/IMAGE or DIR/train|val/CLASS/IMAGE"
                           ) from None
        train_rows, val_rows = _split(_samples(full.samples), recipe.val_fraction, root)
        return cls(root, tuple(full.classes), train_rows, val_rows, "seeded")

    def identity(self) -> dict[str, Any]:
        """The data set's shape (not its path: it may differ from machine to machine)."""
        return {"classes": list(self.classes), "train": len(self.train), "val": len(self.val),
                "split": self.split}


def _samples(rows: list[tuple[str, int]]) -> tuple[tuple[str, int], ...]:
    return tuple((str(path), int(label)) for path, label in rows)


def _split(
    rows: tuple[tuple[str, int], ...], fraction: float, root: Path
) -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, int], ...]]:
    """Per class, a fixed-seed shuffle; the first `fraction` (at least one image) is validation."""
    by_class: dict[int, list[tuple[str, int]]] = {}
    for row in rows:
        by_class.setdefault(row[1], []).append(row)
    train: list[tuple[str, int]] = []
    val: list[tuple[str, int]] = []
    for label in sorted(by_class):
        members = sorted(by_class[label])
        if len(members) < 2:
            raise EffError(f"--data {root}: class {label} has {len(members)} image; a split "
                           "needs at least 2 per class")
        random.Random(SEED + label).shuffle(members)
        count = min(len(members) - 1, max(1, round(len(members) * fraction)))
        val += members[:count]
        train += members[count:]
    return tuple(train), tuple(val)


# ---- training --------------------------------------------------------------------------------


class Files:
    """(image, class) pairs read from `rows` and transformed: a map-style data set.

    At module level, so that data-loading processes started by `spawn` (macOS, Windows) can
    unpickle it; torch's `Dataset` base adds nothing a DataLoader needs.
    """

    def __init__(self, rows: tuple[tuple[str, int], ...], transform: Any) -> None:
        self.rows = rows
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from torchvision.datasets.folder import default_loader

        path, label = self.rows[index]
        return self.transform(default_loader(path)), label


def _loaders(data: ImageData, recipe: Recipe, resolution: int, group: Group
             ) -> tuple[Any, ...]:
    from torch.utils.data import DataLoader, DistributedSampler
    from torchvision import transforms

    normalise = transforms.Normalize(MEAN, STD)
    train_tf = transforms.Compose([
        transforms.RandomResizedCrop(resolution, scale=CROP_SCALE, antialias=True),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        normalise,
    ])
    eval_tf = transforms.Compose([
        transforms.Resize(round(resolution / CENTRE_CROP), antialias=True),
        transforms.CenterCrop(resolution),
        transforms.ToTensor(),
        normalise,
    ])

    pin = group.device.type == "cuda"
    common: dict[str, Any] = {"num_workers": recipe.workers, "pin_memory": pin,
                              "persistent_workers": recipe.workers > 0}
    batch = recipe.batch // group.world  # per process; the recipe's batch is the group's
    # torch's types want Dataset subclasses; a DataLoader needs only __len__ and __getitem__
    images: Any = Files(data.train, train_tf)
    calibration_images: Any = Files(data.train[:PRECISE_BN_IMAGES], eval_tf)
    val_images: Any = Files(tuple(group.shard(data.val)), eval_tf)
    # a seeded shuffle per epoch (set_epoch), the same order on every rank, each rank every
    # world-th image of it; every rank gets as many, so all take the same number of steps
    sampler: DistributedSampler[Any] = DistributedSampler(
        images, num_replicas=group.world, rank=group.rank, shuffle=True, seed=SEED)
    train = DataLoader(images, batch_size=batch, sampler=sampler,
                       drop_last=len(sampler) > batch, **common)
    # every rank re-estimates batch norm on the same images, so the replicas stay identical
    calibration = DataLoader(calibration_images, batch_size=batch, **common)
    val = DataLoader(val_images, batch_size=batch, **common)
    return train, calibration, val


def train_score(
    network: ast.Network,
    data: ImageData,
    recipe: Recipe,
    *,
    report: Report | None = None,
    group: Group | None = None,
) -> float:
    """Train `network` (already scaled) on `data` with `recipe`; its validation top-1 in [0, 1].

    `group` (from `effdsl.distributed.join`) is the set of processes that train it together;
    by default this process alone, on the GPU when there is one.
    """
    import torch
    from torch import nn

    from effdsl.torch_build import build

    if group is None:
        with join() as alone:
            return train_score(network, data, recipe, report=report, group=alone)
    recipe.check_split(group.world)
    device = group.device
    cuda = device.type == "cuda"
    torch.manual_seed(SEED)  # the weights: the same on every rank
    model = build(network, num_classes=len(data.classes)).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    trained = group.wrap(model)  # DistributedDataParallel under torchrun
    torch.manual_seed(SEED + group.rank)  # dropout, drop-path, augmentations: each rank its own
    half = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and half == torch.float16)
    train, calibration, val = _loaders(data, recipe, network.input.size, group)
    optimizer = _optimizer(model, recipe)
    steps = recipe.epochs * len(train)
    warmup = len(train)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, steps,
                                                                                   warmup))
    criterion = nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
    right = seen = 0
    for epoch in range(recipe.epochs):
        train.sampler.set_epoch(epoch)
        trained.train()
        total, count = 0.0, 0.0
        for images, labels in train:
            images = _to(images, device, cuda)  # B, C, H, W
            labels = labels.to(device, non_blocking=True)  # B
            with torch.autocast(device.type, dtype=half, enabled=cuda):
                loss = criterion(trained(images), labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            # summed over the group, so that every rank sees a divergence at the same step
            step_total, step_count = group.sum([float(loss.detach()) * len(labels), len(labels)])
            if not math.isfinite(step_total):
                raise EffError(f"training diverged at epoch {epoch + 1} "
                               f"(loss {step_total / step_count})", hint="lower --lr")
            total += step_total
            count += step_count
        _precise_batch_norm(model, calibration, device, cuda)
        right, seen = (int(n) for n in group.sum(_top1_counts(model, val, device, cuda, half)))
        if report is not None:
            report(epoch + 1, recipe.epochs, total / max(count, 1), right, seen)
    return right / max(seen, 1)


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up over the first epoch, then cosine decay to 0 at the last step."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _optimizer(model: Any, recipe: Recipe) -> Any:
    import torch

    lr = recipe.learning_rate
    if recipe.optimizer == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=lr, alpha=0.9, momentum=MOMENTUM,
                                   eps=1e-3, weight_decay=WEIGHT_DECAY)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=MOMENTUM, nesterov=True,
                           weight_decay=WEIGHT_DECAY)


def _to(images: Any, device: Any, cuda: bool) -> Any:
    import torch

    images = images.to(device, non_blocking=True)
    return images.contiguous(memory_format=torch.channels_last) if cuda else images


def _precise_batch_norm(model: Any, loader: Any, device: Any, cuda: bool) -> None:
    """Re-estimate every batch norm's statistics on training images with the final weights."""
    import torch
    from torch import nn

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    model.eval()
    momenta = []
    for norm in norms:
        norm.reset_running_stats()
        momenta.append(norm.momentum)
        norm.momentum = None  # a cumulative average over the batches below
        norm.train()
    with torch.no_grad():
        for images, _ in loader:
            model(_to(images, device, cuda))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.eval()


def _top1_counts(model: Any, loader: Any, device: Any, cuda: bool, half: Any
                 ) -> tuple[int, int]:
    """(images classified right, images seen) of `loader` (this rank's share of validation)."""
    import torch

    model.eval()
    right, seen = 0, 0
    with torch.no_grad(), torch.autocast(device.type, dtype=half, enabled=cuda):
        for images, labels in loader:
            logits = model(_to(images, device, cuda))  # B, classes
            right += int((logits.argmax(1).cpu() == labels).sum())
            seen += len(labels)
    return right, seen
