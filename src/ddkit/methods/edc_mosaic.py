"""EDC's ImageNet-1K start: real crops scored by a teacher ensemble, tiled 2×2 into mosaics.

As `Branch_full_ImageNet_1k/recover/data_synthesis_without_optim.py` of shaoshitong/EDC@80116a7 ("S") builds it
(sheet largescale-methods.md §2, step 1), per class:

1. Every train image of the class, whole, through the teacher ensemble (mean of the teachers' logits); the
   `pool` (300) images with the lowest cross-entropy to their class are kept, in that order (S:83-101).
2. The kept images in consecutive full batches of `batch` (64; a last partial batch is not used, S:124): each
   batch is cropped 4 times, each time with ONE RandomResizedCrop(image size, 0.08–1) box and one horizontal flip
   decision for the whole batch (a batched tensor through torchvision's transforms, S:72, 127-129), and every
   crop is scored by the ensemble's cross-entropy (S:130-138).
3. The 4·ipc lowest-loss crops of the class (several may come from one image), each resized to half the side
   (bilinear, antialiased, as PIL's Resize((112, 112)) of S:150), tiled in rank order: mosaic i holds crops
   4i .. 4i+3 as top-left, top-right, bottom-left, bottom-right (einops "(i n m) c h w -> i c (n h) (m w)",
   S:162).
Recover then starts each slot from a mosaic of its class drawn at random WITH replacement and flipped with
probability 1/2 (recover.py:108-116, 182; utils.py PreImgPathCache.random_img_sample), so a class may start two
slots from one mosaic and leave another unused.

Differences, by design: the crops and mosaics stay exact floats (the official code writes and re-reads them as
8-bit JPEG and names each crop by its loss rounded to 12 digits with a counter that never increments, so two
crops of equal rounded loss would overwrite each other); the images are the dataset's as ddkit loads them (the
official resizes every image to 224×224 first); the ensemble is the committee given to `ddkit distill`
(official: resnet18, mobilenet_v2, efficientnet_b0, shufflenet_v2_x0_5 from torchvision, S:228).
"""
from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from ddkit.augment import RandomResizedCrop
from ddkit.data.base import ImageDataset, to_float
from ddkit.geometry import cell_bounds
from ddkit.utils import DDKitError

#: S:100 (the 300 lowest-loss images per class), S:124 (batches of 64), S:127 (4 crops per image), S:162 (2×2)
POOL, BATCH, VIEWS, TILE = 300, 64, 4, 2
SCORE_CHUNK = 256  # the pre-selection's DataLoader batch (S:76)

Scorer = Callable[[torch.Tensor, int], torch.Tensor]  # ([0,1] images, class) -> per-image ensemble CE


def ensemble_ce(nets: Sequence[torch.nn.Module], mean: torch.Tensor, std: torch.Tensor) -> Scorer:
    """Cross-entropy of the mean of `nets`' logits (nets take (x - mean) / std), per image, no gradient."""
    def score(x01: torch.Tensor, label: int) -> torch.Tensor:
        with torch.no_grad():
            x = (x01 - mean) / std
            z = torch.stack([n(x).float() for n in nets]).mean(0)
            return F.cross_entropy(z, torch.full((len(x),), label, device=z.device), reduction="none").cpu()
    return score


def _keep_best(best: Tuple[torch.Tensor, ...], new: Tuple[torch.Tensor, ...], k: int) -> Tuple[torch.Tensor, ...]:
    """The k lowest losses of best + new (loss, crops, sources), ties in arrival order: a running stable sort."""
    loss, crops, src = (torch.cat([a, b]) for a, b in zip(best, new))
    order = torch.argsort(loss, stable=True)[:k]
    return loss[order], crops[order], src[order]


def tile(ranked: torch.Tensor, size: int) -> torch.Tensor:
    """Mosaics of side `size` from 4·n ranked crops: mosaic i = crops 4i..4i+3 at TL, TR, BL, BR, each resized to
    its cell (cells from geometry.cell_bounds: the official 112-px halves of a 224-px side)."""
    n, c = len(ranked) // (TILE * TILE), ranked.shape[1]
    out = ranked.new_empty((n, c, size, size))
    bounds = cell_bounds(size, TILE)
    groups = ranked.view(n, TILE * TILE, c, *ranked.shape[-2:])
    for i, (r0, rh) in enumerate(bounds):
        for j, (c0, cw) in enumerate(bounds):
            cell = groups[:, i * TILE + j]
            out[:, :, r0:r0 + rh, c0:c0 + cw] = F.interpolate(cell, size=(rh, cw), mode="bilinear",
                                                              align_corners=False, antialias=True)
    return out


def class_mosaics(dataset: ImageDataset, c: int, ipc: int, score: Scorer, device: torch.device,
                  gen: torch.Generator, pool: int = POOL, batch: int = BATCH) -> Tuple[torch.Tensor, torch.Tensor]:
    """Class `c`'s ipc mosaics ([0,1], CPU) and the dataset index of each cell's source image (ipc × 4)."""
    ci = dataset.class_indices(c)
    pre = torch.cat([score(to_float(dataset.get(ci[i:i + SCORE_CHUNK])).to(device), c)
                     for i in range(0, len(ci), SCORE_CHUNK)])
    kept = ci[torch.argsort(pre, stable=True)[:pool]]
    need = TILE * TILE * ipc
    batches = len(kept) // batch
    if batches * batch * VIEWS < need:
        raise DDKitError(f"edc --init mosaic: class {c} gives {batches} full batch(es) of {batch} kept images "
                         f"({len(ci)} images, pool {pool}) = {batches * batch * VIEWS} crops, fewer than the "
                         f"{need} that {ipc} mosaics need; lower --mosaic-batch or use --init real")
    rrc = RandomResizedCrop(dataset.image_size)
    best = None
    for b in range(batches):
        idx = kept[b * batch:(b + 1) * batch]
        x = to_float(dataset.get(idx)).to(device)
        for _ in range(VIEWS):  # one box and one flip for the whole batch (S:127-129)
            v = rrc.apply(x, rrc.sample(1, x.shape[-2:], generator=gen, device=device))
            if bool(torch.rand(1, generator=gen) < 0.5):
                v = v.flip(3)
            new = (score(v, c), v.cpu(), idx.cpu())
            best = _keep_best(best if best is not None else tuple(t[:0] for t in new), new, need)
    assert best is not None
    return tile(best[1], dataset.image_size), best[2].view(ipc, TILE * TILE)


def mosaic_start(dataset: ImageDataset, classes: Sequence[int], ipc: int, score: Scorer, device: torch.device,
                 gen: torch.Generator, pool: int = POOL, batch: int = BATCH) -> Tuple[torch.Tensor, torch.Tensor]:
    """[0,1] starts (class-major, ipc per class) and their mosaics' source indices (n × 4): per slot a mosaic of
    its class drawn with replacement, flipped with probability 1/2 (recover.py:108-116, 182)."""
    images: List[torch.Tensor] = []
    sources: List[torch.Tensor] = []
    for c in classes:
        mosaics, src = class_mosaics(dataset, c, ipc, score, device, gen, pool, batch)
        pick = torch.randint(len(mosaics), (ipc,), generator=gen)
        images.append(mosaics[pick])
        sources.append(src[pick])
    x = torch.cat(images)
    flip = torch.rand(len(x), generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x), torch.cat(sources)
