"""`evaluate` under torchrun: seeds spread over ranks (default), or one run data-parallel with DDP (--ddp).

Seeds over ranks (the default; style.md §3.3 "one run per GPU"): rank r trains the seed indices i
with i % W == r on its own device (cuda:LOCAL_RANK mod the visible GPUs), then the per-seed RunResults (and their
metrics.jsonl text) are gathered to every rank. Each run is seeded by (seed + i) alone, so the result
is the single-process one, bit for bit on CPU, whatever W. Only rank 0 writes the output folder and
prints.

One run with DDP (`--ddp`, for a single run too slow for one GPU): every rank trains the same seed.
All ranks draw the same global batch of indices (the recipe's batch size, from the (seed, "order")
stream) and each trains on its slice of batch // W; DDP averages the gradients, so every step sees
the global batch and the plan (iterations, epochs, lr schedule) is the single-process one.
Augmentation draws come from a per-rank generator (seed, "aug", rank), and BatchNorm normalises
per-rank slices unless `--sync-bn`, so the numbers differ from a single-process run (other random
draws) while the protocol is the same. The SL+KD teacher runs on every rank, in eval mode and not
wrapped (it takes no gradients). Test accuracy: rank r scores test[r::W] (no padding, so no image
counts twice) after taking rank 0's BatchNorm buffers, and the correct counts are summed.

    torchrun --standalone --nproc_per_node 4 -m ddkit evaluate SET --dataset … --seeds 4 --output out
    torchrun --standalone --nproc_per_node 4 -m ddkit evaluate SET --dataset … --ddp --sync-bn --output out
"""
from __future__ import annotations

import contextlib
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from ddkit.data.base import ImageDataset
from ddkit.ranks import acting_world, dist_env, group_ready
from ddkit.evaluate.student import Plan, RunResult, StudentTrainer
from ddkit.utils import DDKitError, atomic_dir, get_device, make_generator, rank_cuda_device


@dataclass(frozen=True)
class EvalDist:
    """Where this process sits during `evaluate`: rank, world size, its device, and the mode.

    mode: "single" (one process, or W = 1), "seeds" (seed indices spread over ranks) or "ddp"
    (every seed trained by all ranks together).
    """

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    mode: str = "single"
    sync_bn: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        return self.mode == "ddp"

    @property
    def spread(self) -> bool:
        return self.mode == "seeds"

    def describe(self) -> dict:
        """What EvalResult.info records (empty for a single process)."""
        if self.mode == "single":
            return {}
        return {"distributed": {"mode": self.mode, "world_size": self.world, "sync_bn": self.ddp and self.sync_bn}}

    # -- seeds ------------------------------------------------------------------------------------
    def run_indices(self, seeds: int) -> List[int]:
        """Run indices this rank trains: i % W == rank when spreading seeds, else all of them."""
        return list(range(self.rank, seeds, self.world)) if self.spread else list(range(seeds))

    def gather_runs(self, runs: Sequence[Tuple[int, RunResult]], output: Optional[Path]) -> List[RunResult]:
        """Every rank's (index, RunResult) on every rank, in index order. With `output`, rank 0 also writes
        the metrics.jsonl of runs other ranks trained (their text travels with the result, so no shared
        filesystem is needed)."""
        if not self.spread:
            return [r for _, r in runs]
        mine = []
        for i, r in runs:
            log = run_log_path(output, r.seed) if output is not None else None
            mine.append((i, r, log.read_text() if log is not None and log.exists() else None))
        parts: List[Any] = [None] * self.world
        dist.all_gather_object(parts, mine)
        every = sorted((x for part in parts for x in part), key=lambda t: t[0])
        if self.main and output is not None:
            own = {i for i, _ in runs}
            for i, r, text in every:
                if i not in own and text is not None:
                    path = run_log_path(output, r.seed)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(text)
        return [r for _, r, _ in every]

    # -- one data-parallel run --------------------------------------------------------------------
    def check_plan(self, plan: Plan) -> None:
        """DDKitError when --ddp cannot split the global batch evenly over the ranks."""
        if self.ddp and plan.batch_size % self.world:
            up = -(-plan.batch_size // self.world) * self.world
            raise DDKitError(f"--ddp splits the global batch of {plan.batch_size} over {self.world} ranks: pass a "
                             f"--batch-size divisible by {self.world} (e.g. {up}), or run without --ddp")

    def prepare(self, model: nn.Module) -> nn.Module:
        """The student before it moves to the device: BatchNorm -> SyncBatchNorm with --ddp --sync-bn."""
        if not (self.ddp and self.sync_bn):
            return model  # one process's BatchNorm already sees the whole batch
        if self.device.type != "cuda":
            raise DDKitError("--sync-bn needs CUDA devices (SyncBatchNorm has no CPU kernel): drop --sync-bn")
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def wrap(self, net: nn.Module) -> nn.Module:
        """DDP around the (compiled) student in a DDP run; the student itself otherwise."""
        if not self.ddp:
            return net
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(net, device_ids=ids)

    def make_trainer(self, seed: int, net: nn.Module, *args: Any, **kw: Any) -> StudentTrainer:
        """The trainer of run `seed`: batch order from (seed, "order") on every rank; augmentation from
        (seed, "aug"), or per rank from (seed, "aug", "rank", r) in a DDP run."""
        order = make_generator(seed, "order")
        if not self.ddp:
            return StudentTrainer(net, *args, device=self.device, order_gen=order,
                                  aug_gen=make_generator(seed, "aug"), **kw)
        return ShardedTrainer(net, *args, device=self.device, order_gen=order,
                              aug_gen=make_generator(seed, "aug", "rank", self.rank), rank=self.rank,
                              world=self.world, **kw)

    def shard(self, ds: Optional[ImageDataset]) -> Optional[ImageDataset]:
        """This rank's slice ds[rank::W] of a test/val set in a DDP run (the whole set otherwise)."""
        if ds is None or not self.ddp:
            return ds
        return ds.subset(torch.arange(self.rank, len(ds), self.world))

    def scorer(self, part: ImageDataset, mean: Sequence[float], std: Sequence[float], batch_size: int
               ) -> Callable[[nn.Module], float]:
        """model -> accuracy on the whole set; in a DDP run `part` is this rank's shard and the correct
        counts of all ranks are summed (every rank must call it at the same points, as train_run does)."""
        from ddkit.teachers import accuracy

        if not self.ddp:
            return lambda model: accuracy(model, part, mean, std, device=self.device, batch_size=batch_size)

        def score(model: nn.Module) -> float:
            net = unwrap(model)  # no DDP forward: shards differ in size, its hooks would mismatch collectives
            sync_buffers(net)
            acc = accuracy(net, part, mean, std, device=self.device, batch_size=batch_size)
            counts = torch.tensor([round(acc * len(part)), len(part)], dtype=torch.int64, device=_comm_device())
            dist.all_reduce(counts)
            return int(counts[0]) / max(1, int(counts[1]))

        return score


class ShardedTrainer(StudentTrainer):
    """StudentTrainer for one DDP run: every rank draws the same global batch of indices (same order
    generator) and trains on its contiguous slice of batch // W; DDP averages the gradients."""

    def __init__(self, *args: Any, rank: int, world: int, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.rank, self.world = rank, world
        self.local = self.plan.batch_size // world

    def indices(self) -> torch.Tensor:
        """This rank's contiguous slice of the global batch every rank draws alike."""
        return self.stream.next()[self.rank * self.local:(self.rank + 1) * self.local]

    def step(self) -> torch.Tensor:
        """One iteration; returns the global-batch mean loss (what metrics.jsonl logs), not this slice's."""
        loss = super().step().float().to(_comm_device())
        dist.all_reduce(loss)  # one scalar, stream-ordered on NCCL: no host sync per step
        return (loss / self.world).to(self.device)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain student inside torch.compile and/or DDP wrappers."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


@torch.no_grad()
def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, as DDP does before a forward:
    after the last step each rank holds the statistics of its own slice."""
    for b in model.buffers():
        dist.broadcast(b, src=0)


def _comm_device() -> torch.device:
    # NCCL reduces CUDA tensors only; gloo works on CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def run_log_path(output: Path, seed: int) -> Path:
    """Where run `seed`'s metrics.jsonl goes under an evaluate output folder."""
    return Path(output) / f"seed{seed}" / "metrics.jsonl"


def setup(cfg: Any, device: Any = None) -> EvalDist:
    """This process's EvalDist, from the process group the entry point joined (`ddkit.ranks`).

    The group is never started or stopped here; without one (a plain process) this is rank 0 of 1. Under torchrun a CUDA device
    without an index becomes cuda:LOCAL_RANK, one GPU per process.
    """
    env = dist_env()
    if env.torchrun and env.world > 1 and not group_ready():
        raise DDKitError("launched by torchrun but no process group is joined: wrap the call in "
                         "`with ddkit.ranks.process_group():` (the CLI does)")
    dev = device if isinstance(device, torch.device) else get_device(device)
    if acting_world() == 1:  # a plain process, W = 1, or a rank given its own work (`ranks.solo()`, the study)
        return EvalDist(device=dev)
    rank, world = dist.get_rank(), dist.get_world_size()
    if dev.type == "cuda" and dev.index is None:
        dev = rank_cuda_device() if env.torchrun else torch.device("cuda", rank % max(1, torch.cuda.device_count()))
    mode = "ddp" if getattr(cfg, "ddp", False) else "seeds"
    if mode == "seeds" and cfg.seeds < world and rank == 0:
        warnings.warn(f"{cfg.seeds} seed(s) over {world} ranks: {world - cfg.seeds} rank(s) stay idle; use more "
                      f"--seeds, or --ddp to train each seed on all ranks", stacklevel=3)
    return EvalDist(rank, world, dev, mode, bool(getattr(cfg, "sync_bn", False)))


@contextlib.contextmanager
def rank_output_dir(output: str | Path, overwrite: bool, main: bool) -> Iterator[Path]:
    """Rank 0: `atomic_dir(output)`. Other ranks: the same refusal of an existing output, then a private
    scratch folder that is discarded (their runs reach rank 0's folder through `gather_runs`)."""
    if main:
        with atomic_dir(output, overwrite=overwrite) as tmp:
            yield tmp
        return
    if Path(output).exists() and not overwrite:  # the same error on every rank, before any collective
        raise FileExistsError(f"output {output} exists; pass --overwrite to replace it")
    with tempfile.TemporaryDirectory(prefix="ddkit-eval-rank-") as tmp:
        yield Path(tmp)
