"""Stored soft labels without fragility: FKD-style relabel records that any batch size or loader can read.

SRe2L stores, per epoch and per *batch*, crop coordinates, flips, mix parameters and fp16 logits; a
student must then replay the exact sampler order and batch size, and PyTorch's fetcher has to be
patched (peers.md §3.3). Here every record is addressed by (epoch, image index) alone:

* views: the augmentation params of view (e, i) are row i of `aug.sample(N, image_size,
  generator=make_generator(seed, "labels", e))`. Nothing is stored but the seed; `views(e, idx)`
  regenerates the params of the epoch (one vectorised draw, cached) and applies the rows of `idx`.
  The same view comes back for any batch composition, batch size, sampler or worker count. (A draw
  is one batch of N, so a batch-level choice such as `OneOf`'s op is made once per epoch.)
* logits: the teacher's logits of each view, fp16, in memory-mapped `.npy` arrays (np.load(...,
  mmap_mode="r") reads them too). Per-sample ops only: batch-mixing ops (CutMix/Mixup) are applied
  at training time, where the student's loss mixes the two stored targets.

Layout of the folder `path`:

    meta.json                    N, K, epochs, seed, top-k, image shape, aug repr, images/teacher
                                 fingerprints, epochs_done (the store is filled epoch by epoch; resumable)
    logits.npy                   float16 epochs × N × K                         (full store)
    topk_values.npy              float16 epochs × N × k, per row in descending order   (top-k store)
    topk_indices.npy             int16 (K ≤ 32767) or int32, epochs × N × k
    lse.npy                      float32 epochs × N: log-sum-exp of the full fp32 logits

Top-k reconstruction (`fill`): "uniform" (default) puts the stored k logits back exactly and gives
each other class the logit lse + log(r / (K - k)), r = 1 - Σ softmax(top-k): the probabilities (T = 1)
of the top-k are exact and the remaining mass is spread uniformly, so MSE and KL losses stay finite.
"neg_inf" gives the others -inf (softmax over the top-k only; KL-only).

Size (data bytes; each .npy adds a 128-byte header):
    full:  E · N · K · 2 B
    top-k: E · N · (k · (2 + b) + 4) B,  b = 2 bytes per index (int16) when K ≤ 32767, else 4
ImageNet-1K, IPC 10 (N = 10,000), 300 epochs: full 300 · 10,000 · 1000 · 2 B = 6.0 GB (as SRe2L);
top-10: 300 · 10,000 · (10 · 4 + 4) B = 132 MB (120 MB values + indices, 12 MB lse).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

from ddkit.augment import Augment, Params, select
from ddkit.loaders import read_json_keys, read_npy
from ddkit.ranks import rank_world, together
from ddkit.teachers.committee import Committee, FrozenCommittee
from ddkit.teachers.frozen import FrozenTeacher
from ddkit.utils import DDKitError, atomic_write_bytes, get_device, make_generator

FORMAT = "ddkit-labels/1"
FILLS = ("uniform", "neg_inf")
_F16_MAX = 65504.0


def label_store_nbytes(epochs: int, n: int, num_classes: int, topk: Optional[int] = None) -> int:
    """Data bytes of a store (see the module docstring for the formula)."""
    if topk is None:
        return epochs * n * num_classes * 2
    return epochs * n * (topk * (2 + _index_dtype(num_classes).itemsize) + 4)


def _index_dtype(num_classes: int) -> np.dtype:
    return np.dtype(np.int16) if num_classes <= np.iinfo(np.int16).max else np.dtype(np.int32)


def _fingerprint(t: torch.Tensor | Dict[str, torch.Tensor]) -> str:
    h = hashlib.sha1()
    for k, v in sorted(t.items()) if isinstance(t, dict) else [("x", t)]:
        v = v.detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}:{v.dtype}:{v.numel()}".encode())
        h.update(v.view(torch.uint8).numpy())  # the buffer itself: no second host copy of a large set
    return h.hexdigest()[:16]


class LabelStore:
    """A built store: read teacher logits (and regenerate the augmented views) by (epoch, indices).

    Picklable for DataLoader workers (memory maps are reopened lazily in each process).
    """

    def __init__(self, path: str | Path, meta: Dict[str, Any], images: Optional[torch.Tensor] = None,
                 aug: Optional[Augment] = None) -> None:
        self.path, self.meta, self.images, self.aug = Path(path), meta, images, aug
        self._arrays: Dict[str, np.ndarray] = {}
        self._params: Dict[int, Params] = {}

    @classmethod
    def open(cls, path: str | Path, images: Optional[torch.Tensor] = None,
             aug: Optional[Augment] = None) -> "LabelStore":
        """Open a store. `images` and `aug` (the ones it was built with; both are checked) are only
        needed for `views`; `logits` works without them."""
        path = Path(path)
        if not (path / "meta.json").is_file():
            raise FileNotFoundError(f"{path} is not a ddkit label store (no meta.json): build it with build_label_store")
        meta = _read_meta(path)
        _check_arrays(path, meta)
        if images is not None and _fingerprint(images) != meta["images_fingerprint"]:
            raise DDKitError(f"the images given differ from those {path} was built from: pass the same distilled set")
        if aug is not None and repr(aug) != meta["aug"]:
            raise DDKitError(f"augmentation {aug!r} differs from the store's {meta['aug']}: pass the same one")
        return cls(path, meta, images, aug)

    # -- facts ----------------------------------------------------------------------------------------
    @property
    def epochs(self) -> int:
        return int(self.meta["epochs"])

    @property
    def epochs_done(self) -> int:
        return int(self.meta["epochs_done"])

    @property
    def num_images(self) -> int:
        return int(self.meta["num_images"])

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def topk(self) -> Optional[int]:
        return self.meta["topk"]

    def nbytes(self) -> int:
        """Data bytes on disk (excluding .npy headers and meta.json)."""
        return label_store_nbytes(self.epochs, self.num_images, self.num_classes, self.topk)

    # -- reading ----------------------------------------------------------------------------------------
    def _array(self, name: str, mode: str = "r") -> np.ndarray:
        arr = self._arrays.get(name)
        if arr is None or (mode == "r+" and not arr.flags.writeable):
            meta = getattr(self, "meta", None)  # a bare store (tests) has no promises to check
            dt, shape = _arrays_spec(self.num_images, self.num_classes, self.epochs, self.topk)[name] if meta \
                else (None, None)
            arr = self._arrays[name] = read_npy(self.path / f"{name}.npy", "label-store array", mmap_mode=mode,
                                                dtype=dt, shape=shape)
        return arr

    def _check(self, epoch: int, indices: torch.Tensor) -> np.ndarray:
        if not 0 <= epoch < self.epochs_done:
            raise DDKitError(f"epoch {epoch} is not in the store ({self.epochs_done} of {self.epochs} epochs built): "
                             f"use epoch % {self.epochs} to cycle, or finish the build (resume=True)")
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1).cpu().numpy()
        if len(idx) and (idx.min() < 0 or idx.max() >= self.num_images):
            raise IndexError(f"image index out of range 0..{self.num_images - 1}")
        return idx

    def logits(self, epoch: int, indices: Sequence[int] | torch.Tensor, fill: str = "uniform") -> torch.Tensor:
        """fp32 B×K teacher logits of views (epoch, indices); top-k stores are reconstructed with `fill`."""
        idx = self._check(epoch, torch.as_tensor(indices))
        if self.topk is None:
            return torch.from_numpy(np.asarray(self._array("logits")[epoch, idx], dtype=np.float32))
        if fill not in FILLS:
            raise DDKitError(f"unknown fill {fill!r}; choose one of {', '.join(FILLS)}")
        vals = torch.from_numpy(np.asarray(self._array("topk_values")[epoch, idx], dtype=np.float32))
        ind = torch.from_numpy(np.asarray(self._array("topk_indices")[epoch, idx], dtype=np.int64))
        k, kk = self.num_classes, self.topk
        if fill == "neg_inf" or kk == k:
            base = torch.full((len(idx), k), -math.inf)
        else:
            lse = torch.from_numpy(np.asarray(self._array("lse")[epoch, idx], dtype=np.float32))
            rest = (1 - torch.exp(vals - lse[:, None]).sum(1)).clamp(min=1e-12)  # mass outside the top-k
            base = (lse + torch.log(rest / (k - kk)))[:, None].expand(len(idx), k).clone()
        return base.scatter_(1, ind, vals)

    def params(self, epoch: int, indices: Sequence[int] | torch.Tensor) -> Params:
        """Augmentation params of views (epoch, indices), regenerated from the seed."""
        if self.aug is None:
            raise DDKitError("this store was opened without aug=: pass the augmentation it was built with")
        p = self._params.get(epoch)
        if p is None:
            gen = make_generator(int(self.meta["seed"]), "labels", int(epoch))
            p = self.aug.sample(self.num_images, tuple(self.meta["image_shape"][-2:]), generator=gen)
            if len(self._params) >= 2:  # a reader moves through epochs in order: keep the current and next
                self._params.pop(next(iter(self._params)))
            self._params[epoch] = p
        return select(p, torch.as_tensor(indices, dtype=torch.long).reshape(-1))

    def views(self, epoch: int, indices: Sequence[int] | torch.Tensor, device: Any = None,
              fill: str = "uniform") -> Tuple[torch.Tensor, torch.Tensor]:
        """(augmented [0,1] images B×C×H×W regenerated from the seed, fp32 logits B×K), both on `device`."""
        if self.images is None:
            raise DDKitError("this store was opened without images=: pass the distilled images it was built from")
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        logits = self.logits(epoch, idx, fill)
        dev = torch.device(device) if device is not None else self.images.device
        x = self.images[idx.to(self.images.device)].to(dev)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()  # a staged uint8 copy (large sets)
        x = self.aug.apply(x, self.params(epoch, idx))
        return x, logits.to(dev)

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_arrays"], state["_params"] = {}, {}  # memory maps and caches are per process
        return state

    def dataset(self, epoch: int, fill: str = "uniform") -> "EpochViews":
        """A map-style torch Dataset of epoch `epoch`: item i = (view image C×H×W, logits K)."""
        return EpochViews(self, epoch, fill)


class EpochViews(torch.utils.data.Dataset):
    """One epoch of a store for an ordinary DataLoader (any batch size, sampler, worker count)."""

    def __init__(self, store: LabelStore, epoch: int, fill: str = "uniform") -> None:
        self.store, self.epoch, self.fill = store, int(epoch), fill

    def __len__(self) -> int:
        return self.store.num_images

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        x, y = self.store.views(self.epoch, [i], device="cpu", fill=self.fill)
        return x[0], y[0]


def _create_store(path: Path, spec: Dict[str, Tuple[np.dtype, tuple]], meta: Dict[str, Any]) -> None:
    """Make an empty store at `path` (replacing one there) all at once: arrays of their final size with the
    disk space reserved, and meta.json, built in a temporary sibling and renamed into place. A full disk
    fails here as one OSError with nothing left behind (#25) — never as a 0-byte logits.npy without meta,
    nor later as a SIGBUS when a sparse memory map cannot get a page."""
    import errno
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))
    try:
        for name, (dt, shape) in spec.items():
            np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dt, shape=shape).flush()
            with open(tmp / f"{name}.npy", "r+b") as f:
                size = os.fstat(f.fileno()).st_size
                try:
                    os.posix_fallocate(f.fileno(), 0, size)  # reserve the blocks the epochs will fill
                except (AttributeError, OSError) as e:  # a filesystem without it stays sparse; a full disk fails
                    if getattr(e, "errno", None) == errno.ENOSPC:
                        raise
        atomic_write_bytes(tmp / "meta.json", json.dumps(meta, indent=2).encode())
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():  # --overwrite: the old store goes only once the new one is complete
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: meta.json keys a store must hold, with their types (a hand-edited or foreign meta is one line, not a KeyError)
_META_TYPES: Dict[str, Any] = {"format": str, "num_images": int, "num_classes": int, "epochs": int,
                               "epochs_done": int, "seed": int, "image_shape": list, "aug": str,
                               "images_fingerprint": str}


def _read_meta(path: Path) -> Dict[str, Any]:
    """A store's meta.json with every key the reader uses, of the right type and in range."""
    where = "label-store meta"
    meta = read_json_keys(path / "meta.json", where, keys=(*_META_TYPES, "topk"), types=_META_TYPES)
    if meta["format"] != FORMAT:
        raise DDKitError(f"{path}: unknown label-store format {meta['format']!r}")
    n, k, e, done, topk = (meta[x] for x in ("num_images", "num_classes", "epochs", "epochs_done", "topk"))
    if n < 1 or k < 1 or e < 1 or not 0 <= done <= e:
        raise DDKitError(f"{where} {path / 'meta.json'}: {done} of {e} epochs done, {n} images, {k} classes is "
                         f"not a store; rebuild it with `ddkit relabel --overwrite`")
    if topk is not None and (not isinstance(topk, int) or isinstance(topk, bool) or not 1 <= topk <= k):
        raise DDKitError(f"{where} {path / 'meta.json'}: topk {topk!r} must be null or 1..{k}; rebuild the store")
    return meta


def _check_arrays(path: Path, meta: Dict[str, Any]) -> None:
    """Every array present with the dtype and shape its meta promises (so reads never index past its end)."""
    for name, (dt, shape) in _arrays_spec(meta["num_images"], meta["num_classes"], meta["epochs"],
                                          meta["topk"]).items():
        read_npy(path / f"{name}.npy", "label-store array", mmap_mode="r", dtype=dt, shape=shape)


def _arrays_spec(n: int, k: int, epochs: int, topk: Optional[int]) -> Dict[str, Tuple[np.dtype, tuple]]:
    if topk is None:
        return {"logits": (np.dtype(np.float16), (epochs, n, k))}
    return {"topk_values": (np.dtype(np.float16), (epochs, n, topk)),
            "topk_indices": (_index_dtype(k), (epochs, n, topk)), "lse": (np.dtype(np.float32), (epochs, n))}


def build_label_store(images: Any, teacher: Any, aug: Augment, epochs: int, seed: int, path: str | Path,
                      topk: Optional[int] = None, batch_size: int = 256, device: Any = None, progress: bool = True,
                      resume: bool = False, overwrite: bool = False, amp: bool = False) -> LabelStore:
    """Label `epochs` augmented views of every image with the teacher and store the logits at `path`.

    Args:
        images: float N×C×H×W in [0,1] (uint8 accepted) or a DistilledSet.
        teacher: a ddkit Teacher (model, mean, std, classes), seen through `FrozenTeacher` on `device`
            (a private copy only when its weights live elsewhere), or a `teachers.committee.Committee`
            (the members' logits combined by its vote; a batch-dependent rule — norm_mean, batch_stats —
            labels seeded random batches of `batch_size` and records it as `label_batch`).
        aug: per-sample, replayable augmentation of [0,1] images (e.g. Compose([RandomResizedCrop, Flip])).
        epochs, seed: views (e, i) for e < epochs, params drawn from (seed, "labels", e).
        topk: None = full fp16 logits; k = top-k values + indices + log-sum-exp (module docstring).
        batch_size: teacher batch (any value gives the same store up to float rounding of the teacher).
        resume: continue an interrupted build at its first unfinished epoch; overwrite: replace a store.
        amp: bf16 teacher on CUDA (off by default: fp32 logits rounded once to fp16, as SRe2L).

    Under torchrun the ranks share the epochs (epoch e on rank e % W within each round of W epochs; rank 0
    creates the store and declares each round done), and each epoch's rows are written as exact byte ranges:
    the store is the one-process store, byte for byte on CPU.
    """
    if hasattr(images, "images") and hasattr(images, "labels"):
        images = images.images
    images = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    if images.ndim != 4:
        raise DDKitError(f"images must be N×C×H×W, got {tuple(images.shape)}")
    if aug.needs_batch:
        raise DDKitError(f"{type(aug).__name__} mixes the batch: store per-sample views and mix at training time")
    n, k = len(images), len(teacher.classes)
    if epochs < 1 or batch_size < 1:
        raise DDKitError(f"epochs and batch_size must be ≥ 1, got {epochs} and {batch_size}")
    if topk is not None and not 1 <= topk <= k:
        raise DDKitError(f"--topk must be in 1..{k} (the number of classes), got {topk}")
    meta: Dict[str, Any] = {
        "format": FORMAT, "num_images": n, "num_classes": k, "epochs": int(epochs), "seed": int(seed),
        "topk": topk, "image_shape": list(images.shape[1:]), "aug": repr(aug),
        "images_fingerprint": _fingerprint(images), "teacher_fingerprint": _fingerprint(teacher.model.state_dict()),
        "teacher_arch": getattr(teacher, "arch", None), "fill_default": "uniform", "epochs_done": 0}
    batch_dependent = isinstance(teacher, Committee) and teacher.batch_dependent
    if batch_dependent:  # a view's label depends on its batch-mates: the batch size is part of the store
        meta["label_batch"] = int(batch_size)
    path = Path(path)
    spec = _arrays_spec(n, k, epochs, topk)
    rank, world = rank_world()
    # Rank 0 checks and creates the store (every rank hears of its refusal); then the ranks share the epochs.
    start = together(_open_for_build if rank == 0 else lambda *a: None, path, meta, spec, resume, overwrite)[0]
    meta["epochs_done"] = start
    store = LabelStore(path, meta, images, aug)
    dev = get_device(device) if not isinstance(device, torch.device) else device
    if isinstance(teacher, Committee):  # several teachers label each view together (teachers.committee)
        ft = FrozenCommittee(teacher, dev, amp=amp, max_batch=batch_size)
    else:
        ft = FrozenTeacher(teacher, dev, amp=amp, channels_last=False, max_batch=batch_size)
    offsets = {name: int(store._array(name).offset) for name in spec}
    bar = tqdm(total=(epochs - start) * n, desc="relabel", disable=not (progress and rank == 0), dynamic_ncols=True,
               mininterval=1.0)
    for first in range(start, epochs, world):
        # A round: epoch first + r on rank r (torchrun; one epoch per round in one process). Each rank writes
        # the exact bytes of its epoch's rows, so no rank's write can touch another's, on any filesystem.
        e = first + rank
        together(_label_epoch if e < epochs else lambda *a: None, store, ft, images, aug, e, batch_size, spec,
                 offsets, dev, batch_dependent)
        done = min(first + world, epochs)
        bar.update((done - first) * n)
        if rank == 0:  # every epoch of the round is on disk (`together` waited for them): declare them done
            meta["epochs_done"] = done
            atomic_write_bytes(path / "meta.json", json.dumps(meta, indent=2).encode())
    bar.close()
    together(lambda: None)  # no rank returns before rank 0 declared the last epoch
    store.meta = _read_meta(path)
    store._arrays.clear()  # readers reopen read-only
    return store


def _open_for_build(path: Path, meta: Dict[str, Any], spec: Dict[str, Tuple[np.dtype, tuple]], resume: bool,
                    overwrite: bool) -> int:
    """The first epoch to build at `path`: a resumable store's first unfinished epoch, else 0 (a new store)."""
    start = 0
    if path.exists() and resume and (path / "meta.json").is_file():
        old = _read_meta(path)
        diff = [key for key in meta if key != "epochs_done" and old.get(key) != meta[key]]
        if diff:
            raise DDKitError(f"{path} was built with other {', '.join(diff)}: use another path or overwrite=True")
        start = int(old["epochs_done"])
    elif path.exists() and not overwrite:
        raise FileExistsError(f"label store {path} exists; pass resume=True to continue it or overwrite=True")
    if start == 0:
        _create_store(path, spec, meta)
    return start


def _label_epoch(store: LabelStore, ft: Any, images: torch.Tensor, aug: Augment, e: int, batch_size: int,
                 spec: Dict[str, Tuple[np.dtype, tuple]], offsets: Dict[str, int], dev: torch.device,
                 batch_dependent: bool = False) -> None:
    """Label every view of epoch `e` and write its rows of each array in place (pwrite + fsync)."""
    n = len(images)
    # batch-dependent committees see seeded random batches, as the official relabels' RandomSampler does
    order = (torch.randperm(n, generator=make_generator(int(store.meta["seed"]), "label-batches", e))
             if batch_dependent else torch.arange(n))
    out = {name: np.empty(shape[1:], dtype=dt) for name, (dt, shape) in spec.items()}  # this epoch's rows
    for a in range(0, n, batch_size):
        idx = order[a:a + batch_size]
        x = aug.apply(images[idx].to(dev), store.params(e, idx))
        logits = ft.logits(x).clamp(-_F16_MAX, _F16_MAX)
        rows = idx.numpy()
        if "logits" in spec:
            out["logits"][rows] = logits.half().cpu().numpy()
        else:
            vals, ind = logits.topk(spec["topk_values"][1][-1], dim=1)  # descending
            out["topk_values"][rows] = vals.half().cpu().numpy()
            out["topk_indices"][rows] = ind.cpu().numpy().astype(spec["topk_indices"][0])
            out["lse"][rows] = torch.logsumexp(logits, 1).cpu().numpy()
    for name, (dt, shape) in spec.items():
        data = np.ascontiguousarray(out[name]).tobytes()
        row_bytes = int(np.prod(shape[1:])) * dt.itemsize
        assert len(data) == row_bytes  # one epoch of the array, exactly
        fd = os.open(store.path / f"{name}.npy", os.O_WRONLY)
        try:
            os.pwrite(fd, data, offsets[name] + e * row_bytes)
            os.fsync(fd)  # on disk before the epoch is declared done
        finally:
            os.close(fd)
