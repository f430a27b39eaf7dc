"""Augmentation parameters for K steps drawn ahead and moved to the device in one copy.

A training step that draws its parameters on a CPU generator (so a seeded run draws the same values on any
device) and moves each tensor to the GPU on its own makes a dozen small blocking host→device copies per step.
`DrawAhead` calls the step's draw function K times in a row — the calls K steps would make, in their order, so
every value is the one the step-by-step path draws — stacks each key over the K draws, packs all of them into
one byte buffer and moves it with one copy (pinned and non-blocking on CUDA); step k's params are views of it.
Keys the host must read stay on the CPU (`HOST_KEYS`: OneOf's choice `which` and CutMix's `box`, Python ints
that pick a code path or a slice).

`merge_batches` turns the draws of S students (S batches of B) into the params of ONE batch of S·B, so a
stacked step (evaluate/stacked.py) augments all its students with one call of each op.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import torch

from ddkit.augment.base import Params, expand_batch

#: param names (the last part of a namespaced key) whose values the host reads while applying
HOST_KEYS = frozenset({"which", "box"})
_ALIGN = 8  # every packed tensor starts on an 8-byte boundary, so its bytes can be viewed as its dtype


class DrawAhead:
    """`next()` returns the params of the next step; every `steps` calls it draws `steps` more at once."""

    def __init__(self, draw: Callable[[], Params], device: torch.device | str, steps: int = 32) -> None:
        if steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {steps}")
        self.draw, self.device, self.steps = draw, torch.device(device), int(steps)
        self._slots: Dict[str, torch.Tensor] = {}  # key -> K×shape (on the device, or on the host)
        self._pos = self._n = 0
        self.copies = 0  # host→device copies made: one per refill (a no-op on the CPU)

    def next(self) -> Params:
        if self._pos >= self._n:
            self._refill()
        k, self._pos = self._pos, self._pos + 1
        return {key: v[k] for key, v in self._slots.items()}

    def _refill(self) -> None:
        draws = [self.draw() for _ in range(self.steps)]
        stacked = {key: torch.stack([d[key] for d in draws]) for key in draws[0]}
        self._n, self._pos = self.steps, 0
        # The same packing on the CPU (the copy is then a no-op): one code path, tested without a GPU.
        host = {k: v for k, v in stacked.items() if k.rsplit(".", 1)[-1] in HOST_KEYS or v.device != torch.device("cpu")}
        chunks: List[torch.Tensor] = []
        layout: List[Tuple[str, int, int, torch.dtype, torch.Size]] = []
        off = 0
        for key, v in stacked.items():
            if key in host:
                continue
            raw = v.contiguous().reshape(-1).view(torch.uint8)
            pad = -len(raw) % _ALIGN
            chunks.append(raw if not pad else torch.cat([raw, raw.new_zeros(pad)]))
            layout.append((key, off, len(raw), v.dtype, v.shape))
            off += len(raw) + pad
        slots = dict(host)
        if chunks:
            packed = torch.cat(chunks)
            if self.device.type == "cuda":
                packed = packed.pin_memory()
            buf = packed.to(self.device, non_blocking=True)
            self.copies += 1
            for key, start, nbytes, dtype, shape in layout:
                slots[key] = buf[start:start + nbytes].view(dtype).view(shape)
        self._slots = slots


def merge_batches(draws: Sequence[Params], batch: int) -> Params:
    """The params of one batch of len(draws)·`batch` samples whose block s (rows s·batch …) replays draw s.

    Each draw is one batch's params (keys and shapes alike, as one `draw` function gives them). A per-sample
    param (leading dim `batch`) is concatenated; a per-batch one (leading dim 1: DSA's shared draws, OneOf's
    `which`, a mixing `lam` or CutMix `box`) is repeated over its block, so it becomes a per-sample param that
    the ops read row by row (OneOf picks per sample, CutMix masks per sample, Mixup weights per sample); a batch
    permutation (`perm`, mixing's partner index) is offset into its block, so no sample mixes with another
    block's. Every value is the drawn one: the merged batch is the S batches side by side."""
    out: Params = {}
    for key in draws[0]:
        vals = [d[key] for d in draws]
        if key.rsplit(".", 1)[-1] == "perm":
            out[key] = torch.cat([v + s * batch for s, v in enumerate(vals)])
        else:
            out[key] = torch.cat([expand_batch(v, batch, key) for v in vals])
    return out
