"""One GSAM step (surrogate-gap guided sharpness-aware minimisation), as DATM's FTD expert buffer runs it.

DATM's README builds its expert buffer with `buffer/buffer_FTD.py`, which wraps plain SGD in the GSAM
optimiser of `buffer/gsam/gsam.py` (NUS-HPC-AI-Lab/DATM commit 97ae510). Re-implemented from that code,
one step on a batch (x, y) with base gradient g = ∇L(w):

    adaptive (ASAM, buffer_FTD.py:147 default True):  n = ‖|w| ⊙ g‖₂,  e = ρ · g ⊙ w² / (n + 1e-12)
    plain:                                             n = ‖g‖₂,        e = ρ · g / (n + 1e-12)
    w ← w + e;  g' = ∇L(w) on the same batch (BN running statistics frozen: momentum 0);  w ← w − e
    c = ⟨g, g'⟩ / (‖g'‖‖g‖ + 1e-12);  v = g − c · ‖g‖ · g' / (‖g'‖ + 1e-12)       (gsam.py:62-85)
    update direction d = g' − α · v;  the base SGD step (lr, momentum, weight decay) uses d

(gsam.py:41-60 perturb, :152-186 step; norms over every parameter with a gradient). ρ is constant in
FTD (ProportionScheduler with rho_max = rho_min, buffer_FTD.py:84-86) and the lr is constant (StepLR with
gamma 1). With ρ = 0 the perturbation vanishes, g' = g, v = 0 and the step is plain SGD.
"""
from __future__ import annotations

from typing import Callable, List, Tuple

import torch
import torch.nn as nn

EPS = 1e-12  # perturb_eps (gsam.py:7)


def _norm(ts: List[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in ts]))


def _set_bn_momentum(model: nn.Module, saved: List[Tuple[nn.Module, object]] | None) -> List[Tuple[nn.Module, object]]:
    """Freeze BN running statistics for the second pass (gsam/util.py), or restore them (saved given)."""
    if saved is not None:
        for m, mom in saved:
            m.momentum = mom  # type: ignore[assignment]
        return []
    out = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            out.append((m, m.momentum))
            m.momentum = 0.0
    return out


def gsam_step(model: nn.Module, loss_fn: Callable[[], Tuple[torch.Tensor, torch.Tensor]],
              opt: torch.optim.Optimizer, rho: float, alpha: float, adaptive: bool = True
              ) -> Tuple[torch.Tensor, torch.Tensor]:
    """One GSAM update of `model` through the base optimiser `opt` (plain SGD in FTD).

    loss_fn() runs the forward pass on the fixed batch and returns (outputs, loss); it is called twice.
    Returns the outputs and loss of the first pass (what FTD logs).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt.zero_grad(set_to_none=True)
    with torch.enable_grad():
        out, loss = loss_fn()
        loss.backward()
    live = [p for p in params if p.grad is not None]
    g = [p.grad.detach().clone() for p in live]  # type: ignore[union-attr]
    with torch.no_grad():
        n = _norm([(p.abs() * gi) if adaptive else gi for p, gi in zip(live, g)])
        scale = rho / (n + EPS)
        e = [gi * scale * (p * p) if adaptive else gi * scale for p, gi in zip(live, g)]
        for p, ei in zip(live, e):
            p.add_(ei)
    saved = _set_bn_momentum(model, None)
    opt.zero_grad(set_to_none=True)
    with torch.enable_grad():
        _, loss2 = loss_fn()
        loss2.backward()
    with torch.no_grad():
        g2 = [p.grad if p.grad is not None else torch.zeros_like(p) for p in live]
        n2, n1 = _norm(g2), _norm(g)
        cos = sum((a * b).sum() for a, b in zip(g, g2)) / (n2 * n1 + EPS)
        for p, gi, g2i, ei in zip(live, g, g2, e):
            vertical = gi - cos * n1 * g2i / (n2 + EPS)
            p.grad = g2i - alpha * vertical
            p.sub_(ei)  # back to w before the base step
    opt.step()
    _set_bn_momentum(model, saved)
    return out.detach(), loss.detach()
