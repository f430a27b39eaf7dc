"""Batch mixing (CutMix, Mixup) with replayable params and matching target mixing.

As in RDED/SRe2L there is ONE lam (and for CutMix one box) per batch plus a permutation of the
batch. A lam / box per sample is accepted too: several students' batches merged into one
(`ahead.merge_batches`), each sample carrying its own batch's draw. Because of the permutation, mixing params replay only on a batch of the size they were
drawn for (``needs_batch = True``: ``__call__`` always draws n = B, and Compose/OneOf refuse them).
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ddkit.augment.base import Augment, Params, hw, rand, randint


def _beta(a: float, generator: Optional[torch.Generator]) -> float:
    # torch's Beta sampler ignores generators, so seed a numpy Generator from one torch draw:
    # reproducible under `generator` and independent of the global RNG state.
    gdev = generator.device if generator is not None else "cpu"
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=gdev))
    return float(np.random.default_rng(seed).beta(a, a))


def _perm(n: int, generator: Optional[torch.Generator]) -> torch.Tensor:
    return torch.argsort(rand(n, generator))


class _Mix(Augment):
    needs_batch = True

    def _check(self, b: int, params: Params) -> torch.Tensor:
        perm = params["perm"]
        if perm.shape[0] != b:
            raise ValueError(f"{type(self).__name__} params were drawn for a batch of {perm.shape[0]}, "
                             f"got {b}; mixing params replay only on a batch of the same size")
        return perm

    def mix_targets(self, y: torch.Tensor, params: Params, num_classes: Optional[int] = None) -> torch.Tensor:
        """lam·y + (1-lam)·y[perm] for one-hot/soft targets B×K (or int labels with num_classes)."""
        if not torch.is_floating_point(y):
            if num_classes is None:
                raise ValueError("integer labels need num_classes to be mixed")
            y = F.one_hot(y.long(), num_classes).float()
        perm = self._check(y.shape[0], params).to(y.device)
        lam = params["lam"].to(device=y.device, dtype=y.dtype).reshape(-1, *([1] * (y.dim() - 1)))
        return lam * y + (1 - lam) * y[perm]


class CutMix(_Mix):
    """CutMix (Beta(beta, beta)): paste one box of x[perm] into every image.

    Params: ``perm`` (B,), ``box`` (1×4: y1, x1, y2, x2, clipped), ``lam`` (1,) = the kept area
    fraction 1 - box area / (H·W), i.e. lam adjusted to the actual clipped box (as RDED/SRe2L do).
    """

    def __init__(self, beta: float = 1.0) -> None:
        if beta <= 0:
            raise ValueError(f"CutMix beta must be > 0, got {beta}")
        self.beta = float(beta)

    def sample(self, n, image_size, *, generator=None, device=None) -> Params:
        h, w = hw(image_size)
        lam0 = _beta(self.beta, generator)
        cut = float(np.sqrt(1.0 - lam0))
        ch, cw = int(h * cut), int(w * cut)
        cy = int(randint(0, h, 1, generator)[0])
        cx = int(randint(0, w, 1, generator)[0])
        y1, y2 = int(np.clip(cy - ch // 2, 0, h)), int(np.clip(cy + ch // 2, 0, h))
        x1, x2 = int(np.clip(cx - cw // 2, 0, w)), int(np.clip(cx + cw // 2, 0, w))
        lam = 1.0 - (y2 - y1) * (x2 - x1) / float(h * w)
        dev = device or "cpu"
        return {"perm": _perm(n, generator).to(dev), "box": torch.tensor([[y1, x1, y2, x2]], device=dev),
                "lam": torch.tensor([lam], dtype=torch.float32, device=dev)}

    def mask(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        """1×1×H×W bool mask of the pasted box (B×1×H×W for a box per sample: merged batches)."""
        boxes = params["box"].reshape(-1, 4)
        r = torch.arange(x.shape[-2], device=x.device)
        c = torch.arange(x.shape[-1], device=x.device)
        if len(boxes) == 1:
            y1, x1, y2, x2 = (int(v) for v in boxes[0])
            return (((r >= y1) & (r < y2))[:, None] & ((c >= x1) & (c < x2))[None, :])[None, None]
        b = boxes.to(x.device)
        rows = (r >= b[:, :1]) & (r < b[:, 2:3])  # B×H
        cols = (c >= b[:, 1:2]) & (c < b[:, 3:4])  # B×W
        return (rows[:, :, None] & cols[:, None, :])[:, None]

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        perm = self._check(x.shape[0], params).to(x.device)
        return torch.where(self.mask(x, params), x[perm], x)


class Mixup(_Mix):
    """Mixup: lam·x + (1-lam)·x[perm] with lam ~ Beta(alpha, alpha). Params ``perm`` (B,), ``lam`` (1,)."""

    def __init__(self, alpha: float = 0.8) -> None:
        if alpha <= 0:
            raise ValueError(f"Mixup alpha must be > 0, got {alpha}")
        self.alpha = float(alpha)

    def sample(self, n, image_size, *, generator=None, device=None) -> Params:
        lam = _beta(self.alpha, generator)
        dev = device or "cpu"
        return {"perm": _perm(n, generator).to(dev), "lam": torch.tensor([lam], dtype=torch.float32, device=dev)}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        perm = self._check(x.shape[0], params).to(x.device)
        lam = params["lam"].to(device=x.device, dtype=x.dtype).reshape(-1, 1, 1, 1)  # (1,) or one per sample
        return lam * x + (1 - lam) * x[perm]
