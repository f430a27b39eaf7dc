"""Replayable crops: RandomResizedCrop (SRe2L/RDED), FactorCrop (CIM), ShufflePatches (RDED).

All ops draw per-sample boxes/permutations as tensors and resample the whole batch at once
(grid_sample / roi_align / gather), so they run on the GPU and keep gradients to the pixels.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from ddkit.augment.base import Augment, Params, expand_batch, hw, layout_of, rand, randint

Size = Union[int, Sequence[int]]


def _axis_coords(start: torch.Tensor, length: torch.Tensor, out: int) -> torch.Tensor:
    """Source coordinates (n×out) of bilinear crop-then-resize along one axis (align_corners=False),

    clamped to the crop so no pixel outside the box leaks in (what torchvision's crop→resize does).
    """
    k = torch.arange(out, device=start.device, dtype=torch.float32)
    src = (k[None] + 0.5) * (length[:, None] / out) - 0.5
    src = torch.minimum(src.clamp(min=0), (length[:, None] - 1).clamp(min=0))
    return start[:, None] + src


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: Size, antialias: bool = False) -> torch.Tensor:
    """Crop boxes (n×4: top, left, height, width in pixels; n = 1 or B) and resize them to `size`.

    antialias=False: exact bilinear crop→resize (torchvision's Resize without antialias), via
    grid_sample. antialias=True: torchvision's roi_align with adaptive sampling, which averages
    ceil(crop/size)² bilinear samples per output pixel when downsampling (an approximate
    antialias; it may read up to one pixel beyond the box edge). Both are differentiable.
    """
    b, _, h, w = x.shape
    oh, ow = hw(size)
    boxes = expand_batch(boxes.to(device=x.device, dtype=torch.float32), b, "box")
    top, left, bh, bw = boxes.unbind(-1)
    fmt = layout_of(x)  # resampling returns NCHW: hand back the input's layout
    if antialias:
        from torchvision.ops import roi_align  # torchvision only when an antialiased crop runs

        rois = torch.stack([torch.arange(b, device=x.device, dtype=torch.float32),
                            left, top, left + bw, top + bh], -1)
        dt = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        out = roi_align(x.to(dt), rois.to(dt), (oh, ow), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        return out.to(x.dtype).contiguous(memory_format=fmt)
    ys = _axis_coords(top, bh, oh)  # b×oh
    xs = _axis_coords(left, bw, ow)  # b×ow
    gy = 2 * ys / max(h - 1, 1) - 1
    gx = 2 * xs / max(w - 1, 1) - 1
    grid = torch.stack([gx[:, None, :].expand(b, oh, ow), gy[:, :, None].expand(b, oh, ow)], -1)
    out = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=True)
    return out.contiguous(memory_format=fmt)


class RandomResizedCrop(Augment):
    """torchvision's RandomResizedCrop rule, vectorised: 10 tries of (area, log-ratio), first valid
    wins, else the centre-crop fallback; then bilinear resize to `size`. Param ``box`` (n×4:
    top, left, height, width in pixels of the source image).
    """

    def __init__(self, size: Size, scale: Tuple[float, float] = (0.08, 1.0),
                 ratio: Tuple[float, float] = (3 / 4, 4 / 3), antialias: bool = True, tries: int = 10) -> None:
        self.size = hw(size)
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.antialias, self.tries = antialias, int(tries)
        if not (0 < self.scale[0] <= self.scale[1] and 0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError(f"RandomResizedCrop needs 0 < scale[0] <= scale[1] and 0 < ratio[0] <= ratio[1], "
                             f"got scale={scale}, ratio={ratio}")

    def sample(self, n, image_size, *, generator=None, device=None) -> Params:
        h, w = hw(image_size)
        t = self.tries
        area = h * w * (self.scale[0] + rand(n * t, generator) * (self.scale[1] - self.scale[0]))
        lr0, lr1 = math.log(self.ratio[0]), math.log(self.ratio[1])
        ar = torch.exp(lr0 + rand(n * t, generator) * (lr1 - lr0))
        cw = torch.round(torch.sqrt(area * ar)).view(n, t)
        ch = torch.round(torch.sqrt(area / ar)).view(n, t)
        ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
        first = torch.argmax(ok.int(), dim=1)  # first valid try (0 when none, masked below)
        anyok = ok.any(dim=1)
        bh = ch.gather(1, first[:, None])[:, 0]
        bw = cw.gather(1, first[:, None])[:, 0]
        # Centre-crop fallback exactly as torchvision: clamp the aspect ratio into range.
        in_ratio = w / h
        if in_ratio < self.ratio[0]:
            fw, fh = w, int(round(w / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            fh, fw = h, int(round(h * self.ratio[1]))
        else:
            fw, fh = w, h
        bh = torch.where(anyok, bh, torch.full_like(bh, fh))
        bw = torch.where(anyok, bw, torch.full_like(bw, fw))
        ut, ul = rand(n, generator), rand(n, generator)
        top = torch.floor(ut * (h - bh + 1)).clamp(max=h - bh)
        left = torch.floor(ul * (w - bw + 1)).clamp(max=w - bw)
        top = torch.where(anyok, top, torch.full_like(top, (h - fh) // 2))
        left = torch.where(anyok, left, torch.full_like(left, (w - fw) // 2))
        return {"box": torch.stack([top, left, bh, bw], -1).to(device or "cpu")}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        return resized_crop(x, params["box"], self.size, antialias=self.antialias)


class FactorCrop(Augment):
    """CIM's RandomFactorResizedCrop: with prob 1 - 1/f² one of the f×f cells (uniform), resized back
    to the full image with bilinear; otherwise the whole image. Param ``cell`` (n,): -1 = whole,
    k = row-major cell (k // f, k % f). Cell edges are round(i·H/f).
    """

    def __init__(self, factor: int = 2) -> None:
        if int(factor) < 1:
            raise ValueError(f"FactorCrop factor must be >= 1, got {factor}")
        self.factor = int(factor)

    def sample(self, n, image_size, *, generator=None, device=None) -> Params:
        f2 = self.factor ** 2
        whole = rand(n, generator) < 1.0 / f2
        cell = randint(0, f2, n, generator)
        return {"cell": torch.where(whole, torch.full_like(cell, -1), cell).to(device or "cpu")}

    def boxes(self, cell: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Boxes (n×4: top, left, height, width) of the given cells; -1 -> the whole image."""
        f = self.factor
        # The cell edges and the whole-image box are made once per (h, w, device), not copied at every step.
        key = (h, w, cell.device)
        consts = self.__dict__.setdefault("_consts", {})
        if key not in consts:
            consts[key] = (
                torch.tensor([round(i * h / f) for i in range(f + 1)], dtype=torch.float32, device=cell.device),
                torch.tensor([round(i * w / f) for i in range(f + 1)], dtype=torch.float32, device=cell.device),
                torch.tensor([0.0, 0.0, h, w], device=cell.device))
        edges_h, edges_w, whole = consts[key]
        c = cell.clamp(min=0)
        i, j = c // f, c % f
        top, left = edges_h[i], edges_w[j]
        box = torch.stack([top, left, edges_h[i + 1] - top, edges_w[j + 1] - left], -1)
        return torch.where((cell < 0)[:, None], whole.expand_as(box), box)

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        h, w = x.shape[-2:]
        cell = params["cell"].to(x.device)
        if cell.shape[0] == 1 and int(cell[0]) < 0:
            return x  # shared "whole image" draw: skip the resample entirely
        return resized_crop(x, self.boxes(cell, h, w), (h, w), antialias=False)


def _strip_index(perm: torch.Tensor, length: int) -> torch.Tensor:
    """Source index (n×length) that concatenates strips in `perm` order (RDED: last strip takes the rest)."""
    f = perm.shape[1]
    s = length // f
    starts = torch.arange(f, device=perm.device) * s
    lens = torch.full((f,), s, device=perm.device, dtype=torch.long)
    lens[-1] = length - s * (f - 1)
    plens = lens[perm]  # n×f
    ends = plens.cumsum(1)
    pos = torch.arange(length, device=perm.device).expand(perm.shape[0], length).contiguous()
    k = torch.searchsorted(ends, pos, right=True)  # which output strip each position falls in
    return starts[perm.gather(1, k)] + pos - (ends - plens).gather(1, k)


class ShufflePatches(Augment):
    """RDED's ShufflePatches: permute f column strips, then f row strips, per sample.

    Params ``col_perm``, ``row_perm`` (n×f int64). factor 1 is the identity.
    """

    def __init__(self, factor: int = 2) -> None:
        if int(factor) < 1:
            raise ValueError(f"ShufflePatches factor must be >= 1, got {factor}")
        self.factor = int(factor)

    def sample(self, n, image_size, *, generator=None, device=None) -> Params:
        f = self.factor
        cols = torch.argsort(rand(n * f, generator).view(n, f), dim=1)
        rows = torch.argsort(rand(n * f, generator).view(n, f), dim=1)
        return {"col_perm": cols.to(device or "cpu"), "row_perm": rows.to(device or "cpu")}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        if self.factor == 1:
            return x
        b, c, h, w = x.shape
        fmt = layout_of(x)
        cp = expand_batch(params["col_perm"].to(x.device), b, "col_perm")
        rp = expand_batch(params["row_perm"].to(x.device), b, "row_perm")
        ci = _strip_index(cp, w)[:, None, None, :].expand(b, c, h, w)
        x = x.gather(-1, ci)
        ri = _strip_index(rp, h)[:, None, :, None].expand(b, c, h, w)
        return x.gather(-2, ri).contiguous(memory_format=fmt)
