"""Several learners: data-parallel PPO over the ranks of a torch.distributed group.

Each rank (a learner process) steps its own share of the envs and trains on its own
samples; after every minibatch's backward the ranks average their gradients with one
`all_reduce`, so every replica takes the same step and the parameters stay identical
without ever being sent. The per-minibatch decisions that stop an update (the KL early
stop, the joint-ratio intervention, a non-finite minibatch) ride in the same all-reduce,
as sums, and are taken on the reduced values: every rank reads the same numbers, so no
rank steps where another stopped. Once per update the per-head statistics are combined
exactly (`esper.rl.ratio_stats.reduce_across_ranks`, one all-gather carrying the rank's
loss sums along), and once per batch the ranks exchange what the telemetry needs from
each of them (episodes, lifecycle changes) and whether any was asked to stop.

Every collective is wrapped: a rank that dies makes its peers' next collective fail
(gloo closes the sockets; the group's timeout bounds a rank that hangs), and that
failure becomes `LearnersLost`, one line, never a traceback from the backend.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from esper.rl.ratio_stats import HeadRatioStats, RankReduction, reduce_across_ranks

#: How long a collective waits for a peer before the run is declared lost. A rank that
#: dies is noticed at once (its sockets close); this bounds one that hangs, and it must
#: cover the longest gap between two collectives: a batch of env steps on one rank.
COLLECTIVE_TIMEOUT = timedelta(seconds=float(os.environ.get("ESPER_LEARNER_TIMEOUT", "300")))

T = TypeVar("T")
#: The "[/path/to/gloo/pair.cc:553] " a backend error starts with: no help to a user.
_SOURCE_LOCATION = re.compile(r"^\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*")


class LearnersLost(RuntimeError):
    """A collective failed: another learner died, hung past the timeout or left."""


@dataclass(frozen=True)
class Launch:
    """This process's place in a group of learners, as the launcher's environment says.

    `torchrun` and `esper ppo --learners N` (which spawns its ranks the same way) both
    set RANK, WORLD_SIZE and LOCAL_RANK, and MASTER_ADDR/MASTER_PORT for the rendezvous.
    """

    rank: int
    world: int
    local_rank: int

    @classmethod
    def from_environment(cls) -> Launch | None:
        """The launch described by the environment, or None outside a launcher."""
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return None
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        return cls(rank, world, int(os.environ.get("LOCAL_RANK", rank)))


@contextmanager
def _collective(what: str) -> Iterator[None]:
    """Turn a backend failure in a collective into `LearnersLost` (one line)."""
    try:
        yield
    except RuntimeError as exc:  # DistBackendError, gloo's connection errors, timeouts
        text = _SOURCE_LOCATION.sub("", str(exc).strip())
        first = text.splitlines()[0] if text else type(exc).__name__
        raise LearnersLost(f"lost contact with the other learners during {what}: {first}") from exc


@dataclass(frozen=True)
class Learners:
    """The group a trainer's ranks belong to, and the few collectives PPO needs of it.

    `group` None is the default process group. Rank 0 is the writer: it alone records
    the run directory and writes the checkpoint.
    """

    rank: int
    world: int
    group: Any = None

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    def share(self, n: int) -> slice:
        """This rank's contiguous share of `n` items (n is a multiple of the world size)."""
        if n % self.world:
            raise ValueError(f"{n} items do not split evenly over {self.world} learners")
        size = n // self.world
        return slice(self.rank * size, (self.rank + 1) * size)

    def average_gradients(self, params: Sequence[Tensor], sums: Tensor) -> Tensor:
        """Average every parameter's gradient over the ranks and sum `sums` [k], in ONE
        all-reduce; returns the summed `sums`.

        The gradients go out flattened into one buffer with `sums` at its end, and come
        back as views of it (the sum divided by the world size), so every rank holds the
        same bits. A parameter without a gradient contributes zeros.
        """
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        dtype = grads[0].dtype
        flat = torch.cat([g.reshape(-1) for g in grads] + [sums.reshape(-1).to(dtype)])
        with _collective("a gradient all-reduce"):
            dist.all_reduce(flat, group=self.group)
        k = sums.numel()
        total = flat[-k:]
        flat = flat[:-k].div_(self.world)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p)
            offset += n
        return total

    def reduce_stats(self, stats: HeadRatioStats, extra: Tensor) -> RankReduction:
        """The update's per-head statistics of every rank combined, with each rank's
        `extra` row: one all-gather (see `reduce_across_ranks`)."""
        with _collective("the per-head statistics reduction"):
            return reduce_across_ranks(stats, extra, group=self.group)

    def all_gather(self, obj: T) -> list[T]:
        """Every rank's `obj` (picklable), in rank order, on every rank."""
        out: list[Any] = [None] * self.world
        with _collective("the exchange of a batch's telemetry"):
            dist.all_gather_object(out, obj, group=self.group)
        return out

    def broadcast(self, obj: T) -> T:
        """Rank 0's `obj` on every rank (the others pass anything, e.g. None)."""
        box: list[Any] = [obj]
        with _collective("the start of the run"):
            dist.broadcast_object_list(box, src=0, group=self.group)
        result: T = box[0]
        return result

    def barrier(self) -> None:
        with _collective("the end of the run"):
            dist.barrier(group=self.group)


def backend_for(device: str) -> str:
    """NCCL for CUDA tensors, gloo for CPU ones."""
    return "nccl" if device.startswith("cuda") else "gloo"


def rank_device(device: str, launch: Launch) -> str:
    """Each rank's device: CUDA ranks take the GPU of their local rank, CPU stays CPU."""
    if not device.startswith("cuda"):
        return device
    count = torch.cuda.device_count()
    return f"cuda:{launch.local_rank % max(count, 1)}"


def join(launch: Launch, device: str) -> Learners:
    """Initialise the default process group from the launcher's environment (env://)."""
    backend = backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(torch.device(rank_device(device, launch)))
    with _collective("the rendezvous"):
        dist.init_process_group(
            backend,
            init_method="env://",
            rank=launch.rank,
            world_size=launch.world,
            timeout=COLLECTIVE_TIMEOUT,
        )
    return Learners(rank=launch.rank, world=launch.world)


def leave(learners: Learners | None, *, clean: bool) -> None:
    """Tear the group down; `clean` (every rank got here) waits for the others first, so
    no rank's exit looks like a lost peer to one still finishing its last collective."""
    if learners is None or not dist.is_initialized():
        return
    if clean:
        with suppress(LearnersLost):
            learners.barrier()
    dist.destroy_process_group()


#: Called with each update's local (this rank's) statistics before they are reduced.
LocalStatsHook = Callable[[HeadRatioStats], None]

#: A directory: every rank then dumps what it saw there (`RankDump`).
DUMP_ENV = "ESPER_LEARNER_DUMP"


class RankDump:
    """What one rank saw, for checking the reduction against it: its own statistics of
    every update (`rank{R}.jsonl`, one `reading_tensor` per line, before the reduction)
    and its parameters at the end (`rank{R}-policy.pt`). Debugging only: each line costs
    a host transfer."""

    def __init__(self, directory: Path, rank: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.stats_path = directory / f"rank{rank}.jsonl"
        self.policy_path = directory / f"rank{rank}-policy.pt"

    def stats(self, stats: HeadRatioStats) -> None:
        with self.stats_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(stats.reading_tensor().tolist()) + "\n")

    def parameters(self, module: torch.nn.Module) -> None:
        torch.save(module.state_dict(), self.policy_path)
