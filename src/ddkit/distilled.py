"""The distilled-set format: a documented folder, not a pickle.

```
<out>/meta.json            method, resolved config, dataset + class names, normalisation, teacher, ipc, seed,
                           ddkit version, git revision, machine, wall time, peak memory
<out>/images.safetensors   "images": float32 N×C×H×W in [0,1] before normalisation (exact pixels; optimised
                           sets are not PNG-exact and may leave [0,1] when unclamped)
<out>/labels.safetensors   "hard": int64 N; optional "soft": float32 N×K teacher LOGITS of the whole image and
                           "region_soft": float32 N×R×K teacher logits of the R = f² mosaic cells (row-major)
                           (logits, not probabilities, so any temperature or MSE-on-logits loss can use them)
<out>/images/<cls:03d>_<name>/<k:04d>.png   uint8 view (torchvision ImageFolder reads it)
<out>/grid.png             one row per class (first 20 classes)
```
Save/load round-trips exactly; writing is atomic (temporary folder, then rename) and an existing output
is refused unless overwrite=True.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from ddkit import __version__
from ddkit.data.base import to_uint8
from ddkit.loaders import save_tensors
from ddkit.utils import DDKitError, atomic_dir, git_revision, machine_info
from ddkit.validate import check_set, read_json, read_safetensors

FORMAT_VERSION = 1
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class DistilledSet:
    """A distilled (or selected) set: images in [0,1], hard labels, optional soft labels, facts.

    Attributes:
        images: float32 N×C×H×W, pixels before normalisation.
        labels: int64 N hard labels (class index into `classes`).
        classes: class names in label order (the teacher's and the test set's order must match).
        mean, std: normalisation of the source dataset.
        soft: optional extra label tensors ("soft": N×K, "region_soft": N×R×K).
        meta: everything else worth keeping (method, config, dataset, teacher, ipc, seed, timings).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: List[str]
    mean: Sequence[float]
    std: Sequence[float]
    soft: Dict[str, torch.Tensor] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"images must be N×C×H×W, got {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        for k, v in self.soft.items():
            if len(v) != len(self.images):
                raise ValueError(f"soft label {k!r} has {len(v)} rows for {len(self.images)} images")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def ipc(self) -> int:
        """Images per class (the largest per-class count)."""
        return int(torch.bincount(self.labels, minlength=self.num_classes).max()) if len(self) else 0

    def summary(self) -> str:
        """A human-readable multi-line summary (what `ddkit inspect` prints)."""
        counts = torch.bincount(self.labels, minlength=self.num_classes).tolist()
        lo, hi = float(self.images.min()), float(self.images.max())
        lines = [
            f"method      {self.meta.get('method', '?')}",
            f"dataset     {self.meta.get('dataset', '?')}  ({self.num_classes} classes)",
            f"images      {len(self)} × {tuple(self.images.shape[1:])}  pixel range [{lo:.3f}, {hi:.3f}]",
            f"ipc         {self.ipc}  (per class min {min(counts)}, max {max(counts)})",
            f"soft labels {', '.join(f'{k} {tuple(v.shape)}' for k, v in self.soft.items()) or 'none'}",
            f"teacher     {self.meta.get('teacher', 'none')}",
            f"seed        {self.meta.get('seed', '?')}",
            f"wall time   {self.meta.get('wall_seconds', float('nan')):.1f} s   peak memory "
            f"{self.meta.get('peak_memory_mb', float('nan')):.0f} MiB",
            f"created by  ddkit {self.meta.get('ddkit_version', '?')} @ {self.meta.get('git_revision', '?')}",
        ]
        return "\n".join(lines)

    # ---------------------------------------------------------------------------------------------
    def save(self, out: str | Path, overwrite: bool = False, pngs: bool = True) -> Path:
        """Write the folder atomically; refuse an existing `out` unless overwrite."""
        out = Path(out)
        # Kept on self too, so the summary printed after saving says who made it (not "ddkit ? @ ?").
        self.meta.setdefault("ddkit_version", __version__)
        self.meta.setdefault("git_revision", git_revision())
        self.meta.setdefault("machine", machine_info())
        self.meta.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        meta = dict(self.meta)
        meta.update(format_version=FORMAT_VERSION, classes=list(self.classes), mean=list(self.mean),
                    std=list(self.std), num_images=len(self), image_shape=list(self.images.shape[1:]), ipc=self.ipc)
        with atomic_dir(out, overwrite=overwrite) as tmp:
            # save_tensors: a full disk is one OSError line, and atomic_dir removes the temporary folder
            save_tensors({"images": self.images.detach().float().contiguous().cpu()}, tmp / "images.safetensors")
            labels = {"hard": self.labels.cpu().contiguous()}
            labels.update({k: v.detach().float().contiguous().cpu() for k, v in self.soft.items()})
            save_tensors(labels, tmp / "labels.safetensors")
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
            if pngs:
                self._write_pngs(tmp)
        return out

    def _write_pngs(self, root: Path) -> None:
        from PIL import Image
        from torchvision.utils import save_image

        u8 = to_uint8(self.images)
        counters: Dict[int, int] = {}
        for i in range(len(self)):
            c = int(self.labels[i])
            k = counters.get(c, 0)
            counters[c] = k + 1
            d = root / "images" / f"{c:03d}_{_SAFE.sub('_', self.classes[c])}"
            d.mkdir(parents=True, exist_ok=True)
            arr = u8[i].permute(1, 2, 0).numpy()
            Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(d / f"{k:04d}.png")
        # Grid: one row per class (first 20 classes), ipc columns; shared value range (no per-image rescaling).
        rows = []
        ncol = max(1, min(self.ipc, 20))
        for c in range(min(self.num_classes, 20)):
            imgs = self.images[self.labels == c][:ncol].clamp(0, 1)
            pad = torch.ones((ncol - len(imgs),) + tuple(self.images.shape[1:]))
            rows.append(torch.cat([imgs.float().cpu(), pad]))
        if rows:
            save_image(torch.cat(rows), str(root / "grid.png"), nrow=ncol, padding=1, pad_value=1.0)

    @classmethod
    def load(cls, path: str | Path) -> "DistilledSet":
        """Load a folder written by `save` (exact pixels from images.safetensors), checked at the door.

        Refused with one line naming the file (DDKitError): a missing/invalid meta.json, a truncated or
        pickled safetensors file, 0 images, labels outside the class range, NaN/Inf pixels or soft labels,
        a meta `factor` that contradicts `region_soft` (see ddkit.validate.check_set).
        """
        path = Path(path)
        if not path.is_dir():
            raise DDKitError(f"distilled set {path} not found (expected a folder written by `ddkit distill`)")
        for name in ("meta.json", "images.safetensors", "labels.safetensors"):
            if not (path / name).is_file():
                raise DDKitError(f"{path} is not a ddkit distilled set: {name} is missing")
        meta = read_json(path / "meta.json", "set metadata")
        for key in ("classes", "mean", "std"):
            if not isinstance(meta.get(key), list):
                raise DDKitError(f"{path / 'meta.json'} lacks the list {key!r}; re-create the set with `ddkit distill`")
        images = read_safetensors(path / "images.safetensors", "set images").get("images")
        labels = read_safetensors(path / "labels.safetensors", "set labels")
        hard = labels.pop("hard", None)
        if images is None or hard is None:
            raise DDKitError(f"{path}: images.safetensors needs 'images' and labels.safetensors 'hard'; "
                             f"re-create the set with `ddkit distill`")
        check_set(images, hard, meta["classes"], labels, meta, where=f"distilled set {path}")
        return cls(images=images, labels=hard, classes=meta["classes"], mean=meta["mean"], std=meta["std"],
                   soft=labels, meta=meta)


def load_distilled(path: str | Path) -> DistilledSet:
    """Shorthand for DistilledSet.load."""
    return DistilledSet.load(path)
