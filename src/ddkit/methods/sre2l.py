"""`sre2l` and `cda`: SRe2L recover (BN-statistic matching from noise) and CDA's curriculum crops.

SRe2L (peers.md §3.2): images start as N(0, 1) noise in the teacher's normalised space and are
optimised for CE(teacher(view), y) + r_bn·BN-statistics term (+ optional TV/L2) through the frozen
teacher; one random view per iteration (RandomResizedCrop + flip where the preset has crops, then a
roll of 0..jitter px), Adam(0.5, 0.9), cosine lr, clip each step, keep the last iterate. The engine
and the exact loss are in `ddkit.methods.recover`.
CDA (matching-synthesis.md §7): the same, with the RandomResizedCrop lower scale annealed from 1.0
to 0.08 over milestone·iterations (cosine / linear / step), `recover.cda_min_scale`.

Class separability (why the result of a class never depends on its batch-mates): BN statistics are
taken per class group (the class's `ipc` images), never across classes; views and the noise init
come from a generator seeded by (seed, method, class). `bn_target` picks what a group is matched to:
"class" (default): the mean statistics of groups of `ipc` real images of the same class (what a real
group of that size looks like; the teacher's running statistics mix all classes, which a one-class
group cannot match), or "running": the teacher's running statistics, as SRe2L, which needs no real
data. SRe2L itself batches 100 classes × 1 image per step; `classes_per_batch` keeps the batching
(throughput) but, by the rule above, changes no result.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ddkit.config import field
from ddkit.data.base import ImageDataset, to_float
from ddkit.methods.base import ClassResult, MethodConfig, check_ipc, register_method
from ddkit.methods.recover import RecoverSpec, class_targets, recover, require_bn, valid_bounds
from ddkit.teachers.frozen import FrozenTeacher
from ddkit.utils import DDKitError, make_generator

#: Per-dataset defaults, chosen by image size (preset "auto": ≤ 32 px cifar, ≤ 64 px tiny, else imagenet).
PRESETS: Dict[str, Dict[str, Dict[str, Any]]] = {
    "sre2l": {
        "cifar": dict(iterations=1000, lr=0.25, r_bn=0.01, jitter=4, rrc=False, flip=False,
                      source="SRe2L small_dataset recover_cifar.sh (CIFAR-100): 1000 it, lr 0.25, r_bn 0.01, "
                             "roll 0-4, no RRC (peers.md §3.5)"),
        "tiny": dict(iterations=4000, lr=0.1, r_bn=1.0, jitter=4, rrc=True, flip=True,
                     source="SRe2L Tiny-ImageNet: 4000 it, lr 0.1, r_bn 1.0, roll ±4, RRC(64) (peers.md §3.5)"),
        "imagenet": dict(iterations=4000, lr=0.25, r_bn=0.01, jitter=32, rrc=True, flip=True,
                         source="SRe2L recover.sh (IN-1K): 4000 it, lr 0.25, r_bn 0.01, jitter 32, "
                                "RRC(0.08-1) + flip, tv_l2 0, l2 0 (peers.md §3.2)"),
    },
    "cda": {
        "cifar": dict(iterations=1000, lr=0.25, r_bn=0.01, jitter=4, rrc=True, flip=True,
                      source="no official CIFAR CDA script (matching-synthesis.md §7b): SRe2L's CIFAR values "
                             "with CDA's annealed RRC + flip [unverified for CIFAR]"),
        "tiny": dict(iterations=4000, lr=0.4, r_bn=0.05, jitter=4, rrc=True, flip=True,
                     source="CDA README Tiny: 4000 it, lr 0.4, r_bn 0.05, cosine, milestone 1; jitter 4 "
                            "(recover_cda_tiny.py defaults, matching-synthesis.md §7b)"),
        "imagenet": dict(iterations=4000, lr=0.25, r_bn=0.01, jitter=32, rrc=True, flip=True,
                         source="CDA README IN-1K: 4000 it, lr 0.25, r_bn 0.01, cosine, milestone 1; jitter 32 "
                                "(recover_cda_in1k.py:222, matching-synthesis.md §7b)"),
    },
}
FAMILIES = ("cifar", "tiny", "imagenet")


def auto_family(image_size: int) -> str:
    """Preset family by resolution: ≤ 32 px CIFAR, ≤ 64 px Tiny-ImageNet, else ImageNet."""
    return "cifar" if image_size <= 32 else "tiny" if image_size <= 64 else "imagenet"


@dataclass(frozen=True)
class RecoverConfig(MethodConfig):
    """Options shared by the recover family; None means the dataset preset's value (see PRESETS)."""

    preset: str = field("auto", "per-dataset defaults: auto (by image size), cifar, tiny or imagenet")
    iterations: Optional[int] = field(None, "Adam steps per class batch (preset: 1000 CIFAR, 4000 Tiny/IN-1K)")
    lr: Optional[float] = field(None, "Adam lr of the pixels, cosine-decayed to 0 (preset: 0.25, Tiny 0.1)")
    r_bn: Optional[float] = field(None, "weight of the BN-statistics term (preset: 0.01, Tiny 1.0)")
    first_bn_multiplier: float = field(10.0, "multiplier of the first BN layer's term (SRe2L/CDA/DWA: 10)")
    r_var: Optional[float] = field(None, "weight of the variance part of each BN term (SRe2L 1; DWA 11)")
    tv_l2: float = field(0.0, "TV-L2 image prior weight (recover.sh: 0; SRe2L argparse default 1e-4)")
    l2_scale: float = field(0.0, "L2 image prior weight (recover.sh: 0; SRe2L argparse default 1e-5)")
    jitter: Optional[int] = field(None, "random roll of 0..jitter px per axis each step (preset: 4, IN-1K 32)")
    rrc: Optional[bool] = field(None, "RandomResizedCrop each step (preset: off for CIFAR, on for Tiny/IN-1K)")
    flip: Optional[bool] = field(None, "random horizontal flip each step (preset: with the RRC)")
    rrc_min: float = field(0.08, "smallest RandomResizedCrop area fraction (torchvision default, as SRe2L)")
    classes_per_batch: int = field(0, "classes optimised in one forward pass; 0 = max(1, 100 // ipc), i.e. about "
                                      "SRe2L's 100 images per step; throughput only: BN statistics are per class")
    bn_target: str = field("class", "class: match the statistics of real groups of ipc images of the class; "
                                    "running: the teacher's running statistics (SRe2L, data-free)")
    stat_images: int = field(256, "real images per class for bn_target=class")
    init: str = field("noise", "noise: N(0,1) in normalised space (SRe2L); real: real images of the class (DWA)")


@dataclass(frozen=True)
class SRe2LConfig(RecoverConfig):
    """SRe2L recover."""


@dataclass(frozen=True)
class CDAConfig(RecoverConfig):
    """CDA: SRe2L with the RRC lower scale bound annealed from 1.0 to rrc_min."""

    easy2hard_mode: str = field("cosine", "RRC lower-bound schedule: cosine, linear or step (CDA README: cosine)")
    milestone: float = field(1.0, "fraction of the iterations over which the bound is annealed (CDA README "
                                  "--milestone 1; the argparse default 0 turns the curriculum off)")


def resolve_spec(cfg: RecoverConfig, method: str, image_size: int,
                 presets: Optional[Dict[str, Dict[str, Dict[str, Any]]]] = None) -> Tuple[RecoverSpec, Dict[str, Any]]:
    """The RecoverSpec of `cfg` with None fields filled from the preset; also the facts to record."""
    table = (presets or PRESETS)[method]
    family = auto_family(image_size) if cfg.preset == "auto" else cfg.preset
    if family not in table:
        raise DDKitError(f"unknown preset {cfg.preset!r}; choose auto, {', '.join(table)}")
    p = dict(table[family])
    for k in ("iterations", "lr", "r_bn", "jitter", "rrc", "flip", "r_var"):
        v = getattr(cfg, k, None)
        if v is not None:
            p[k] = v
    if cfg.bn_target not in ("class", "running"):
        raise DDKitError(f"unknown bn_target {cfg.bn_target!r}; use class or running")
    if cfg.init not in ("noise", "real"):
        raise DDKitError(f"unknown init {cfg.init!r}; use noise or real")
    if p["iterations"] < 1 or p["jitter"] < 0 or cfg.classes_per_batch < 0:
        raise DDKitError("iterations must be >= 1, jitter and classes_per_batch >= 0")
    curriculum = None
    if isinstance(cfg, CDAConfig):
        if cfg.easy2hard_mode not in ("cosine", "linear", "step"):
            raise DDKitError(f"unknown easy2hard_mode {cfg.easy2hard_mode!r}; use cosine, linear or step")
        curriculum = (float(cfg.milestone), cfg.easy2hard_mode)
        if not p["rrc"]:
            raise DDKitError("cda anneals the RandomResizedCrop scale: it needs --rrc true")
    spec = RecoverSpec(iterations=int(p["iterations"]), lr=float(p["lr"]), r_bn=float(p["r_bn"]),
                       first_bn_multiplier=cfg.first_bn_multiplier, r_var=float(p.get("r_var", 1.0)),
                       tv_l2=cfg.tv_l2, l2_scale=cfg.l2_scale, jitter=int(p["jitter"]), rrc=bool(p["rrc"]),
                       flip=bool(p["flip"]), rrc_min=cfg.rrc_min, curriculum=curriculum)
    facts = {"preset": family, "preset_source": p["source"], **dataclasses.asdict(spec)}
    return spec, facts


def teacher_copy(teacher: Any, device: torch.device, what: str) -> nn.Module:
    """A private eval-mode copy of the teacher's network on `device` (refused without BatchNorm): the BN hooks
    and DWA's weight steps must never touch the caller's teacher."""
    require_bn(teacher.model, what, getattr(teacher, "arch", None))
    return FrozenTeacher(teacher, device, amp=False, channels_last=False, private=True).net


#: Hook for DWA: (model, class, real normalised images of the class or None) -> context manager that
#: adjusts the weights for that class and restores them on exit.
Adjust = Callable[[nn.Module, int, torch.Tensor], Any]


def run_recover(name: str, dataset: ImageDataset, teacher: Any, cfg: RecoverConfig, classes: Sequence[int],
                spec: RecoverSpec, facts: Dict[str, Any], *, device: torch.device, progress: bool,
                adjust: Optional[Adjust] = None) -> Iterator[ClassResult]:
    """Recover `classes` in batches of classes_per_batch (one class per batch with `adjust`); yield each."""
    if teacher is None:
        raise DDKitError(f"{name} recovers images through a teacher: pass --teacher CKPT")
    check_ipc(dataset, cfg.ipc if (cfg.init == "real" or cfg.bn_target == "class") else 1)
    model = teacher_copy(teacher, device, name)
    mean, std = teacher.mean, teacher.std
    lo, hi = valid_bounds(mean, std)
    m_t = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
    norm = lambda x01: (x01.to(device) - m_t) / s_t  # noqa: E731
    shape = tuple(dataset.images.shape[1:])
    per = 1 if adjust is not None else (cfg.classes_per_batch or max(1, 100 // cfg.ipc))  # SRe2L: bs 100
    set_meta = {"recover": facts, "bn_target": cfg.bn_target, "init": cfg.init, "classes_per_batch": per,
                "teacher_arch": getattr(teacher, "arch", None)}
    cls = list(classes)
    for a in range(0, len(cls), per):
        t0 = time.perf_counter()
        batch = cls[a:a + per]
        gens = [make_generator(cfg.seed, name, c) for c in batch]
        x0: List[torch.Tensor] = []
        src: List[torch.Tensor] = []
        for c, g in zip(batch, gens):
            if cfg.init == "real":
                imgs, idx = dataset.class_images(c, cfg.ipc, generator=g)
                x0.append(norm(to_float(imgs)))
                src.append(idx)
            else:
                x0.append(torch.randn(cfg.ipc, *shape, generator=g).to(device))
        targets: List[Tuple[torch.Tensor, torch.Tensor]]
        if cfg.bn_target == "class":
            per_class = []
            for c in batch:
                imgs, _ = dataset.class_images(c, max(cfg.stat_images, cfg.ipc),
                                               generator=make_generator(cfg.seed, name, c, "stats"))
                per_class.append(class_targets(model, norm(to_float(imgs)), cfg.ipc))
            targets = [(torch.stack([pc[i][0] for pc in per_class]).float(),
                        torch.stack([pc[i][1] for pc in per_class]).float()) for i in range(len(per_class[0]))]
        else:
            targets = [(mm.running_mean.float()[None].expand(len(batch), -1),
                        mm.running_var.float()[None].expand(len(batch), -1))
                       for mm in model.modules() if isinstance(mm, nn.modules.batchnorm._BatchNorm)]
        x0t = torch.cat(x0)
        y = torch.tensor(batch, device=device).repeat_interleave(cfg.ipc)
        desc = f"{name} class {batch[0]}" + (f"-{batch[-1]}" if len(batch) > 1 else "")
        if adjust is not None:
            with adjust(model, batch[0], x0t if cfg.init == "real" else None) as adj:
                x, curves = recover(model, x0t, y, len(batch), targets, gens, spec, (lo, hi),
                                    progress=progress, desc=desc)
            set_meta["adjust"] = adj
        else:
            x, curves = recover(model, x0t, y, len(batch), targets, gens, spec, (lo, hi), progress=progress,
                                desc=desc)
        images = (x * s_t + m_t).clamp(0, 1).cpu()
        secs = (time.perf_counter() - t0) / len(batch)  # the batch's time, shared by its classes
        for j, c in enumerate(batch):
            ce, bn = curves["ce"][j], curves["bn"][j]
            meta = {"ce_first": float(ce[0]), "ce_last": float(ce[-1]), "bn_first": float(bn[0]),
                    "bn_last": float(bn[-1]), "loss_curve": [round(float(v), 5) for v in ce + spec.r_bn * bn],
                    "batch_classes": len(batch), "batch_seconds": secs * len(batch)}
            extras = {"source_index": src[j]} if src else {}
            yield _result(c, images[j * cfg.ipc:(j + 1) * cfg.ipc], extras, meta, dict(set_meta), secs)


def _result(c: int, images: torch.Tensor, extras: Dict[str, torch.Tensor], meta: Dict[str, Any],
            set_meta: Dict[str, Any], seconds: float) -> ClassResult:
    return ClassResult(c, images, extras=extras, meta=meta, set_meta=set_meta, seconds=seconds)


@register_method("sre2l", config=SRe2LConfig, aliases=("SRe2L", "squeeze-recover-relabel"), needs_teacher=True,
                 needs=("bn-teacher",), native="sre2l")
def sre2l(dataset: ImageDataset, teacher: Any, cfg: SRe2LConfig, classes: Sequence[int], *,
          device: torch.device, progress: bool = True) -> Iterator[ClassResult]:
    """SRe2L recover: noise optimised to match the BN teacher's CE and BN statistics (per class)."""
    spec, facts = resolve_spec(cfg, "sre2l", int(dataset.images.shape[-1]))
    yield from run_recover("sre2l", dataset, teacher, cfg, classes, spec, facts, device=device, progress=progress)


@register_method("cda", config=CDAConfig, aliases=("CDA", "curriculum-data-augmentation"), needs_teacher=True,
                 needs=("bn-teacher",), native="sre2l")
def cda(dataset: ImageDataset, teacher: Any, cfg: CDAConfig, classes: Sequence[int], *,
        device: torch.device, progress: bool = True) -> Iterator[ClassResult]:
    """CDA: SRe2L recover with the RandomResizedCrop scale annealed from easy (1.0) to hard (0.08)."""
    spec, facts = resolve_spec(cfg, "cda", int(dataset.images.shape[-1]))
    yield from run_recover("cda", dataset, teacher, cfg, classes, spec, facts, device=device, progress=progress)

