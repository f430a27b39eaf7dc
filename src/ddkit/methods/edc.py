"""`edc`: Elucidating the Design Space of Dataset Condensation (EDC, Shao et al., NeurIPS 2024) on the SRe2L
recover engine, with G-VBSM's statistic hooks (`methods.gsm`) and its own class-aware targets.

As the official code runs it (shaoshitong/EDC@80116a7, `Branch_CIFAR_10/recover/recover.py` "R" and `utils.py`
"U"; IN-1K lines are marked; sheet largescale-methods.md §2):

1. Teachers: several BN networks taking turns, one per step, k = counter mod K where the counter runs on over
   every batch of the process (R:198, 243-246), in the order given (`ddkit distill --teacher A --teacher B …`;
   CIFAR-10: ResNet18, ConvNetW128, MobileNetV2, WRN_16_2, ShuffleNetV2_0_5, ConvNetD1, ConvNetD2, ConvNetW32,
   R:430). ddkit gives unit u the counter's value there, u·iterations, so its turns are the official ones in a
   single process and do not depend on how units are spread over processes.
2. Hooks on every BatchNorm2d and Conv2d (R:109-133), as G-VBSM's (EMA α = --training-momentum 0.8, straight-
   through, drop of conv terms, first hook ×10, R:257-259) plus "soft category-aware matching"
   (`gsm.ClassStatHooks`): per-class dataset means of each image's channel mean / within-image variance (and
   per-image cell statistics at conv inputs); at a step the class target is their mean over the batch's rows and
   each hook's term is 0.5·global + 0.5·class (U:224-229, 501-514).
3. Targets: one pass over the train set per teacher, RandomCrop(32, 4) + flip, batches of 64 (R:154-182;
   IN-1K RRC(224) + flip, batches of 256). ddkit always computes them in the run; nothing is cached.
4. Unit: class-major batches of `batch_size` images, ⌊batch_size/ipc⌋ classes × all their ipc images (R:192-201:
   the turn index runs over IPC inside a class; CIFAR-10 recover.sh --batch-size 10 --ipc-number 1 is the one
   official CIFAR-10 setting: 10 classes × 1; at IPC 10 the same flag makes a unit of one class × 10 images).
5. Start: for each slot a random train image of its class, drawn with replacement, Resize(32) + random flip
   (R:138-144, 210-211; U:587-594); `--init noise` is the N(0, 1) branch (R:213-215). Each step: cosine lr (R:228,
   235), ONE RandomResizedCrop(32, 0.08–1) + flip for the whole batch (R:237-241; IN-1K and CIFAR-100 scale
   0.5–1, IN-1K R:209-213), no jitter (--jitter is parsed but never used); CE + r_loss·Σ hooks (R:254-277); the
   "flatness" term is off in every script (R:261-272, no script passes --flatness); Adam(0.5, 0.9) step, clip
   (R:227, 293-300); the last iterate is kept (R:305-306).

Differences, by design: each unit starts its hooks' EMAs afresh (the official EMAs run on over batches; with
α = 0.8 that is forgotten in a few steps), so a unit's images never depend on the units run before it; the class
targets' patch mean/var are used as computed, not swapped as the official statistic files store them (U:370-373;
a run computing the files cannot use them in the same process, so every official recover reads the swap:
`--swap-class-patch` restores it); the conv-term drop and the real draws use generators of (seed, unit); images
are stored as exact floats, not 8-bit JPEG.

6. ImageNet-1K start (`--init mosaic`, the imagenet preset's): real crops scored by the teachers' ensemble and
   tiled 2×2 (`methods.edc_mosaic`, data_synthesis_without_optim.py), one mosaic of the class per slot drawn
   with replacement and flipped at random.

Left (not implemented): the category-aware "local" mode (no script uses it). The official ShufflePatches
(U:653-679, and the relabel/train copies) concatenates the unshuffled strips, so it is the identity and ddkit
applies none.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from ddkit.config import field
from ddkit.data.base import ImageDataset, to_float
from ddkit.data.facts import working_stats
from ddkit.methods.base import MethodConfig, Unit, UnitResult, check_ipc, group_units, register_method
from ddkit.methods.edc_mosaic import BATCH, POOL, ensemble_ce, mosaic_start
from ddkit.methods.gsm import ClassStatHooks, collect_class_targets
from ddkit.methods.gvbsm import real_views
from ddkit.methods.matching_ops import NORM_HELP
from ddkit.methods.recover import RecoverSpec, recover, teacher_in_working_space, valid_bounds
from ddkit.methods.sre2l import teacher_copy
from ddkit.utils import DDKitError, make_generator

_E = "EDC@80116a7"
INITS = ("auto", "real", "noise", "mosaic")
PRESETS: Dict[str, Dict[str, Any]] = {
    "cifar": dict(iterations=75, lr=0.05, r_loss=0.01, batch_size=10, alpha=0.8, drop_rate=0.0, rrc_min=0.08,
                  cell=4, pad=4, stat_batch=64, stat_images=0, init="real",
                  source=f"{_E} Branch_CIFAR_10/recover/recover.sh: --batch-size 10 --lr 0.05 --drop-rate 0.0 "
                         "--training-momentum 0.8 --iteration 75 --r-loss 0.01 --initial-img-dir <train>; "
                         "RRC(32, 0.08-1) + flip (recover.py:237-241); 4-px cells (utils.py:391-394); statistics "
                         "pass RandomCrop(32, 4) + flip, bs 64 (recover.py:155-168)"),
    "imagenet": dict(iterations=1000, lr=0.05, r_loss=0.1, batch_size=20, alpha=0.8, drop_rate=0.0, rrc_min=0.5,
                     cell=16, pad=0, stat_batch=256, stat_images=0, init="mosaic",
                     source=f"{_E} Branch_full_ImageNet_1k/recover/recover.sh: --batch-size 80 over 4 GPUs (20 per "
                            "process, recover.py:105), --lr 0.05 --training-momentum 0.8 --iteration 1000 "
                            "--drop-rate 0.0 --r-loss 0.1; RRC(224, 0.5-1) + flip (recover.py:209-213); 16-px "
                            "cells (utils.py:380-383); statistics pass RRC(224) + flip, bs 256 (recover.py:126-137)"),
    "cpu": dict(iterations=75, lr=0.05, r_loss=0.01, batch_size=10, alpha=0.8, drop_rate=0.0, rrc_min=0.08,
                cell=4, pad=4, stat_batch=64, stat_images=50, init="real",
                source="ddkit CPU preset (not an official setting): the cifar row with the statistics of 50 train "
                       "images per class"),
}


@dataclass(frozen=True)
class EDCConfig(MethodConfig):
    """EDC: real starts recovered through teachers in turn, matching global and class-aware statistics."""

    preset: str = field("auto", "per-dataset defaults: auto (≤ 32 px cifar, else imagenet), cifar, imagenet or cpu "
                                "(the cifar row with 50 images per class in the statistics pass, not official)")
    iterations: Optional[int] = field(None, "Adam steps per batch (recover.sh --iteration: CIFAR-10 75, IN-1K 1000)")
    lr: Optional[float] = field(None, "Adam lr of the pixels, cosine-decayed to 0 (recover.sh --lr 0.05)")
    r_loss: Optional[float] = field(None, "weight of the statistic (BN + conv) term (recover.sh --r-loss: CIFAR-10 "
                                          "0.01, IN-1K 0.1)")
    first_multiplier: float = field(10.0, "multiplier of the first hooked layer's term (--first-multiplier 10, "
                                          "R:407)")
    training_momentum: Optional[float] = field(None, "α of the statistics' EMA (value = EMA, gradient of the "
                                                     "current batch; recover.sh --training-momentum 0.8)")
    drop_rate: Optional[float] = field(None, "probability that a conv hook's term is skipped in a step "
                                             "(recover.sh --drop-rate 0.0)")
    batch_size: Optional[int] = field(None, "images per batch (per process): ⌊batch_size/ipc⌋ classes × ipc images "
                                            "(CIFAR-10 10, IN-1K 20 = 80 over 4 GPUs)")
    rrc_min: Optional[float] = field(None, "lower scale of the step's RandomResizedCrop (CIFAR-10 0.08, R:238; "
                                           "IN-1K 0.5)")
    cell: Optional[int] = field(None, "side in px of the patch-statistic cells (4 CIFAR, 16 IN-1K)")
    stat_images: Optional[int] = field(None, "train images per class in the statistics pass, 0 = all (official; cpu "
                                             "preset 50)")
    stat_batch: Optional[int] = field(None, "batch of the statistics pass (64 CIFAR, 256 IN-1K)")
    init: str = field("auto", "start: real (a random train image of the class per slot, with replacement, random "
                              "flip: CIFAR, R:210-211), noise (N(0, 1), R:213-215), mosaic (IN-1K: crops scored by "
                              "the teachers' ensemble, tiled 2×2, data_synthesis_without_optim.py) or auto (the "
                              "preset's)")
    mosaic_pool: int = field(POOL, "--init mosaic: the lowest-loss images kept per class (S:100: 300)")
    mosaic_batch: int = field(BATCH, "--init mosaic: images per crop box; only full batches are cropped (S:124: 64)")
    swap_class_patch: bool = field(False, "use the class targets' patch mean and variance swapped, as the official "
                                          "statistic files store them (U:370-373)")
    norm: str = field("official", NORM_HELP + "; EDC: CIFAR-100's mean/std for CIFAR-10 too (U:77-78). The "
                                  "teachers are fed through the exact affine map into their own statistics")


def resolve(cfg: EDCConfig, image_size: int) -> Tuple[str, Dict[str, Any]]:
    """The preset row of `cfg` (auto by image size) with the explicit options on top."""
    family = cfg.preset
    if family == "auto":
        family = "cifar" if image_size <= 32 else "imagenet"
    if family not in PRESETS:
        raise DDKitError(f"unknown preset {cfg.preset!r}; choose auto, {', '.join(PRESETS)}")
    p = dict(PRESETS[family])
    for k in ("iterations", "lr", "r_loss", "batch_size", "rrc_min", "cell", "stat_images", "stat_batch",
              "drop_rate"):
        if getattr(cfg, k) is not None:
            p[k] = getattr(cfg, k)
    if cfg.training_momentum is not None:
        p["alpha"] = cfg.training_momentum
    if cfg.init not in INITS:
        raise DDKitError(f"unknown --init {cfg.init!r}; choose {', '.join(INITS)}")
    if cfg.init != "auto":
        p["init"] = cfg.init
    if cfg.mosaic_pool < 1 or cfg.mosaic_batch < 1:
        raise DDKitError("--mosaic-pool and --mosaic-batch must be >= 1")
    if p["iterations"] < 1 or p["batch_size"] < 1 or p["cell"] < 1 or p["stat_batch"] < 1 or p["stat_images"] < 0:
        raise DDKitError("iterations, batch_size, cell and stat_batch must be >= 1; stat_images >= 0")
    if not (0.0 <= p["alpha"] <= 1.0 and 0.0 <= p["drop_rate"] < 1.0 and 0.0 < p["rrc_min"] <= 1.0):
        raise DDKitError("--training-momentum must be in [0, 1], --drop-rate in [0, 1) and --rrc-min in (0, 1]")
    return family, p


def edc_units(dataset: ImageDataset, cfg: EDCConfig) -> List[Unit]:
    """Groups of ⌊batch_size / ipc⌋ consecutive classes, each unit holding all ipc images of its classes."""
    _, p = resolve(cfg, dataset.image_size)
    return group_units(dataset.num_classes, min(dataset.num_classes, max(1, p["batch_size"] // cfg.ipc)))


def real_start(dataset: ImageDataset, classes: Sequence[int], ipc: int, gen: torch.Generator
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """[0, 1] images and dataset indices: per slot (class-major) a uniformly drawn train image of its class, with
    replacement across slots, flipped with probability 0.5 (U:587-594, R:138-144)."""
    idx = []
    for c in classes:
        ci = dataset.class_indices(c)
        idx.append(ci[torch.randint(len(ci), (ipc,), generator=gen)])
    index = torch.cat(idx)
    x = to_float(dataset.get(index))
    flip = torch.rand(len(x), generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x), index


def turn_offset(units: Sequence[Unit], unit: Unit, iterations: int, teachers: int) -> int:
    """The official process-wide turn counter at the start of `unit`: its position among all units × iterations,
    mod the number of teachers (R:198, 243-246)."""
    position = [u.classes for u in units].index(unit.classes)
    return (position * iterations) % teachers


@register_method("edc", config=EDCConfig, aliases=("EDC",), needs_teacher=True, needs=("bn-teacher",),
                 native="edc", units=edc_units, quick={"preset": "cpu"}, committee=True)
def edc(dataset: ImageDataset, teacher: Any, cfg: EDCConfig, work: Sequence[Unit], *,
        device: torch.device, progress: bool = True) -> Iterator[UnitResult]:
    """EDC: real images recovered through several teachers in turn, matching BN and convolution statistics
    (EMA'd) to the dataset's and to the batch's classes' (soft category-aware matching)."""
    if teacher is None:
        raise DDKitError("edc recovers images through teachers: pass --teacher CKPT (repeat it for several)")
    family, p = resolve(cfg, dataset.image_size)
    check_ipc(dataset, 1)
    working = working_stats(dataset, "edc", cfg.norm)
    m = torch.tensor(working.mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(working.std, device=device).view(1, -1, 1, 1)
    teachers = list(getattr(teacher, "members", [teacher]))
    nets = [teacher_in_working_space(teacher_copy(t, device, "edc"), working, t.mean, t.std) for t in teachers]
    hooks = [ClassStatHooks(n, p["cell"], p["alpha"], p["drop_rate"], dataset.num_classes,
                            swap_patch=cfg.swap_class_patch) for n in nets]
    try:
        for k, (net, h) in enumerate(zip(nets, hooks)):  # one pass per teacher, each its own draw (R:170-182)
            views = real_views(dataset, p, make_generator(cfg.seed, "edc", "stats", k), device, labels=True)
            collect_class_targets(h, net, (((v - m) / s, y) for v, y in views))
        spec = RecoverSpec(iterations=int(p["iterations"]), lr=float(p["lr"]), r_bn=float(p["r_loss"]),
                           first_bn_multiplier=cfg.first_multiplier, jitter=0, rrc=True, flip=True,
                           rrc_min=float(p["rrc_min"]))
        facts = {"preset": family, "preset_source": p["source"], "iterations": spec.iterations, "lr": spec.lr,
                 "r_loss": spec.r_bn, "first_multiplier": cfg.first_multiplier, "training_momentum": p["alpha"],
                 "drop_rate": p["drop_rate"], "rrc_min": spec.rrc_min, "batch_size": p["batch_size"],
                 "cell": p["cell"], "stat_images": p["stat_images"], "stat_batch": p["stat_batch"],
                 "init": p["init"], "swap_class_patch": cfg.swap_class_patch, "class_weight": 0.5,
                 "teachers": [t.arch for t in teachers]}
        if p["init"] == "mosaic":
            facts.update(mosaic_pool=cfg.mosaic_pool, mosaic_batch=cfg.mosaic_batch)
        set_meta = {"recover": facts, "teacher_arch": getattr(teacher, "arch", None), "working_stats": working.meta(),
                    "classes_per_batch": min(dataset.num_classes, max(1, p["batch_size"] // cfg.ipc))}
        bounds = valid_bounds(working.mean, working.std)
        shape = (dataset.channels, dataset.image_size, dataset.image_size)
        units = edc_units(dataset, cfg)
        for u in work:
            t0 = time.perf_counter()
            g = make_generator(cfg.seed, "edc", "group", u.classes[0])
            drop = make_generator(cfg.seed, "edc", "drop", u.classes[0])
            y = torch.tensor(u.classes, device=device).repeat_interleave(cfg.ipc)
            for h in hooks:
                h.reset()
                h.drop_gen, h.labels = drop, y
            extras: Dict[str, torch.Tensor] = {}
            if p["init"] == "mosaic":  # the hooks paused: the ensemble's scoring forwards leave their EMAs be
                with contextlib.ExitStack() as quiet:
                    for h in hooks:
                        quiet.enter_context(h.paused())
                    x01, index = mosaic_start(dataset, u.classes, cfg.ipc, ensemble_ce(nets, m, s), device,
                                              make_generator(cfg.seed, "edc", "mosaic", u.classes[0]),
                                              cfg.mosaic_pool, cfg.mosaic_batch)
                x0 = (x01.to(device) - m) / s
                extras["source_index"] = index
            elif p["init"] == "real":
                x01, index = real_start(dataset, u.classes, cfg.ipc, make_generator(cfg.seed, "edc", "real",
                                                                                    u.classes[0]))
                x0 = (x01.to(device) - m) / s
                extras["source_index"] = index
            else:
                x0 = torch.randn(len(y), *shape, generator=g).to(device)
            off = turn_offset(units, u, spec.iterations, len(nets))
            order = [(off + j) % len(nets) for j in range(len(nets))]
            x, curves = recover(None, x0, y, 1, [], [g], spec, bounds, progress=progress,
                                desc=f"edc classes {u.classes[0]}-{u.classes[-1]}",
                                voters=[(nets[k], 1.0, []) for k in order], rotate=True,
                                stat_loss=lambda j: hooks[order[j]].loss(cfg.first_multiplier).reshape(1))
            ce, stat = curves["ce"][0], curves["bn"][0]
            meta = {"ce_first": float(ce[0]), "ce_last": float(ce[-1]), "stat_first": float(stat[0]),
                    "stat_last": float(stat[-1]), "first_teacher": off,
                    "loss_curve": [round(float(v), 5) for v in ce + spec.r_bn * stat]}
            yield UnitResult(u, (x * s + m).clamp(0, 1).cpu(), extras=extras, meta=meta, set_meta=dict(set_meta),
                             seconds=time.perf_counter() - t0)
    finally:
        for h in hooks:
            h.remove()
