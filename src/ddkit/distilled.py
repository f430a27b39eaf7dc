"""The distilled-set format: a documented folder, not a pickle.

```
<out>/meta.json            method, resolved config, dataset + class names, normalisation, teacher, ipc, seed,
                           ddkit version, git revision, machine, wall time, peak memory
<out>/images.safetensors   "images": float32 N×C×H×W in [0,1] before normalisation (exact pixels; optimised
                           sets are not PNG-exact and may leave [0,1] when unclamped)
<out>/labels.safetensors   "hard": int64 N; optional "soft": float32 N×K teacher LOGITS of the whole image and
                           "region_soft": float32 N×R×K teacher logits of the R = f² mosaic cells (row-major)
                           (logits, not probabilities, so any temperature or MSE-on-logits loss can use them)
<out>/zca.safetensors      optional: the ZCA transform the set's student must see its inputs through
                           ("zca_mean" D, "zca_matrix" D×D, "zca_inverse" D×D, "zca_eps"; D = C·H·W)
<out>/images/<cls:03d>_<name>/<k:04d>.png   uint8 view (torchvision ImageFolder reads it)
<out>/grid.png             one row per class (first 20 classes)
```
Save/load round-trips exactly; writing is atomic (temporary folder, then rename) and an existing output
is refused unless overwrite=True.

What a set says about how its student must be trained (read by `ddkit evaluate --protocol native`, which
never looks at the method's name; `--protocol hard-truths` ignores all of it):

| where                      | meaning                                                                          |
|----------------------------|----------------------------------------------------------------------------------|
| meta "native"              | name of the paper's evaluation protocol (declared by the method's registration)   |
| zca.safetensors            | inputs (train views and the test split) are ZCA-whitened with this transform      |
| meta "learned_lr"          | the student's learning rate, learned with the set (MTT/DATM's syn_lr)             |
| meta "learned_labels"      | key of `soft` holding learned label logits, trained with soft cross-entropy (DATM)|

`DistilledSet.zca`, `.native`, `.learned_lr` and `.learned_labels` read them (None when absent).
"""
from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from ddkit import __version__
from ddkit.augment.zca import ZCA
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
        soft: optional extra label tensors ("soft": N×K, "region_soft": N×R×K, learned labels).
        meta: everything else worth keeping (method, config, dataset, teacher, ipc, seed, timings, and what
            the student needs: "native", "learned_lr", "learned_labels"; module docstring).
        zca: optional ZCA transform the student's inputs must be whitened with (zca.safetensors).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: List[str]
    mean: Sequence[float]
    std: Sequence[float]
    soft: Dict[str, torch.Tensor] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)
    zca: Optional[ZCA] = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"images must be N×C×H×W, got {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        for k, v in self.soft.items():
            if len(v) != len(self.images):
                raise ValueError(f"soft label {k!r} has {len(v)} rows for {len(self.images)} images")
        self.labels = self.labels.long()
        if self.zca is not None and self.zca.mean.numel() != self.images[0].numel():
            raise ValueError(f"the ZCA transform is for {self.zca.mean.numel()} values per image, the images have "
                             f"{self.images[0].numel()}")

    # What the set says about its student (module docstring) ------------------------------------------------
    def student_facts(self) -> str:
        """One line: the native protocol and what the set carries for its student (`ddkit inspect`)."""
        parts = [f"native protocol {self.native or 'not declared'}"]
        if self.zca is not None:
            parts.append(f"ZCA inputs (eps {self.zca.eps:g})")
        if self.learned_lr is not None:
            parts.append(f"learned lr {self.learned_lr:.4g}")
        if self.learned_labels is not None:
            parts.append(f"learned labels soft[{self.learned_labels!r}]")
        return ", ".join(parts)

    @property
    def native(self) -> Optional[str]:
        """The name of the evaluation protocol of the paper that made the set (meta "native"), if declared."""
        v = self.meta.get("native")
        return str(v) if v else None

    @property
    def learned_lr(self) -> Optional[float]:
        """The student learning rate learned with the set (meta "learned_lr", e.g. MTT's syn_lr), if any."""
        v = self.meta.get("learned_lr")
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    @property
    def learned_labels(self) -> Optional[str]:
        """The `soft` key of learned label logits the student trains on (meta "learned_labels"), if any."""
        v = self.meta.get("learned_labels")
        return str(v) if v else None

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
            f"student     {self.student_facts()}",
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
            if self.zca is not None:
                save_tensors({k: v.detach().cpu().contiguous() for k, v in self.zca.state().items()},
                             tmp / "zca.safetensors")
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
        zca = _load_zca(path, images) if (path / "zca.safetensors").is_file() else None
        _check_student_facts(path, meta, labels)
        return cls(images=images, labels=hard, classes=meta["classes"], mean=meta["mean"], std=meta["std"],
                   soft=labels, meta=meta, zca=zca)


def _load_zca(path: Path, images: torch.Tensor) -> ZCA:
    """The set's ZCA transform, checked against its image size (one line naming the file otherwise)."""
    state = read_safetensors(path / "zca.safetensors", "set ZCA transform")
    d = images[0].numel()
    want = {"zca_mean": (d,), "zca_matrix": (d, d), "zca_inverse": (d, d), "zca_eps": (1,)}
    for key, shape in want.items():
        t = state.get(key)
        if t is None or tuple(t.shape) != shape or not bool(torch.isfinite(t).all()):
            raise DDKitError(f"{path / 'zca.safetensors'}: {key!r} must be a finite tensor of shape {shape} for "
                             f"{tuple(images.shape[1:])} images; re-create the set with `ddkit distill`")
    return ZCA.from_state(state)


def _check_student_facts(path: Path, meta: Dict[str, Any], soft: Dict[str, torch.Tensor]) -> None:
    """Refuse a meta.json whose learned lr or learned-label key cannot be used (one line)."""
    lr = meta.get("learned_lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr)):
        raise DDKitError(f"{path / 'meta.json'}: learned_lr {lr!r} must be a finite number")
    key = meta.get("learned_labels")
    if key is not None and key not in soft:
        raise DDKitError(f"{path / 'meta.json'}: learned_labels names {key!r}, but labels.safetensors holds "
                         f"{sorted(soft)}; re-create the set with `ddkit distill`")


def load_distilled(path: str | Path) -> DistilledSet:
    """Shorthand for DistilledSet.load."""
    return DistilledSet.load(path)
