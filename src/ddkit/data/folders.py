"""Image-file sources decoded into the uint8 cache: ImageFolder trees, tar archives of them, Tiny-ImageNet.

Layout rules (shared by `folder:` and `tar:`):
- `<root>/<split>/<class>/.../<image>`; a tar may wrap that in one top folder
  (`cifar10-jpeg75/train/airplane/0001.jpg`).
- split `train` reads train/; `test` reads test/ if present else val/; `val` the reverse.
- Class order: exactly `classes` when given (a missing class folder is an error naming it),
  else the sorted folder names of train/ (so test labels always match train labels).
- Within a class, images are ordered by path, so a folder and a tar of it load identically.
- mean/std are computed over the decoded train split and stored with its cache entry, unless
  the caller passes the known statistics of a named set.
"""
from __future__ import annotations

import os
import tarfile
import zlib
from itertools import chain
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..utils import DDKitError
from .base import ImageDataset
from .cache import cached_arrays, compute_mean_std, dir_fingerprint, file_fingerprint
from .decode import decode_many, is_image_name, probe_size
from .facts import split_dir_candidates

Stats = Tuple[Tuple[float, ...], Tuple[float, ...]]


def pick_split_dir(root: Path, split: str) -> Path:
    """The folder holding `split` under root (see the module rules); a clear error when absent."""
    for cand in split_dir_candidates(split):
        if (root / cand).is_dir():
            return root / cand
    want = " or ".join(f"{c}/" for c in split_dir_candidates(split))
    raise DDKitError(f"{root} has no {want} folder for split {split!r}; expected {root}/<split>/<class>/<image>")


def subdirs(path: Path) -> List[str]:
    """Sorted names of the non-hidden sub-folders of `path`."""
    return sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))


def resolve_classes(train_classes: Sequence[str], split_classes: Sequence[str],
                    classes: Optional[Sequence[str]], where: str) -> List[str]:
    """Class list in label order, checked against the folders found in the loaded split."""
    present = set(split_classes)
    if classes is not None:
        classes = list(classes)
        if len(set(classes)) != len(classes):
            raise DDKitError(f"duplicate names in the class list: {classes}")
        missing = [c for c in classes if c not in present]
        if missing:
            raise DDKitError(f"class folder {missing[0]!r} not found in {where}; found: {', '.join(sorted(present))}")
        return classes
    names = sorted(train_classes or split_classes)
    extra = sorted(present - set(names))
    if extra:
        raise DDKitError(f"{where} has class folder {extra[0]!r} that the train split lacks; pass an explicit class list")
    missing = sorted(set(names) - present)
    if missing:
        raise DDKitError(f"{where} lacks class folder(s) {', '.join(missing[:5])} that the train split has: accuracy "
                         f"over the other classes would not be comparable; add them or pass an explicit class list")
    return names


def _walk_images(folder: Path) -> List[str]:
    """Image files under `folder` (recursively, like torchvision's ImageFolder), sorted by path."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        out.extend(os.path.join(dirpath, f) for f in filenames if is_image_name(f))
    return sorted(out)


def _decode_labelled(items: Sequence[Tuple[str, str, int]], image_size: Optional[int], mode: str,
                     progress: bool, desc: str) -> Tuple[np.ndarray, np.ndarray]:
    """Decode (name, path, label) items into uint8 images (side = image_size or the first image's)."""
    if not items:
        raise DDKitError(f"no images found for {desc}")
    size = image_size or probe_size(items[0][1], items[0][0])
    images = decode_many(((n, p) for n, p, _ in items), size, mode, progress=progress, total=len(items), desc=desc)
    return images, np.array([lab for _, _, lab in items], dtype=np.int64)


def _with_stats(images: np.ndarray, labels: np.ndarray, classes: List[str], split: str, source: str):
    meta: Dict[str, object] = {"classes": classes, "source": source}
    if split == "train":  # the split whose statistics normalise every split
        meta["mean"], meta["std"] = compute_mean_std(images)
    return images, labels, meta


# -- folder: -------------------------------------------------------------------------------------
def _build_folder(root: Path, split: str, classes: Optional[Sequence[str]], image_size: Optional[int],
                  mode: str, progress: bool):
    split_dir = pick_split_dir(root, split)
    train = subdirs(root / "train") if (root / "train").is_dir() else []
    names = resolve_classes(train, subdirs(split_dir), classes, str(split_dir))
    items = [(p, p, label) for label, c in enumerate(names) for p in _walk_images(split_dir / c)]
    images, labels = _decode_labelled(items, image_size, mode, progress, f"{root.name}/{split_dir.name}")
    return _with_stats(images, labels, names, split, str(root))


def _folder_fingerprint(root: Path) -> Dict[str, object]:
    return {c: dir_fingerprint(root / c) for c in ("train", "val", "test") if (root / c).is_dir()}


# -- tar: ----------------------------------------------------------------------------------------
_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "lzma"))


def _open_stream(path: Path):
    with open(path, "rb") as f:
        magic = f.read(6)
    for sig, mod in _COMPRESSED:
        if magic.startswith(sig):
            return __import__(mod).open(path, "rb")
    return open(path, "rb")


class _NeedTarfile(Exception):
    """The fast reader met a header it does not handle (sparse, hard link, base-256 size, bad checksum)."""


def _pax_records(data: bytes) -> Dict[bytes, bytes]:
    """'<len> key=value\\n' records of a pax extended header."""
    out, pos = {}, 0
    while pos < len(data) and data[pos:pos + 1] not in (b"\0", b""):
        sp = data.index(b" ", pos)
        end = pos + int(data[pos:sp])
        key, _, value = data[sp + 1:end - 1].partition(b"=")
        out[key] = value
        pos = end
    return out


def _fast_tar_files(path: Path) -> Iterator[Tuple[str, bytes]]:
    # ustar/GNU/pax headers parsed by hand: ~6x faster than tarfile's per-member objects on 60k
    # small members (0.4 s vs 2.4 s for CIFAR-10 as JPEGs), which made the archive pass the bottleneck.
    long_name: Optional[bytes] = None
    pax: Dict[bytes, bytes] = {}
    with _open_stream(path) as f:
        while True:
            h = f.read(512)
            if len(h) < 512 or h.count(0) == 512:
                return
            chk = h[148:156].strip(b" \0")
            if h[124] & 0x80 or not chk or int(chk, 8) != sum(h[:148]) + 256 + sum(h[156:]):
                raise _NeedTarfile
            kind = h[156:157]
            if kind in (b"S", b"1"):
                raise _NeedTarfile
            size = int(h[124:136].strip(b" \0") or b"0", 8)
            if kind not in (b"x", b"g", b"L", b"K") and b"size" in pax:
                size = int(pax[b"size"])
            data = f.read(size) if size else b""
            if len(data) < size:
                raise EOFError(f"unexpected end of archive inside member {h[:100].rstrip(bytes(1))!r}")
            f.read(-size % 512)
            if kind == b"x":  # pax header: applies to the next member only
                pax = _pax_records(data)
                continue
            if kind == b"g":  # global pax header: only harmless keys are supported here
                if {b"path", b"size"} & set(_pax_records(data)):
                    raise _NeedTarfile
                continue
            if kind == b"L":  # GNU long name for the next member
                long_name = data.split(b"\0", 1)[0]
                continue
            if kind == b"K":
                continue
            name = h[:100].split(b"\0", 1)[0]
            if h[257:262] == b"ustar" and h[345] != 0:
                name = h[345:500].split(b"\0", 1)[0] + b"/" + name
            name = pax.get(b"path") or long_name or name
            pax, long_name = {}, None
            if kind in (b"0", b"\0", b"7"):
                yield name.decode("utf-8", "surrogateescape"), data


def iter_tar_files(path: Path) -> Iterator[Tuple[str, bytes]]:
    """(member name, bytes) of every regular file in a tar/.tar.gz/.bz2/.xz, in archive order, no extraction.

    Falls back to the tarfile module (skipping members already yielded) for headers the fast reader
    does not parse, so exotic archives still load and corrupt ones raise tarfile's error.
    """
    done = 0
    try:
        for item in _fast_tar_files(path):
            done += 1
            yield item
        return
    except (_NeedTarfile, ValueError):  # ValueError: a garbled number field; tarfile words the error
        pass
    with tarfile.open(path, "r:*") as tf:
        seen = 0
        for m in tf:
            if not (m.isfile() or m.islnk()):  # a hard link reads as its target's bytes
                continue
            seen += 1
            if seen > done:
                f = tf.extractfile(m)
                yield m.name, f.read() if f is not None else b""


def _tar_members(tar_path: Path, wanted_dirs: Sequence[str], classes: Optional[Sequence[str]],
                 found: Dict[str, set], records: List[Tuple[str, str, str]]) -> Iterator[Tuple[str, bytes]]:
    """Yield (display name, bytes) of image members under a wanted split dir, straight from the archive.

    Records (split dir, class, member) of each yielded member, and every class folder seen per split
    dir in `found`, so the caller can fix the class list after the single pass.
    """
    prefix_len: Optional[int] = None
    wanted_classes = set(classes) if classes is not None else None
    for name, data in iter_tar_files(tar_path):
        if not is_image_name(name):
            continue
        parts = [p for p in name.split("/") if p and p != "."]  # str ops: PurePosixPath cost 0.6 s per 60k
        if prefix_len is None:  # decided once, from the first image: bare tree or one top folder
            prefix_len = 0 if len(parts) >= 3 and parts[0] in ("train", "test", "val") else 1
        rel = parts[prefix_len:]
        if len(rel) < 3:
            continue
        found.setdefault(rel[0], set()).add(rel[1])
        if rel[0] not in wanted_dirs or (wanted_classes is not None and rel[1] not in wanted_classes):
            continue
        records.append((rel[0], rel[1], name))
        yield f"{tar_path}:{name}", data


def _build_tar(tar_path: Path, split: str, classes: Optional[Sequence[str]], image_size: Optional[int],
               mode: str, progress: bool):
    wanted = split_dir_candidates(split)
    found: Dict[str, set] = {}
    records: List[Tuple[str, str, str]] = []
    stream = _tar_members(tar_path, wanted, classes, found, records)
    try:
        first = next(stream, None)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DDKitError(f"cannot read archive {tar_path}: {e}; give a .tar/.tar.gz of <split>/<class>/ images") from None
    if first is None:
        raise DDKitError(f"{tar_path} holds no images under {' or '.join(w + '/' for w in wanted)} "
                         f"(expected [top/]<split>/<class>/<image>)")
    size = image_size or probe_size(first[1], first[0])
    try:
        decoded = decode_many(chain([first], stream), size, mode, progress=progress, desc=f"{tar_path.name}/{split}")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:  # truncated/corrupt archive, not one image
        raise DDKitError(f"cannot read archive {tar_path}: {e}; re-download or re-create it") from None
    split_dir = next(d for d in wanted if d in found)
    names = resolve_classes(sorted(found.get("train", ())), sorted(found[split_dir]), classes,
                            f"{tar_path}:{split_dir}/")
    label_of = {c: i for i, c in enumerate(names)}
    rows = [i for i, (d, c, _) in enumerate(records) if d == split_dir and c in label_of]
    # Same order as the folder source: by class label, then by path.
    rows.sort(key=lambda i: (label_of[records[i][1]], records[i][2]))
    labels = np.array([label_of[records[i][1]] for i in rows], dtype=np.int64)
    images = decoded[np.array(rows, dtype=np.int64)] if rows != list(range(len(decoded))) else decoded
    return _with_stats(images, labels, names, split, str(tar_path))


def load_image_files(kind: str, path: Path, split: str, *, name: str, classes: Optional[Sequence[str]] = None,
                     image_size: Optional[int] = None, channels: Optional[int] = None,
                     cache_dir: Optional[Path] = None,
                     progress: bool = True, stats: Optional[Stats] = None) -> ImageDataset:
    """Load split `split` of an ImageFolder tree (kind 'folder') or a tar of one (kind 'tar'), cached.

    `stats` gives known mean/std (named sets); without it they come from the decoded train split.
    `channels` None keeps the files' channel count: grey images stay 1 channel (see keep_grey), so
    flip/normalisation defaults that depend on it see the truth; 1 or 3 forces L or RGB.
    """
    path = Path(path).expanduser().resolve()
    mode = "L" if channels == 1 else "RGB"  # grey files are found after decoding (keep_grey)
    if kind == "tar":
        if not path.is_file():
            raise DDKitError(f"tar archive {path} not found; give the path to a .tar or .tar.gz of <split>/<class>/ folders")
        fingerprint = file_fingerprint(path)
        build = lambda: _build_tar(path, split, classes, image_size, mode, progress)  # noqa: E731
    elif kind == "folder":
        if not path.is_dir():
            hint = f" (for an archive use tar:{path})" if path.is_file() else ""
            raise DDKitError(f"image folder {path} not found{hint}; expected {path}/train/<class>/<image>")
        fingerprint = _folder_fingerprint(path)
        build = lambda: _build_folder(path, split, classes, image_size, mode, progress)  # noqa: E731
    else:
        raise ValueError(f"kind must be 'folder' or 'tar', got {kind!r}")
    key_parts = {"kind": kind, "source": fingerprint, "classes": list(classes) if classes is not None else None,
                 "image_size": image_size, "mode": mode}
    images, labels, meta = cached_arrays(cache_dir, name, split, key_parts, build)
    counts = torch.bincount(labels, minlength=len(meta["classes"]))
    if bool((counts == 0).any()):
        empty = [meta["classes"][c] for c in torch.nonzero(counts == 0).flatten().tolist()]
        raise DDKitError(f"{path} split {split!r} has no images of class(es) {', '.join(empty[:5])}: accuracy over "
                         f"the other classes would not be comparable; add the images or pass an explicit class list")
    if channels is None:
        images = keep_grey(images)
    if stats is None:
        if split == "train":
            stats = (tuple(meta["mean"]), tuple(meta["std"]))
        else:
            train = load_image_files(kind, path, "train", name=name, classes=classes, image_size=image_size,
                                     channels=channels, cache_dir=cache_dir, progress=progress)
            stats = (train.mean, train.std)
    if len(stats[0]) != images.shape[1]:  # statistics of the 3 decoded (equal) channels of a grey set
        stats = (tuple(stats[0][:images.shape[1]]), tuple(stats[1][:images.shape[1]]))
    return ImageDataset(images, labels, meta["classes"], stats[0], stats[1], name, split)


def keep_grey(images: torch.Tensor) -> torch.Tensor:
    """1 channel when every image's R, G and B are equal (grey files decoded as RGB), else `images` as is.

    Checked on the decoded pixels, not on the first file's mode, so a colour set holding a few grey
    JPEGs (ImageNet has some) stays RGB; a colour first image settles it at once.
    """
    if images.ndim != 4 or images.shape[1] != 3 or len(images) == 0:
        return images
    first = images[0]
    if not (torch.equal(first[0], first[1]) and torch.equal(first[0], first[2])):
        return images
    if bool((images[:, 0] == images[:, 1]).all()) and bool((images[:, 0] == images[:, 2]).all()):
        return images[:, :1].contiguous()
    return images


# -- Tiny-ImageNet -------------------------------------------------------------------------------
def _tiny_classes(root: Path) -> List[str]:
    wnids = root / "wnids.txt"
    if wnids.is_file():
        return sorted(w.strip() for w in wnids.read_text().split() if w.strip())
    if (root / "train").is_dir():
        return subdirs(root / "train")
    raise DDKitError(f"{root} has neither wnids.txt nor train/; point --data-root at tiny-imagenet-200/")


def _read_val_annotations(root: Path) -> List[Tuple[str, str]]:
    ann = root / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise DDKitError(f"{ann} not found; Tiny-ImageNet val labels live there (filename<TAB>wnid<TAB>bbox)")
    rows = []
    for line in ann.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and fields[0].strip():
            rows.append((fields[0].strip(), fields[1].strip()))
    return rows


def _build_tiny(root: Path, split: str, classes: Optional[Sequence[str]], image_size: Optional[int], progress: bool):
    all_classes = _tiny_classes(root)
    names = resolve_classes(all_classes, all_classes, classes, str(root / "wnids.txt"))
    label_of = {c: i for i, c in enumerate(names)}
    if split == "train":
        items = [(p, p, label_of[c]) for c in names for p in _walk_images(root / "train" / c / "images")]
    else:  # the official test/ has no labels, so both 'test' and 'val' read val/
        val = sorted((label_of[w], f) for f, w in _read_val_annotations(root) if w in label_of)
        items = [(str(root / "val" / "images" / f), str(root / "val" / "images" / f), lab) for lab, f in val]
    images, labels = _decode_labelled(items, image_size or 64, "RGB", progress, f"tiny-imagenet/{split}")
    return _with_stats(images, labels, names, split, str(root))


def load_tiny_imagenet(root: Path, split: str, *, classes: Optional[Sequence[str]], image_size: Optional[int],
                       cache_dir: Optional[Path], progress: bool, stats: Stats) -> ImageDataset:
    """Tiny-ImageNet in its official layout (train/<wnid>/images/, val/images/ + val_annotations.txt)."""
    root = Path(root).expanduser().resolve()
    if (root / "tiny-imagenet-200").is_dir():
        root = root / "tiny-imagenet-200"
    split = "train" if split == "train" else "test"
    sub = root / ("train" if split == "train" else "val")
    if not sub.is_dir():
        raise DDKitError(f"Tiny-ImageNet not found under {root} (no {sub.name}/); download and unzip "
                         f"tiny-imagenet-200.zip and point --data-root at tiny-imagenet-200/")
    fp = {"dir": dir_fingerprint(sub)}
    if split != "train":
        fp["annotations"] = file_fingerprint(sub / "val_annotations.txt") if (sub / "val_annotations.txt").is_file() else None
    key_parts = {"kind": "tiny-imagenet", "source": fp, "classes": list(classes) if classes is not None else None,
                 "image_size": image_size}
    images, labels, meta = cached_arrays(cache_dir, "tiny-imagenet", split, key_parts,
                                         lambda: _build_tiny(root, split, classes, image_size, progress))
    return ImageDataset(images, labels, meta["classes"], stats[0], stats[1], "tiny-imagenet", split)
