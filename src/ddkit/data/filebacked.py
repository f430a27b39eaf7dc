"""File-backed datasets for the ImageNet family: a per-class index of paths, pixels decoded on demand.

ImageNet's 1.28M images would be ~190 GB as uint8 at 224 px, so they are never materialised.
`FileImageDataset` keeps file paths and labels only; `get(indices)` decodes exactly those files
(Resize(short side = round(S·256/224)) + CenterCrop(S), the standard eval transform) in a thread
pool. A method that asks `class_images(c, 300)` therefore touches 300 files of class c, nothing
else. The path index is cached as JSON, so a second run skips the directory walk.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..utils import DDKitError
from .base import DatasetInfo, ImageDataset
from .cache import cached_json, default_data_root, dir_fingerprint
from .decode import decode_threaded, is_image_name
from .facts import split_dir_candidates
from .folders import resolve_classes, subdirs


class FileImageDataset(ImageDataset):
    """An ImageDataset whose pixels stay on disk until `get` asks for them.

    Attributes beyond ImageDataset: files (path per sample), resize_to (short side before the crop).
    `images` is not available (it would decode everything); use get/class_images, or `materialize()`
    when the whole split really fits in memory.
    """

    def __init__(self, files: Sequence[str], labels: torch.Tensor, classes: Sequence[str], mean: Sequence[float],
                 std: Sequence[float], name: str = "", split: str = "train", image_size: int = 224,
                 channels: int = 3, resize_to: Optional[int] = None) -> None:
        # Deliberately not calling ImageDataset.__init__: it needs an images tensor, which is the point to avoid.
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        self.files: List[str] = list(files)
        self.labels = labels.long()
        self.classes = list(classes)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.name = name
        self.split = split
        self._index = None
        self._size = int(image_size)
        self._channels = int(channels)
        self.resize_to = int(resize_to) if resize_to else round(self._size * 256 / 224)

    in_memory = False

    @property
    def images(self) -> torch.Tensor:  # type: ignore[override]
        raise DDKitError(f"{self.name}/{self.split} is file-backed ({len(self)} images are not held in memory); "
                         f"use get(indices) or class_images(c, n), or materialize() for a small split")

    @property
    def channels(self) -> int:
        return self._channels

    @property
    def image_size(self) -> int:
        return self._size

    def _decode(self, flat: List[int]) -> torch.Tensor:
        mode = "L" if self._channels == 1 else "RGB"
        items = [(self.files[i], self.files[i]) for i in flat]
        return torch.from_numpy(decode_threaded(items, self._size, mode, self.resize_to))

    def get(self, indices: torch.Tensor | Sequence[int] | int) -> torch.Tensor:
        """uint8 images at `indices`, decoding only those files (same shape rules as tensor indexing)."""
        idx = torch.as_tensor(indices)
        if idx.dtype == torch.bool:  # a mask, as tensor indexing would accept
            idx = torch.nonzero(idx).squeeze(1)
        idx = idx.long()
        flat = idx.reshape(-1).tolist()
        n = len(self)
        bad = [i for i in flat if not -n <= i < n]
        if bad:
            raise IndexError(f"index {bad[0]} out of range for {n} images")
        out = self._decode([i % n for i in flat])
        return out.reshape(*idx.shape, *out.shape[1:])

    def read(self, start: int, stop: int) -> torch.Tensor:
        """uint8 images start..stop-1, decoded from their files."""
        start, stop = max(0, start), min(stop, len(self))
        if stop <= start:
            return torch.empty(0, self._channels, self._size, self._size, dtype=torch.uint8)
        return self._decode(list(range(start, stop)))

    def subset(self, indices: torch.Tensor, split: Optional[str] = None) -> "FileImageDataset":
        """A new file-backed dataset over `indices` (stays lazy: nothing is decoded)."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1).tolist()
        return FileImageDataset([self.files[i] for i in idx], self.labels[idx], self.classes, self.mean, self.std,
                                self.name, split or self.split, self._size, self._channels, self.resize_to)

    def materialize(self, progress: bool = True, chunk: int = 1024) -> ImageDataset:
        """Decode every file into an in-memory ImageDataset (only for splits that fit in RAM)."""
        parts = []
        with tqdm(total=len(self), desc=f"decoding {self.name}/{self.split}", unit="img", disable=not progress,
                  leave=False) as bar:
            for start in range(0, len(self), chunk):
                parts.append(self._decode(list(range(start, min(start + chunk, len(self))))))
                bar.update(len(parts[-1]))
        images = torch.cat(parts) if parts else torch.empty(0, self._channels, self._size, self._size,
                                                            dtype=torch.uint8)
        return ImageDataset(images, self.labels.clone(), self.classes, self.mean, self.std, self.name, self.split)

    def __repr__(self) -> str:
        return (f"FileImageDataset({self.name}/{self.split}: {len(self)} files, {self.num_classes} classes, "
                f"{self.channels}×{self.image_size}×{self.image_size} on demand)")


def _class_split_dir(root: Path, split: str) -> Path:
    """The split folder that holds class sub-folders (ImageNet's flat test/ or raw val/ do not count)."""
    for cand in split_dir_candidates(split):
        d = root / cand
        if d.is_dir() and subdirs(d):
            return d
        if d.is_dir() and any(is_image_name(e.name) for e in os.scandir(d)):
            raise DDKitError(f"{d} holds images but no class folders; sort it into {d}/<class>/ "
                             f"(for ImageNet val, the usual valprep.sh does this)")
    want = " or ".join(f"{c}/<class>/" for c in split_dir_candidates(split))
    raise DDKitError(f"{root} has no {want} folder for split {split!r}")


def _list_class_files(split_dir: Path, names: Sequence[str]) -> List[List[str]]:
    """Relative image paths per class (sorted), relative to split_dir so the JSON stays small."""
    out = []
    for c in names:
        base = split_dir / c
        files = []
        for dirpath, dirnames, filenames in os.walk(base, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = os.path.relpath(dirpath, split_dir)
            files.extend(os.path.join(rel, f) for f in filenames if is_image_name(f))
        out.append(sorted(files))
    return out


def load_file_backed(root: Optional[Path], split: str, *, info: DatasetInfo, classes: Optional[Sequence[str]],
                     image_size: Optional[int], cache_dir: Optional[Path]) -> FileImageDataset:
    """An ImageNet-layout split (root/train/<wnid>/, root/val/<wnid>/) as a FileImageDataset."""
    root = Path(root if root is not None else default_data_root() / info.name).expanduser().resolve()
    if not root.is_dir():
        raise DDKitError(f"{info.name} not found at {root}; {info.how_to_get}")
    split_dir = _class_split_dir(root, split)
    train = subdirs(root / "train") if (root / "train").is_dir() else []

    def build() -> dict:
        names = resolve_classes(train, subdirs(split_dir), classes, str(split_dir))
        return {"classes": names, "files": _list_class_files(split_dir, names)}

    key_parts = {"kind": "file-index", "source": dir_fingerprint(split_dir), "train_classes": train,
                 "classes": list(classes) if classes is not None else None}
    index = cached_json(cache_dir, f"{info.name}-{split_dir.name}", key_parts, build)
    names, per_class = index["classes"], index["files"]
    if not any(per_class):
        raise DDKitError(f"no images found under {split_dir}/<class>/")
    files = [str(split_dir / f) for fs in per_class for f in fs]
    labels = torch.from_numpy(np.repeat(np.arange(len(names)), [len(fs) for fs in per_class]).astype(np.int64))
    return FileImageDataset(files, labels, names, info.mean, info.std, info.name, split,
                            image_size or info.image_size, info.channels)
