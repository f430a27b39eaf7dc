"""`wmdd`: Dataset Distillation via the Wasserstein Metric (Liu et al., ICCV 2025) on the SRe2L recover engine.

As its code runs it (Liu-Hy/WMDD@45c2962, `recover/data_synthesis_new.py` "D", which run.sh selects with `-n -w`:
per-class BN + barycenter; `recover/utils.py` "U"; sheet largescale-methods.md §6):

1. Targets from the train split, one clean pass per class in batches of 100 (D:255-325): per BN layer the
   per-class statistics, Σ_b n_b·(batch mean, biased batch variance) / Σ_b n_b (U:213-243, a mean of per-batch
   statistics); and the free-support Wasserstein barycenter, k = ipc points, of the class's penultimate features
   (the classifier's input, WMDD's avgpool hook U:201-210), started from N(0, 1), uniform weights
   (`teachers.barycenter`; run.sh `--weight-wb false`).
2. Unit of work: a batch of ⌊100/ipc⌋ consecutive classes × all their ipc images (D:82-91, `--batch-size 100`),
   so a unit holds every IPC index of its classes (its `Unit.index` is 0). Start N(0, 1) in normalised space
   (D:96); each step ONE view of the batch: RandomResizedCrop(0.08-1) + flip, then a roll of 0..jitter px
   (D:139-149); loss (D:154-180, U:146-159)

       r_wb·CE + ‖F(x̃) − B‖_F + r_bn·Σ_l m_l [mean_c ‖σ²_l,c − σ²*_l,c‖₂ + mean_c ‖μ_l,c − μ*_l,c‖₂]

   with CE the batch mean, F the batch's penultimate features paired row by row with the classes' barycenter
   points (class-major), per-class statistics over each class's ipc images, m_1 = first_bn_multiplier = 1
   (argparse default, D:375). Adam(0.5, 0.9), cosine lr, clip each step, the last iterate is kept (D:102-208).
3. Relabel / evaluation (`relabel/generate_soft_label.py`, `train/train_FKD.py:232-272`): FKD with the same
   teacher, KL T = 20 weighted by barycenter weights (uniform here), AdamW 1e-3, cosine, 300 epochs, batch 100:
   the set's native protocol `wmdd`.

Differences, by design: the teacher is any ddkit BN teacher (WMDD trains its own, `pretrain/`, and reads per-class
statistics through a replaced BN class; here forward hooks give the same numbers); the barycenter start is drawn
from a generator of (seed, class), not numpy's global RNG; CIFAR has no official run (presets marked).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ddkit.config import field
from ddkit.data.base import ImageDataset, to_float
from ddkit.methods.base import MethodConfig, Unit, UnitResult, check_ipc, group_units, register_method
from ddkit.methods.recover import BNHooks, RecoverSpec, recover, require_bn, valid_bounds
from ddkit.teachers.barycenter import barycenter_loss, feature_barycenter
from ddkit.teachers.frozen import FrozenTeacher
from ddkit.utils import DDKitError, make_generator

_RUN = "WMDD@45c2962 run.sh"
PRESETS: Dict[str, Dict[str, Any]] = {
    "cifar": dict(iterations=2000, lr=0.25, r_bn=0.01, jitter=4,
                  source="no official CIFAR run (run.sh: imagenet, tiny-imagenet, imagenette): the ImageNet values "
                         "with SRe2L's CIFAR jitter 4 [unverified for CIFAR]"),
    "tiny": dict(iterations=2000, lr=0.1, r_bn=1.0, jitter=32,
                 source=f"{_RUN}: tiny-imagenet R_BN 1.0, LR 0.1, ITERATION 2000; jitter = argparse default 32 "
                        "(D:371; run.sh passes none)"),
    "imagenet": dict(iterations=2000, lr=0.25, r_bn=0.01, jitter=32,
                     source=f"{_RUN}: R_BN 0.01, LR 0.25, ITERATION 2000, R_WB 1, --batch-size 100; jitter = "
                            "argparse default 32 (D:371)"),
    "cpu": dict(iterations=200, lr=0.25, r_bn=0.01, jitter=4, real_images=500,
                source="ddkit CPU preset (not an official setting): the cifar row at 200 iterations, targets from "
                       "500 real images per class"),
}


@dataclass(frozen=True)
class WMDDConfig(MethodConfig):
    """WMDD: recover towards the Wasserstein barycenter of each class's teacher features, per-class BN matching."""

    preset: str = field("auto", "per-dataset defaults: auto (by image size: ≤ 32 px cifar, ≤ 64 px tiny, else "
                                "imagenet), cifar, tiny, imagenet or cpu (a short CPU run, not official)")
    iterations: Optional[int] = field(None, "Adam steps per batch (run.sh ITERATION 2000; cpu 200)")
    lr: Optional[float] = field(None, "Adam lr of the pixels, cosine-decayed to 0 (run.sh: 0.25, Tiny 0.1)")
    r_bn: Optional[float] = field(None, "weight of the per-class BN term (run.sh: 0.01, Tiny 1.0)")
    r_wb: float = field(1.0, "weight of the CE term beside the barycenter distance (run.sh R_WB 1, D:163)")
    first_bn_multiplier: float = field(1.0, "multiplier of the first BN layer's term (WMDD argparse default 1, "
                                            "D:375; SRe2L uses 10)")
    jitter: Optional[int] = field(None, "random roll of 0..jitter px per axis each step (argparse default 32)")
    rrc_min: float = field(0.08, "smallest RandomResizedCrop area fraction (torchvision default, D:140)")
    augment: bool = field(True, "RandomResizedCrop + flip each step (always on in WMDD, D:131-144; off only for "
                                "checks by hand)")
    cda: bool = field(False, "anneal the RRC lower bound from 1 to rrc_min (run.sh CDA=False)")
    milestone: float = field(1.0, "with --cda: fraction of the iterations over which the bound is annealed")
    classes_per_batch: int = field(0, "classes per batch, each with all its ipc images; 0 = ⌊100 / ipc⌋ "
                                      "(--batch-size 100, D:82)")
    real_images: Optional[int] = field(None, "train images per class for the BN targets and the barycenter; 0 = all "
                                             "(official; cpu preset 500)")
    stat_batch: int = field(100, "images per clean forward of the targets pass (--batch-size 100, D:300-325)")
    barycenter_iters: int = field(100, "POT free_support_barycenter numItermax (its default, barycenter.py:24)")


def _preset(cfg: WMDDConfig, image_size: int) -> Tuple[str, Dict[str, Any]]:
    family = cfg.preset
    if family == "auto":
        family = "cifar" if image_size <= 32 else "tiny" if image_size <= 64 else "imagenet"
    if family not in PRESETS:
        raise DDKitError(f"unknown preset {cfg.preset!r}; choose auto, {', '.join(PRESETS)}")
    p = dict(PRESETS[family])
    for k in ("iterations", "lr", "r_bn", "jitter", "real_images"):
        if getattr(cfg, k) is not None:
            p[k] = getattr(cfg, k)
    p.setdefault("real_images", 0)
    if p["iterations"] < 1 or p["jitter"] < 0 or p["real_images"] < 0 or cfg.classes_per_batch < 0:
        raise DDKitError("iterations must be >= 1; jitter, real_images and classes_per_batch >= 0")
    return family, p


def group_size(cfg: WMDDConfig, num_classes: int) -> int:
    """Classes per batch: ⌊100 / ipc⌋ (at least 1), capped at the class count (D:82-84)."""
    return min(num_classes, cfg.classes_per_batch or max(1, 100 // cfg.ipc))


def wmdd_units(dataset: ImageDataset, cfg: WMDDConfig) -> List[Unit]:
    """Groups of consecutive classes, each unit holding all ipc images of its classes (index 0)."""
    return group_units(dataset.num_classes, group_size(cfg, dataset.num_classes))


class Penultimate:
    """Forward pre-hook on the network's last Linear layer: its input, flattened, is the penultimate feature."""

    def __init__(self, net: nn.Module) -> None:
        linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise DDKitError("wmdd matches the teacher's penultimate features but it has no final Linear layer")
        self.feature: Optional[torch.Tensor] = None
        self.handle = linears[-1].register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: Tuple[torch.Tensor, ...]) -> None:
        self.feature = inputs[0].flatten(1).float()

    def remove(self) -> None:
        self.handle.remove()


@torch.no_grad()
def class_targets(net: nn.Module, feat: Penultimate, images01: torch.Tensor, norm: Any, batch: int
                  ) -> Tuple[List[Tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """One clean pass over a class in batches of `batch`: per BN layer Σ n_b·(mean_b, var_b) / Σ n_b
    (U:222-243), and every image's penultimate feature (n×d)."""
    sums: Optional[List[List[torch.Tensor]]] = None
    feats: List[torch.Tensor] = []
    with BNHooks(net) as hooks:
        for a in range(0, len(images01), batch):
            xb = norm(images01[a:a + batch])
            hooks.groups = 1
            net(xb)
            n = float(len(xb))
            part = [[m[0].double() * n, v[0].double() * n] for m, v in hooks.stats]
            sums = part if sums is None else [[s[0] + p[0], s[1] + p[1]] for s, p in zip(sums, part)]
            feats.append(feat.feature.cpu())
    total = float(len(images01))
    return [(m / total, v / total) for m, v in sums], torch.cat(feats)


@register_method("wmdd", config=WMDDConfig, aliases=("WMDD", "wasserstein-metric"), needs_teacher=True,
                 needs=("bn-teacher",), native="wmdd", units=wmdd_units, quick={"preset": "cpu"})
def wmdd(dataset: ImageDataset, teacher: Any, cfg: WMDDConfig, work: Sequence[Unit], *,
         device: torch.device, progress: bool = True) -> Iterator[UnitResult]:
    """WMDD: noise recovered towards the Wasserstein barycenter of each class's teacher features, with per-class
    BN statistics."""
    if teacher is None:
        raise DDKitError("wmdd recovers images through a teacher: pass --teacher CKPT")
    family, p = _preset(cfg, dataset.image_size)
    check_ipc(dataset, cfg.ipc)
    require_bn(teacher.model, "wmdd", getattr(teacher, "arch", None))
    net = FrozenTeacher(teacher, device, amp=False, channels_last=False, private=True).net.eval()
    feat = Penultimate(net)
    mean = torch.tensor(teacher.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(teacher.std, device=device).view(1, -1, 1, 1)
    norm = lambda x01: (x01.to(device) - mean) / std  # noqa: E731
    spec = RecoverSpec(iterations=int(p["iterations"]), lr=float(p["lr"]), r_bn=float(p["r_bn"]),
                       first_bn_multiplier=cfg.first_bn_multiplier, jitter=int(p["jitter"]), rrc=cfg.augment,
                       flip=cfg.augment,
                       rrc_min=cfg.rrc_min, curriculum=(cfg.milestone, "cosine") if cfg.cda else None,
                       ce_weight=cfg.r_wb, reduce="mean", one_view=True)
    facts = {"preset": family, "preset_source": p["source"], "iterations": spec.iterations, "lr": spec.lr,
             "r_bn": spec.r_bn, "r_wb": cfg.r_wb, "first_bn_multiplier": spec.first_bn_multiplier,
             "jitter": spec.jitter, "real_images": p["real_images"], "augment": cfg.augment, "cda": cfg.cda}
    set_meta = {"recover": facts, "classes_per_batch": group_size(cfg, dataset.num_classes),
                "teacher_arch": getattr(teacher, "arch", None)}
    bounds = valid_bounds(teacher.mean, teacher.std)
    shape = (dataset.channels, dataset.image_size, dataset.image_size)
    try:
        for u in work:
            t0 = time.perf_counter()
            per_class, bary = [], []
            for c in u.classes:  # targets of the unit's classes only: a shard computes what it needs
                count = dataset.class_counts()[c]
                n = count if p["real_images"] == 0 else min(int(p["real_images"]), count)
                imgs, _ = dataset.class_images(c, n, generator=make_generator(cfg.seed, "wmdd", "real", c))
                stats, f = class_targets(net, feat, to_float(imgs), norm, cfg.stat_batch)
                per_class.append(stats)
                bary.append(feature_barycenter(f, cfg.ipc, generator=make_generator(cfg.seed, "wmdd", "bary", c),
                                               max_iter=cfg.barycenter_iters))
            targets = [(torch.stack([pc[i][0] for pc in per_class]).float().to(device),
                        torch.stack([pc[i][1] for pc in per_class]).float().to(device))
                       for i in range(len(per_class[0]))]
            b = torch.cat(bary).to(device)  # class-major: support point j of class c pairs with its image j
            g = make_generator(cfg.seed, "wmdd", "group", u.classes[0])
            x0 = torch.randn(len(u.classes) * cfg.ipc, *shape, generator=g).to(device)
            y = torch.tensor(u.classes, device=device).repeat_interleave(cfg.ipc)

            def wb(rows: Optional[torch.Tensor]) -> torch.Tensor:
                return barycenter_loss(feat.feature, b)

            x, curves = recover(net, x0, y, len(u.classes), targets, [g] * len(u.classes), spec, bounds,
                                progress=progress, desc=f"wmdd classes {u.classes[0]}-{u.classes[-1]}", extra=wb,
                                extra_name="wb")
            ce, bn, w = curves["ce"].mean(0), curves["bn"].mean(0), curves["extra"][0]
            meta = {"ce_first": float(ce[0]), "ce_last": float(ce[-1]), "bn_first": float(bn[0]),
                    "bn_last": float(bn[-1]), "wb_first": float(w[0]), "wb_last": float(w[-1]),
                    "loss_curve": [round(float(v), 5) for v in cfg.r_wb * ce + spec.r_bn * bn + w]}
            pixels = (x * std + mean).clamp(0, 1).cpu()
            yield UnitResult(u, pixels, meta=meta, set_meta=dict(set_meta), seconds=time.perf_counter() - t0)
    finally:
        feat.remove()
