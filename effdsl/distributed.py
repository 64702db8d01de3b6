"""Training each candidate on several devices: a search's processes under `torchrun`.

    with join() as group:                          # torchrun's RANK, WORLD_SIZE, LOCAL_RANK
        train = partial(train_score, group=group)  # DDP, sharded data, summed counts
        if group.leader:                           # rank 0, the only one that talks to the study
            with Leader(group) as leader:
                work(study, plan, leader.scores(score), reporter, idle=leader.idle)
                leader.finish(result)              # every rank returns the same result
        else:
            result = follow(group, score)          # train what rank 0 sends until it is done

`torchrun --nproc-per-node N -m effdsl search SPEC --data DIR` starts N processes. Each joins
the process group (NCCL on CUDA, each on its GPU `cuda:LOCAL_RANK`; gloo on the CPU), and all
of them train the same candidate together: the model wrapped in DistributedDataParallel, the
training images shared out by a DistributedSampler, the validation images split between them
and their correct/total counts summed, so every rank computes the same global top-1. Rank 0
alone opens the Optuna storage, claims candidates and records scores; before each candidate it
sends the others the candidate's (α, β, γ), and at the end the final result.

Messages go over a gloo group (the default group itself on the CPU), so that they cost the GPUs
nothing and a rank can wait in one for as long as rank 0 waits for other workers' candidates:
rank 0 sends a `wait` message every poll meanwhile, well inside the group's timeout.

Without torchrun's variables, or with one process, `join` gives a group of one: no process
group is made, the device is the GPU when there is one, and `Leader` passes everything
through, so a plain `effdsl search` is unchanged. Imports torch only when a group is joined.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from effdsl.errors import EffError

Key = tuple[float, float, float]
T = TypeVar("T")

CONTROL_TIMEOUT = timedelta(hours=2)  # the longest a rank waits for rank 0's next message


def launched() -> bool:
    """Whether this process is one of several that torchrun started (WORLD_SIZE > 1)."""
    return _world_size() > 1


def is_leader() -> bool:
    """Whether this process prints and writes files: rank 0, or the only process."""
    return _env_int("RANK", 0) == 0


@dataclass(frozen=True)
class Group:
    """This process's place among those training one candidate together."""

    rank: int
    world: int
    device: Any  # torch.device
    control: Any = None  # the process group that carries rank 0's messages

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def wrap(self, model: Any) -> Any:
        """`model` as the group trains it: in DistributedDataParallel when there are several."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def shard(self, rows: Sequence[T]) -> Sequence[T]:
        """This rank's share of `rows`: every world-th one, none twice, none left out."""
        return rows[self.rank :: self.world]

    def sum(self, values: Sequence[float]) -> list[float]:
        """Each of `values` summed over the group (float64: counts stay exact)."""
        if not self.distributed:
            return [float(v) for v in values]
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return [float(v) for v in tensor.tolist()]

    def send(self, message: tuple[Any, ...]) -> None:
        """Rank 0: broadcast `message` to the other ranks."""
        self._broadcast(message)

    def receive(self) -> tuple[Any, ...]:
        """Any other rank: the next message of rank 0."""
        return self._broadcast(None)

    def _broadcast(self, message: tuple[Any, ...] | None) -> tuple[Any, ...]:
        import torch.distributed as dist

        box = [message]
        dist.broadcast_object_list(box, src=0, group=self.control)
        received = box[0]
        assert isinstance(received, tuple)
        return received


@contextlib.contextmanager
def join() -> Iterator[Group]:
    """The group of this process: torchrun's when it started several, else a group of one."""
    import torch

    if not launched():
        yield Group(0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        return
    import torch.distributed as dist

    rank, world, local = _env_int("RANK", 0), _world_size(), _env_int("LOCAL_RANK", 0)
    if not dist.is_available():
        raise EffError("torchrun started several processes, but this torch has no "
                       "torch.distributed")
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        if local >= count:
            raise EffError(f"LOCAL_RANK {local}, but this machine has {count} GPUs",
                           hint=f"start at most {count} processes: torchrun --nproc-per-node "
                           f"{count}")
        device, backend = torch.device("cuda", local), "nccl"
        torch.cuda.set_device(device)  # before the group: NCCL binds each rank to its GPU
    else:
        device, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(backend)  # MASTER_ADDR/PORT, RANK, WORLD_SIZE: torchrun's env://
    try:
        control = None if backend == "gloo" else dist.new_group(backend="gloo",
                                                                 timeout=CONTROL_TIMEOUT)
        yield Group(rank, world, device, control)
    finally:
        dist.destroy_process_group()


# ---- rank 0 and the others -------------------------------------------------------------------


class Leader:
    """Rank 0's side: each candidate it scores is first sent to the other ranks.

    Used as a context manager: should rank 0 stop between candidates (the storage is
    unreachable, another search holds the study name, Ctrl-C while waiting), the others are
    told to stop too rather than wait for a message that never comes. So are they after an
    EffError in training (a diverged loss: every rank sees it at the same step, and waits for
    rank 0 to record the trial failed). Any other failure during training needs no message:
    the others fail at the same collective operation, or torchrun stops them when a rank exits.
    """

    def __init__(self, group: Group | None) -> None:
        self.group = group if group is not None and group.distributed else None
        self.training = False
        self.done = False

    def scores(self, score: Callable[[Key], float]) -> Callable[[Key], float]:
        """`score`, run by every rank of the group on the same candidate."""
        group = self.group
        if group is None:
            return score

        def together(key: Key) -> float:
            group.send(("train", key))
            self.training = True
            try:
                value = score(key)
            except EffError:
                # the trainer's errors (a diverged loss) come from figures summed over the
                # group, so every rank raised it at the same step and waits for our stop
                self.training = False
                raise
            self.training = False
            return value

        return together

    def idle(self, seconds: float) -> None:
        """Wait `seconds` for other workers' candidates; the other ranks hear that we wait."""
        if self.group is not None:
            self.group.send(("wait",))
        time.sleep(seconds)

    def finish(self, result: Any) -> None:
        """The search is over: the other ranks return `result`."""
        if self.group is not None:
            self.group.send(("done", result))
        self.done = True

    def __enter__(self) -> Leader:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 *rest: object) -> None:
        if self.group is None or self.done or self.training or error is None:
            return
        reason = error.message if isinstance(error, EffError) else type(error).__name__
        with contextlib.suppress(Exception):
            self.group.send(("stop", reason))


def follow(group: Group, score: Callable[[Key], float]) -> Any:
    """A rank other than 0: train each candidate rank 0 sends; its final result at the end."""
    while True:
        message = group.receive()
        match message:
            case ("train", key):
                try:
                    score(tuple(key))  # rank 0 records the score
                except EffError:
                    group.receive()  # rank 0's stop, once it has recorded the trial failed
                    raise
            case ("wait",):
                continue
            case ("done", result):
                return result
            case ("stop", reason):
                raise EffError(f"rank {group.rank} stops with rank 0: {reason}")
            case _:
                raise EffError(f"rank {group.rank}: unexpected message from rank 0: "
                               f"{message[0]!r}")


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise EffError(f"${name} is {text!r}, not an integer",
                       hint="launch with torchrun, which sets it") from None


def _world_size() -> int:
    return _env_int("WORLD_SIZE", 1)
