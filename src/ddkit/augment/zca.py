"""ZCA whitening as MTT/DATM use it (kornia's `ZCAWhitening(eps=0.1, compute_inv=True)`).

MTT (`utils.py:137-165`, matching-synthesis.md §4(d)) loads images as [0,1] pixels WITHOUT mean/std
normalisation, fits the whitening on the whole training split and feeds whitened images to every network
(experts, distillation students, evaluation). Kornia's fit, re-implemented:

    mean = E[x] (per flattened pixel),  C = (X - mean)ᵀ(X - mean) / (N - 1)
    U, S, _ = svd(C),  W = U · diag(1 / sqrt(S + eps)) · Uᵀ,  W⁻¹ = U · diag(sqrt(S + eps)) · Uᵀ
    zca(x) = (x - mean) · W,  inverse(z) = z · W⁻¹ + mean

The transform is a plain pair of tensors so an expert buffer can store it and the distillation uses the
exact matrix the experts saw.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import torch

from ddkit.augment.base import Normalize
from ddkit.data.base import to_float

DEFAULT_EPS = 0.1  # MTT/DATM pass eps=0.1 to kornia (matching-synthesis.md §4(d))


@dataclass
class ZCA:
    """A fitted ZCA transform on flattened C×H×W images in [0,1]."""

    mean: torch.Tensor      # D
    matrix: torch.Tensor    # D×D whitening matrix W (symmetric)
    inverse: torch.Tensor   # D×D W⁻¹
    eps: float = DEFAULT_EPS

    def apply(self, x01: torch.Tensor) -> torch.Tensor:
        """Whiten a B×C×H×W batch of [0,1] images (differentiable)."""
        flat = x01.reshape(len(x01), -1)
        out = (flat - self.mean.to(flat)) @ self.matrix.to(flat)
        return out.reshape(x01.shape)

    def invert(self, z: torch.Tensor) -> torch.Tensor:
        """Map whitened images back to pixel space (the stored set lives in [0,1] units)."""
        flat = z.reshape(len(z), -1)
        out = flat @ self.inverse.to(flat) + self.mean.to(flat)
        return out.reshape(z.shape)

    def to(self, device: torch.device) -> "ZCA":
        return ZCA(self.mean.to(device), self.matrix.to(device), self.inverse.to(device), self.eps)

    def state(self) -> Dict[str, torch.Tensor]:
        """Tensors to save (safetensors); `ZCA.from_state` restores them."""
        return {"zca_mean": self.mean.contiguous(), "zca_matrix": self.matrix.contiguous(),
                "zca_inverse": self.inverse.contiguous(), "zca_eps": torch.tensor([self.eps], dtype=torch.float64)}

    @staticmethod
    def from_state(state: Dict[str, torch.Tensor]) -> "ZCA":
        return ZCA(state["zca_mean"], state["zca_matrix"], state["zca_inverse"], float(state["zca_eps"][0]))


def fit_zca(images: torch.Tensor, eps: float = DEFAULT_EPS, batch: int = 4096) -> ZCA:
    """Fit ZCA on uint8 or [0,1] images N×C×H×W (float64 accumulation, chunked to bound memory)."""
    n = len(images)
    if n < 2:
        raise ValueError("ZCA needs at least 2 images")
    d = images[0].numel()
    total = torch.zeros(d, dtype=torch.float64)
    for i in range(0, n, batch):
        total += to_float(images[i:i + batch]).reshape(-1, d).double().sum(0)
    mean = total / n
    cov = torch.zeros(d, d, dtype=torch.float64)
    for i in range(0, n, batch):
        xc = to_float(images[i:i + batch]).reshape(-1, d).double() - mean
        cov += xc.T @ xc
    cov /= n - 1
    # The covariance is symmetric PSD, so its SVD is its eigendecomposition (kornia uses svd).
    s, u = torch.linalg.eigh(cov)
    s = s.clamp_min(0)
    w = (u * (1.0 / torch.sqrt(s + eps))) @ u.T
    w_inv = (u * torch.sqrt(s + eps)) @ u.T
    return ZCA(mean.float(), w.float(), w_inv.float(), float(eps))


class Space:
    """The pixel space networks see: encode [0,1] images, decode back (normalisation or ZCA)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], zca: Optional[ZCA] = None) -> None:
        self.mean, self.std, self.zca = tuple(mean), tuple(std), zca
        self._norm = Normalize(mean, std)

    @property
    def kind(self) -> str:
        return "zca" if self.zca is not None else "meanstd"

    def to(self, device: torch.device) -> "Space":
        return Space(self.mean, self.std, self.zca.to(device) if self.zca is not None else None)

    def encode(self, x01: torch.Tensor) -> torch.Tensor:
        x = to_float(x01)
        return self.zca.apply(x) if self.zca is not None else self._norm.apply(x, {})

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.zca is not None:
            return self.zca.invert(z)
        shape = (1, -1, 1, 1)
        m = torch.tensor(self.mean, dtype=z.dtype, device=z.device).view(shape)
        s = torch.tensor(self.std, dtype=z.dtype, device=z.device).view(shape)
        return z * s + m
