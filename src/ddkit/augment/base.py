"""Replayable augmentation core: `Augment` (sample, then apply), `Compose`, `OneOf`, `Normalize`.

Every augmentation is split into two steps so that one random draw can be replayed:

* ``sample(n, image_size, generator=...)`` draws explicit parameter tensors (a ``Params`` dict).
  Leading dim 1 means *one draw shared by the whole batch* (DSA's "siamese" mode: it broadcasts to
  a batch of ANY size, e.g. 256 real and 10 synthetic images); leading dim B means one draw per
  sample. Parameters are drawn on the generator's device (CPU by default) so a seeded run gives the
  same draw whichever device the images live on.
* ``apply(x, params)`` is a pure, batched, differentiable tensor function of the pixels.

Batch-level mixing ops (CutMix, Mixup) also hold a permutation of the batch, so their params replay
only on a batch of the size they were drawn for (`needs_batch = True`).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import torch

Params = Dict[str, torch.Tensor]
ImageSize = Union[int, Sequence[int], torch.Size]


def hw(image_size: ImageSize) -> Tuple[int, int]:
    """(H, W) from an int, an (H, W) pair or a full shape such as ``x.shape`` (last two dims)."""
    if isinstance(image_size, int):
        return image_size, image_size
    size = tuple(int(s) for s in image_size)
    if len(size) < 2:
        raise ValueError(f"image_size must be an int, (H, W) or a B×C×H×W shape, got {image_size!r}")
    return size[-2], size[-1]


def rand(n: int, generator: Optional[torch.Generator], *, device=None) -> torch.Tensor:
    """U[0, 1) float32 of shape (n,), drawn with `generator` (on its device) and moved to `device`."""
    gdev = generator.device if generator is not None else "cpu"
    return torch.rand(n, generator=generator, device=gdev).to(device or "cpu")


def randint(low: int, high: int, n: int, generator: Optional[torch.Generator], *, device=None) -> torch.Tensor:
    """Integers in [low, high) as int64 of shape (n,), drawn like `rand`."""
    gdev = generator.device if generator is not None else "cpu"
    return torch.randint(low, high, (n,), generator=generator, device=gdev).to(device or "cpu")


def per_sample(p: torch.Tensor, x: torch.Tensor, name: str = "param") -> torch.Tensor:
    """Move a (1,) or (B,) param to x's device and shape it (n, 1, 1, 1) to broadcast over B×C×H×W.

    A leading dim that is neither 1 nor x's batch size is an error: per-sample params only replay
    on a batch of the size they were drawn for.
    """
    p = p.to(x.device)
    if p.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"{name} was drawn for {p.shape[0]} samples but the batch has {x.shape[0]}; "
                         "draw with n=1 (shared) or n=batch size")
    return p.reshape(p.shape[0], *([1] * (x.dim() - 1)))


def layout_of(x: torch.Tensor) -> torch.memory_format:
    """The memory format an op should hand back for input `x`: channels_last when `x` is a 4-d
    channels_last tensor (and not also plain contiguous, as 1×1 images or C = 1 are), else contiguous.

    Ops that build their output through indexing or permutes use it so that the layout chosen for a
    network (NCHW on CPU, channels_last on CUDA) survives augmentation instead of changing by accident.
    """
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def expand_batch(t: torch.Tensor, b: int, name: str = "param") -> torch.Tensor:
    """Expand a leading dim of 1 to b (a view); check that any other leading dim equals b."""
    if t.shape[0] == b:
        return t
    if t.shape[0] != 1:
        raise ValueError(f"{name} was drawn for {t.shape[0]} samples but the batch has {b}; "
                         "draw with n=1 (shared) or n=batch size")
    return t.expand(b, *t.shape[1:])


class Augment:
    """Base class: ``sample`` draws a Params dict, ``apply`` is a deterministic function of (x, params).

    Subclasses implement `sample` and `apply`. `__call__` does both: one draw for the whole batch
    when ``shared=True`` (siamese), otherwise one draw per sample.
    """

    #: True for ops whose params are tied to the batch size (a permutation over the batch).
    needs_batch: bool = False

    def sample(self, n: int, image_size: ImageSize, *, generator: Optional[torch.Generator] = None,
               device=None) -> Params:
        """Draw params for `n` samples (n=1: one draw for any batch) of images of `image_size`.

        `image_size` is an int, (H, W) or ``x.shape``. Draws use `generator` (CPU is fine);
        tensors are returned on `device` (default CPU); `apply` moves them to the input's device.
        """
        raise NotImplementedError

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        """Apply the transformation described by `params` to a B×C×H×W float batch."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, *, generator: Optional[torch.Generator] = None,
                 shared: bool = False) -> torch.Tensor:
        """Sample (n=1 if shared else B) and apply in one go."""
        n = x.shape[0] if (not shared or self.needs_batch) else 1
        return self.apply(x, self.sample(n, x.shape, generator=generator))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class Identity(Augment):
    """No-op (empty params); what `dsa('none')` returns."""

    def sample(self, n, image_size, *, generator=None, device=None) -> Params:
        return {}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        return x


class Normalize(Augment):
    """(x - mean) / std per channel; deterministic, so pipelines can augment *after* normalising

    (CIM and DSA augment normalised tensors: a zero fill then means "mean colour").
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise ValueError("Normalize needs mean and std of equal length with std > 0")

    def sample(self, n, image_size, *, generator=None, device=None) -> Params:
        return {}

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        # The constants are made once per (device, dtype, rank), not copied to the device at every step.
        key = (x.device, x.dtype, x.dim())
        consts = self.__dict__.setdefault("_consts", {})
        if key not in consts:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            consts[key] = (torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape),
                           torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape))
        mean, std = consts[key]
        return (x - mean) / std


def _sub(params: Params, prefix: str) -> Params:
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


class Compose(Augment):
    """Apply ops in order. Params are namespaced ``"{i}.{key}"`` (i = position of the op).

    Mixing ops (CutMix/Mixup) are refused: they also transform targets, so apply them separately.
    """

    def __init__(self, ops: Sequence[Augment]) -> None:
        self.ops = list(ops)
        for op in self.ops:
            if op.needs_batch:
                raise ValueError(f"{type(op).__name__} mixes the batch and its targets; apply it outside "
                                 "Compose and call its mix_targets")

    def sample(self, n, image_size, *, generator=None, device=None) -> Params:
        out: Params = {}
        for i, op in enumerate(self.ops):
            for k, v in op.sample(n, image_size, generator=generator, device=device).items():
                out[f"{i}.{k}"] = v
        return out

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        for i, op in enumerate(self.ops):
            x = op.apply(x, _sub(params, f"{i}."))
        return x

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(repr(op) for op in self.ops) + "])"


class OneOf(Augment):
    """Apply one op chosen uniformly per draw (DSA's single-op mode picks one per batch).

    The choice is itself a param (``"which"``, shape (1,)), so a replay picks the same op. It is
    batch-level even when the chosen op's params are per-sample, as in DSA/CIM; a (B,) choice (batches
    of several students merged into one) picks per sample. All ops' params
    are drawn (namespaced ``"{i}.{key}"``) so the RNG stream does not depend on the choice.
    """

    def __init__(self, ops: Sequence[Augment]) -> None:
        self.ops = list(ops)
        if not self.ops:
            raise ValueError("OneOf needs at least one op")
        if any(op.needs_batch for op in self.ops):
            raise ValueError("OneOf cannot hold mixing ops (CutMix/Mixup); apply them separately")

    def sample(self, n, image_size, *, generator=None, device=None) -> Params:
        out: Params = {"which": randint(0, len(self.ops), 1, generator, device=device)}
        for i, op in enumerate(self.ops):
            for k, v in op.sample(n, image_size, generator=generator, device=device).items():
                out[f"{i}.{k}"] = v
        return out

    def apply(self, x: torch.Tensor, params: Params) -> torch.Tensor:
        which = params["which"].reshape(-1)
        if len(which) not in (1, x.shape[0]):
            raise ValueError(f"OneOf choice drawn for {len(which)} samples but the batch has {x.shape[0]}")
        choices = which.unique().tolist() if len(which) > 1 else [int(which[0])]
        for i in choices:
            if not 0 <= i < len(self.ops):
                raise ValueError(f"OneOf choice {i} out of range for {len(self.ops)} ops")
        if len(choices) == 1:
            return self.ops[choices[0]].apply(x, _sub(params, f"{choices[0]}."))
        # A choice per sample (several batches merged into one, `ahead.merge_batches`): each op runs once on the
        # samples that chose it, with their params, and the results go back to their rows.
        out = torch.zeros_like(x)
        for i in choices:
            rows = (which == i).nonzero().squeeze(1)
            sub = self.ops[i].apply(x[rows.to(x.device)], select(_sub(params, f"{i}."), rows))
            out = out.index_copy(0, rows.to(x.device), sub)
        return out

    def __repr__(self) -> str:
        return "OneOf([" + ", ".join(repr(op) for op in self.ops) + "])"


def params_to(params: Params, device) -> Params:
    """Move every param tensor to `device` (e.g. to store or to pre-stage on the GPU)."""
    return {k: v.to(device) for k, v in params.items()}


def select(params: Params, idx: torch.Tensor) -> Params:
    """Per-sample params for a subset of the batch (shared (1,) params are kept as they are).

    Useful to replay stored per-sample draws on a sub-batch; `idx` indexes the leading dim.
    """
    out: Params = {}
    for k, v in params.items():
        out[k] = v if v.shape[0] == 1 or k.endswith("which") else v[idx.to(v.device)]
    return out
