"""`rded`: Realistic, Diverse and Efficient Dataset Distillation (RDED, Sun et al., CVPR 2024).

Per class (peers.md §2.1, following the reference code):

1. pool: `pool_size` (300) random real images, seeded by (seed, class) (the same pool LIC draws);
   a class with fewer images uses all of them (with a warning) and never duplicates one;
2. crops: `num_crop` (5) RandomResizedCrop(size // f, scale=(0.08, 1), ratio=(1, 1)) patches per image;
3. score: each patch is normalised, then zero-padded (centred) to size × size, so the padding is the
   mean colour, and scored by the teacher's cross-entropy −log p_y; each image keeps its lowest-CE patch;
4. select: the ipc·f² images whose kept patch has the lowest CE, in rank order;
5. stitch: f × f patches per image with CIM's layout (rank block k → grid cell k, so mosaic m holds
   ranked patch k·ipc + m), the convention of `lic_ops.squeeze`, whose cell geometry is reused.

Labels are hard; RDED's protocol relabels online (the `rded` eval recipe, SL+KD). `store_labels` adds
the teacher's logits of each final image ("soft") for the fixed-SL regime.

`normalization`: "dataset" (default) normalises patches with the teacher's own mean/std, i.e. the
dataset statistics our teachers are trained with, so the teacher sees inputs like its training data;
"imagenet" reproduces RDED's quirk of ImageNet statistics for every dataset, CIFAR included
(`synthesize/utils.py:77`), only meaningful for checkpoints trained that way.

The patch machinery (`PatchScorer`, `best_patches_many`, `run_classes`) is shared with CA2D
(`ddkit.methods.cad`), which only swaps the random pool for a CAD-Prune pool.

Engineering: the crops of `lookahead` classes are scored together, streamed through fixed-shape
teacher forwards of exactly `score_batch` patches (`ddkit.teachers.shared`: the last one zero-padded),
then the classes are yielded one by one. A class's crops, scores and mosaics are the same bytes
whether it runs alone or with any other classes (test_rded, test_golden). `cpu_amp` runs those
scoring forwards in bf16 on CPUs with native bf16 (off by default: docs/performance.md).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from ddkit.augment import RandomResizedCrop, resized_crop
from ddkit.config import field
from ddkit.data.base import ImageDataset, to_float
from ddkit.geometry import auto_factor, cell_bounds, downsample
from ddkit.methods.base import ClassResult, MethodConfig, register_method
from ddkit.teachers.frozen import FrozenTeacher
from ddkit.teachers.shared import Rows, groups, shared_forward
from ddkit.teachers.shared import score_batch as score_batch_for
from ddkit.utils import DDKitError, autocast, cpu_bf16_native, make_generator

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("dataset", "imagenet")
#: classes whose crops share teacher forwards (RDEDConfig.lookahead; CA2D uses this default)
DEFAULT_LOOKAHEAD = 16


@dataclass(frozen=True)
class RDEDConfig(MethodConfig):
    """RDED options; defaults are the reference scripts' (peers.md §2.1, §2.3)."""

    pool_size: int = field(300, "real images drawn per class before patch scoring (reference mipc = 300)")
    num_crop: int = field(5, "RandomResizedCrop patches scored per pool image (reference scripts: 5)")
    factor: int = field(0, "mosaic side f (f² patches of size//f per image); 0 = auto: 1 up to 64 px "
                           "(CIFAR/Tiny scripts), 2 above (ImageNet scripts)")
    scale_min: float = field(0.08, "smallest crop area fraction of the RandomResizedCrop (torchvision default, "
                                   "as the reference)")
    normalization: str = field("dataset", "patch normalisation for scoring: dataset = the teacher's own "
                                          "(dataset) stats; imagenet = ImageNet stats for every dataset "
                                          "(RDED's quirk)")
    store_labels: bool = field(False, "store the teacher's logits of each final image as 'soft' (RDED stores "
                                      "none; its recipe relabels online)")
    max_batch: int = field(256, "most images in one teacher forward (bounds peak memory)")
    score_batch: int = field(0, "patches in every crop-scoring forward (the last zero-padded, so results do not "
                                "depend on the grouping); 0 = auto: 32 on CPU (measured fastest, "
                                "docs/performance.md), max_batch on CUDA")
    amp: bool = field(True, "bf16 autocast for teacher passes on CUDA (CE is computed in fp32)")
    lookahead: int = field(DEFAULT_LOOKAHEAD, "classes whose crops are scored in shared teacher forwards before "
                                              "they are yielded one by one (results are the same bytes for any "
                                              "value; memory: their uint8 pools)")
    cpu_amp: bool = field(False, "bf16 autocast for the crop-scoring forwards on CPU, where the CPU has native "
                                 "bf16 (off: see docs/performance.md, RDED / selection passes)")

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise DDKitError(f"unknown normalization {self.normalization!r}; choose one of "
                             f"{', '.join(NORMALIZATIONS)}")
        for name in ("pool_size", "num_crop", "max_batch", "lookahead"):
            if getattr(self, name) < 1:
                raise DDKitError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(self, name)}")
        if self.factor < 0:
            raise DDKitError(f"--factor must be ≥ 0 (0 = auto), got {self.factor}")
        if self.score_batch < 0:
            raise DDKitError(f"--score-batch must be ≥ 0 (0 = auto), got {self.score_batch}")
        if not 0 < self.scale_min <= 1:
            raise DDKitError(f"--scale-min must be in (0, 1], got {self.scale_min}")


def resolve_factor(factor: int, image_size: int) -> int:
    """The mosaic side: `factor` itself, or RDED's rule for 0 (1 up to 64 px, else 2)."""
    return factor if factor > 0 else auto_factor(image_size)


class PatchScorer:
    """The method's device copy of the teacher: CE of patches zero-padded in normalised space, batched."""

    def __init__(self, teacher: Any, device: torch.device, normalization: str = "dataset",
                 max_batch: int = 256, amp: bool = True, cpu_amp: bool = False, score_batch: int = 0) -> None:
        if normalization == "imagenet" and teacher.channels != 3:
            raise DDKitError(f"normalization 'imagenet' needs 3-channel images, the teacher has {teacher.channels}")
        self.device = device
        self.size = int(teacher.image_size)
        self.max_batch = int(max_batch)
        self.score_batch = score_batch_for(score_batch, device, self.max_batch)  # rows of every scoring forward
        self.amp = amp and device.type == "cuda"
        self.cpu_amp = bool(cpu_amp)  # scoring forwards only; stored logits stay fp32
        # The shared frozen view: a private copy only when it must move (the caller's teacher stays put).
        self.net = FrozenTeacher(teacher, device, amp=amp, channels_last=False).net
        stats = (IMAGENET_MEAN, IMAGENET_STD) if normalization == "imagenet" else (teacher.mean, teacher.std)
        self.mean = torch.tensor(stats[0], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(stats[1], dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.own_mean = torch.tensor(teacher.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.own_std = torch.tensor(teacher.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    def pad(self, patches01: torch.Tensor) -> torch.Tensor:
        """Normalise, then zero-pad centred to the teacher's size (zero = the mean colour), as RDED's `pad`."""
        x = (patches01.float() - self.mean) / self.std
        h, w = x.shape[-2:]
        top, left = (self.size - h) // 2, (self.size - w) // 2
        if h == self.size and w == self.size:
            return x
        return F.pad(x, (left, self.size - w - left, top, self.size - h - top), value=0.0)

    @torch.no_grad()
    def forward(self, padded: torch.Tensor) -> torch.Tensor:
        """fp32 logits of already padded, normalised patches (one scoring forward)."""
        with autocast(self.device, self.amp, cpu=self.cpu_amp):
            return self.net(padded).float()

    @torch.no_grad()
    def ce(self, patches01: torch.Tensor, label: int) -> torch.Tensor:
        """−log softmax(teacher(pad(patch)))_label per patch, fp32, in one forward (tests, small sets)."""
        return -torch.log_softmax(self.forward(self.pad(patches01.to(self.device))), dim=1)[:, label]

    @torch.no_grad()
    def logits(self, images01: torch.Tensor) -> torch.Tensor:
        """fp32 CPU logits of full [0,1] images with the teacher's own normalisation (stored soft labels)."""
        out = []
        for i in range(0, len(images01), self.max_batch):
            x = (to_float(images01[i:i + self.max_batch].to(self.device)) - self.own_mean) / self.own_std
            with autocast(self.device, self.amp):
                out.append(self.net(x).float().cpu())
        return torch.cat(out)


def scoring_bf16(scorer: PatchScorer) -> bool:
    """Whether the scoring forwards really run in bf16 here (CUDA amp, or cpu_amp on a native-bf16 CPU)."""
    return scorer.amp or (scorer.cpu_amp and scorer.device.type == "cpu" and cpu_bf16_native())


def _crop_rows(pool: torch.Tensor, boxes: torch.Tensor, num_crop: int, patch: int, scorer: PatchScorer) -> Rows:
    """The padded crops of one class as rows cut on demand: crop j of image i is row i·num_crop + j."""

    def cut(s: int, e: int) -> torch.Tensor:
        rows = torch.arange(s, e, device=pool.device)
        # to_float is elementwise, so converting only the images a slice needs gives the same bytes
        return scorer.pad(resized_crop(to_float(pool[rows // num_crop]), boxes[rows], patch, antialias=True))

    return Rows(len(boxes), cut)


def best_patches_many(pools: Sequence[torch.Tensor], labels: Sequence[int], scorer: PatchScorer, num_crop: int,
                      patch: int, scale_min: float, generators: Sequence[torch.Generator]
                      ) -> List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """`best_patches` for several classes at once: their crops share fixed-shape teacher forwards.

    pools: per class, its images (uint8 or [0,1] float), any device; generators: per class, the crop
    draw. Returns per class (patches n×C×patch×patch in [0,1] on the scorer's device, CE (n,) on CPU,
    boxes n×4 on CPU). Each class's boxes come from its own generator and its crops' logits are the
    same bytes whichever classes share the forwards (`ddkit.teachers.shared`), so the result of a class
    never depends on the group. Memory holds the uint8 pools and one forward's crops.
    """
    rrc = RandomResizedCrop(patch, scale=(scale_min, 1.0), ratio=(1.0, 1.0), antialias=True)
    pools = [p.to(scorer.device) for p in pools]
    boxes = [rrc.sample(len(p) * num_crop, p.shape, generator=g)["box"].to(p.device)
             for p, g in zip(pools, generators)]
    logits = shared_forward(scorer.forward, [_crop_rows(p, b, num_crop, patch, scorer) for p, b in zip(pools, boxes)],
                            scorer.score_batch)
    out = []
    for pool, box, z, label in zip(pools, boxes, logits, labels):
        n = len(pool)
        per_image = (-torch.log_softmax(z, dim=1)[:, label]).view(n, num_crop)
        best = per_image.argmin(dim=1)  # torch returns the first minimum
        win = box.view(n, num_crop, 4)[torch.arange(n, device=box.device), best.to(box.device)]
        patches = resized_crop(to_float(pool), win, patch, antialias=True)
        out.append((patches, per_image.gather(1, best[:, None])[:, 0].cpu(), win.cpu()))
    return out


def best_patches(pool01: torch.Tensor, label: int, scorer: PatchScorer, num_crop: int, patch: int,
                 scale_min: float, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each pool image's lowest-CE patch among `num_crop` square RandomResizedCrops of side `patch`.

    Returns (patches n×C×patch×patch in [0,1], their CE (n,), their boxes n×4 (top, left, h, w)).
    Crop j of image i is box row i·num_crop + j; ties keep the first crop. The crops are scored in
    forwards of `scorer.score_batch` without being kept, then only the winners are cut again (same box,
    same pixels), so memory holds one forward's crops, not pool × num_crop patches.
    """
    return best_patches_many([pool01], [label], scorer, num_crop, patch, scale_min, [generator])[0]


def stitch(ranked: torch.Tensor, factor: int, size: int) -> torch.Tensor:
    """ipc mosaics of side `size` from n = f²·ipc ranked patches: cell k = i·f + j of mosaic m holds
    ranked patch k·ipc + m (CIM/RDED layout; cell sizes from `lic_ops.cell_bounds`). Patches already at
    their cell's size are copied; otherwise (a side not divisible by f) nearest-resized, as RDED does."""
    n, c = ranked.shape[:2]
    cells = factor * factor
    if n % cells:
        raise ValueError(f"stitch needs a multiple of f²={cells} patches, got {n}")
    ipc = n // cells
    out = ranked.new_empty((ipc, c, size, size))
    bounds = cell_bounds(size, factor)
    for i, (r0, rh) in enumerate(bounds):
        for j, (c0, cw) in enumerate(bounds):
            k = i * factor + j
            out[:, :, r0:r0 + rh, c0:c0 + cw] = downsample(ranked[k * ipc:(k + 1) * ipc], (rh, cw), "nearest")
    return out


def check_pools(dataset: ImageDataset, pool_size: int, need: int, what: str = "rded") -> None:
    """DDKitError naming the first class whose pool cannot give `need` distinct images; warn on short pools."""
    short = []
    for c, count in enumerate(dataset.class_counts()):
        pool = min(count, pool_size)
        if pool < need:
            raise DDKitError(f"{what}: class {c} ({dataset.classes[c]!r}) gives a pool of {pool} images but "
                             f"ipc·f² = {need} are needed: lower --ipc or --factor"
                             + (" or raise --pool-size" if count > pool else ""))
        if count < pool_size:
            short.append(f"{dataset.classes[c]} ({count})")
    if short:
        warnings.warn(f"{len(short)} class(es) have fewer than --pool-size {pool_size} images and use all of them "
                      f"(no duplication): {', '.join(short[:10])}{' …' if len(short) > 10 else ''}", stacklevel=3)


def check_teacher_shape(dataset: ImageDataset, teacher: Any, factor: int) -> None:
    if teacher.channels != dataset.channels or teacher.image_size != dataset.image_size:
        raise DDKitError(f"dataset images are {dataset.channels}×{dataset.image_size}² px but the teacher expects "
                         f"{teacher.channels}×{teacher.image_size}²: load the dataset at the teacher's size")
    if factor > dataset.image_size:
        raise DDKitError(f"--factor {factor} exceeds the image side ({dataset.image_size} px)")


def extract_and_stitch(pool_u8: torch.Tensor, pool_idx: torch.Tensor, label: int, scorer: PatchScorer, ipc: int,
                       factor: int, num_crop: int, scale_min: float, generator: torch.Generator
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RDED steps 2–5 on one class's pool: (ipc mosaics [0,1] on CPU, ranked source indices, ranked CE)."""
    best = best_patches(pool_u8, label, scorer, num_crop, pool_u8.shape[-1] // factor, scale_min, generator)
    return _rank_and_stitch(best, pool_idx, ipc, factor, pool_u8.shape[-1])


def _rank_and_stitch(best: Tuple[torch.Tensor, torch.Tensor, torch.Tensor], pool_idx: torch.Tensor, ipc: int,
                     factor: int, size: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RDED steps 4–5: the ipc·f² lowest-CE kept patches, in rank order, stitched into ipc mosaics."""
    patches, ce, _ = best
    order = torch.argsort(ce, stable=True)[:ipc * factor * factor]
    mosaics = stitch(patches[order.to(patches.device)], factor, size)
    return mosaics.float().cpu(), pool_idx[order], ce[order]


def run_classes(classes: Sequence[int], pool_of: Callable[[int], Tuple[torch.Tensor, torch.Tensor]],
                scorer: PatchScorer, ipc: int, factor: int, num_crop: int, scale_min: float, seed: int,
                store_labels: bool, set_meta: Dict[str, Any], lookahead: int = DEFAULT_LOOKAHEAD
                ) -> Iterator[ClassResult]:
    """RDED steps 2–5 for each class of `classes` on the pool `pool_of(c)` -> (uint8 images, indices).

    Classes go in groups of `lookahead`: a group's crops are scored in shared forwards, then its classes
    are yielded one by one, each with the ipc mosaics, their ranked source indices (extras
    "source_index": per class the ipc·f² dataset indices in rank order; mosaic m cell k = rank
    k·ipc+m), optional stored logits, and the mean patch CE. A class's `seconds` is its share of the
    group's scoring plus its own stitching. Shared by RDED and CA2D.
    """
    set_meta = {**set_meta, "factor": factor, "images_per_mosaic": factor * factor}
    for group in groups(list(classes), lookahead):
        t0 = time.perf_counter()
        pools = [pool_of(c) for c in group]
        size = pools[0][0].shape[-1]
        best = best_patches_many([p for p, _ in pools], group, scorer, num_crop, size // factor, scale_min,
                                 [make_generator(seed, "rded", "crop", c) for c in group])
        share = (time.perf_counter() - t0) / len(group)
        for c, (_, idx), b in zip(group, pools, best):
            tc = time.perf_counter()
            m, src, ce = _rank_and_stitch(b, idx, ipc, factor, size)
            soft = {"soft": scorer.logits(m)} if store_labels else {}
            yield ClassResult(c, m, soft=soft, extras={"source_index": src},
                              meta={"patch_ce_mean": float(ce.mean())}, set_meta=set_meta,
                              seconds=share + time.perf_counter() - tc)


@register_method("rded", config=RDEDConfig, needs_teacher=True, native="rded")
def rded(dataset: ImageDataset, teacher: Any, cfg: RDEDConfig, classes: Sequence[int], *, device: torch.device,
         progress: bool = True) -> Iterator[ClassResult]:
    """RDED: lowest-CE RandomResizedCrop patches of a random real pool, stitched f×f per image."""
    factor = resolve_factor(cfg.factor, dataset.image_size)
    check_teacher_shape(dataset, teacher, factor)
    check_pools(dataset, cfg.pool_size, cfg.ipc * factor ** 2, "rded")
    scorer = PatchScorer(teacher, device, cfg.normalization, cfg.max_batch, cfg.amp, cfg.cpu_amp, cfg.score_batch)

    def pool_of(c: int) -> Tuple[torch.Tensor, torch.Tensor]:
        return dataset.class_images(c, cfg.pool_size, generator=make_generator(cfg.seed, "class", c))

    meta = {"normalization": cfg.normalization, "num_crop": cfg.num_crop, "pool": "random",
            "intended_regime": "slkd", "intended_recipe": "rded", "scoring_bf16": scoring_bf16(scorer),
            "score_batch": scorer.score_batch}
    yield from run_classes(classes, pool_of, scorer, cfg.ipc, factor, cfg.num_crop, cfg.scale_min, cfg.seed,
                           cfg.store_labels, meta, lookahead=cfg.lookahead)
