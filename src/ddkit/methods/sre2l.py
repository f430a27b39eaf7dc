"""`sre2l` and `cda`: SRe2L recover (BN-statistic matching from noise) and CDA's curriculum crops.

SRe2L as its authors ran it (VILA-Lab/SRe2L@8d00cba, `SRe2L/*small_dataset/recover_cifar.py` for CIFAR,
`SRe2L/recover/data_synthesis.py` for ImageNet-1K): the unit of work is one batch per IPC index holding one
image of every class of a group (all classes when there are at most 100, groups of 100 classes for ImageNet-1K:
`--batch-size 100`). The batch starts as N(0, 1) noise in the working space and is optimised for
CE(teacher(view), y) + r_bn·Σ_l m_l (‖μ_l − running_mean_l‖ + ‖σ²_l − running_var_l‖), with ONE set of
BatchNorm batch statistics over the whole mixed-class batch matched to the teacher's running statistics (no
real data); one view per iteration for the whole batch (a roll of 0..jitter px, after a RandomResizedCrop +
flip where the preset has them), Adam(0.5, 0.9), cosine lr, clip each step, keep the last iterate. The engine
and the exact loss are in `ddkit.methods.recover`; the driver (`methods.base`) runs, shards and resumes by
unit, and every unit draws from a generator of (seed, method, ipc index, group), so the set's bytes do not
depend on how units are spread over processes.
CDA (matching-synthesis.md §7): the same, with the RandomResizedCrop lower scale annealed from 1.0 to 0.08
over milestone·iterations (cosine / linear / step), `recover.cda_min_scale`.

Working space (`norm`): the pixels are parameterised, initialised (N(0, 1)), stepped and clipped normalised with
the statistics the official code normalises the dataset with (`norm=official`, the default:
`data.facts.OFFICIAL_STATS["sre2l"]`, CIFAR-10/100 mean (0.4914, 0.4822, 0.4465) std (0.2023, 0.1994, 0.2010),
recover_cifar.py:22-23@8d00cba; DWA's own table for `dwa`), or with the dataset's measured mean/std
(`norm=true`). The teacher keeps its own normalisation (the one it was trained with): each view goes through
the exact affine map x·(s_w/s_t) + (m_w − m_t)/s_t into the teacher's space (`WorkingInput`), so the
teacher sees the inputs it was trained on whichever space the pixels live in; when the two statistics are equal
there is no map at all (bit-identical to the runs before the working space existed). So on CIFAR-10 the noise
init, lr and clip act in pixel units 0.2023/0.2470 ≈ 0.82× of what `norm=true` gives, as in the official code.

ddkit's variants (named options, not what the papers ran): `unit=class` optimises each class's `ipc` images as
their own group, with BN statistics per class (so a class never depends on another), and `bn_target=class`
(with unit=class) matches those to the mean statistics of real groups of `ipc` images of the class instead of
the running statistics. `unit=class bn_target=class` is ddkit's behaviour before issue #26.
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
from ddkit.data.facts import working_stats
from ddkit.methods.base import (ClassResult, MethodConfig, Unit, UnitResult, check_ipc, ipc_units,
                                register_method)
from ddkit.methods.matching_ops import NORM_HELP
from ddkit.methods.real_init import MediumInit
from ddkit.methods.recover import (RecoverSpec, Voter, WorkingInput, adjust_weights, bn_layers, class_targets,
                                   recover, require_bn, restore_weights, teacher_in_working_space, valid_bounds)
from ddkit.teachers.frozen import FrozenTeacher
from ddkit.utils import DDKitError, make_generator

#: Per-dataset defaults, chosen by image size (preset "auto": ≤ 32 px cifar, ≤ 64 px tiny, else imagenet).
PRESETS: Dict[str, Dict[str, Dict[str, Any]]] = {
    "sre2l": {
        "cifar": dict(iterations=1000, lr=0.25, r_bn=0.01, jitter=4, rrc=False, flip=False,
                      source="SRe2L@8d00cba small_dataset recover_cifar.sh (CIFAR-100): 1000 it, lr 0.25, r_bn "
                             "0.01, batch 100; recover_cifar.py:79-81 one roll 0-4 per batch, no RRC/flip; "
                             ":216 first BN x10 (peers.md §3.5)"),
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
#: (class, ipc index) -> (starting [0,1] image C×H×W, its source dataset indices)
InitFn = Callable[[int, int], Tuple[torch.Tensor, torch.Tensor]]
#: (unit, the private networks of the teacher's members) -> (the unit's voters, facts for its meta)
VotersFn = Callable[[Unit, List[nn.Module]], Tuple[List[Voter], Dict[str, Any]]]


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
    unit: str = field("batch", "batch: one batch per IPC index with one image of every class of a group and ONE "
                               "set of BN statistics over it (the official recover); class: ddkit's variant, each "
                               "class's ipc images a group of their own with per-class BN statistics")
    classes_per_batch: int = field(0, "unit=batch: classes per batch, 0 = min(classes, 100) (SRe2L --batch-size "
                                      "100: all of CIFAR's, groups of 100 for ImageNet-1K); unit=class: classes "
                                      "per forward pass, 0 = max(1, 100 // ipc), throughput only")
    bn_target: str = field("running", "running: the teacher's running statistics (SRe2L, no real data); class "
                                      "(with unit=class, ddkit's variant): the mean statistics of real groups of "
                                      "ipc images of the class")
    stat_images: int = field(256, "real images per class for bn_target=class")
    init: str = field("noise", "noise: N(0,1) in the working space (SRe2L); real: real images of the class (DWA); "
                               "medium: the class's real images nearest the teacher's median p_y (DELT, CV-DD)")
    select_pool: int = field(0, "init=medium: real images per class the teacher scores, 0 = all of the class "
                                "(DELT data_selection.py scores every train image)")
    norm: str = field("official", NORM_HELP + "; SRe2L/CDA: recover_cifar.py:22-23@8d00cba (CIFAR), "
                                  "small_dataset/utils.py:12-13 (Tiny), recover/utils.py:63-66 (IN-1K); DWA: "
                                  "distillation/utils.py:14-21@c5b125f. The teacher is fed through the exact "
                                  "affine map into its own statistics")


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
        raise DDKitError(f"unknown bn_target {cfg.bn_target!r}; use running or class")
    if cfg.unit not in ("batch", "class"):
        raise DDKitError(f"unknown unit {cfg.unit!r}; use batch or class")
    if cfg.unit == "batch" and cfg.bn_target == "class":
        raise DDKitError("bn_target=class matches per-class statistics, which a mixed-class batch has not: "
                         "use it with unit=class")
    if cfg.init not in ("noise", "real", "medium", "patch"):
        raise DDKitError(f"unknown init {cfg.init!r}; use noise, real or medium (patch: sre2lpp, fadrm, fadrm+)")
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


@dataclass(frozen=True)
class Perturb:
    """DWA's weight move: K = steps moves of ρ/K·g/‖g‖ (ascent: up the CE loss, as perterb.py first_step).
    leak: the K passes' CE gradients w.r.t. the view are added to the images' first step (first_step=official)."""

    steps: int
    rho: float
    direction: str = "ascent"
    leak: bool = False

    def facts(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"steps": self.steps, "rho": self.rho, "direction": self.direction}
        if self.leak:  # only when set, so the meta of sets made before the option is unchanged
            out["first_step"] = "official"
        return out


def group_size(cfg: RecoverConfig, num_classes: int) -> int:
    """Classes per batch unit: classes_per_batch, or SRe2L's --batch-size 100 capped at the class count."""
    return cfg.classes_per_batch or min(num_classes, 100)


def recover_units(dataset: ImageDataset, cfg: RecoverConfig) -> Optional[List[Unit]]:
    """The recover family's unit of work: (IPC index × class group) batches, or None for unit=class."""
    if cfg.unit != "batch":
        return None
    return ipc_units(dataset.num_classes, cfg.ipc, group_size(cfg, dataset.num_classes))


class _Setup:
    """What every unit of a recover run shares: the private teacher copy, seen from the working space, and the
    working space's normalisation (pixels ↔ working space)."""

    def __init__(self, name: str, family: str, dataset: ImageDataset, teacher: Any, cfg: RecoverConfig,
                 device: torch.device) -> None:
        if teacher is None:
            raise DDKitError(f"{name} recovers images through a teacher: pass --teacher CKPT")
        check_ipc(dataset, cfg.ipc if (cfg.init in ("real", "medium") or cfg.bn_target == "class") else 1)
        self.working = working_stats(dataset, family, cfg.norm)
        # a committee's networks each see the one working space through their own affine map (CV-DD)
        self.members = list(getattr(teacher, "members", [teacher]))
        self.nets = [teacher_in_working_space(teacher_copy(t, device, name), self.working, t.mean, t.std)
                     for t in self.members]
        self.model = self.nets[0]
        self.medium = MediumInit(dataset, self.members[0], device, cfg.ipc, cfg.select_pool, cfg.seed, name) \
            if cfg.init == "medium" else None
        self.bounds = valid_bounds(self.working.mean, self.working.std)
        self.m = torch.tensor(self.working.mean, device=device).view(1, -1, 1, 1)
        self.s = torch.tensor(self.working.std, device=device).view(1, -1, 1, 1)
        self.shape = (dataset.channels, dataset.image_size, dataset.image_size)
        self.device = device
        self.arch = getattr(teacher, "arch", None)

    def norm(self, x01: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels → the working space."""
        return (x01.to(self.device) - self.m) / self.s

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Working space → pixel units, unclipped."""
        return x * self.s + self.m

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(x).clamp(0, 1).cpu()

    def meta(self) -> Dict[str, Any]:
        """The working statistics and whether the teacher is fed through the affine map (meta.json)."""
        return {**self.working.meta(), "teacher_map": isinstance(self.model, WorkingInput)}


def _curve_meta(curves: Dict[str, torch.Tensor], j: int, r_bn: float) -> Dict[str, Any]:
    ce, bn = curves["ce"][j], curves["bn"][j]
    return {"ce_first": float(ce[0]), "ce_last": float(ce[-1]), "bn_first": float(bn[0]), "bn_last": float(bn[-1]),
            "loss_curve": [round(float(v), 5) for v in ce + r_bn * bn]}


def run_recover(name: str, dataset: ImageDataset, teacher: Any, cfg: RecoverConfig, work: Sequence[Any],
                spec: RecoverSpec, facts: Dict[str, Any], *, device: torch.device, progress: bool,
                perturb: Optional[Perturb] = None, family: str = "sre2l", init_fn: Optional[InitFn] = None,
                voters_for: Optional[VotersFn] = None) -> Iterator[Any]:
    """Recover the driver's `work`: batch units (unit=batch, yields UnitResults) or classes (unit=class).
    `family` names the row of data.facts.OFFICIAL_STATS the working space comes from (sre2l or dwa).
    init_fn(class, ipc index) -> ([0,1] image C×H×W, source indices): the starting image of each row of a unit
    (SRe2L++'s real patches, `methods.patch_init`), in place of cfg.init's noise / real image.
    voters_for(unit, nets): the committee of a unit (CV-DD), as `recover.Voter`s over the private copies `nets`
    of the teacher's members (each seen from the working space), with the unit's meta."""
    setup = _Setup(name, family, dataset, teacher, cfg, device)
    if cfg.init == "patch" and init_fn is None:
        raise DDKitError(f"{name} has no patch initialisation: use --init noise, real or medium")
    if cfg.unit == "batch":
        yield from _run_units(name, dataset, cfg, list(work), spec, facts, setup, progress, perturb, init_fn,
                              voters_for)
    else:
        if voters_for is not None:
            raise DDKitError(f"{name} chooses its committee per IPC index: use --unit batch")
        yield from _run_classes(name, dataset, cfg, list(work), spec, facts, setup, progress, perturb)


def _run_units(name: str, dataset: ImageDataset, cfg: RecoverConfig, units: List[Unit], spec: RecoverSpec,
               facts: Dict[str, Any], setup: _Setup, progress: bool, perturb: Optional[Perturb],
               init_fn: Optional[InitFn] = None, voters_for: Optional[VotersFn] = None) -> Iterator[UnitResult]:
    """One batch per unit: one image of every class of its group, ONE set of BN statistics over the whole mixed
    batch matched to the running statistics, one view per iteration for the batch (SRe2L recover_cifar.py:58-133;
    DWA distillation_cifar.py:28-117 with the weights moved at iteration 0 and restored before the next unit)."""
    model, dev = setup.model, setup.device
    targets = [(mm.running_mean.float()[None], mm.running_var.float()[None]) for mm in bn_layers(model)]
    set_meta = {"recover": facts, "unit": "batch", "bn_target": cfg.bn_target, "init": cfg.init,
                "classes_per_batch": group_size(cfg, dataset.num_classes),
                "teacher_arch": setup.arch, "working_stats": setup.meta()}
    if perturb is not None:
        set_meta["adjust"] = perturb.facts()
    for u in units:
        t0 = time.perf_counter()
        g = make_generator(cfg.seed, name, "ipc", u.index, "group", u.classes[0])
        extras: Dict[str, torch.Tensor] = {}
        if init_fn is not None:
            rows = [init_fn(c, u.index) for c in u.classes]
            x0 = setup.norm(torch.stack([img for img, _ in rows]))
            src = torch.stack([s for _, s in rows])  # one index per row, or the f² of a mosaic's cells
            extras["source_index" if src.ndim == 1 else "patch_source_index"] = src
        elif cfg.init == "real":  # image `index` of each class's own draw: a class's real images never repeat
            rows = [dataset.class_images(c, cfg.ipc, generator=make_generator(cfg.seed, name, "init", c))
                    for c in u.classes]
            x0 = setup.norm(to_float(torch.stack([imgs[u.index] for imgs, _ in rows])))
            extras["source_index"] = torch.stack([idx[u.index] for _, idx in rows])
        elif cfg.init == "medium":  # image `index` of each class's median-first order (DELT, CV-DD)
            rows = [setup.medium(c) for c in u.classes]
            x0 = setup.norm(torch.stack([imgs[u.index] for imgs, _ in rows]))
            extras["source_index"] = torch.stack([idx[u.index] for _, idx in rows])
        else:  # official: torch.randn((classes, C, H, W)) in the working space
            x0 = torch.randn(len(u.classes), *setup.shape, generator=g).to(dev)
        y = torch.tensor(u.classes, device=dev)
        saved: List[List[torch.Tensor]] = []

        def at_start(view: torch.Tensor) -> Optional[torch.Tensor]:  # DWA: K steps on iteration 0's view
            grads: Optional[List[torch.Tensor]] = [] if perturb.leak else None  # first_step=official: kept
            saved.append(adjust_weights(model, view, y, perturb.steps, perturb.rho, perturb.direction,
                                        input_grad=grads))
            return grads[0] if grads else None

        voters, unit_meta = voters_for(u, setup.nets) if voters_for is not None else (None, {})
        try:
            x, curves = recover(model, x0, y, 1, targets, [g], spec, setup.bounds, progress=progress,
                                desc=f"{name} ipc {u.index} classes {u.classes[0]}-{u.classes[-1]}",
                                at_start=at_start if perturb is not None else None, voters=voters)
        finally:
            if saved:
                restore_weights(model, saved[0])
        meta = {**_curve_meta(curves, 0, spec.r_bn), **unit_meta}
        yield UnitResult(u, setup.pixels(x), extras=extras, meta=meta, set_meta=dict(set_meta),
                         seconds=time.perf_counter() - t0)


def _run_classes(name: str, dataset: ImageDataset, cfg: RecoverConfig, classes: List[int], spec: RecoverSpec,
                 facts: Dict[str, Any], setup: _Setup, progress: bool, perturb: Optional[Perturb]
                 ) -> Iterator[ClassResult]:
    """ddkit's unit=class variant: `classes` in batches of classes_per_batch groups (one class per batch with
    `perturb`), each group a class's ipc images with its own BN statistics; yield each class."""
    model, dev = setup.model, setup.device
    per = 1 if perturb is not None else (cfg.classes_per_batch or max(1, 100 // cfg.ipc))
    set_meta = {"recover": facts, "bn_target": cfg.bn_target, "init": cfg.init, "classes_per_batch": per,
                "teacher_arch": setup.arch, "working_stats": setup.meta()}
    for a in range(0, len(classes), per):
        t0 = time.perf_counter()
        batch = classes[a:a + per]
        gens = [make_generator(cfg.seed, name, c) for c in batch]
        x0: List[torch.Tensor] = []
        src: List[torch.Tensor] = []
        for c, g in zip(batch, gens):
            if cfg.init == "real":
                imgs, idx = dataset.class_images(c, cfg.ipc, generator=g)
                x0.append(setup.norm(to_float(imgs)))
                src.append(idx)
            elif cfg.init == "medium":
                imgs01, idx = setup.medium(c)
                x0.append(setup.norm(imgs01))
                src.append(idx)
            else:
                x0.append(torch.randn(cfg.ipc, *setup.shape, generator=g).to(dev))
        targets: List[Tuple[torch.Tensor, torch.Tensor]]
        if cfg.bn_target == "class":
            per_class = []
            for c in batch:
                imgs, _ = dataset.class_images(c, max(cfg.stat_images, cfg.ipc),
                                               generator=make_generator(cfg.seed, name, c, "stats"))
                per_class.append(class_targets(model, setup.norm(to_float(imgs)), cfg.ipc))
            targets = [(torch.stack([pc[i][0] for pc in per_class]).float(),
                        torch.stack([pc[i][1] for pc in per_class]).float()) for i in range(len(per_class[0]))]
        else:
            targets = [(mm.running_mean.float()[None].expand(len(batch), -1),
                        mm.running_var.float()[None].expand(len(batch), -1)) for mm in bn_layers(model)]
        x0t = torch.cat(x0)
        y = torch.tensor(batch, device=dev).repeat_interleave(cfg.ipc)
        desc = f"{name} class {batch[0]}" + (f"-{batch[-1]}" if len(batch) > 1 else "")
        saved = None
        if perturb is not None:  # the variant: moved on the class's own (un-augmented) real images
            if perturb.leak:
                raise DDKitError("--first-step official adds the adjustment's gradients to a batch unit's first "
                                 "step: use it with --unit batch")
            if cfg.init != "real":
                raise DDKitError("dwa adjusts the teacher on real images of the class: use --init real")
            saved = adjust_weights(model, x0t, y, perturb.steps, perturb.rho, perturb.direction)
            set_meta["adjust"] = perturb.facts()
        try:
            x, curves = recover(model, x0t, y, len(batch), targets, gens, spec, setup.bounds, progress=progress,
                                desc=desc)
        finally:
            if saved is not None:
                restore_weights(model, saved)
        images = setup.pixels(x)
        secs = (time.perf_counter() - t0) / len(batch)  # the batch's time, shared by its classes
        for j, c in enumerate(batch):
            meta = {**_curve_meta(curves, j, spec.r_bn), "batch_classes": len(batch),
                    "batch_seconds": secs * len(batch)}
            extras = {"source_index": src[j]} if src else {}
            yield ClassResult(c, images[j * cfg.ipc:(j + 1) * cfg.ipc], extras=extras, meta=meta,
                              set_meta=dict(set_meta), seconds=secs)


@register_method("sre2l", config=SRe2LConfig, aliases=("SRe2L", "squeeze-recover-relabel"), needs_teacher=True,
                 needs=("bn-teacher",), native="sre2l", units=recover_units)
def sre2l(dataset: ImageDataset, teacher: Any, cfg: SRe2LConfig, work: Sequence[Any], *,
          device: torch.device, progress: bool = True) -> Iterator[Any]:
    """SRe2L recover: noise optimised for the BN teacher's CE and running BN statistics, one mixed-class batch
    per IPC index."""
    spec, facts = resolve_spec(cfg, "sre2l", dataset.image_size)
    yield from run_recover("sre2l", dataset, teacher, cfg, work, spec, facts, device=device, progress=progress)


@register_method("cda", config=CDAConfig, aliases=("CDA", "curriculum-data-augmentation"), needs_teacher=True,
                 needs=("bn-teacher",), native="sre2l", units=recover_units)
def cda(dataset: ImageDataset, teacher: Any, cfg: CDAConfig, work: Sequence[Any], *,
        device: torch.device, progress: bool = True) -> Iterator[Any]:
    """CDA: SRe2L recover with the RandomResizedCrop scale annealed from easy (1.0) to hard (0.08)."""
    spec, facts = resolve_spec(cfg, "cda", dataset.image_size)
    yield from run_recover("cda", dataset, teacher, cfg, work, spec, facts, device=device, progress=progress)
