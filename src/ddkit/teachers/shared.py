"""Fixed-shape shared forwards: the candidate rows of several requests (e.g. the crops or pools of
several classes) scored by one function in forwards of exactly `batch` rows.

Why fixed shapes: a class's result must not depend on which other classes share its forwards (the
method contract: the driver shards, resumes and re-groups classes). Eval-mode teachers are per-sample
(BatchNorm in eval mode, GroupNorm, instance norm), so a row's output depends on the row alone, up to
the kernel the backend picks for the batch's SHAPE. That choice is real: on this repository's CPU
(oneDNN / MKL, fp32) a ConvNet-3's logits for the same image differ in the last bits between a forward
of 1–8 rows and one of ≥ 44 (the Linear layer's small-M GEMM path and the first convolution at
batch 1), while at one fixed shape the row's position inside the batch does not matter (checked for
ConvNet-3, ConvNet-3-BN and ResNet-18, NCHW and channels_last, fp32 and bf16: rolled batches give
identical rows). So every forward here has the same shape: the rows are streamed across request
boundaries and the last forward is zero-padded to `batch` rows. A request then gets the same bytes
whether it runs alone or in any group; the price is at most `batch − 1` padded rows per call.

Rows are cut on demand (`Rows.cut(start, stop)`), so memory holds one forward's inputs, never all the
candidates of all requests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

import torch


@dataclass(frozen=True)
class Rows:
    """The `n` candidate rows of one request; `cut(start, stop)` builds rows start..stop-1 (a tensor of
    stop − start rows, all requests' rows of one shape and dtype)."""

    n: int
    cut: Callable[[int, int], torch.Tensor]


def tensor_rows(x: torch.Tensor, prepare: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> Rows:
    """Rows of an existing tensor, each slice passed through `prepare` (e.g. normalisation) when cut."""
    return Rows(len(x), lambda s, e: prepare(x[s:e]))


def shared_forward(fn: Callable[[torch.Tensor], torch.Tensor], requests: Sequence[Rows], batch: int,
                   pad: bool = True) -> List[torch.Tensor]:
    """fn over the rows of every request, in request order, in forwards of exactly `batch` rows.

    Returns one tensor per request: its rows of fn's output (first dim = its n). A forward may hold
    rows of several requests; the last one is zero-padded to `batch` rows when `pad` (the padded rows'
    outputs are dropped). fn must be row-wise (a row's output depends on that row only, as an eval-mode
    net's). Example:

        >>> outs = shared_forward(net, [tensor_rows(a), tensor_rows(b)], batch=256)  # a, b: N×C×H×W
    """
    if batch < 1:
        raise ValueError(f"batch must be ≥ 1, got {batch}")
    outs: List[List[torch.Tensor]] = [[] for _ in requests]
    buf: List[torch.Tensor] = []
    owners: List[Tuple[int, int]] = []  # (request, rows) of each piece in buf, in order
    filled = 0
    empty = None

    def flush() -> None:
        nonlocal filled, empty
        x = torch.cat(buf) if len(buf) > 1 else buf[0]
        real = len(x)
        if pad and real < batch:
            x = torch.cat([x, x.new_zeros((batch - real, *x.shape[1:]))])
        y = fn(x)
        o = 0
        for i, k in owners:
            outs[i].append(y[o:o + k])
            o += k
        empty = y[:0]
        buf.clear()
        owners.clear()
        filled = 0

    for i, req in enumerate(requests):
        s = 0
        while s < req.n:
            k = min(batch - filled, req.n - s)
            buf.append(req.cut(s, s + k))
            owners.append((i, k))
            filled += k
            s += k
            if filled == batch:
                flush()
    if filled:
        flush()
    return [torch.cat(o) if len(o) > 1 else o[0] if o else (empty if empty is not None else torch.empty(0))
            for o in outs]


#: rows per scoring forward on CPU when a method's `score_batch` is 0 (auto). Measured (bench/selection_speed.py,
#: docs/performance.md): a ConvNet-3 forward at 32 px runs faster per image at 32 rows than at 256 on one
#: CPU core (the activations of a small batch stay in cache); CUDA keeps the method's max_batch.
CPU_SCORE_BATCH = 32


def score_batch(requested: int, device: torch.device, max_batch: int) -> int:
    """The fixed rows per shared scoring forward: `requested` when > 0, else CPU_SCORE_BATCH on CPU and
    `max_batch` elsewhere."""
    if requested > 0:
        return int(requested)
    return min(CPU_SCORE_BATCH, int(max_batch)) if device.type == "cpu" else int(max_batch)


def groups(items: Sequence[int], size: int) -> List[List[int]]:
    """`items` in consecutive groups of at most `size` (the look-ahead of a method's shared forwards)."""
    size = max(1, int(size))
    return [list(items[s:s + size]) for s in range(0, len(items), size)]
