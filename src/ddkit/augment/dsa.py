"""Differentiable Siamese Augmentation (DC/DSA/MTT/CIM) as replayable batched ops.

Values follow the DSA code (``ParamDiffAug``): flip p=0.5; brightness additive (U-0.5)·1.0;
saturation: per-pixel channel mean m, m + (x-m)·(U·2); contrast: per-image mean m, m + (x-m)·(U+0.5);
crop = integer translation in [-round(0.125·H), +round(0.125·H)] with zero fill; scale sx, sy ~
U[1/1.2, 1.2] and rotation U[-15°, 15°] via affine_grid/grid_sample (align_corners=True, zero
padding); cutout = a zero square of side round(0.5·H) centred uniformly (it may cross the border).

Shared params (n=1) reproduce DSA's siamese mode (one draw for the real and the synthetic batch,
whatever their sizes); per-sample params (n=B) reproduce its non-siamese mode used when training
students. Pixels keep their gradient through every op.
"""
from __future__ import annotations

import math
from typing import List

import torch
import torch.nn.functional as F

from ddkit.augment.base import (Augment, Compose, Identity, OneOf, Params, expand_batch, hw, layout_of,
                                per_sample, rand, randint)


def _round(v: float) -> int:
    # DSA uses int(v + 0.5) (round half up), not Python's banker's rounding.
    return int(v + 0.5)


class Flip(Augment):
    """Horizontal flip (reverse the last dim) with probability p. Params: ``flip`` bool (n,)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = float(p)

    def sample(self, n, image_size, *, generator=None, device=None) -> Params:
        return {"flip": rand(n, generator, device=device) < self.p}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        return torch.where(per_sample(params["flip"], x, "flip"), x.flip(-1), x)


class Color(Augment):
    """DSA colour: brightness, then saturation, then contrast, each with its own draw.

    Params ``brightness`` (the additive offset), ``saturation`` and ``contrast`` (the factors).
    """

    def __init__(self, brightness: float = 1.0, saturation: float = 2.0, contrast: float = 0.5) -> None:
        self.brightness, self.saturation, self.contrast = float(brightness), float(saturation), float(contrast)

    def sample(self, n, image_size, *, generator=None, device=None) -> Params:
        return {
            "brightness": (rand(n, generator, device=device) - 0.5) * self.brightness,
            "saturation": rand(n, generator, device=device) * self.saturation,
            "contrast": rand(n, generator, device=device) + self.contrast,
        }

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        x = x + per_sample(params["brightness"], x, "brightness").to(x.dtype)
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * per_sample(params["saturation"], x, "saturation").to(x.dtype) + m
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - m) * per_sample(params["contrast"], x, "contrast").to(x.dtype) + m


class Translate(Augment):
    """DSA 'crop': shift by integers (ty rows, tx columns), zero fill.

    Output pixel (i, j) = x[i + ty, j + tx] (0 outside). Shifts are drawn separately in
    [-round(ratio·H), round(ratio·H)] and [-round(ratio·W), round(ratio·W)]. Params ``ty``, ``tx``.
    """

    def __init__(self, ratio: float = 0.125) -> None:
        self.ratio = float(ratio)

    def sample(self, n, image_size, *, generator=None, device=None) -> Params:
        h, w = hw(image_size)
        sh, sw = _round(h * self.ratio), _round(w * self.ratio)
        return {"ty": randint(-sh, sh + 1, n, generator, device=device),
                "tx": randint(-sw, sw + 1, n, generator, device=device)}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        b, _, h, w = x.shape
        ty = expand_batch(params["ty"].to(x.device), b, "ty")
        tx = expand_batch(params["tx"].to(x.device), b, "tx")
        # Index into a 1-pixel zero-padded copy; out-of-range indices clamp onto the zero border.
        rows = (torch.arange(h, device=x.device) + ty[:, None] + 1).clamp(0, h + 1)  # b×h
        cols = (torch.arange(w, device=x.device) + tx[:, None] + 1).clamp(0, w + 1)  # b×w
        xp = F.pad(x, (1, 1, 1, 1))
        bidx = torch.arange(b, device=x.device)[:, None, None]
        out = xp[bidx, :, rows[:, :, None], cols[:, None, :]]  # b×h×w×C (advanced dims first)
        # The permuted gather is a channels_last view; hand back the input's layout, else every step
        # that draws a translate runs the network channels_last (GroupNorm's slow path on CPU).
        return out.permute(0, 3, 1, 2).contiguous(memory_format=layout_of(x))


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    # DSA samples with align_corners=True and zero padding; a (1,2,3) theta is expanded to the batch.
    theta = expand_batch(theta.to(device=x.device, dtype=torch.float32), x.shape[0], "theta")
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    out = F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.contiguous(memory_format=layout_of(x))  # grid_sample returns NCHW whatever the input


class Scale(Augment):
    """Axis scaling of the sampling grid, sx, sy ~ U[1/ratio, ratio] (>1 zooms out). Params ``sx``, ``sy``."""

    def __init__(self, ratio: float = 1.2) -> None:
        self.ratio = float(ratio)

    def sample(self, n, image_size, *, generator=None, device=None) -> Params:
        lo, span = 1.0 / self.ratio, self.ratio - 1.0 / self.ratio
        return {"sx": rand(n, generator, device=device) * span + lo,
                "sy": rand(n, generator, device=device) * span + lo}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        sx, sy = params["sx"].float(), params["sy"].float()
        z = torch.zeros_like(sx)
        theta = torch.stack([torch.stack([sx, z, z], -1), torch.stack([z, sy, z], -1)], 1)
        return _affine(x, theta)


class Rotate(Augment):
    """Rotation by an angle ~ U[-degrees, degrees] about the centre. Param ``angle`` in radians."""

    def __init__(self, degrees: float = 15.0) -> None:
        self.degrees = float(degrees)

    def sample(self, n, image_size, *, generator=None, device=None) -> Params:
        return {"angle": (rand(n, generator, device=device) - 0.5) * 2 * self.degrees / 180 * math.pi}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        a = params["angle"].float()
        c, s, z = torch.cos(a), torch.sin(a), torch.zeros_like(a)
        theta = torch.stack([torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1)], 1)
        return _affine(x, theta)


class Cutout(Augment):
    """Zero a square of side round(ratio·H) × round(ratio·W) centred at (cy, cx).

    Box rows are [cy - side//2, cy - side//2 + side) clipped to the image (DSA's rule; the centre is
    uniform over [0, H - side%2], so the box may cross the border). Params ``cy``, ``cx``.
    """

    def __init__(self, ratio: float = 0.5) -> None:
        self.ratio = float(ratio)

    def _side(self, h: int, w: int):
        return _round(h * self.ratio), _round(w * self.ratio)

    def sample(self, n, image_size, *, generator=None, device=None) -> Params:
        h, w = hw(image_size)
        sh, sw = self._side(h, w)
        return {"cy": randint(0, h + 1 - sh % 2, n, generator, device=device),
                "cx": randint(0, w + 1 - sw % 2, n, generator, device=device)}

    def mask(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        """The keep-mask (n×1×H×W, 0 inside the box) for these params."""
        _, _, h, w = x.shape
        sh, sw = self._side(h, w)
        y0 = params["cy"].to(x.device)[:, None] - sh // 2
        x0 = params["cx"].to(x.device)[:, None] - sw // 2
        r, c = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
        in_r = (r >= y0) & (r < y0 + sh)  # n×h
        in_c = (c >= x0) & (c < x0 + sw)  # n×w
        return ~(in_r[:, :, None] & in_c[:, None, :])[:, None]

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        keep = self.mask(x, params)
        if keep.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"cutout params drawn for {keep.shape[0]} samples, batch has {x.shape[0]}")
        return x * keep.to(x.dtype)


DSA_TOKENS = ("color", "crop", "cutout", "flip", "scale", "rotate")
DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"


def _tokens(strategy: str) -> List[str]:
    toks = [t for t in strategy.strip().lower().split("_") if t]
    bad = [t for t in toks if t not in DSA_TOKENS]
    if bad:
        raise ValueError(f"unknown DSA token(s) {bad} in strategy {strategy!r}; known: {'_'.join(DSA_TOKENS)}")
    return toks


def _op(token: str) -> Augment:
    return {"color": Color, "crop": Translate, "cutout": Cutout, "flip": Flip,
            "scale": Scale, "rotate": Rotate}[token]()


def dsa(strategy: str = DEFAULT_STRATEGY, mode: str = "chain") -> Augment:
    """DSA pipeline for a strategy string of tokens color, crop, cutout, flip, scale, rotate.

    mode="chain" (CIM/IDC's DiffAug, the default here): flip → colour → one of {crop, scale,
    rotate} present (chosen per draw) → cutout, whatever the token order.
    mode="single": DC/DSA/MTT's 'S' mode: ONE token of the strategy per draw (colour = its 3 ops).
    mode="multiple": DSA's 'M' mode: every token, in strategy order.
    "" or "none" gives the identity.
    """
    if strategy.strip().lower() in ("", "none"):
        return Identity()
    toks = _tokens(strategy)
    if mode == "single":
        return OneOf([_op(t) for t in toks]) if len(toks) > 1 else _op(toks[0])
    if mode == "multiple":
        return Compose([_op(t) for t in toks])
    if mode != "chain":
        raise ValueError(f"unknown DSA mode {mode!r}; use 'chain', 'single' or 'multiple'")
    ops: List[Augment] = []
    if "flip" in toks:
        ops.append(Flip())
    if "color" in toks:
        ops.append(Color())
    geo = [_op(t) for t in ("crop", "scale", "rotate") if t in toks]
    if len(geo) == 1:
        ops.append(geo[0])
    elif geo:
        ops.append(OneOf(geo))
    if "cutout" in toks:
        ops.append(Cutout())
    return Compose(ops)


def cim_condense_aug() -> Augment:
    """CIM's condensation observer: flip → translate → cutout ("crop_cutout_flip", used shared)."""
    return dsa("crop_cutout_flip")
