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

The patch machinery (`PatchScorer`, `best_patches`, `extract_and_stitch`) is shared with CA2D
(`ddkit.methods.cad`), which only swaps the random pool for a CAD-Prune pool.
"""
from __future__ import annotations

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
from ddkit.utils import DDKitError, autocast, make_generator

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("dataset", "imagenet")


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
    max_batch: int = field(256, "most patches in one teacher forward (bounds peak memory)")
    amp: bool = field(True, "bf16 autocast for teacher passes on CUDA (CE is computed in fp32)")

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise DDKitError(f"unknown normalization {self.normalization!r}; choose one of "
                             f"{', '.join(NORMALIZATIONS)}")
        for name in ("pool_size", "num_crop", "max_batch"):
            if getattr(self, name) < 1:
                raise DDKitError(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(self, name)}")
        if self.factor < 0:
            raise DDKitError(f"--factor must be ≥ 0 (0 = auto), got {self.factor}")
        if not 0 < self.scale_min <= 1:
            raise DDKitError(f"--scale-min must be in (0, 1], got {self.scale_min}")


def resolve_factor(factor: int, image_size: int) -> int:
    """The mosaic side: `factor` itself, or RDED's rule for 0 (1 up to 64 px, else 2)."""
    return factor if factor > 0 else auto_factor(image_size)


class PatchScorer:
    """The method's device copy of the teacher: CE of patches zero-padded in normalised space, batched."""

    def __init__(self, teacher: Any, device: torch.device, normalization: str = "dataset",
                 max_batch: int = 256, amp: bool = True) -> None:
        if normalization == "imagenet" and teacher.channels != 3:
            raise DDKitError(f"normalization 'imagenet' needs 3-channel images, the teacher has {teacher.channels}")
        self.device = device
        self.size = int(teacher.image_size)
        self.max_batch = int(max_batch)
        self.amp = amp and device.type == "cuda"
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
    def ce(self, patches01: torch.Tensor, label: int) -> torch.Tensor:
        """−log softmax(teacher(pad(patch)))_label per patch, fp32 on the scorer's device."""
        with autocast(self.device, self.amp):
            z = self.net(self.pad(patches01.to(self.device))).float()
        return -torch.log_softmax(z, dim=1)[:, label]

    @torch.no_grad()
    def logits(self, images01: torch.Tensor) -> torch.Tensor:
        """fp32 CPU logits of full [0,1] images with the teacher's own normalisation (stored soft labels)."""
        out = []
        for i in range(0, len(images01), self.max_batch):
            x = (to_float(images01[i:i + self.max_batch].to(self.device)) - self.own_mean) / self.own_std
            with autocast(self.device, self.amp):
                out.append(self.net(x).float().cpu())
        return torch.cat(out)


def best_patches(pool01: torch.Tensor, label: int, scorer: PatchScorer, num_crop: int, patch: int,
                 scale_min: float, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each pool image's lowest-CE patch among `num_crop` square RandomResizedCrops of side `patch`.

    Returns (patches n×C×patch×patch in [0,1], their CE (n,), their boxes n×4 (top, left, h, w)).
    Crop j of image i is box row i·num_crop + j; ties keep the first crop. The crops are scored in
    chunks of `scorer.max_batch` without being kept, then only the winners are cut again (same box,
    same pixels), so memory holds one chunk, not pool × num_crop patches.
    """
    n = len(pool01)
    rrc = RandomResizedCrop(patch, scale=(scale_min, 1.0), ratio=(1.0, 1.0), antialias=True)
    boxes = rrc.sample(n * num_crop, pool01.shape, generator=generator)["box"].to(pool01.device)
    ce = torch.empty(n * num_crop, dtype=torch.float32, device=scorer.device)
    for r0 in range(0, n * num_crop, scorer.max_batch):
        rows = torch.arange(r0, min(r0 + scorer.max_batch, n * num_crop), device=pool01.device)
        crops = resized_crop(pool01[rows // num_crop], boxes[rows], patch, antialias=True)
        ce[r0:r0 + len(rows)] = scorer.ce(crops, label)
    per_image = ce.view(n, num_crop)
    best = per_image.argmin(dim=1)  # torch returns the first minimum
    win = boxes.view(n, num_crop, 4)[torch.arange(n, device=boxes.device), best.to(boxes.device)]
    patches = resized_crop(pool01, win, patch, antialias=True)
    return patches, per_image.gather(1, best[:, None])[:, 0].cpu(), win.cpu()


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
    size = pool_u8.shape[-1]
    need = ipc * factor * factor
    pool01 = to_float(pool_u8.to(scorer.device))
    patches, ce, _ = best_patches(pool01, label, scorer, num_crop, size // factor, scale_min, generator)
    order = torch.argsort(ce, stable=True)[:need]
    mosaics = stitch(patches[order.to(patches.device)], factor, size)
    return mosaics.float().cpu(), pool_idx[order], ce[order]


def run_classes(classes: Sequence[int], pool_of: Callable[[int], Tuple[torch.Tensor, torch.Tensor]],
                scorer: PatchScorer, ipc: int, factor: int, num_crop: int, scale_min: float, seed: int,
                store_labels: bool, set_meta: Dict[str, Any]) -> Iterator[ClassResult]:
    """RDED steps 2–5 for each class of `classes` on the pool `pool_of(c)` -> (uint8 images, indices).

    Yields one ClassResult per class: the ipc mosaics, their ranked source indices (extras
    "source_index": per class the ipc·f² dataset indices in rank order; mosaic m cell k = rank k·ipc+m),
    optional stored logits, and the mean patch CE. Shared by RDED and CA2D.
    """
    set_meta = {**set_meta, "factor": factor, "images_per_mosaic": factor * factor}
    for c in classes:
        pool, idx = pool_of(c)
        m, src, ce = extract_and_stitch(pool, idx, c, scorer, ipc, factor, num_crop, scale_min,
                                        make_generator(seed, "rded", "crop", c))
        soft = {"soft": scorer.logits(m)} if store_labels else {}
        yield ClassResult(c, m, soft=soft, extras={"source_index": src}, meta={"patch_ce_mean": float(ce.mean())},
                          set_meta=set_meta)


@register_method("rded", config=RDEDConfig, needs_teacher=True)
def rded(dataset: ImageDataset, teacher: Any, cfg: RDEDConfig, classes: Sequence[int], *, device: torch.device,
         progress: bool = True) -> Iterator[ClassResult]:
    """RDED: lowest-CE RandomResizedCrop patches of a random real pool, stitched f×f per image."""
    factor = resolve_factor(cfg.factor, dataset.image_size)
    check_teacher_shape(dataset, teacher, factor)
    check_pools(dataset, cfg.pool_size, cfg.ipc * factor ** 2, "rded")
    scorer = PatchScorer(teacher, device, cfg.normalization, cfg.max_batch, cfg.amp)

    def pool_of(c: int) -> Tuple[torch.Tensor, torch.Tensor]:
        return dataset.class_images(c, cfg.pool_size, generator=make_generator(cfg.seed, "class", c))

    meta = {"normalization": cfg.normalization, "num_crop": cfg.num_crop, "pool": "random",
            "intended_regime": "slkd", "intended_recipe": "rded"}
    yield from run_classes(classes, pool_of, scorer, cfg.ipc, factor, cfg.num_crop, cfg.scale_min, cfg.seed,
                           cfg.store_labels, meta)
