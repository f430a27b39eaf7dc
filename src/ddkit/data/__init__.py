"""The data stage: named datasets and image folders/archives as uint8 `ImageDataset`s.

    >>> from ddkit.data import create_dataset
    >>> train = create_dataset("digits")                        # offline, 1437 images 1×8×8
    >>> test = create_dataset("tar:cifar10-jpeg75.tar.gz", split="test")
    >>> x, idx = train.class_images(3, n=10, generator=g)      # uint8; to_float(x) for models

Small sets are decoded once into a memory-mapped cache (env DDKIT_CACHE, default ~/.cache/ddkit);
the ImageNet family is file-backed (`FileImageDataset`) and decodes only the files asked for.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

from ..registry import UnknownNameError
from ..utils import DDKitError
from .base import DatasetInfo, ImageDataset, to_float, to_uint8
from .custom import class_balanced_subset, register_dataset, subset_facts
from .cache import compute_mean_std, default_cache_dir, default_data_root
from .facts import CLASS_NAMES, FACTS, normalize_split
from .filebacked import FileImageDataset
from .folders import load_image_files
from .sources import DATASETS, Request

__all__ = [
    "create_dataset", "list_datasets", "dataset_info", "ImageDataset", "FileImageDataset", "DatasetInfo",
    "to_float", "to_uint8", "compute_mean_std", "default_cache_dir", "default_data_root", "FACTS", "CLASS_NAMES",
    "DATASETS", "register_dataset", "class_balanced_subset", "subset_facts",
]

_PATH_KINDS = ("folder", "tar")


def _path_spec(name: str) -> Optional[tuple]:
    """('folder'|'tar', path) for 'folder:<path>' / 'tar:<path>', else None."""
    head, sep, rest = name.partition(":")
    if sep and head.strip().lower() in _PATH_KINDS:
        if not rest.strip():
            raise DDKitError(f"{name!r}: give a path after '{head}:', e.g. {head}:/data/my_images")
        return head.strip().lower(), Path(rest.strip()).expanduser()
    return None


def _resolve(name: str) -> str:
    try:
        return DATASETS.resolve(name)
    except UnknownNameError as e:
        raise UnknownNameError(f"{e}; or folder:<path> (train/<class>/...) or tar:<path.tar.gz>") from None


def create_dataset(name: str, root: str | Path | None = None, split: str = "train", *,
                   classes: Optional[Sequence[str]] = None, image_size: Optional[int] = None,
                   cache_dir: str | Path | None = None, download: bool = False, progress: bool = True
                   ) -> ImageDataset:
    """Load one split of a dataset as uint8 images + labels.

    Args:
        name: a name from `list_datasets()` (aliases like 'CIFAR-10' work), 'folder:<path>' for an
            ImageFolder tree (<path>/train/<class>/..., <path>/val|test/<class>/...), or 'tar:<path>'
            for a .tar/.tar.gz of such a tree (optionally inside one top folder).
        root: where a named set's files live (default env DDKIT_DATA or ./data).
        split: 'train', 'test' or 'val' ('val' and 'test' fall back to each other's folder).
        classes: keep only these classes, labelled in this order (folders: missing folder -> error).
        image_size: side in pixels (resize short side + center crop); default: the set's own size.
        cache_dir: uint8 cache location (default env DDKIT_CACHE or ~/.cache/ddkit).
        download: allow torchvision to download (needs internet).
        progress: show a tqdm bar while decoding.

    Returns:
        ImageDataset (FileImageDataset for imagenet/imagenette/imagewoof, which decode on demand).
    """
    split = normalize_split(split)
    if image_size is not None and (int(image_size) != image_size or image_size < 1):
        raise DDKitError(f"image_size must be a positive integer, got {image_size!r}")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cls = tuple(classes) if classes is not None else None
    if cls is not None:  # `--classes 3,3` made a two-class set whose class 0 had no images (#25)
        twice = sorted({c for c in cls if cls.count(c) > 1})
        if twice:
            raise DDKitError(f"--classes names {', '.join(map(str, twice))} more than once ({','.join(map(str, cls))});"
                             f" give each class once, in the label order you want")
        if not cls:
            raise DDKitError("--classes is empty; give at least one class name (or leave it out for all)")
    spec = _path_spec(name)
    if spec is not None:
        kind, path = spec
        return load_image_files(kind, path, split, name=f"{kind}:{path}", classes=cls, image_size=image_size,
                                channels=None, cache_dir=cache, progress=progress)
    canonical = _resolve(name)
    req = Request(canonical, Path(root).expanduser() if root is not None else None, split, cls, image_size, cache,
                  bool(download), bool(progress))
    return DATASETS.get(canonical)(req)


def list_datasets() -> List[str]:
    """Registered dataset names (sorted). Any image tree also works as 'folder:<path>' or 'tar:<path>'."""
    return DATASETS.names()


def dataset_info(name: str, cache_dir: str | Path | None = None) -> DatasetInfo:
    """The facts-table row for a named set; for folder:/tar: the facts measured from its (cached) train split."""
    spec = _path_spec(name)
    if spec is None:
        return FACTS[_resolve(name)]
    ds = create_dataset(name, split="train", cache_dir=cache_dir, progress=False)
    return DatasetInfo(name, ds.num_classes, ds.image_size, ds.channels, ds.mean, ds.std,
                       f"your own data at {spec[1]}")
