"""`fadrm` and `fadrm-plus` (FADRM+): Fast and Accurate Data Residual Matching (Cui et al., NeurIPS 2025).

As the official code runs it (Jiacheng8/FADRM@f445e38, `recover/recover.py` "R", `recover/utils_recover.py` "U",
scripts `recover/scripts/<dataset>/recover_fadrm{,+}_ipc*.sh`). The unit of work is SRe2L's: one batch per IPC
index holding one image of every class of a group of `--batch-size 100` classes (R:37-41, constants.sh `bs=100`).

1. Start: image i of class c is a real patch of "medium" difficulty (`--initialisation-method Patches
   --patch-diff medium`, U:208-252; built by `methods.patch_init`), kept at full size as P and bilinearly
   resized to the first stage's side for the optimisation (U:239-248).
2. Stages: `--input-size-lis` sides × `--optimization-budgets` steps (IN-1K 200, 224, 200, 224 px × 500;
   CIFAR-100 / Tiny 4 × 500 at full size). ONE cosine lr over all stages' steps (R:54-56, 80) but a fresh
   Adam(0.5, 0.9) at every stage (R:67-68).
3. Step: RandomResizedCrop(stage side) + flip of the whole batch, roll of 0..jitter px (R:82-101), loss
   CE + r_bn·Σ_l m_l(‖μ_l − running_mean_l‖₂ + ‖σ²_l − running_var_l‖₂), m_1 = 10 (R:105-112, U:109-121), clip
   to the valid range (R:118). FADRM+ takes the teachers in turn, one per step, in the order given; the turn
   counter restarts at every batch and runs on across stages (R:62-63, 73-78).
4. Data residual at each stage boundary: x ← α·resize(x, next side) + (1 − α)·resize(P, next side), bilinear,
   α = 0.5 (R:133-150); no blend after the last stage, whose iterate is saved (R:134-135, 153-156).

Deliberate differences: fp32 instead of fp16 autocast + GradScaler (R:35, 105-116; ddkit's recover engine has
no loss scaling, and CPU runs are fp32); the first-stage downsample of P uses the same bilinear resize as the
stage boundaries (torch, align_corners=False) where the code uses cv2.INTER_LINEAR on the normalised patch
(U:241-245; both unantialiased half-pixel bilinear); images are stored as exact float pixels, not PNG.
The "Guassian" start is refused: the code crashes at the first blend without a patch (R:141, `orig_patch`).
Relabel and evaluation: the `fadrm` native protocol (`evaluate.native`, README) — FKD relabel with the teachers' BatchNorm
in train mode at batch 16 ("BSSL": `ddkit relabel SET --teacher … --batch-stats true --batch-size 16 --recipe
fadrm`, relabel.py:281-326), students with KL T = 20 at batch 16.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ddkit.config import field
from ddkit.data.base import ImageDataset, to_float
from ddkit.methods.base import Unit, UnitResult, register_method
from ddkit.methods.patch_init import PatchInit, PatchInitConfig
from ddkit.data.facts import working_stats
from ddkit.methods.recover import Voter, bn_layers, recover, teacher_in_working_space, valid_bounds
from ddkit.methods.sre2l import group_size, recover_units, resolve_spec, teacher_copy
from ddkit.utils import DDKitError, make_generator

_R = "FADRM@f445e38 recover/scripts"
#: per method and dataset family: stage sides as fractions of the image side, steps per stage and the rest
PRESETS: Dict[str, Dict[str, Dict[str, Any]]] = {
    "fadrm": {
        "cifar": dict(stages=(1.0,) * 4, iterations=500, lr=0.25, r_bn=0.01, jitter=4, rrc=True, flip=True,
                      source=f"{_R}/cifar100/recover_fadrm_ipc50.sh: 32 32 32 32 px x 500, lr 0.25, r_bn 0.01, "
                             "alpha 0.5, ResNet18, --apply-data-augmentation; jitter 4 (recover.py:293-298)"),
        "tiny": dict(stages=(1.0,) * 2, iterations=500, lr=0.01, r_bn=0.01, jitter=4, rrc=True, flip=True,
                     source=f"{_R}/tiny_imagenet/recover_fadrm_ipc50.sh: 64 64 px x 500, lr 0.01, r_bn 0.01; "
                            "jitter 4 (recover.py:323-328)"),
        "imagenet": dict(stages=(200 / 224, 1.0, 200 / 224, 1.0), iterations=500, lr=0.25, r_bn=0.01, jitter=32,
                         rrc=True, flip=True,
                         source=f"{_R}/imagenet1k/recover_fadrm_ipc50.sh: 200 224 200 224 px x 500, lr 0.25, "
                                "r_bn 0.01 (ImageNette's script: lr 0.05); jitter 32 (recover.py:301-306)"),
    },
    "fadrm-plus": {
        "cifar": dict(stages=(1.0,) * 4, iterations=500, lr=0.25, r_bn=0.01, jitter=4, rrc=True, flip=True,
                      source=f"{_R}/cifar100/recover_fadrm+_ipc10.sh: 32 x4 px x 500, lr 0.25, r_bn 0.01, alpha "
                             "0.5, teachers ResNet18 Densenet121 ShuffleNetV2 MobileNetV2; jitter 4"),
        "tiny": dict(stages=(1.0,) * 4, iterations=500, lr=0.25, r_bn=0.01, jitter=4, rrc=True, flip=True,
                     source=f"{_R}/tiny_imagenet/recover_fadrm+_ipc10.sh: 64 x4 px x 500, lr 0.25, r_bn 0.01, "
                            "teachers ResNet18 ShuffleNetV2 Densenet121 MobileNetV2; jitter 4"),
        "imagenet": dict(stages=(200 / 224, 1.0, 200 / 224, 1.0), iterations=500, lr=0.25, r_bn=0.01, jitter=32,
                         rrc=True, flip=True,
                         source=f"{_R}/imagenet1k/recover_fadrm+_ipc10.sh: 200 224 200 224 px x 500, lr 0.25, "
                                "r_bn 0.01, teachers ResNet18 Densenet121 ShuffleNetV2 MobileNetV2; jitter 32"),
    },
}
_CPU = dict(stages=(1.0, 1.0), iterations=100, lr=0.25, r_bn=0.01, jitter=4, rrc=True, flip=True,
            source="ddkit CPU preset: two full-size stages x 100 steps (one residual blend and Adam reset; full "
                   "size so ConvNet teachers fit), the CIFAR values otherwise (a small but real run)")
for _table in PRESETS.values():
    _table["cpu"] = _CPU


@dataclass(frozen=True)
class FADRMConfig(PatchInitConfig):
    """FADRM: recover in resolution stages, blending the starting patch back in between them."""

    iterations: Optional[int] = field(None, "Adam steps per stage (--optimization-budgets: 500 each in every "
                                            "official script)")
    stage_sizes: Optional[Tuple[int, ...]] = field(None, "side in px of each stage, the last = the image side "
                                                         "(--input-size-lis; preset: IN-1K 200,224,200,224 scaled "
                                                         "to the image side, CIFAR 4 stages at full size)")
    alpha: float = field(0.5, "residual weight: x <- alpha*x + (1-alpha)*patch at each stage boundary "
                              "(--alpha 0.5 in every script)")


def stage_sides(cfg: FADRMConfig, preset: Dict[str, Any], image_size: int) -> List[int]:
    """The stages' sides in px: cfg.stage_sizes, or the preset's fractions of the image side (rounded)."""
    sides = list(cfg.stage_sizes) if cfg.stage_sizes else [max(1, round(f * image_size)) for f in preset["stages"]]
    if not sides or sides[-1] != image_size or min(sides) < 1:
        raise DDKitError(f"--stage-sizes {','.join(map(str, sides))}: every side must be >= 1 px and the last "
                         f"equal to the image side ({image_size} px), whose images are saved")
    return sides


def resize(x: torch.Tensor, side: int) -> torch.Tensor:
    """Bilinear resize to side×side (align_corners=False, no antialias, as F.interpolate in R:140-143)."""
    if x.shape[-1] == side and x.shape[-2] == side:
        return x
    return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)


def residual_blend(x: torch.Tensor, patch: torch.Tensor, side: int, alpha: float) -> torch.Tensor:
    """The data residual of a stage boundary: alpha·resize(x) + (1 − alpha)·resize(patch) at `side` px."""
    return alpha * resize(x, side) + (1.0 - alpha) * resize(patch, side)


def _members(name: str, teacher: Any, device: torch.device, working: Any) -> Tuple[List[Any], List[Voter]]:
    """The teachers in turn order and their private eval-mode copies (weight 1, seen from the working space)
    with running-statistic targets."""
    teachers = list(getattr(teacher, "members", [teacher]))
    first = teachers[0]
    for t in teachers[1:]:
        if (list(t.mean), list(t.std), t.image_size) != (list(first.mean), list(first.std), first.image_size):
            raise DDKitError(f"{name} optimises pixels in one normalised space: teachers {first.arch} and {t.arch} "
                             f"normalise differently or take other sizes; use teachers of one dataset recipe")
    members: List[Voter] = []
    for t in teachers:
        net = teacher_copy(t, device, name)
        targets = [(m.running_mean.float()[None], m.running_var.float()[None]) for m in bn_layers(net)]
        members.append((teacher_in_working_space(net, working, t.mean, t.std), 1.0, targets))
    return teachers, members


@torch.no_grad()
def _check_sides(teachers: Sequence[Any], members: Sequence[Voter], sides: Sequence[int], channels: int) -> None:
    """Refuse, before any work, a stage side a teacher cannot take (a fixed-size classifier such as ConvNet's)."""
    for t, (net, _, _) in zip(teachers, members):
        for side in sorted(set(sides) - {int(t.image_size)}):
            try:
                net(torch.zeros(2, channels, side, side, device=next(net.parameters()).device))
            except RuntimeError:
                raise DDKitError(f"teacher {t.arch} cannot take {side} px inputs (a fixed-size classifier): use "
                                 f"one with global pooling (resnet18_modified) or --stage-sizes at the image side "
                                 f"only") from None


def run_fadrm(name: str, dataset: ImageDataset, teacher: Any, cfg: FADRMConfig, work: Sequence[Any], *,
              device: torch.device, progress: bool) -> Iterator[UnitResult]:
    """Recover each batch unit of `work` in stages with the data residual (module docstring)."""
    if teacher is None:
        raise DDKitError(f"{name} recovers images through a teacher: pass --teacher CKPT")
    if cfg.unit != "batch" or cfg.bn_target != "running":
        raise DDKitError(f"{name} runs the official batch unit with running BN statistics: use --unit batch "
                         f"--bn-target running")
    if cfg.init == "noise":
        raise DDKitError(f"{name} blends the starting real image back in at each stage: use --init patch or real "
                         f"(the official Gaussian start crashes at the first blend, recover.py:141)")
    if not 0.0 <= cfg.alpha <= 1.0:
        raise DDKitError(f"--alpha must be in [0, 1], got {cfg.alpha}")
    spec, facts = resolve_spec(cfg, name, dataset.image_size, presets=PRESETS)
    sides = stage_sides(cfg, PRESETS[name][facts["preset"]], dataset.image_size)
    working = working_stats(dataset, "sre2l", cfg.norm)
    teachers, members = _members(name, teacher, device, working)
    _check_sides(teachers, members, sides, dataset.channels)
    lead = teachers[0]
    init = PatchInit(dataset, lead, cfg, name, device) if cfg.init == "patch" else None
    bounds = valid_bounds(working.mean, working.std)
    m = torch.tensor(working.mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(working.std, device=device).view(1, -1, 1, 1)
    total = spec.iterations * len(sides)
    facts.update(stage_sizes=sides, alpha=cfg.alpha, total_iterations=total, teachers=[t.arch for t in teachers],
                 **(init.facts() if init is not None else {"init": cfg.init}))
    set_meta = {"recover": facts, "unit": "batch", "classes_per_batch": group_size(cfg, dataset.num_classes),
                "teacher_arch": lead.arch, "working_stats": working.meta()}
    for u in work:
        t0 = time.perf_counter()
        g = make_generator(cfg.seed, name, "ipc", u.index, "group", u.classes[0])
        extras: Dict[str, torch.Tensor] = {}
        if init is not None:
            rows = [init.image(c, u.index) for c in u.classes]
            src = torch.stack([r[1] for r in rows])
            extras["source_index" if src.ndim == 1 else "patch_source_index"] = src
            start01 = torch.stack([r[0] for r in rows])
        else:  # one real image of every class (the class's own draw; image `index` of it)
            real = [dataset.class_images(c, cfg.ipc, generator=make_generator(cfg.seed, name, "init", c))
                    for c in u.classes]
            start01 = to_float(torch.stack([imgs[u.index] for imgs, _ in real]))
            extras["source_index"] = torch.stack([idx[u.index] for _, idx in real])
        patch = (start01.to(device) - m) / s  # P: the full-size start in the working space (U:223, 251)
        x = resize(patch, sides[0])
        y = torch.tensor(u.classes, device=device)
        ce: List[torch.Tensor] = []
        bn: List[torch.Tensor] = []
        for k, side in enumerate(sides):
            desc = f"{name} ipc {u.index} classes {u.classes[0]}-{u.classes[-1]} stage {k + 1}/{len(sides)} {side}px"
            x, curves = recover(None, x, y, 1, [], [g], spec, bounds, progress=progress, desc=desc, voters=members,
                                rotate=True, start=k * spec.iterations, total=total)
            ce.append(curves["ce"][0])
            bn.append(curves["bn"][0])
            if k + 1 < len(sides):
                x = residual_blend(x, patch, sides[k + 1], cfg.alpha)
        ce_all, bn_all = torch.cat(ce), torch.cat(bn)
        meta = {"ce_first": float(ce_all[0]), "ce_last": float(ce_all[-1]), "bn_first": float(bn_all[0]),
                "bn_last": float(bn_all[-1]), "stage_ce_last": [round(float(c[-1]), 5) for c in ce],
                "loss_curve": [round(float(v), 5) for v in ce_all + spec.r_bn * bn_all]}
        yield UnitResult(u, (x * s + m).clamp(0, 1).cpu(), extras=extras, meta=meta, set_meta=dict(set_meta),
                         seconds=time.perf_counter() - t0)


@register_method("fadrm", config=FADRMConfig, aliases=("FADRM", "data-residual-matching"), needs_teacher=True,
                 needs=("bn-teacher",), native="fadrm", units=recover_units, quick={"preset": "cpu", "pool_size": 20})
def fadrm(dataset: ImageDataset, teacher: Any, cfg: FADRMConfig, work: Sequence[Unit], *, device: torch.device,
          progress: bool = True) -> Iterator[UnitResult]:
    """FADRM: recover from medium real patches in resolution stages, blending the patch back in between them."""
    yield from run_fadrm("fadrm", dataset, teacher, cfg, work, device=device, progress=progress)


@register_method("fadrm-plus", config=FADRMConfig, aliases=("fadrm+", "FADRM+", "fadrmplus"), needs_teacher=True,
                 needs=("bn-teacher",), native="fadrm", units=recover_units, quick={"preset": "cpu", "pool_size": 20},
                 committee=True)
def fadrm_plus(dataset: ImageDataset, teacher: Any, cfg: FADRMConfig, work: Sequence[Unit], *,
               device: torch.device, progress: bool = True) -> Iterator[UnitResult]:
    """FADRM+: FADRM with the teachers taking turns, one per step (--teacher A --teacher B …, in that order)."""
    yield from run_fadrm("fadrm-plus", dataset, teacher, cfg, work, device=device, progress=progress)


