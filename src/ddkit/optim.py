"""The one optimiser builder shared by teacher training, the dynamics (proxy) runs and the evaluator.

Three stages used to build SGD/AdamW with their own parameter grouping; the rules are the same and
live here: parameters that require grad, weight decay on all of them or only on ndim > 1 tensors
(conv/linear weights, not norm weights or biases — RDED/SRe2L/timm's convention), SGD with optional
Nesterov or AdamW. Learning-rate schedules stay with each stage: the teacher's is per step
(one-cycle), the dynamics run's is per iteration (StepLR compressed to K), the evaluator's per epoch
(the recipes' rules), and those rules are part of each protocol.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ddkit.utils import DDKitError

OPTIMIZERS = ("sgd", "adamw")


def decay_groups(params: Sequence[torch.Tensor], weight_decay: float, decay_norm_bias: bool = True,
                 ranks: Optional[Sequence[int]] = None) -> List[Dict[str, Any]]:
    """Optimiser groups: one decayed group, or decayed rank > 1 + undecayed rest. `ranks` default to each
    tensor's ndim; stacked students (evaluate/stacked.py) pass the per-student rank (ndim − 1)."""
    params = list(params)
    rk = list(ranks) if ranks is not None else [p.ndim for p in params]
    if decay_norm_bias:
        return [{"params": params, "weight_decay": weight_decay}]
    return [{"params": [p for p, r in zip(params, rk) if r > 1], "weight_decay": weight_decay},
            {"params": [p for p, r in zip(params, rk) if r <= 1], "weight_decay": 0.0}]


def param_groups(model: nn.Module, weight_decay: float, decay_norm_bias: bool = True) -> List[Dict[str, Any]]:
    """Trainable parameters as optimiser groups: one decayed group, or decayed ndim > 1 + undecayed rest."""
    return decay_groups([p for p in model.parameters() if p.requires_grad], weight_decay, decay_norm_bias)


def make_optimizer(model: nn.Module, name: str, lr: float, *, weight_decay: float = 0.0, momentum: float = 0.9,
                   nesterov: bool = False, decay_norm_bias: bool = True,
                   betas: Sequence[float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over `param_groups(model, …)`; unknown names fail in one line."""
    return optimizer_for(param_groups(model, weight_decay, decay_norm_bias), name, lr, momentum=momentum,
                         nesterov=nesterov, betas=betas)


def optimizer_for(groups: List[Dict[str, Any]], name: str, lr: float, *, momentum: float = 0.9,
                  nesterov: bool = False, betas: Sequence[float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over ready-made `groups` (see decay_groups)."""
    key = str(name).lower()
    if key == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    if key == "adamw":
        b: Tuple[float, float] = (float(betas[0]), float(betas[1]))
        return torch.optim.AdamW(groups, lr=lr, betas=b)
    raise DDKitError(f"unknown optimizer {name!r}; use {' or '.join(OPTIMIZERS)}")
