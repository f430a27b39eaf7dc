"""`lic` (alias `cim`): Condensing Large-scale datasets with minimal Information loss (LIC / CIM).

Per class (peers.md §1.4, following the reference code, with the paper's variants as options):

1. pool: `pool_size` (300) random real images, seeded by (seed, class); never duplicated;
2. key samples: the ipc·f² pool images with the lowest teacher cross-entropy, in rank order;
3. squeeze F: f² ranked images per mosaic on an f×f grid (rank block k → cell k, nearest downsampling);
4. information compensation: a residual Δx (fp32, AdamW lr 0.01, wd 0.01) is optimised for M = 200
   steps so that the teacher features of each expanded cell F⁻¹(x* + Δx) match those of its own real
   image under ONE shared flip/translate/cutout draw per class and step (paired L1-mean loss);
5. relabel: the evaluator's `cim` recipe relabels crops online; with `store_labels` the teacher logits
   of each final image ("soft") and of its f² upsampled cells ("region_soft", row-major) are stored.

Engineering: every class has its own generators derived from (seed, class), so its result does not
depend on which classes share its step. `classes_per_step` classes are optimised together; forwards are
chunked to at most `max_batch` images (gradient accumulation) to bound peak memory. With
`pack_classes` off (the CPU default) every forward holds one class's rows at class-relative chunk
offsets, so per-class results are bit-identical whatever `classes_per_step` is; on CUDA classes are
packed into shared forwards for throughput (results then agree to float rounding). The selection
forward (step 2) of `lookahead` classes runs in shared fixed-shape forwards of exactly `score_batch`
images (`ddkit.teachers.shared`), bit-identical whatever the grouping; `cpu_amp` runs it in bf16 on
CPUs with native bf16 (compensation and stored labels stay fp32).
"""
from __future__ import annotations

import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ddkit.augment import Identity, cim_condense_aug
from ddkit.config import field
from ddkit.data.base import ImageDataset, to_float
from ddkit.methods.base import ClassResult, MethodConfig, register_method
from ddkit.methods.lic_ops import (DISTANCES, DOWNSAMPLE_MODES, SELECTIONS, cross_entropy_per_sample, expand,
                                   herding, select_ranked, squeeze)
from ddkit.methods.lic_optim import Compensator
from ddkit.models import default_feature_layer
from ddkit.teachers.frozen import FrozenTeacher
from ddkit.teachers.shared import groups, score_batch
from ddkit.utils import DDKitError, cpu_bf16_native, make_generator


@dataclass(frozen=True)
class LICConfig(MethodConfig):
    """LIC/CIM options; defaults are the reference code's effective values (peers.md §1.4)."""

    pool_size: int = field(300, "real images drawn per class before selection (reference mipc = 300)")
    factor: int = field(2, "mosaic grid side f: N = f² real images squeezed into each image (reference 2)")
    selection: str = field("lowest", "key samples: lowest teacher CE (reference), highest, random (selection "
                                     "off), herding (teacher penultimate features)")
    downsample: str = field("nearest", "patch downsampling in the squeeze: nearest (reference), bilinear, "
                                       "area, antialias")
    iterations: int = field(200, "information-compensation steps M (0 = compensation off: plain mosaics)")
    lr: float = field(0.01, "AdamW learning rate on the residual Δx (reference)")
    weight_decay: float = field(0.01, "AdamW decoupled decay on Δx (reference: torch's default 0.01; its 1e-4 "
                                      "argument is commented out)")
    feature_layer: str = field("auto", "teacher layer matched: auto = penultimate for ≤64-px ResNets, layer2 "
                                       "for 224-px ResNets, last block for ConvNets (reference)")
    distance: str = field("l1_mean", "per-pair feature distance summed over pairs: l1_mean (reference), mse, "
                                     "cosine")
    augment: bool = field(True, "observer: one flip/translate/cutout draw per class and step, shared by "
                                "each real/synthetic pair (reference)")
    clamp: bool = field(False, "clamp final images to [0,1] (the reference saves them unclamped)")
    store_labels: bool = field(True, "store teacher logits of each image (soft) and of its f² cells "
                                     "(region_soft); the cim eval recipe also relabels online")
    classes_per_step: int = field(1, "classes optimised together (raise on GPU for throughput); per-class "
                                     "results stay bit-identical on CPU, equal to rounding when packed")
    max_batch: int = field(256, "most images in one teacher forward; chunks + gradient accumulation bound "
                                "peak memory")
    pack_classes: Optional[bool] = field(None, "share forwards between the classes of a step: None = on CUDA "
                                               "only (CPU keeps per-class forwards, bit-identical)")
    amp: bool = field(True, "bf16 autocast for teacher passes on CUDA (Δx and AdamW stay fp32)")
    score_batch: int = field(0, "images in every selection forward (the last zero-padded, so results do not depend "
                                "on the grouping); 0 = auto: 32 on CPU (measured fastest, docs/performance.md), "
                                "max_batch on CUDA")
    lookahead: int = field(16, "classes whose selection forwards are shared (rounded up to whole steps); "
                               "results are the same bytes for any value; memory: their uint8 pools")
    cpu_amp: bool = field(False, "bf16 autocast for the selection forward on CPU, where the CPU has native bf16 "
                                 "(off: see docs/performance.md, RDED / selection passes)")
    channels_last: bool = field(True, "channels_last teacher and inputs on CUDA")

    def __post_init__(self) -> None:
        checks = [(self.selection, SELECTIONS, "selection"), (self.downsample, DOWNSAMPLE_MODES, "downsample"),
                  (self.distance, DISTANCES, "distance")]
        for value, valid, name in checks:
            if value not in valid:
                raise DDKitError(f"unknown {name} {value!r}; choose one of {', '.join(valid)}")
        for name in ("pool_size", "factor", "classes_per_step", "max_batch", "lookahead"):
            if getattr(self, name) < 1:
                raise DDKitError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(self, name)}")
        if self.score_batch < 0:
            raise DDKitError(f"--score-batch must be ≥ 0 (0 = auto), got {self.score_batch}")
        if self.iterations < 0:
            raise DDKitError(f"--iterations must be ≥ 0, got {self.iterations}")


def _check_inputs(dataset: ImageDataset, teacher: Any, cfg: LICConfig) -> int:
    """Refuse impossible runs up front (before any compute); warn about short classes. Returns n per class."""
    need = cfg.ipc * cfg.factor ** 2
    if teacher.channels != dataset.channels or teacher.image_size != dataset.image_size:
        raise DDKitError(f"dataset images are {dataset.channels}×{dataset.image_size}² px but the teacher expects "
                         f"{teacher.channels}×{teacher.image_size}²: load the dataset at the teacher's size")
    if cfg.factor > dataset.image_size:
        raise DDKitError(f"--factor {cfg.factor} exceeds the image side ({dataset.image_size} px)")
    short = []
    for c, count in enumerate(dataset.class_counts()):
        pool = min(count, cfg.pool_size)
        if pool < need:
            raise DDKitError(f"class {c} ({dataset.classes[c]!r}) gives a pool of {pool} images but ipc·f² = "
                             f"{cfg.ipc}·{cfg.factor}² = {need} are needed: lower --ipc or --factor"
                             + (" or raise --pool-size" if count > pool else ""))
        if count < cfg.pool_size:
            short.append(f"{dataset.classes[c]} ({count})")
    if short:
        warnings.warn(f"{len(short)} class(es) have fewer than --pool-size {cfg.pool_size} images and use all of "
                      f"them (no duplication): {', '.join(short[:10])}{' …' if len(short) > 10 else ''}",
                      stacklevel=4)
    return need


def _load_pools(dataset: ImageDataset, classes: List[int], cfg: LICConfig) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """The random real pool (uint8 images, dataset indices) of each class, seeded by (seed, class)."""
    return [dataset.class_images(c, cfg.pool_size, generator=make_generator(cfg.seed, "class", c)) for c in classes]


def _prefetched(dataset: ImageDataset, steps: List[List[int]], cfg: LICConfig
                ) -> Iterator[Tuple[List[int], List[Tuple[torch.Tensor, torch.Tensor]], float]]:
    """Yield (group, its pools, seconds waited for them) while a background thread reads the next group's.

    Reading a pool can mean decoding hundreds of JPEGs; overlapping it with the device work of the
    previous group hides it. Only that one thread touches the dataset, so loaders need not be thread-safe.
    """
    if not steps:
        return
    loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lic-pool")
    try:
        future = loader.submit(_load_pools, dataset, steps[0], cfg)
        for i, step in enumerate(steps):
            t0 = time.perf_counter()
            pools = future.result()
            waited = time.perf_counter() - t0
            if i + 1 < len(steps):
                future = loader.submit(_load_pools, dataset, steps[i + 1], cfg)
            yield step, pools, waited
    finally:
        loader.shutdown(wait=True, cancel_futures=True)


def _select_group(pools: Sequence[Tuple[torch.Tensor, torch.Tensor]], group: Sequence[int], tch: FrozenTeacher,
                  cfg: LICConfig, n: int, batch: int) -> List[Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]]:
    """The n key samples of each class of `group`, in rank order: per class (uint8 ranked images on CPU,
    their dataset indices, their scores or None). The teacher forwards of the whole group are shared
    fixed-shape forwards, so each class's choice is the same whichever classes share them."""
    images = [pool for pool, _ in pools]
    if cfg.selection == "random":
        scores: List[Optional[torch.Tensor]] = [None] * len(group)
    else:
        logits = tch.shared_logits(images, cfg.cpu_amp, batch)
        scores = [cross_entropy_per_sample(z, c) for z, c in zip(logits, group)]
    if cfg.selection == "herding":
        feats = tch.shared_features(images, "penultimate", cfg.cpu_amp, batch)
    out = []
    for j, (c, (pool, idx)) in enumerate(zip(group, pools)):
        if cfg.selection == "herding":
            order = herding(feats[j], n)
        else:
            g = make_generator(cfg.seed, "lic", "select", c)
            order = select_ranked(scores[j] if scores[j] is not None else torch.zeros(len(pool)), n,
                                  cfg.selection, g)
        order = order.cpu()
        kept = scores[j].cpu()[order] if scores[j] is not None else None
        out.append((pool[order], idx[order], kept))
    return out


def _region_labels(tch: FrozenTeacher, final: torch.Tensor, cfg: LICConfig) -> Dict[str, torch.Tensor]:
    """soft: logits of each whole image (ipc×K); region_soft: of each upsampled cell (ipc×f²×K, row-major)."""
    f2 = cfg.factor ** 2
    soft = tch.logits(final, cfg.max_batch)
    with torch.no_grad():
        cells = expand(final, cfg.factor)  # row k·ipc + m = cell k of mosaic m
    region = tch.logits(cells, cfg.max_batch)
    region = region.reshape(f2, len(final), -1).transpose(0, 1)
    return {"soft": soft.cpu(), "region_soft": region.contiguous().cpu()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@register_method("lic", config=LICConfig, aliases=("cim",), needs_teacher=True, native="cim")
def lic(dataset: ImageDataset, teacher: Any, cfg: LICConfig, classes: Sequence[int], *, device: torch.device,
        progress: bool = True) -> Iterator[ClassResult]:
    """LIC/CIM: select confident real images, squeeze f² per image, compensate with a feature-matched residual."""
    n = _check_inputs(dataset, teacher, cfg)
    layer = cfg.feature_layer
    if layer == "auto":
        try:
            layer = default_feature_layer(teacher.arch, teacher.image_size)
        except KeyError:
            raise DDKitError(f"no default feature layer for teacher arch {teacher.arch!r}: pass --feature-layer "
                             f"(e.g. penultimate)") from None
    tch = FrozenTeacher(teacher, device, amp=cfg.amp, channels_last=cfg.channels_last, max_batch=cfg.max_batch)
    try:
        extractor = tch.extractor(layer)
    except ValueError as e:
        raise DDKitError(f"--feature-layer: {e}") from None
    packed = cfg.pack_classes if cfg.pack_classes is not None else device.type == "cuda"
    comp = Compensator(extractor, tch.norm, cim_condense_aug() if cfg.augment else Identity(), cfg,
                       device, packed=packed, prep=tch.prep)
    set_meta = {"feature_layer": layer, "factor": cfg.factor, "images_per_mosaic": cfg.factor ** 2,
                "packed_forwards": packed,
                "selection_bf16": tch.amp or (cfg.cpu_amp and device.type == "cpu" and cpu_bf16_native())}
    batch = score_batch(cfg.score_batch, device, cfg.max_batch)
    set_meta["score_batch"] = batch
    classes = list(classes)
    # a group is whole steps: its pools are read ahead in one go and its selection forwards are shared
    group_size = -(-max(cfg.lookahead, cfg.classes_per_step) // cfg.classes_per_step) * cfg.classes_per_step
    for group, pools, waited in _prefetched(dataset, groups(classes, group_size), cfg):
        t0 = time.perf_counter()
        chosen = _select_group(pools, group, tch, cfg, n, batch)
        _sync(device)
        select_share = (time.perf_counter() - t0) / len(group)
        for s0 in range(0, len(group), cfg.classes_per_step):
            yield from _step(group[s0:s0 + cfg.classes_per_step], chosen[s0:s0 + cfg.classes_per_step], tch,
                             comp, cfg, set_meta, device, waited / len(group), select_share)


def _step(step: List[int], chosen: List[Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]],
          tch: FrozenTeacher, comp: Compensator, cfg: LICConfig, set_meta: Dict[str, Any], device: torch.device,
          pool_wait: float, select_share: float) -> Iterator[ClassResult]:
    """Squeeze, compensate and label one step's classes (their key samples chosen), yielding each."""
    t0 = time.perf_counter()
    reals, mosaics, picked = [], [], []
    for ranked_u8, idx, ce in chosen:
        ranked = to_float(ranked_u8.to(tch.device))
        reals.append(ranked)
        mosaics.append(squeeze(ranked, cfg.factor, cfg.downsample))
        # selected_indices: dataset index of the rank-r image; mosaic m, cell k holds rank k·ipc+m.
        picked.append({"selected_indices": idx.tolist(), "selected_ce": ce.tolist() if ce is not None else None})
    _sync(device)
    t1 = time.perf_counter()
    gens = [make_generator(cfg.seed, "lic", "augment", c) for c in step]
    finals, losses = comp.run(reals, mosaics, gens)  # losses: iterations × len(step) on CPU
    _sync(device)
    t2 = time.perf_counter()
    for j, c in enumerate(step):
        tj = time.perf_counter()
        final = finals[j].clamp(0, 1) if cfg.clamp else finals[j]
        labels_c = _region_labels(tch, final, cfg) if cfg.store_labels else {}
        meta = dict(picked[j])
        if len(losses):
            curve = losses[:, j]
            marks = sorted(set(torch.linspace(0, len(curve) - 1, min(11, len(curve))).round().long().tolist()))
            meta.update(loss_first=float(curve[0]), loss_last=float(curve[-1]),
                        loss_curve={str(i): float(curve[i]) for i in marks})
        _sync(device)
        share = select_share + (t1 - t0) / len(step), (t2 - t1) / len(step)
        meta["timings"] = {"pool_wait_s": pool_wait, "select_s": share[0], "compensate_s": share[1],
                           "labels_s": time.perf_counter() - tj}
        yield ClassResult(c, final, soft=labels_c, meta=meta, set_meta=set_meta,
                          seconds=sum(share) + time.perf_counter() - tj)
