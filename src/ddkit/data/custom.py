"""User-facing data helpers: `register_dataset` for a plugin's own data, and class-balanced subsets.

    from ddkit.data import register_dataset

    @register_dataset("my-set", num_classes=3, image_size=16, channels=3, description="my lab's images")
    def load(split, root):            # split: 'train' | 'test' | 'val'; root: --data-root or None
        return images_uint8_NCHW, labels, ["cat", "dog", "owl"]   # or (images, labels) or an ImageDataset

`ddkit --plugin my_plugin.py distill --dataset my-set …` then works like a built-in name: `--classes`,
`--image-size` style options and the cache-free path apply, and the normalisation (mean/std) is
measured on the train split when the plugin does not give it, so nobody types it by hand.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..utils import DDKitError, make_generator
from .base import DatasetInfo, ImageDataset
from .cache import compute_mean_std, select_classes

LoaderOutput = Union[ImageDataset, Tuple[Any, Any], Tuple[Any, Any, Sequence[str]]]


def _as_uint8(x: Any, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if t.ndim != 4:
        raise DDKitError(f"{what}: images must be N×C×H×W, got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        return t
    if t.is_floating_point():  # [0,1] floats, the other common convention
        return t.float().clamp(0, 1).mul(255).round().to(torch.uint8)
    raise DDKitError(f"{what}: images must be uint8 or float in [0,1], got {t.dtype}")


def register_dataset(name: str, *, num_classes: Optional[int] = None, image_size: Optional[int] = None,
                     channels: Optional[int] = None, mean: Optional[Sequence[float]] = None,
                     std: Optional[Sequence[float]] = None, aliases: Sequence[str] = (),
                     description: str = "") -> Callable:
    """Decorator: register `fn(split, root) -> (images, labels[, classes]) | ImageDataset` as dataset `name`.

    images are uint8 (or float [0,1]) N×C×H×W; labels int 0..K-1; classes default to '0'..'K-1'.
    `num_classes`/`image_size`/`channels` are only shown by `ddkit datasets`; mean/std default to the
    train split's measured per-channel values (computed once per process).
    """
    from .sources import DATASETS, Request, resize_square

    stats: Dict[str, Tuple[Tuple[float, ...], Tuple[float, ...]]] = {}

    def deco(fn: Callable[[str, Any], LoaderOutput]) -> Callable[[str, Any], LoaderOutput]:
        def raw(split: str, root: Any) -> Tuple[torch.Tensor, torch.Tensor, list]:
            out = fn(split, root)
            if isinstance(out, ImageDataset):
                return out.images, out.labels, list(out.classes)
            images, labels = _as_uint8(out[0], name), torch.as_tensor(np.asarray(out[1])).long()
            classes = list(out[2]) if len(out) > 2 else [str(i) for i in range(int(labels.max()) + 1)]
            return images, labels, classes

        def loader(req: Request) -> ImageDataset:
            images, labels, classes = raw(req.split, req.root)
            if len(images) != len(labels):
                raise DDKitError(f"dataset {name!r}: {len(images)} images but {len(labels)} labels")
            if req.image_size:
                images = resize_square(images, req.image_size)
            if mean is not None and std is not None:
                m, s = tuple(mean), tuple(std)
            else:
                if "train" not in stats:  # the train split's statistics, as for every built-in set
                    tr = images if req.split == "train" else raw("train", req.root)[0]
                    stats["train"] = compute_mean_std(tr)
                m, s = stats["train"]
            images, labels, names = select_classes(images, labels, classes, req.classes, name)
            return ImageDataset(images, labels, names, m, s, name, req.split)

        loader.ddkit_info = DatasetInfo(name, num_classes, image_size, channels, tuple(mean or ()),  # type: ignore
                                        tuple(std or ()), description) if num_classes and image_size and channels else None
        loader.__doc__ = description or fn.__doc__
        DATASETS.register(name, aliases=aliases, obj=loader)
        return fn

    return deco


def class_balanced_subset(ds: ImageDataset, max_per_class: int, seed: int = 0) -> ImageDataset:
    """At most `max_per_class` images of each class, drawn without replacement, seeded per (seed, class).

    The kept indices are sorted, so the subset keeps the dataset's order; the same (dataset,
    max_per_class, seed) always gives the same images whatever else runs in the process.
    """
    if max_per_class < 1:
        raise DDKitError(f"--max-per-class must be ≥ 1, got {max_per_class}")
    keep = []
    for c in range(ds.num_classes):
        idx = ds.class_indices(c)
        if len(idx) > max_per_class:
            perm = torch.randperm(len(idx), generator=make_generator(seed, "max-per-class", c))
            idx = idx[perm[:max_per_class]]
        keep.append(idx)
    order = torch.sort(torch.cat(keep)).values
    return ds.subset(order)


def subset_facts(ds: ImageDataset, max_per_class: Optional[int], classes: Optional[Sequence[str]],
                 seed: int = 0) -> Optional[Dict[str, Any]]:
    """What a run recorded about its data subset (None when the whole dataset was used)."""
    if max_per_class is None and classes is None:
        return None
    return {"dataset": ds.name, "split": ds.split, "max_per_class": max_per_class, "seed": seed,
            "classes": list(classes) if classes is not None else None, "images": len(ds),
            "per_class": ds.class_counts()}
