"""An exponential moving average of a student's parameters, for recipes that test with it (EDC).

EDC's students (shaoshitong/EDC@80116a7 `Branch_CIFAR_10/train/direct_train.py` "D", and the ImageNet-1K
`train_FKD_parallel.py`) keep a copy of the model whose PARAMETERS follow ema ← d·ema + (1 − d)·param after every
optimizer step (D:79-90, 437-438; train.sh --ema-dr 0.99), and are tested with the copy's parameters swapped into
the live model (D:92-98, 351-354): the BatchNorm running statistics are the live model's, never averaged. ddkit
does the same: `ParamEMA.step` after each step, `ParamEMA.swapped` around every test/validation evaluation. The
trained weights the caller keeps (e.g. `on_student`) stay the live ones, as the official checkpoint does.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, List

import torch
import torch.nn as nn


class ParamEMA:
    """ema ← decay·ema + (1 − decay)·param over `model.parameters()`, buffers untouched."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.shadow: List[torch.Tensor] = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def step(self, model: nn.Module) -> None:
        """Move the average towards the model's current parameters (call after the optimizer step)."""
        for e, p in zip(self.shadow, model.parameters()):
            e.lerp_(p.detach(), 1.0 - self.decay)

    @contextlib.contextmanager
    def swapped(self, model: nn.Module) -> Iterator[nn.Module]:
        """Inside: the model holds the averaged parameters (its buffers are its own); restored on exit."""
        params = list(model.parameters())
        with torch.no_grad():
            for p, e in zip(params, self.shadow):
                tmp = p.detach().clone()
                p.copy_(e)
                e.copy_(tmp)
        try:
            yield model
        finally:
            with torch.no_grad():
                for p, e in zip(params, self.shadow):
                    tmp = p.detach().clone()
                    p.copy_(e)
                    e.copy_(tmp)
