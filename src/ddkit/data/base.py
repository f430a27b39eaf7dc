"""The in-memory dataset object every stage consumes.

An `ImageDataset` is one split: uint8 images N×C×H×W (possibly memory-mapped), int64 labels,
the class names in label order, and the normalisation the set is known by. Pixels stay uint8
until a stage converts them (`to_float`): 4× less memory and a cheap host→device copy.
Large sets (ImageNet) use `FileImageDataset`, which keeps only a per-class index of file paths
and decodes on demand, so a method can read ~300 images of one class without touching the rest.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch


@dataclass(frozen=True)
class DatasetInfo:
    """Facts about a named dataset (one row of the facts table)."""

    name: str
    num_classes: int
    image_size: int  # side in pixels that models see for this set
    channels: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    how_to_get: str = ""  # one line shown when the data is missing


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0,255] -> float32 [0,1] (float input is returned as float32 unchanged)."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [0,1] -> uint8 with rounding and clamping."""
    return x.detach().float().clamp(0, 1).mul(255.0).round().to(torch.uint8)


class ImageDataset:
    """A labelled image split held as tensors.

    Attributes:
        images: uint8 tensor N×C×H×W.
        labels: int64 tensor N.
        classes: class names; label i is classes[i].
        mean, std: per-channel normalisation in [0,1] units.
        name, split: for messages and meta.json.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
                 mean: Sequence[float], std: Sequence[float], name: str = "", split: str = "train") -> None:
        if images.ndim != 4:
            raise ValueError(f"images must be N×C×H×W, got shape {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()
        self.classes: List[str] = list(classes)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.name = name
        self.split = split
        self._index: Optional[List[torch.Tensor]] = None

    # -- shape facts -----------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    #: pixels are a tensor here; FileImageDataset (False) decodes them from disk on demand
    in_memory = True

    def pixel_bytes(self, element_size: int = 1) -> int:
        """What the whole split takes as one tensor of `element_size`-byte values (1: uint8, 4: float32)."""
        return len(self) * self.channels * self.image_size * self.image_size * element_size

    # -- per-class access ------------------------------------------------------------------
    def class_indices(self, c: int) -> torch.Tensor:
        """Indices of class `c`, in dataset order (built once, then cached)."""
        if self._index is None:
            order = torch.argsort(self.labels, stable=True)
            counts = torch.bincount(self.labels, minlength=self.num_classes).tolist()
            self._index = list(torch.split(order, counts))
        return self._index[c]

    def class_counts(self) -> List[int]:
        return [len(self.class_indices(c)) for c in range(self.num_classes)]

    def get(self, indices: torch.Tensor) -> torch.Tensor:
        """uint8 images at `indices`."""
        return self.images[indices]

    def class_images(self, c: int, n: Optional[int] = None, generator: Optional[torch.Generator] = None
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Up to `n` images of class `c` drawn without replacement (all when n is None or ≥ count).

        Returns (uint8 images, their dataset indices). Never duplicates images.
        """
        idx = self.class_indices(c)
        if n is not None and n < len(idx):
            perm = torch.randperm(len(idx), generator=generator)[:n]
            idx = idx[perm]
        return self.get(idx), idx

    def subset(self, indices: torch.Tensor, split: Optional[str] = None) -> "ImageDataset":
        """A new dataset holding only `indices` (materialised)."""
        return ImageDataset(self.get(indices), self.labels[indices], self.classes, self.mean, self.std,
                            self.name, split or self.split)

    def read(self, start: int, stop: int) -> torch.Tensor:
        """uint8 images start..stop-1 (a view of the tensor here; decoded from disk when file-backed)."""
        return self.images[start:stop]

    def __repr__(self) -> str:
        return (f"ImageDataset({self.name}/{self.split}: {len(self)} images, {self.num_classes} classes, "
                f"{self.channels}×{self.image_size}×{self.image_size})")

