"""Process topology: where this process sits (rank, world) and the one process group of a torchrun launch.

Rank/world come from torchrun's environment (`"RANK" in os.environ`, as nanoGPT). The process group is
started once, at the entry point (`ddkit.cli`, or a library user's `with process_group():`), and left
there; library code only asks `dist_env()` / `is_main()` / `barrier()` and never starts or stops it.
Class shards (which classes this process condenses) are a different thing: `ddkit.distributed`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from datetime import timedelta
from typing import Iterator, Optional

import torch
import torch.distributed as dist

from ddkit.utils import DDKitError, rank_cuda_device


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank, world size, local rank, and whether torchrun launched it."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    torchrun: bool = False


def dist_env() -> DistInfo:
    """(rank, world, local_rank) from torchrun's environment; (0, 1, 0) when not launched by it."""
    if "RANK" not in os.environ:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), int(os.environ.get("WORLD_SIZE", 1)),
                    int(os.environ.get("LOCAL_RANK", 0)), True)


def init_distributed(backend: Optional[str] = None, timeout_s: float = 24 * 3600) -> DistInfo:
    """Join torchrun's process group (gloo on CPU, nccl on CUDA) when launched by torchrun; idempotent.
    The long timeout is deliberate: ranks done early wait at the final barrier for the slowest one."""
    info = dist_env()
    if not info.torchrun or info.world == 1:
        return info
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(rank_cuda_device())  # LOCAL_RANK mod the GPUs this process sees
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return info


def _initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every rank (no-op outside an initialised process group)."""
    if _initialised():
        nccl = dist.get_backend() == "nccl"
        dist.barrier(device_ids=[torch.cuda.current_device()] if nccl else None)


def is_main() -> bool:
    """True on rank 0 (and in a plain single process)."""
    return dist.get_rank() == 0 if _initialised() else dist_env().rank == 0


def cleanup_distributed(wait: bool = False) -> None:
    """Leave the process group if one was initialised. With `wait`, first wait until every rank leaves too.

    Why wait: a rank that exits closes its gloo sockets while a slower rank (rank 0 writing a record after the
    last collective) still holds the group; gloo's receive thread on the slower rank can then abort the whole
    process ("terminate called without an active exception", seen once in CI on `relabel` under torchrun).
    Leaving together after a barrier keeps every peer alive until each has stopped using the group. Never
    wait on an error path: a failed rank must not block on peers that may be stuck elsewhere."""
    if _initialised():
        if wait:
            barrier()
        dist.destroy_process_group()



def group_ready() -> bool:
    """True when a process group is initialised (torchrun with world > 1, joined at the entry point)."""
    return _initialised()


@contextlib.contextmanager
def process_group(backend: Optional[str] = None) -> Iterator[DistInfo]:
    """Join torchrun's process group for the duration of a command (a no-op in a plain process)."""
    owned = dist_env().torchrun and dist_env().world > 1 and not _initialised()
    info = init_distributed(backend)
    try:
        yield info
    except BaseException:
        if owned:
            cleanup_distributed()
        raise
    if owned:
        cleanup_distributed(wait=True)  # a normal exit: every rank leaves the group together


# -- work shared out over ranks (the study's cells, relabel's epochs) ---------------------------------
_SOLO = [0]


@contextlib.contextmanager
def solo() -> Iterator[None]:
    """Inside, this rank works alone: `acting_world()` is 1, so `ddkit.evaluate` trains every seed here
    instead of spreading them over the ranks (the caller has already given each rank its own work)."""
    _SOLO[0] += 1
    try:
        yield
    finally:
        _SOLO[0] -= 1


def acting_world() -> int:
    """How many ranks share the current piece of work: the group's size, or 1 inside `solo()` / without one."""
    if _SOLO[0] or not _initialised():
        return 1
    return dist.get_world_size()


def rank_world() -> tuple:
    """(rank, world) of the joined process group; (0, 1) without one."""
    return (dist.get_rank(), dist.get_world_size()) if _initialised() else (0, 1)


def broadcast(obj: object) -> object:
    """Rank 0's `obj` on every rank (a picklable object); `obj` itself without a group."""
    if not _initialised() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class RankFailed(DDKitError):
    """Another rank failed during work shared by every rank (each rank raises it, none waits forever)."""


def together(fn, *args, **kw) -> list:
    """Run `fn` on every rank and gather its results, in rank order, to every rank.

    A rank whose `fn` raises still takes part in the gather, so no rank waits for it until the group's
    timeout: the failing rank re-raises its own error, the others raise RankFailed naming it.
    """
    try:
        mine = (True, fn(*args, **kw))
    except Exception as e:  # noqa: BLE001  (re-raised below, after the other ranks have heard of it)
        if not _initialised() or dist.get_world_size() == 1:
            raise
        mine, err = (False, f"{type(e).__name__}: {e}"), e
    else:
        err = None
        if not _initialised() or dist.get_world_size() == 1:
            return [mine[1]]
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, mine)
    if err is not None:
        raise err
    bad = [(r, p[1]) for r, p in enumerate(parts) if not p[0]]
    if bad:
        raise RankFailed(f"rank {bad[0][0]} failed: {bad[0][1]}")
    return [p[1] for p in parts]
