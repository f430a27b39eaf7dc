"""Pure parts of LIC/CIM: squeeze F, expand F⁻¹, key-sample selection and the feature distances.

Layout convention (reference `mix_images`/`decode_zoom`, peers.md §1.4 steps 3 and 5): the n = f²·ipc
ranked real images of a class are split into f² rank blocks of `ipc`; block k goes to grid cell
(i, j) with k = i·f + j of *every* mosaic, so mosaic m holds ranked images {k·ipc + m}. Expanding
mosaic m's cell k therefore yields expanded row k·ipc + m, which is paired with real row k·ipc + m.

Sides not divisible by f follow the reference builder: the leftover pixels go to the first rows /
columns (cell sizes s+1, …, s+1, s, …, s). The reference decoder instead uses a rounded-up cell padded
with 0.5, which only agrees for even sides; we use the builder's cells for both directions, so
squeeze and expand are exact inverses of each other's layout at every size.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

DOWNSAMPLE_MODES = ("nearest", "bilinear", "area", "antialias")
DISTANCES = ("l1_mean", "mse", "cosine")
SELECTIONS = ("lowest", "highest", "random", "herding")


def cell_bounds(size: int, factor: int) -> List[Tuple[int, int]]:
    """(start, length) of the `factor` cells along a side of `size` pixels, leftovers to the first cells."""
    if factor < 1 or factor > size:
        raise ValueError(f"factor must be in [1, {size}] for a {size}-px side, got {factor}")
    s, r = divmod(size, factor)
    lengths = [s + 1] * r + [s] * (factor - r)
    starts = [sum(lengths[:i]) for i in range(factor)]
    return list(zip(starts, lengths))


def downsample(x: torch.Tensor, size: Tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    """Resize a B×C×H×W batch to `size` with one of DOWNSAMPLE_MODES (reference: 'nearest')."""
    if tuple(x.shape[-2:]) == tuple(size):  # factor 1: the image itself, whatever the mode
        return x.clone()
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    if mode == "bilinear":
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    if mode == "antialias":
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    raise ValueError(f"unknown downsample mode {mode!r}; choose one of {', '.join(DOWNSAMPLE_MODES)}")


def squeeze(ranked: torch.Tensor, factor: int, mode: str = "nearest") -> torch.Tensor:
    """F: pack n = f²·ipc ranked images (n×C×H×W) into ipc mosaics (ipc×C×H×W) at the same resolution.

    Cell k = i·f + j of mosaic m holds ranked image k·ipc + m, downsampled to the cell's size.
    """
    n, c, h, w = ranked.shape
    cells = factor * factor
    if n % cells:
        raise ValueError(f"squeeze needs a multiple of f²={cells} images, got {n}")
    ipc = n // cells
    rows, cols = cell_bounds(h, factor), cell_bounds(w, factor)
    out = ranked.new_empty((ipc, c, h, w))
    for i, (r0, rh) in enumerate(rows):
        for j, (c0, cw) in enumerate(cols):
            k = i * factor + j
            out[:, :, r0:r0 + rh, c0:c0 + cw] = downsample(ranked[k * ipc:(k + 1) * ipc], (rh, cw), mode)
    return out


def expand(mosaics: torch.Tensor, factor: int, groups: int = 1) -> torch.Tensor:
    """F⁻¹: cut each mosaic into its f² cells and upsample each to full size (bilinear, align_corners=False).

    `mosaics` holds `groups` classes of ipc mosaics each, class-major (groups·ipc × C×H×W). The result
    is class-major too: class g's rows are g·f²·ipc + k·ipc + m (cell k of its mosaic m), i.e. in the
    ranked order of its real images. Differentiable (the residual's gradient flows through it).
    """
    b, c, h, w = mosaics.shape
    if b % groups:
        raise ValueError(f"{b} mosaics do not split into {groups} equal class groups")
    ipc = b // groups
    crops = []
    for r0, rh in cell_bounds(h, factor):
        for c0, cw in cell_bounds(w, factor):
            cell = mosaics[:, :, r0:r0 + rh, c0:c0 + cw]
            up = cell if (rh, cw) == (h, w) else F.interpolate(cell, size=(h, w), mode="bilinear",
                                                                 align_corners=False)
            crops.append(up.reshape(groups, ipc, c, h, w))
    # (f², groups, ipc, …) → (groups, f², ipc, …): each class's crops contiguous, in rank order.
    return torch.stack(crops, 1).reshape(groups * factor * factor * ipc, c, h, w)


def cross_entropy_per_sample(logits: torch.Tensor, label: int) -> torch.Tensor:
    """−log softmax(z)_y for every row (the reference's selection score), in fp32."""
    return -torch.log_softmax(logits.float(), dim=1)[:, label]


def herding(features: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy mean matching (Welling 2009): indices whose running mean best tracks the pool mean, in pick order."""
    feats = features.float().flatten(1)
    mu = feats.mean(0)
    chosen: List[int] = []
    taken = torch.zeros(len(feats), dtype=torch.bool, device=feats.device)
    acc = torch.zeros_like(mu)
    for t in range(1, n + 1):
        # distance of the would-be mean (acc + f_i) / t to the pool mean, for every candidate i
        dist = ((acc[None] + feats) / t - mu[None]).pow(2).sum(1)
        dist[taken] = float("inf")
        i = int(torch.argmin(dist))
        chosen.append(i)
        taken[i] = True
        acc += feats[i]
    return torch.tensor(chosen, dtype=torch.long)


def select_ranked(scores: torch.Tensor, n: int, mode: str, generator: torch.Generator) -> torch.Tensor:
    """Indices (into the pool) of the n kept images, in rank order (rank 0 → top-left block).

    lowest: ascending teacher CE (reference); highest: descending CE; random: a seeded random pick in
    draw order. (herding needs features: see `herding`.)
    """
    if mode == "lowest":
        return torch.argsort(scores.cpu(), stable=True)[:n]
    if mode == "highest":
        return torch.argsort(scores.cpu(), descending=True, stable=True)[:n]
    if mode == "random":
        return torch.randperm(len(scores), generator=generator)[:n]
    raise ValueError(f"unknown selection {mode!r}; choose one of {', '.join(SELECTIONS)}")


def _l1_mean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().flatten(1).mean(1)


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).flatten(1).mean(1)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 1.0 - F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1, eps=1e-8)


_DIST: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "l1_mean": _l1_mean, "mse": _mse, "cosine": _cosine,
}


def pair_distance(real: torch.Tensor, syn: torch.Tensor, kind: str = "l1_mean") -> torch.Tensor:
    """Per-pair distance (a vector, one entry per row) in fp32; the loss is its sum over pairs.

    l1_mean: mean_d |φ(x) − φ(x̃)| (reference); mse: mean_d squared; cosine: 1 − cos(φ(x), φ(x̃)).
    """
    fn = _DIST.get(kind)
    if fn is None:
        raise ValueError(f"unknown distance {kind!r}; choose one of {', '.join(DISTANCES)}")
    return fn(real.float(), syn.float())
