"""`random`: a class-balanced random subset of real images — the baseline every table must show.

Per class, `ipc` real images drawn without replacement with a generator seeded by (seed, class).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ddkit.data.base import ImageDataset, to_float
from ddkit.distilled import DistilledSet
from ddkit.methods.base import MethodConfig, check_ipc, per_class, register_method


@dataclass(frozen=True)
class RandomConfig(MethodConfig):
    """Random real subset: only ipc and seed."""


@register_method("random", config=RandomConfig, aliases=("random-real", "rand"))
def random_subset(dataset: ImageDataset, teacher, cfg: RandomConfig, *, device: torch.device,
                  progress: bool = True) -> DistilledSet:
    """Class-balanced random real images (the baseline)."""
    check_ipc(dataset, cfg.ipc)

    def one(c: int, g: torch.Generator):
        imgs, idx = dataset.class_images(c, cfg.ipc, generator=g)
        return to_float(imgs), {"source_index": idx}

    images, labels, extras = per_class(dataset, one, cfg.seed, desc="random", progress=progress)
    meta = {"source_indices": extras["source_index"].tolist()}
    return DistilledSet(images, labels, dataset.classes, dataset.mean, dataset.std, meta=meta)
