"""timm's RandAugment (`rand-m6-n2-mstd1.0`, DELT's evaluation) as a replayable, batched augmentation; and
torchvision's (EDC's CIFAR training), run by torchvision itself per image (`TorchvisionRandAugment`).

DELT (VILA-Lab/DELT@f2f81ca `evaluation/validation/main.py:119-123`) puts timm's `rand_augment_transform` first in
its student's view chain, with hparams `img_mean` (124, 116, 104) as the fill. The rule, read in timm's
`timm/data/auto_augment.py` (`rand_augment_transform`, `RandAugment`, `AugmentOp`, `LEVEL_TO_ARG`):

* per image, n ops drawn uniformly WITH replacement from 15 (AutoContrast, Equalize, Invert, Rotate, Posterize,
  Solarize, SolarizeAdd, Color, Contrast, Brightness, Sharpness, ShearX, ShearY, TranslateXRel, TranslateYRel);
* each op applies with probability 0.5, at magnitude ~ N(m, mstd) clipped to [0, 10];
* level → argument: rotate ±30·M/10 degrees, shear ±0.3·M/10, translate ±0.45·M/10 of the side (sign: 50 %),
  posterize to int(4·M/10) bits, solarize above int(256·M/10), solarize-add int(110·M/10) below 128, the four
  enhancements with factor 0.1 + 1.8·M/10 (no sign).

The ops are PIL's on uint8 images (ImageOps / ImageEnhance, `tests/test_randaug.py` checks the photometric ones
against PIL); here they run on [0, 1] float batches and every op's output is rounded to the 1/255 grid, as PIL's
uint8 would be. Geometric ops sample bilinearly with PIL's pixel-centre convention and fill outside the image with
`fill`; timm draws bilinear or bicubic at random, ddkit always bilinear.
"""
from __future__ import annotations

import math
import re
from typing import Callable, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from ddkit.augment.base import Augment, Params

OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color", "Contrast",
       "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


def parse_config(config: str) -> Tuple[int, int, float]:
    """(magnitude, ops per image, magnitude std) of a timm config such as 'rand-m6-n2-mstd1.0' (defaults 10, 2, 0)."""
    parts = config.split("-")
    if parts[0] != "rand":
        raise ValueError(f"a RandAugment config starts with 'rand', got {config!r}")
    m, n, std = 10, 2, 0.0
    for p in parts[1:]:
        got = re.split(r"(\d.*)", p)
        if len(got) < 2:
            continue
        key, val = got[0], got[1]
        if key == "m":
            m = int(val)
        elif key == "n":
            n = int(val)
        elif key == "mstd":
            std = float(val)
        else:
            raise ValueError(f"unsupported RandAugment config section {p!r} in {config!r} (m, n, mstd)")
    return m, n, std


def _q(x: torch.Tensor) -> torch.Tensor:
    """Round to the uint8 grid (PIL's images are 8-bit)."""
    return (x.clamp(0, 1) * 255).round() / 255


def _gray(x: torch.Tensor) -> torch.Tensor:
    """PIL's RGB → L: (R·19595 + G·38470 + B·7471 + 2¹⁵) >> 16 on the 8-bit values, B×1×H×W in [0, 1]."""
    if x.shape[1] == 1:
        return x
    v = (x * 255).round()
    g = torch.floor((v[:, 0] * 19595 + v[:, 1] * 38470 + v[:, 2] * 7471 + 32768) / 65536)
    return (g / 255).unsqueeze(1)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """ImageEnhance: degenerate + f·(x − degenerate), clipped and rounded."""
    return _q(degenerate + f.view(-1, 1, 1, 1) * (x - degenerate))


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """ImageOps.autocontrast (cutoff 0): per channel lut[v] = int(v·s − lo·s), s = 255 / (hi − lo), in float64 as
    PIL computes it; a flat channel is unchanged."""
    v = (x.double() * 255).round()
    lo = v.amin(dim=(2, 3), keepdim=True)
    hi = v.amax(dim=(2, 3), keepdim=True)
    scale = 255.0 / (hi - lo).clamp_min(1)
    out = torch.floor(v * scale + (-lo * scale)).clamp(0, 255)
    return torch.where(hi > lo, out, v).to(x.dtype) / 255


def equalize(x: torch.Tensor) -> torch.Tensor:
    """ImageOps.equalize per channel: lut[i] = (n // step) with n = step // 2 + Σ_{j<i} h[j], step = (N − h[last]) // 255."""
    v = (x * 255).round().long()
    out = v.clone()
    for b in range(v.shape[0]):
        for c in range(v.shape[1]):
            h = torch.bincount(v[b, c].reshape(-1), minlength=256)
            nz = h[h > 0]
            step = int((int(nz.sum()) - int(nz[-1])) // 255)
            if step == 0:
                continue
            n = step // 2 + torch.cumsum(h, 0) - h  # the lut before each value
            lut = torch.clamp(n // step, max=255)
            out[b, c] = lut[v[b, c]]
    return out.float() / 255


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the `bits` most significant bits of each 8-bit value (8 or more: unchanged)."""
    v = (x * 255).round().long()
    shift = (8 - bits.clamp(0, 8)).view(-1, 1, 1, 1)
    return ((v >> shift) << shift).float() / 255


def solarize(x: torch.Tensor, thresh: torch.Tensor) -> torch.Tensor:
    """Values at or above `thresh` (0..256, 8-bit units) inverted."""
    v = (x * 255).round()
    return torch.where(v < thresh.view(-1, 1, 1, 1), v, 255 - v) / 255


def solarize_add(x: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
    """min(255, v + add) for 8-bit values below 128."""
    v = (x * 255).round()
    return torch.where(v < 128, (v + add.view(-1, 1, 1, 1)).clamp(max=255), v) / 255


def sharpness_degenerate(x: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH filter (1 1 1 / 1 5 1 / 1 1 1, ÷13, rounded) inside, the image's own border pixels kept."""
    k = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    k[1, 1] = 5.0
    k = (k / 13.0).expand(x.shape[1], 1, 3, 3)
    sm = _q(F.conv2d(x, k, groups=x.shape[1]))
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = sm
    return out


def affine(x: torch.Tensor, coef: torch.Tensor, fill: Sequence[float]) -> torch.Tensor:
    """PIL `Image.transform(AFFINE, (a, b, c, d, e, f))` per row: output pixel (x, y) reads the input at
    (a·x' + b·y' + c, d·x' + e·y' + f) with x' = x + 0.5 (pixel centres), bilinear, `fill` outside."""
    b, ch, h, w = x.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=x.dtype, device=x.device) + 0.5,
                            torch.arange(w, dtype=x.dtype, device=x.device) + 0.5, indexing="ij")
    c = coef.to(x).view(b, 6, 1, 1)
    xin = c[:, 0] * xs + c[:, 1] * ys + c[:, 2]
    yin = c[:, 3] * xs + c[:, 4] * ys + c[:, 5]
    grid = torch.stack([xin / w * 2 - 1, yin / h * 2 - 1], dim=-1)  # align_corners=False: pixel-centre units
    ones = torch.ones(b, 1, h, w, dtype=x.dtype, device=x.device)
    out = F.grid_sample(torch.cat([x, ones], 1), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    inside = out[:, -1:]
    fill_t = torch.tensor(list(fill)[:ch], dtype=x.dtype, device=x.device).view(1, ch, 1, 1)
    img = out[:, :-1] + (1 - inside) * fill_t
    return _q(img)


def _rotate_coef(deg: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """PIL `rotate(deg)` (counter-clockwise, about the centre) as AFFINE coefficients."""
    a = -deg * math.pi / 180.0
    cos, sin = torch.cos(a), torch.sin(a)
    cx, cy = w / 2.0, h / 2.0
    return torch.stack([cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy], 1)


class RandAugment(Augment):
    """timm RandAugment on [0, 1] images. Params: ``op`` (n, L) op index, ``on`` (n, L) bool (prob 0.5),
    ``mag`` (n, L) magnitude in [0, 10], ``neg`` (n, L) bool sign of the signed ops."""

    def __init__(self, config: str = "rand-m6-n2-mstd1.0", fill: Sequence[float] = (124 / 255, 116 / 255, 104 / 255),
                 prob: float = 0.5) -> None:
        self.config = config
        self.magnitude, self.layers, self.std = parse_config(config)
        self.fill = tuple(float(f) for f in fill)
        self.prob = float(prob)

    def sample(self, n, image_size, *, generator=None, device=None) -> Params:
        gdev = generator.device if generator is not None else "cpu"
        shape = (n, self.layers)
        op = torch.randint(0, len(OPS), shape, generator=generator, device=gdev)
        on = torch.rand(shape, generator=generator, device=gdev) < self.prob
        mag = self.magnitude + self.std * torch.randn(shape, generator=generator, device=gdev)
        neg = torch.rand(shape, generator=generator, device=gdev) > 0.5
        return {k: v.to(device or "cpu") for k, v in
                {"op": op, "on": on, "mag": mag.clamp(0, 10), "neg": neg}.items()}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        x = _q(x)
        for j in range(params["op"].shape[1]):
            op, on = params["op"][:, j].to(x.device), params["on"][:, j].to(x.device)
            mag, neg = params["mag"][:, j].to(x), params["neg"][:, j].to(x.device)
            for k in torch.unique(op[on]).tolist():
                rows = torch.nonzero(on & (op == k)).flatten()
                x = x.clone()
                x[rows] = self._op(OPS[k], x[rows], mag[rows], neg[rows])
        return x

    def _op(self, name: str, x: torch.Tensor, m: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        sign = torch.where(neg, -1.0, 1.0).to(x)
        level = m / 10.0
        h, w = x.shape[-2:]
        enhance = 0.1 + 1.8 * level
        ops: Dict[str, Callable[[], torch.Tensor]] = {
            "AutoContrast": lambda: autocontrast(x),
            "Equalize": lambda: equalize(x),
            "Invert": lambda: 1.0 - x,
            "Rotate": lambda: affine(x, _rotate_coef(sign * 30.0 * level, h, w), self.fill),
            "Posterize": lambda: posterize(x, torch.floor(4 * level).long()),
            "Solarize": lambda: solarize(x, torch.floor(256 * level)),
            "SolarizeAdd": lambda: solarize_add(x, torch.floor(110 * level)),
            "Color": lambda: _blend(_gray(x).expand_as(x), x, enhance),
            "Contrast": lambda: _blend(self._mean_gray(x), x, enhance),
            "Brightness": lambda: _blend(torch.zeros_like(x), x, enhance),
            "Sharpness": lambda: _blend(sharpness_degenerate(x), x, enhance),
            "ShearX": lambda: affine(x, self._coef(x, 1, sign * 0.3 * level, 0, 0, 1, 0), self.fill),
            "ShearY": lambda: affine(x, self._coef(x, 1, 0, 0, sign * 0.3 * level, 1, 0), self.fill),
            "TranslateXRel": lambda: affine(x, self._coef(x, 1, 0, sign * 0.45 * level * w, 0, 1, 0), self.fill),
            "TranslateYRel": lambda: affine(x, self._coef(x, 1, 0, 0, 0, 1, sign * 0.45 * level * h), self.fill),
        }
        return ops[name]()

    @staticmethod
    def _coef(x: torch.Tensor, *vals) -> torch.Tensor:
        b = x.shape[0]
        cols = [v if torch.is_tensor(v) else torch.full((b,), float(v)) for v in vals]
        return torch.stack([c.to(x) for c in cols], 1)

    @staticmethod
    def _mean_gray(x: torch.Tensor) -> torch.Tensor:
        """ImageEnhance.Contrast's degenerate: a flat image at int(mean of L + 0.5)."""
        g = (_gray(x) * 255).mean(dim=(1, 2, 3))
        return (torch.floor(g + 0.5) / 255).view(-1, 1, 1, 1).expand_as(x)


class TorchvisionRandAugment(Augment):
    """torchvision's `RandAugment(num_ops, magnitude)` (defaults 2 and 9 of 31 bins, nearest, fill 0) on each image
    as an 8-bit PIL image, the way EDC's CIFAR training puts `transforms.RandAugment()` before ToTensor
    (shaoshitong/EDC@80116a7 Branch_CIFAR_10/train/direct_train.py:230). torchvision's own op table
    (`RandAugment._augmentation_space`) and op dispatch (`autoaugment._apply_op`) run; ddkit only draws the choices
    from its generator instead of the global one, so a view replays: params ``op`` (n, num_ops) index into the
    table, ``neg`` (n, num_ops) the sign of the signed ops (torchvision: `torch.randint(2)` per signed op). Images
    are quantised to 8 bits first, as the official reads them from JPEG files."""

    def __init__(self, num_ops: int = 2, magnitude: int = 9, num_bins: int = 31) -> None:
        from torchvision.transforms import RandAugment as TV  # torchvision only when a recipe asks for it
        from torchvision.transforms import autoaugment

        self.num_ops, self.magnitude, self.num_bins = int(num_ops), int(magnitude), int(num_bins)
        self.tv = TV(num_ops=self.num_ops, magnitude=self.magnitude, num_magnitude_bins=self.num_bins)
        self.apply_op = autoaugment._apply_op
        self.names = list(self.tv._augmentation_space(self.num_bins, (32, 32)))  # the order torchvision draws from

    def sample(self, n, image_size, *, generator=None, device=None) -> Params:
        gdev = generator.device if generator is not None else "cpu"
        shape = (n, self.num_ops)
        op = torch.randint(0, len(self.names), shape, generator=generator, device=gdev)
        neg = torch.randint(0, 2, shape, generator=generator, device=gdev).bool()
        return {"op": op.to(device or "cpu"), "neg": neg.to(device or "cpu")}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        from torchvision.transforms.functional import pil_to_tensor, to_pil_image

        u8 = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        space = self.tv._augmentation_space(self.num_bins, tuple(x.shape[-2:]))
        ops, negs = params["op"].tolist(), params["neg"].tolist()
        out = []
        for img, row_ops, row_neg in zip(u8, ops, negs):
            pil = to_pil_image(img)
            for k, neg in zip(row_ops, row_neg):
                name = self.names[k]
                mags, signed = space[name]
                m = float(mags[self.magnitude].item()) if mags.ndim > 0 else 0.0
                pil = self.apply_op(pil, name, -m if (signed and neg) else m, interpolation=self.tv.interpolation,
                                    fill=self.tv.fill)
            out.append(pil_to_tensor(pil))
        return torch.stack(out).to(device=x.device, dtype=x.dtype) / 255


def make_randaug(config: str) -> Augment:
    """The RandAugment a recipe names: 'torchvision' (optionally 'torchvision-n2-m9': torchvision's, EDC) or a timm
    config such as 'rand-m6-n2-mstd1.0' (DELT)."""
    parts = config.split("-")
    if parts[0] != "torchvision":
        return RandAugment(config)
    n, m = 2, 9
    for p in parts[1:]:
        if re.fullmatch(r"n\d+", p):
            n = int(p[1:])
        elif re.fullmatch(r"m\d+", p):
            m = int(p[1:])
        else:
            raise ValueError(f"unsupported section {p!r} in {config!r}: torchvision RandAugment takes n<ops>, m<0..30>")
    if not 0 <= m < 31:
        raise ValueError(f"torchvision RandAugment magnitude must be in 0..30 (31 bins), got {m}")
    return TorchvisionRandAugment(n, m)


__all__: List[str] = ["RandAugment", "TorchvisionRandAugment", "OPS", "make_randaug", "parse_config"]
