"""Legible image grids of a distilled set: one row per class, named, upscaled, mosaic cells outlined.

    from ddkit.grids import set_grid, save_set_grid
    save_set_grid(DistilledSet.load("runs/demo/sets/lic"), "preview.png")

The grid is what a person looks at, so it is drawn for reading, not for storage: each image is
enlarged by an integer factor with nearest-neighbour sampling (no smoothing that would invent
detail) until one cell (a mosaic cell when the set stores factor×factor mosaics, else the image)
is at least `min_cell` px; the class name heads each row; mosaic cell borders are drawn as thin
lines. Pixels outside [0, 1] (optimised sets) are clamped for display; the caption says so.
This is the study/report layer: it may import the set format, the set format never imports it.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ddkit.distilled import DistilledSet

MIN_CELL = 48            # px per cell after upscaling (the floor for legibility)
MAX_CLASSES = 20         # rows shown; a 1000-class set would make an unreadable page
MAX_COLS = 10            # images per class shown
OUTLINE = (255, 200, 0)  # mosaic cell borders: amber reads on both dark and light images
PAD = 4                  # px between images


def upscale_factor(image_size: int, factor: int = 1, min_cell: int = MIN_CELL) -> int:
    """Smallest integer zoom that makes one cell (image_size / factor px) at least `min_cell` px."""
    cell = max(1, image_size // max(1, factor))
    return max(1, math.ceil(min_cell / cell))


def _font(size: int):
    from PIL import ImageFont

    try:  # Pillow ≥ 10.1 ships a scalable default font; older ones only a tiny bitmap font
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _to_rgb_u8(img: torch.Tensor) -> np.ndarray:
    """C×H×W float [0,1] (clamped) → H×W×3 uint8."""
    a = img.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a[:, :, :3]


def set_grid(images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], *, factor: int = 1,
             min_cell: int = MIN_CELL, max_classes: int = MAX_CLASSES, max_cols: int = MAX_COLS):
    """A PIL image: per class (first `max_classes`) a row of its first `max_cols` images, each zoomed by
    `upscale_factor` (nearest neighbour), the class name on the left, mosaic cells outlined when factor > 1."""
    from PIL import Image, ImageDraw

    if images.ndim != 4 or len(images) != len(labels):
        raise ValueError(f"images must be N×C×H×W with one label each, got {tuple(images.shape)} / {len(labels)}")
    h, w = int(images.shape[-2]), int(images.shape[-1])
    zoom = upscale_factor(min(h, w), factor, min_cell)
    zh, zw = h * zoom, w * zoom
    shown = [c for c in range(len(classes)) if bool((labels == c).any())][:max_classes]
    ncols = max([min(max_cols, int((labels == c).sum())) for c in shown] or [1])
    font_px = max(12, min(20, zh // 3))
    font = _font(font_px)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    names = [str(classes[c]) for c in shown]
    label_w = max([int(probe.textlength(n, font=font)) for n in names] or [0]) + 2 * PAD
    width = label_w + ncols * (zw + PAD) + PAD
    height = len(shown) * (zh + PAD) + PAD
    canvas = Image.new("RGB", (max(width, 1), max(height, 1)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for row, c in enumerate(shown):
        y0 = PAD + row * (zh + PAD)
        draw.text((PAD, y0 + zh // 2), names[row], fill=(0, 0, 0), font=font, anchor="lm")
        for col, img in enumerate(images[labels == c][:ncols]):
            tile = Image.fromarray(_to_rgb_u8(img)).resize((zw, zh), Image.NEAREST)
            x0 = label_w + col * (zw + PAD)
            canvas.paste(tile, (x0, y0))
            if factor > 1:
                lw = 2 if zoom >= 4 else 1
                for k in range(1, factor):  # inner borders only: the tile edge is already visible
                    xs = x0 + (k * w // factor) * zoom
                    ys = y0 + (k * h // factor) * zoom
                    draw.line([(xs, y0), (xs, y0 + zh - 1)], fill=OUTLINE, width=lw)
                    draw.line([(x0, ys), (x0 + zw - 1, ys)], fill=OUTLINE, width=lw)
    return canvas


def grid_caption(distilled: DistilledSet, min_cell: int = MIN_CELL) -> str:
    """One sentence saying what the grid shows (zoom, rows/columns cut, mosaic, clamping)."""
    factor = int(distilled.meta.get("factor") or 1)
    size = int(distilled.images.shape[-1])
    zoom = upscale_factor(size, factor, min_cell)
    parts = [f"{len(distilled)} images, {distilled.num_classes} classes, {size} px shown ×{zoom} (nearest neighbour)"]
    if distilled.num_classes > MAX_CLASSES:
        parts.append(f"first {MAX_CLASSES} classes")
    if distilled.ipc > MAX_COLS:
        parts.append(f"first {MAX_COLS} images per class")
    if factor > 1:
        parts.append(f"each image is a {factor}×{factor} mosaic (cells outlined)")
    lo, hi = float(distilled.images.min()), float(distilled.images.max())
    if lo < 0 or hi > 1:
        parts.append(f"pixels span {lo:.2f}…{hi:.2f}, clamped to [0, 1] for display")
    return "; ".join(parts)


def grid_png(distilled: DistilledSet, min_cell: int = MIN_CELL) -> bytes:
    """The set's legible grid as PNG bytes."""
    img = set_grid(distilled.images, distilled.labels, distilled.classes,
                   factor=int(distilled.meta.get("factor") or 1), min_cell=min_cell)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def save_set_grid(distilled: DistilledSet, path: str | Path, min_cell: int = MIN_CELL) -> Path:
    """Write the legible grid PNG to `path`; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(grid_png(distilled, min_cell))
    return path


def preview_path(set_dir: str | Path) -> Path:
    """Where the legible grid of a saved set lives: <set>/preview.png (grid.png stays the raw 1:1 view)."""
    return Path(set_dir) / "preview.png"


def write_preview(set_dir: str | Path, distilled: Optional[DistilledSet] = None) -> Path:
    """Write <set_dir>/preview.png (loading the set when not given)."""
    ds = distilled if distilled is not None else DistilledSet.load(set_dir)
    return save_set_grid(ds, preview_path(set_dir))
