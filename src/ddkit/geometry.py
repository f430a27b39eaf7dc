"""Mosaic geometry shared by methods and evaluation recipes: the f×f cell layout, squeeze F, expand F⁻¹.

Neutral ground (imports only torch), so a method (LIC, RDED, CA2D) and a recipe (CIM's quadrant crop)
agree on one layout without either importing the other.

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

from typing import List, Tuple

import torch
import torch.nn.functional as F

DOWNSAMPLE_MODES = ("nearest", "bilinear", "area", "antialias")


def auto_factor(image_size: int) -> int:
    """RDED's mosaic/crop factor: 1 at ≤ 64 px (CIFAR, Tiny), 2 above (ImageNet family)."""
    return 1 if image_size <= 64 else 2


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
