"""Pure parts of LIC/CIM that are not geometry: key-sample selection and the feature distances.

The mosaic layout (squeeze F, expand F⁻¹, cell bounds) lives in `ddkit.geometry`, shared with the
evaluation recipes; it is re-exported here for the method's callers.
"""
from __future__ import annotations

from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from ddkit.geometry import DOWNSAMPLE_MODES, cell_bounds, downsample, expand, squeeze  # noqa: F401 (re-export)

DISTANCES = ("l1_mean", "mse", "cosine")
SELECTIONS = ("lowest", "highest", "random", "herding")


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
