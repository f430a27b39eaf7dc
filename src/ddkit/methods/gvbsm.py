"""`gvbsm`: Generalized Various Backbone and Statistical Matching (G-VBSM, Shao et al., CVPR 2024) on the SRe2L
recover engine.

As the official code runs it (shaoshitong/G_VBSM_Dataset_Condensation@1ed80b0, `Branch_<DS>/recover/
data_synthesis_with_svd_with_db_with_all_statistic.py` "DS" and `utils.py` "U"; CIFAR-10 line numbers unless
said; sheet largescale-methods.md §1; the hooks and the loss terms in `methods.gsm`):

1. Teachers: several BN networks taking turns, one per step, k = step mod K (DS:150-152), in the order given
   (`ddkit distill --teacher A --teacher B …`; CIFAR: ResNet18, ConvNetW128, MobileNetV2, WRN_16_2,
   ShuffleNetV2_0_5, DS:331). Each has hooks on every BatchNorm2d and Conv2d (DS:53-65, `methods.gsm`).
2. Conv targets: one pass over the train set per teacher (DS:70-94, when the shipped statistic files are missing):
   per-sample RandomCrop(32, padding 4) + flip, batches of 64 on CIFAR (Tiny: pad 8; ImageNet-1K: RRC(224) +
   flip, batches of 256, IN-1K DS:69-81). ddkit always computes them, inside the run, nothing cached.
3. Unit: class-major batches of `batch_size` images, ⌊batch_size/ipc⌋ classes × all their ipc images (DS:105-116;
   CIFAR-10 one GPU, 100 = 10 classes × 10 at IPC 10). Where the script splits its batch over 2 GPUs (CIFAR-100,
   Tiny, IN-1K `--gpu-id 0,1`) each process optimises its own half with its own statistics, CE and densification
   (DS:68, 113-124: `sub_batch_size`), so the presets hold the per-process batch (IN-1K 80 → 40 = 4 classes × 10).
4. Start N(0, 1) in the working space (DS:124). Each step: cosine lr (DS:129, 135), one view of the whole batch:
   RandomCrop(side, padding 4) + flip (CIFAR DS:137-141; IN-1K RRC + flip), a roll of 0..jitter px (DS:144-146;
   jitter 32 by default, also on 32-px images: the argparse default, DS:302, which no script overrides);
   forward teacher k; loss CE + r_loss·GSM_k + nuc·densify (DS:154-189); Adam(0.5, 0.9) step, clip (DS:203-207);
   the last iterate is kept (DS:212-213).

Differences, by design: each unit starts its EMAs and its turn counter afresh (the official hooks and counter
run on over every batch of the process, and the BN hooks' EMA starts from the statistics pass; with α ≤ 0.8 it
forgets that in a few steps, and every script's iterations are a multiple of K, so the turn restarts at 0 anyway),
so a unit's images never depend on the units run before it; the conv-term drop draws from a generator of (seed,
unit), not Python's global RNG; when ipc does not divide batch_size a batch keeps classes whole (the official
order then splits a class over two batches); images are stored as exact floats, not 8-bit PNG; the ImageNet-1K
RRC of the statistics pass resamples the stored image, not the full-size JPEG.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from ddkit.augment import RandomResizedCrop, resized_crop
from ddkit.config import field
from ddkit.data.base import ImageDataset, to_float
from ddkit.data.facts import working_stats
from ddkit.methods.base import MethodConfig, Unit, UnitResult, check_ipc, group_units, register_method
from ddkit.methods.gsm import StatHooks, collect_targets, densify_loss
from ddkit.methods.matching_ops import NORM_HELP
from ddkit.methods.recover import RecoverSpec, pad_crop, recover, teacher_in_working_space, valid_bounds
from ddkit.methods.sre2l import teacher_copy
from ddkit.utils import DDKitError, make_generator

_G = "G_VBSM@1ed80b0"
PRESETS: Dict[str, Dict[str, Any]] = {
    "cifar": dict(iterations=4000, lr=0.05, r_loss=0.01, nuc=1.0, batch_size=100, alpha=0.8, drop_rate=0.4,
                  jitter=32, cell=4, pad=4, stat_batch=64, stat_images=0,
                  source=f"{_G} Branch_CIFAR_10/recover/recover.sh: --batch-size 100 --lr 0.05 --iteration 4000 "
                         "--r-loss 0.01 --nuc-norm 1 (one GPU); argparse defaults training-momentum 0.8, drop-rate "
                         "0.4, jitter 32, first-multiplier 10, tau 4 (DS:296-316); RandomCrop(32, 4) + flip "
                         "(DS:137-141); 4-px cells (U:196); statistics pass bs 64 (DS:80-84)"),
    "tiny": dict(iterations=4000, lr=0.05, r_loss=0.01, nuc=1.0, batch_size=50, alpha=0.8, drop_rate=0.4,
                 jitter=32, cell=4, pad=8, stat_batch=64, stat_images=0,
                 source=f"{_G} Branch_Tiny_ImageNet/recover/recover.sh: --batch-size 100 over 2 GPUs (50 per "
                        "process), --lr 0.05 --iteration 4000 --r-loss 0.01 --nuc-norm 1; RandomCrop(64, 8) + flip "
                        "(DS:126-127, tiny_in_dataset.py:21-22); 4-px cells (U:196)"),
    "imagenet": dict(iterations=4000, lr=0.1, r_loss=0.01, nuc=1.0, batch_size=40, alpha=0.4, drop_rate=0.0,
                     jitter=32, cell=16, pad=0, stat_batch=256, stat_images=0,
                     source=f"{_G} Branch_full_ImageNet_1k/recover/recover.sh: --batch-size 80 over 2 GPUs (40 per "
                            "process), --lr 0.1 --iteration 4000 --r-loss 0.01 --nuc-norm 1; training-momentum 0.4, "
                            "drop-rate 0 (DS:310-313); RRC(224) + flip (DS:134-137); 16-px cells (utils.py:195); "
                            "statistics pass RRC + flip, bs 256 (DS:69-81)"),
    "cpu": dict(iterations=100, lr=0.05, r_loss=0.01, nuc=1.0, batch_size=100, alpha=0.8, drop_rate=0.4,
                jitter=32, cell=4, pad=4, stat_batch=64, stat_images=50,
                source="ddkit CPU preset (not an official setting): the cifar row at 100 iterations, conv targets "
                       "from 50 train images per class"),
}


@dataclass(frozen=True)
class GVBSMConfig(MethodConfig):
    """G-VBSM: recover through teachers in turn, matching BN and convolution-input statistics, plus densification."""

    preset: str = field("auto", "per-dataset defaults: auto (by image size: ≤ 32 px cifar, ≤ 64 px tiny, else "
                                "imagenet), cifar, tiny, imagenet or cpu (a short CPU run, not official)")
    iterations: Optional[int] = field(None, "Adam steps per batch (recover.sh --iteration 4000; cpu 100)")
    lr: Optional[float] = field(None, "Adam lr of the pixels, cosine-decayed to 0 (recover.sh: 0.05, IN-1K 0.1)")
    r_loss: Optional[float] = field(None, "weight of the statistic (BN + conv) term (recover.sh --r-loss 0.01)")
    nuc: Optional[float] = field(None, "weight of the densification term (recover.sh --nuc-norm 1)")
    tau: float = field(4.0, "temperature of the densification's target spectrum softmax(λ/τ) (--tau 4, DS:316)")
    first_multiplier: float = field(10.0, "multiplier of the first hooked layer's term (--first-multiplier 10)")
    training_momentum: Optional[float] = field(None, "α of the statistics' EMA (value = EMA, gradient of the "
                                                     "current batch; argparse: 0.8 CIFAR/Tiny, 0.4 IN-1K)")
    drop_rate: Optional[float] = field(None, "probability that a conv hook's term is skipped in a step (argparse: "
                                             "0.4 CIFAR/Tiny, 0 IN-1K)")
    jitter: Optional[int] = field(None, "random roll of 0..jitter px per axis each step (argparse default 32, also "
                                        "on 32-px images, U/DS:302)")
    batch_size: Optional[int] = field(None, "images per batch (per process in the official multi-GPU runs): "
                                            "⌊batch_size/ipc⌋ classes × ipc images (CIFAR-10 100, Tiny 50, IN-1K 40)")
    cell: Optional[int] = field(None, "side in px of the patch-statistic cells (4 CIFAR/Tiny, 16 IN-1K)")
    stat_images: Optional[int] = field(None, "train images per class in the conv-statistics pass, 0 = all "
                                             "(official; cpu preset 50)")
    stat_batch: Optional[int] = field(None, "batch of the conv-statistics pass (64 CIFAR/Tiny, 256 IN-1K)")
    norm: str = field("official", NORM_HELP + "; G-VBSM: CIFAR-100's mean/std for CIFAR-10 too "
                                  "(Branch_CIFAR_10/recover/utils.py:74-75@1ed80b0). The teachers are fed through "
                                  "the exact affine map into their own statistics")


def resolve(cfg: GVBSMConfig, image_size: int) -> Tuple[str, Dict[str, Any]]:
    """The preset row of `cfg` (auto by image size) with the explicit options on top."""
    family = cfg.preset
    if family == "auto":
        family = "cifar" if image_size <= 32 else "tiny" if image_size <= 64 else "imagenet"
    if family not in PRESETS:
        raise DDKitError(f"unknown preset {cfg.preset!r}; choose auto, {', '.join(PRESETS)}")
    p = dict(PRESETS[family])
    for k in ("iterations", "lr", "r_loss", "nuc", "jitter", "batch_size", "cell", "stat_images", "stat_batch",
              "drop_rate"):
        if getattr(cfg, k) is not None:
            p[k] = getattr(cfg, k)
    if cfg.training_momentum is not None:
        p["alpha"] = cfg.training_momentum
    if p["iterations"] < 1 or p["jitter"] < 0 or p["batch_size"] < 1 or p["cell"] < 1 or p["stat_batch"] < 1 \
            or p["stat_images"] < 0:
        raise DDKitError("iterations, batch_size, cell and stat_batch must be >= 1; jitter and stat_images >= 0")
    if not (0.0 <= p["alpha"] <= 1.0 and 0.0 <= p["drop_rate"] < 1.0):
        raise DDKitError("--training-momentum must be in [0, 1] and --drop-rate in [0, 1)")
    return family, p


def gvbsm_units(dataset: ImageDataset, cfg: GVBSMConfig) -> List[Unit]:
    """Groups of ⌊batch_size / ipc⌋ consecutive classes, each unit holding all ipc images of its classes."""
    _, p = resolve(cfg, dataset.image_size)
    return group_units(dataset.num_classes, min(dataset.num_classes, max(1, p["batch_size"] // cfg.ipc)))


def real_views(dataset: ImageDataset, p: Dict[str, Any], gen: torch.Generator, device: torch.device,
               labels: bool = False) -> Iterator[Any]:
    """The statistics pass's [0, 1] batches: the train set (or stat_images per class) shuffled, each image with its
    own RandomCrop(pad) or RandomResizedCrop, then flip (the official DataLoader's per-sample transforms);
    with `labels`, (batch, its class indices) pairs (EDC's class statistics)."""
    n = p["stat_images"]
    idx, lab = [], []
    for c in range(dataset.num_classes):
        ci = dataset.class_indices(c)
        idx.append(ci if n == 0 or n >= len(ci) else ci[torch.randperm(len(ci), generator=gen)[:n]])
        lab.append(torch.full((len(idx[-1]),), c, dtype=torch.long))
    perm = torch.randperm(sum(len(i) for i in idx), generator=gen)
    order, classes = torch.cat(idx)[perm], torch.cat(lab)[perm]
    hw = (dataset.image_size, dataset.image_size)
    rrc = RandomResizedCrop(hw)
    for a in range(0, len(order), p["stat_batch"]):
        x = to_float(dataset.get(order[a:a + p["stat_batch"]])).to(device)
        if p["pad"]:
            x = pad_crop(x, torch.randint(0, 2 * p["pad"] + 1, (len(x), 2), generator=gen), p["pad"])
        else:
            x = resized_crop(x, rrc.sample(len(x), hw, generator=gen)["box"].to(device), hw, antialias=True)
        flip = (torch.rand(len(x), generator=gen) < 0.5).to(device)
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        yield (x, classes[a:a + p["stat_batch"]].to(device)) if labels else x


@register_method("gvbsm", config=GVBSMConfig, aliases=("G-VBSM", "g-vbsm"), needs_teacher=True,
                 needs=("bn-teacher",), native="gvbsm", units=gvbsm_units, quick={"preset": "cpu"}, committee=True)
def gvbsm(dataset: ImageDataset, teacher: Any, cfg: GVBSMConfig, work: Sequence[Unit], *,
          device: torch.device, progress: bool = True) -> Iterator[UnitResult]:
    """G-VBSM: noise recovered through several teachers in turn (BN + convolution statistics, EMA'd) with the
    eigen-spectrum densification of each class."""
    if teacher is None:
        raise DDKitError("gvbsm recovers images through teachers: pass --teacher CKPT (repeat it for several)")
    family, p = resolve(cfg, dataset.image_size)
    check_ipc(dataset, 1)
    working = working_stats(dataset, "gvbsm", cfg.norm)
    m = torch.tensor(working.mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(working.std, device=device).view(1, -1, 1, 1)
    teachers = list(getattr(teacher, "members", [teacher]))
    nets = [teacher_in_working_space(teacher_copy(t, device, "gvbsm"), working, t.mean, t.std) for t in teachers]
    hooks = [StatHooks(n, p["cell"], p["alpha"], p["drop_rate"]) for n in nets]
    seen: Dict[str, torch.Tensor] = {}
    grab = [n.register_forward_pre_hook(lambda mod, a: seen.__setitem__("view", a[0])) for n in nets]
    try:
        for k, (net, h) in enumerate(zip(nets, hooks)):  # one pass per teacher, each its own draw (DS:86-91)
            views = real_views(dataset, p, make_generator(cfg.seed, "gvbsm", "stats", k), device)
            collect_targets(h, net, ((v - m) / s for v in views))
        spec = RecoverSpec(iterations=int(p["iterations"]), lr=float(p["lr"]), r_bn=float(p["r_loss"]),
                           first_bn_multiplier=cfg.first_multiplier, jitter=int(p["jitter"]), rrc=not p["pad"],
                           flip=True, pad=int(p["pad"]))
        facts = {"preset": family, "preset_source": p["source"], "iterations": spec.iterations, "lr": spec.lr,
                 "r_loss": spec.r_bn, "nuc": p["nuc"], "tau": cfg.tau, "first_multiplier": cfg.first_multiplier,
                 "training_momentum": p["alpha"], "drop_rate": p["drop_rate"], "jitter": spec.jitter,
                 "batch_size": p["batch_size"], "cell": p["cell"], "pad": p["pad"], "stat_images": p["stat_images"],
                 "stat_batch": p["stat_batch"], "teachers": [t.arch for t in teachers]}
        set_meta = {"recover": facts, "teacher_arch": getattr(teacher, "arch", None), "working_stats": working.meta(),
                    "classes_per_batch": min(dataset.num_classes, max(1, p["batch_size"] // cfg.ipc))}
        bounds = valid_bounds(working.mean, working.std)
        shape = (dataset.channels, dataset.image_size, dataset.image_size)
        voters = [(n, 1.0, []) for n in nets]
        for u in work:
            t0 = time.perf_counter()
            g = make_generator(cfg.seed, "gvbsm", "group", u.classes[0])
            drop = make_generator(cfg.seed, "gvbsm", "drop", u.classes[0])
            for h in hooks:
                h.reset()
                h.drop_gen = drop
            x0 = torch.randn(len(u.classes) * cfg.ipc, *shape, generator=g).to(device)
            y = torch.tensor(u.classes, device=device).repeat_interleave(cfg.ipc)
            x, curves = recover(None, x0, y, 1, [], [g], spec, bounds, progress=progress,
                                desc=f"gvbsm classes {u.classes[0]}-{u.classes[-1]}", voters=voters, rotate=True,
                                stat_loss=lambda k: hooks[k].loss(cfg.first_multiplier).reshape(1),
                                extra=lambda rows: p["nuc"] * densify_loss(seen["view"], y, cfg.tau),
                                extra_name="dense")
            ce, gsm, dense = curves["ce"][0], curves["bn"][0], curves["extra"][0]
            meta = {"ce_first": float(ce[0]), "ce_last": float(ce[-1]), "gsm_first": float(gsm[0]),
                    "gsm_last": float(gsm[-1]), "dense_first": float(dense[0]), "dense_last": float(dense[-1]),
                    "loss_curve": [round(float(v), 5) for v in ce + spec.r_bn * gsm + dense]}
            yield UnitResult(u, (x * s + m).clamp(0, 1).cpu(), meta=meta, set_meta=dict(set_meta),
                             seconds=time.perf_counter() - t0)
    finally:
        for h in hooks:
            h.remove()
        for handle in grab:
            handle.remove()
