"""The uint8 array cache: decode a dataset once, memory-map it on every later run.

An entry is a folder `<cache_dir>/<name>-<split>-<key>/` holding images.npy (N×C×H×W uint8),
labels.npy (int64) and meta.json (class names, source, computed mean/std). The key hashes
everything the pixels depend on: dataset name, split, absolute source path, the source's
size+mtime (files) or its class folders' mtimes (directories, where a full walk of 1.28M files
would cost more than it saves), the class list, the image size and the cache format version.
Entries are written with `atomic_dir`, so an interrupted decode never leaves a half entry.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from ..utils import atomic_dir, atomic_write_bytes

CACHE_VERSION = 1  # bump when the stored pixels for the same key would change
Arrays = Tuple[np.ndarray, np.ndarray, Dict[str, Any]]  # images, labels, meta


def default_cache_dir() -> Path:
    """env DDKIT_CACHE, else ~/.cache/ddkit."""
    env = os.environ.get("DDKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ddkit"


def default_data_root() -> Path:
    """Where named datasets live when no root is given: env DDKIT_DATA, else ./data (torchvision's habit)."""
    return Path(os.environ.get("DDKIT_DATA", "data")).expanduser()


def file_fingerprint(path: str | Path) -> Dict[str, Any]:
    """Absolute path, size and mtime of one file: changes whenever the file is replaced."""
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def dir_fingerprint(path: str | Path) -> Dict[str, Any]:
    """A folder and its immediate sub-folders' mtimes: adding/removing an image changes its class folder's mtime."""
    p = Path(path).resolve()
    subs = sorted((e.name, e.stat().st_mtime_ns) for e in os.scandir(p) if e.is_dir())
    return {"path": str(p), "mtime_ns": p.stat().st_mtime_ns, "subdirs": subs}


def cache_key(parts: Dict[str, Any]) -> str:
    """16 hex digits of sha256 over the JSON of `parts` (sorted keys, so order never matters)."""
    blob = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def safe_name(name: str) -> str:
    """`name` as one path component: runs of other than [A-Za-z0-9._-] become '_' (a `tar:../x.tar.gz`
    dataset name must not create folders), at most 60 characters; 'data' when nothing is left."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[:60] or "data"


def _entry_dir(cache_dir: Path, name: str, split: str, key: str) -> Path:
    return Path(cache_dir) / f"{safe_name(name)}-{split}-{key}"


def load_entry(entry: Path) -> Optional[Tuple[torch.Tensor, torch.Tensor, Dict[str, Any]]]:
    """(images, labels, meta) of a complete entry, images memory-mapped; None when absent or unreadable."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        # mmap_mode="c" (copy-on-write): torch gets a writable view without a warning, and a
        # stray in-place op changes only this process's pages, never the cache file.
        images = np.load(entry / "images.npy", mmap_mode="c")
        labels = np.load(entry / "labels.npy")
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    if images.ndim != 4 or len(images) != len(labels) or meta.get("count") != len(labels):
        return None
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), meta


def save_entry(entry: Path, images: np.ndarray, labels: np.ndarray, meta: Dict[str, Any]) -> None:
    """Write an entry atomically (temporary sibling folder, then rename)."""
    with atomic_dir(entry, overwrite=True) as tmp:
        np.save(tmp / "images.npy", np.ascontiguousarray(images, dtype=np.uint8))
        np.save(tmp / "labels.npy", np.asarray(labels, dtype=np.int64))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))


def cached_arrays(cache_dir: Optional[str | Path], name: str, split: str, key_parts: Dict[str, Any],
                  build: Callable[[], Arrays]) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, Any]]:
    """Return the cached entry for `key_parts`, or call `build()` and cache its result.

    `build` returns (uint8 N×C×H×W images, labels, meta); meta must hold "classes" and may hold
    "mean"/"std". A cache folder that cannot be written only costs a warning: the data still loads.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = cache_key({"name": name, "split": split, **key_parts})
    entry = _entry_dir(cache_dir, name, split, key)
    hit = load_entry(entry)
    if hit is not None:
        return hit
    images, labels, meta = build()
    meta = {**meta, "name": name, "split": split, "key": key, "key_parts": key_parts, "count": int(len(labels)),
            "shape": list(images.shape)}
    try:
        save_entry(entry, images, labels, meta)
    except OSError as e:
        warnings.warn(f"could not write the dataset cache {entry} ({e}); the next run decodes again")
    images = np.require(images, np.uint8, ["C", "W"])  # torch wants writable memory (IDX arrays are read-only views)
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), meta


def cached_json(cache_dir: Optional[str | Path], name: str, key_parts: Dict[str, Any],
                build: Callable[[], Any]) -> Any:
    """A small JSON value (e.g. a per-class file index) cached under the same keying rules."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = _entry_dir(cache_dir, name, "index", cache_key({"name": name, **key_parts})).with_suffix(".json")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    value = build()
    try:
        atomic_write_bytes(path, json.dumps(value).encode())
    except OSError as e:
        warnings.warn(f"could not write the index cache {path} ({e}); the next run lists files again")
    return value


def compute_mean_std(images: np.ndarray | torch.Tensor, chunk: int = 4096
                     ) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 N×C×H×W images, in [0,1] units.

    Sums are exact integers (int64), so the result does not depend on chunking or thread count.
    """
    arr = images.numpy() if isinstance(images, torch.Tensor) else images
    n, c = arr.shape[:2]
    if n == 0:
        raise ValueError("cannot compute mean/std of an empty split")
    s = np.zeros(c, dtype=np.int64)
    s2 = np.zeros(c, dtype=np.int64)
    for i in range(0, n, chunk):
        x = np.asarray(arr[i:i + chunk]).reshape(min(chunk, n - i), c, -1).astype(np.int64)
        s += x.sum(axis=(0, 2))
        s2 += (x * x).sum(axis=(0, 2))
    count = n * arr.shape[2] * arr.shape[3]
    mean = s / (count * 255.0)
    var = np.maximum(s2 / (count * 255.0 ** 2) - mean ** 2, 0.0)
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(v), 4) for v in np.sqrt(var))


def select_classes(images: torch.Tensor, labels: torch.Tensor, all_classes: Sequence[str],
                   classes: Optional[Sequence[str]], what: str) -> Tuple[torch.Tensor, torch.Tensor, list]:
    """Keep only `classes` (in that order, relabelled 0..k-1); unknown names are a user error."""
    if classes is None:
        return images, labels, list(all_classes)
    from ..utils import DDKitError

    pos = {c: i for i, c in enumerate(all_classes)}
    missing = [c for c in classes if c not in pos]
    if missing:
        raise DDKitError(f"{what} has no class {missing[0]!r}; its classes are: {', '.join(all_classes)}")
    remap = torch.full((len(all_classes),), -1, dtype=torch.long)
    for new, c in enumerate(classes):
        remap[pos[c]] = new
    new_labels = remap[labels]
    keep = torch.nonzero(new_labels >= 0).squeeze(1)
    return images[keep], new_labels[keep], list(classes)
