"""`random`: a class-balanced random subset of real images — the baseline every table must show.

Per class, `ipc` real images drawn without replacement with a generator seeded by (seed, class).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch

from ddkit.data.base import ImageDataset, to_float
from ddkit.methods.base import ClassResult, MethodConfig, check_ipc, register_method
from ddkit.utils import make_generator


@dataclass(frozen=True)
class RandomConfig(MethodConfig):
    """Random real subset: only ipc and seed."""


@register_method("random", config=RandomConfig, aliases=("random-real", "rand"))
def random_subset(dataset: ImageDataset, teacher: Any, cfg: RandomConfig, classes: Sequence[int], *,
                  device: torch.device, progress: bool = True) -> Iterator[ClassResult]:
    """Class-balanced random real images (the baseline)."""
    check_ipc(dataset, cfg.ipc)
    for c in classes:
        imgs, idx = dataset.class_images(c, cfg.ipc, generator=make_generator(cfg.seed, "class", c))
        yield ClassResult(c, to_float(imgs), extras={"source_index": idx})
