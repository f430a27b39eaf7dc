"""bf16 autocast that survives `torch.func.vmap`: autocast's casting rules applied at the torch-function level.

`torch.autocast` is a dispatcher key that vmap's batching layer does not pass through: inside
`vmap(functional_call(...))` a conv under `torch.autocast(..., torch.bfloat16)` runs in fp32 (entered outside
or inside the vmapped function alike; torch 2.14). Stacked students (evaluate/stacked.py) would therefore train
in fp32 where one student at a time trains in bf16. `VmapAutocast` is a `TorchFunctionMode`, which acts before
the dispatcher and therefore before vmap: for each call of an op on autocast's lower-precision list it casts the
floating tensor arguments to bf16, for an op on the device's fp32 list it casts them to fp32, and every other
op runs on what it is given, as autocast does. The casts are ordinary differentiable `.to` calls, so gradients
reach the fp32 master weights as under autocast.

The lists hold the ops the stackable layers call (`stacked.stackable`: Conv, Linear, GroupNorm, LayerNorm,
activations, pools), from PyTorch's autocast policy (aten/src/ATen/autocast_mode.cpp): conv and linear /
matmul-family in the lower precision on both devices; group_norm / layer_norm / softmax in fp32 on CUDA only
(the CPU policy lets them run in the input's dtype). On a plain module the mode gives bit-identical outputs to
`torch.autocast` (tests/test_stacked_bf16.py), which is how the lists are checked.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ddkit import utils

_LOW = frozenset({torch.conv1d, torch.conv2d, torch.conv3d, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d,
                  F.conv_transpose2d, F.conv_transpose3d, F.linear, torch.matmul, torch.mm, torch.bmm, torch.addmm,
                  torch.baddbmm, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.mm, torch.Tensor.bmm})
_FP32 = {"cuda": frozenset({F.group_norm, F.layer_norm, torch.group_norm, torch.layer_norm, F.softmax,
                            F.log_softmax, torch.softmax, torch.log_softmax}),
         "cpu": frozenset()}
# Norms the CPU policy runs in the input's dtype: their vmap batching rules apply the fp32 affine weight after
# normalising, which promotes a bf16 input's output to fp32; cast it back so the ops after them (ReLU, pooling)
# see bf16 as in the unstacked step.
_KEEP = {"cpu": frozenset({F.group_norm, F.layer_norm, torch.group_norm, torch.layer_norm}), "cuda": frozenset()}


def _cast(v: Any, dtype: torch.dtype) -> Any:
    """`v` with its eligible tensors cast: floating, not fp64 (autocast leaves fp64 alone), not already `dtype`."""
    if isinstance(v, torch.Tensor):
        return v.to(dtype) if v.is_floating_point() and v.dtype not in (torch.float64, dtype) else v
    if isinstance(v, (list, tuple)):
        return type(v)(_cast(x, dtype) for x in v)
    return v


class VmapAutocast(TorchFunctionMode):
    """Autocast's per-op casts for `device_type` ("cpu" or "cuda") in `dtype`, visible inside vmap."""

    def __init__(self, device_type: str, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.dtype, self.fp32 = dtype, _FP32.get(device_type, frozenset())
        self.keep = _KEEP.get(device_type, frozenset())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _LOW:
            args, kwargs = _cast(args, self.dtype), {k: _cast(v, self.dtype) for k, v in kwargs.items()}
        elif func in self.fp32:
            args, kwargs = _cast(args, torch.float32), {k: _cast(v, torch.float32) for k, v in kwargs.items()}
        out = func(*args, **kwargs)
        if func in self.keep and args and isinstance(args[0], torch.Tensor) and out.dtype != args[0].dtype:
            out = out.to(args[0].dtype)
        return out


def vmap_autocast(device: torch.device, enabled: bool = True, cpu: bool = False) -> contextlib.AbstractContextManager:
    """The stacked step's bf16 context, under exactly `ddkit.utils.autocast`'s conditions (its decision is
    reused): on CUDA when `enabled`, on CPU only when asked (`cpu`) and the CPU has native bf16; else a no-op."""
    ctx = utils.autocast(device, enabled, cpu=cpu)
    if isinstance(ctx, torch.autocast):
        return VmapAutocast(ctx.device, ctx.fast_dtype)
    return contextlib.nullcontext()
