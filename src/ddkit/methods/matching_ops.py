"""Shared pieces of the matching family (DC, DSA, DM, MTT, DATM): presets, pixel space, real batches,
fresh networks and the loss log.

* **Presets.** Every tunable that the official code sets per IPC (or that a CPU run must shrink) is a
  config field defaulting to None = "the preset's value". `resolve_settings` fills them from the paper
  table of the method (data, with sources) or from its named CPU preset; explicit values always win. The
  resolved dict and the preset name go into every result's meta.
* **Pixel space.** Like the official code, synthetic images are optimised in the space the networks see:
  mean/std-normalised pixels (DC/DSA/DM/MTT) or ZCA-whitened [0,1] pixels (MTT/DATM with --zca). So the
  official learning rates (lr_img 0.1 for DC, 1 for DM, 100-1000 for MTT) mean the same here. Results
  are decoded back to [0,1] pixels for the set format.
* **Loss log.** One progress bar over iterations with the current loss; a NaN/inf loss stops the run with
  one line naming the iteration and learning rate, before anything is yielded (nothing half-written).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ddkit.augment.zca import Space
from ddkit.data.base import ImageDataset
from ddkit.data.facts import WorkingStats, working_stats
from ddkit.models import create_model
from ddkit.utils import DDKitError, derive_seed

PRESETS = ("paper", "cpu")
NORM_HELP = ("working-space statistics: official (what the official code normalises this dataset with, e.g. "
             "CIFAR-10 std 0.2023/0.1994/0.2010; the dataset's own where it has none) or true (the dataset's "
             "measured mean/std)")


def working_space(dataset: ImageDataset, family: str, norm: str, device: torch.device) -> Tuple[Space, WorkingStats]:
    """The mean/std space a method of `family` optimises in (see data.facts.working_stats), on `device`.

    The set still stores [0,1] pixels (decoded with these statistics) and the DATASET's mean/std
    (methods.base.assemble): the evaluator normalises every set, and the test split, with the set's
    statistics, so under one protocol every set's student sees the same input scaling whichever space the
    method optimised in, and a teacher trained on the dataset's statistics sees its own inputs. The working
    statistics go into meta.json (`working_stats`) for a reader who wants the official evaluation's scaling
    (with an instance-norm ConvNet the first layer's scale cancels anyway).
    """
    ws = working_stats(dataset, family, norm)
    return Space(ws.mean, ws.std).to(device), ws


def resolve_settings(cfg: Any, names: Sequence[str], paper: Mapping[str, Any],
                     cpu: Mapping[str, Any]) -> Dict[str, Any]:
    """Effective values of `names`: the config's when not None, else the preset's (paper table, or the
    paper table overlaid with the CPU preset's reductions)."""
    preset = getattr(cfg, "preset", "paper")
    if preset not in PRESETS:
        raise DDKitError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    table = dict(paper)
    if preset == "cpu":
        table.update(cpu)
    out: Dict[str, Any] = {}
    for n in names:
        v = getattr(cfg, n)
        if v is None:
            if n not in table:
                raise DDKitError(f"{type(cfg).__name__}.{n} has no {preset} preset value at ipc={cfg.ipc}: "
                                 f"set --{n.replace('_', '-')} explicitly")
            v = table[n]
        out[n] = v
    return out


class RealPool:
    """Real images per class, kept uint8 on the host; batches come back encoded on the device."""

    def __init__(self, dataset: ImageDataset, space: Space, device: torch.device) -> None:
        self.dataset, self.space, self.device = dataset, space, device

    def count(self, c: int) -> int:
        return len(self.dataset.class_indices(c))

    def batch(self, c: int, n: int, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        """`n` random images of class `c` (a random permutation slice, DC's get_images), encoded."""
        idx = self.dataset.class_indices(c)
        pick = idx[torch.randperm(len(idx), generator=generator)[:n]]
        return self.encode(self.dataset.get(pick)), pick

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.space.encode(images.to(self.device))


def check_real_init(dataset: ImageDataset, classes: Sequence[int], ipc: int) -> None:
    """Real initialisation needs ipc distinct images in every class asked for."""
    for c in classes:
        n = len(dataset.class_indices(c))
        if n < ipc:
            raise DDKitError(f"init=real needs {ipc} images per class but class {c} "
                             f"({dataset.classes[c]!r}) has {n}; use init=noise or a smaller ipc")


def init_images(pool: RealPool, c: int, ipc: int, init: str, generator: torch.Generator
                ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Initial synthetic images of class `c` (encoded) and their source indices (-1 for noise).

    noise: N(0, 1) in the encoded space, as DC's `torch.randn` on normalised data (main.py:88).
    """
    if init == "real":
        return pool.batch(c, ipc, generator)
    if init == "noise":
        ds = pool.dataset
        x = torch.randn(ipc, ds.channels, ds.image_size, ds.image_size, generator=generator)
        return x.to(pool.device), torch.full((ipc,), -1, dtype=torch.long)
    raise DDKitError(f"unknown init {init!r}; use real or noise")


def fresh_net(arch: str, dataset: ImageDataset, seed: int, device: torch.device,
              arch_kw: Optional[Dict[str, Any]] = None) -> nn.Module:
    """A randomly initialised network whose init is fixed by `seed` (the official code seeds from the
    clock, utils.py:125; a seed makes runs repeatable without touching the caller's RNG)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = create_model(arch, num_classes=dataset.num_classes, image_size=dataset.image_size,
                           channels=dataset.channels, **(arch_kw or {}))
    return net.to(device)


def net_seed(seed: int, method: str, *keys: Any) -> int:
    return derive_seed(seed, method, "net", *keys)


def has_batchnorm(net: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


class LossLog:
    """Progress bar over iterations with the current loss; the loss curve for meta; NaN guard."""

    def __init__(self, total: int, desc: str, progress: bool, method: str, max_points: int = 400) -> None:
        self.total, self.method, self.max_points = total, method, max_points
        self.values: List[float] = []
        self.bar = tqdm(total=total, desc=desc, disable=not progress, leave=False, dynamic_ncols=True,
                        mininterval=1.0)

    def step(self, it: int, loss: float, lrs: Mapping[str, float], **postfix: Any) -> None:
        """Record iteration `it`'s loss; raise DDKitError on NaN/inf naming `it` and the learning rates."""
        if not math.isfinite(loss):
            self.bar.close()
            lr_text = ", ".join(f"{k}={v:g}" for k, v in lrs.items())
            raise DDKitError(f"{self.method}: the matching loss became {loss} at iteration {it} ({lr_text}); "
                             "nothing was written: lower the learning rate and rerun")
        self.values.append(float(loss))
        self.bar.update(1)
        if self.bar.n == 1 or self.bar.n % 10 == 0 or self.bar.n == self.total:
            self.bar.set_postfix(loss=f"{loss:.4f}", **postfix)

    def close(self) -> None:
        self.bar.close()

    def meta(self) -> Dict[str, Any]:
        """loss_first/last and a curve of at most `max_points` window means ([iteration, mean loss])."""
        v = self.values
        if not v:
            return {"loss_first": None, "loss_last": None, "loss_curve": [], "loss_curve_window": 0}
        w = max(1, math.ceil(len(v) / self.max_points))
        curve = [[i, sum(v[i:i + w]) / len(v[i:i + w])] for i in range(0, len(v), w)]
        return {"loss_first": v[0], "loss_last": v[-1], "loss_curve": curve, "loss_curve_window": w,
                "iterations_run": len(v)}
