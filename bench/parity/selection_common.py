"""Pieces shared by the RDED and CIM/LIC parity drivers (issue #27): the teacher converter and the run-time shims
(the steps they share are in selection_pair.py).

Both official repositories (LINs-lab/RDED, LINs-lab/CIM) build their ConvNet-3 observer with the same ConvNet
class layout: `layers.conv.<d>` (Conv2d), `layers.norm.<d>` (BatchNorm2d), `classifier` (Linear), and load
`./data/pretrain_models/{dataset}_{model}.pth` with the state dict under "model". ddkit's ConvNet-3-BN names the
same tensors `features.block<d+1>.0` / `features.block<d+1>.1` / `classifier`. `to_official_state` maps ours to
theirs (values untouched); the drivers then check that the official network built by the official loader gives
ddkit's logits on a batch (an assertion, before anything is distilled).

Nothing here imports official code: the drivers import it at run time from /work/peers/<name>.
"""
from __future__ import annotations

import contextlib
import re
from typing import Dict, Iterator, Sequence

import torch

_OURS = re.compile(r"^features\.block(\d+)\.([01])\.(.+)$")


def to_official_state(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """ddkit ConvNet-d<k>-BN state dict -> the RDED/CIM ConvNet layout (`layers.conv.i`, `layers.norm.i`,
    `classifier`). Every key must be understood: an unknown one (another architecture) is an error."""
    out: Dict[str, torch.Tensor] = {}
    for k, v in state.items():
        m = _OURS.match(k)
        if m:
            block, part, rest = int(m.group(1)), m.group(2), m.group(3)
            out[f"layers.{'conv' if part == '0' else 'norm'}.{block - 1}.{rest}"] = v.clone()
        elif k.startswith("classifier."):
            out[k] = v.clone()
        else:
            raise ValueError(f"not a ddkit ConvNet key: {k!r}")
    return out


class Renormalise(torch.nn.Module):
    """The fixed input converter in front of the teacher: inputs normalised with the official script's mean/std
    are turned into the teacher's own normalisation (the statistics it was trained with). An affine map per
    channel; it changes nothing but the units the network sees."""

    def __init__(self, net: torch.nn.Module, src_mean: Sequence[float], src_std: Sequence[float],
                 dst_mean: Sequence[float], dst_std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        sm, ss, dm, ds = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1)
                          for v in (src_mean, src_std, dst_mean, dst_std))
        self.register_buffer("scale", ss / ds)
        self.register_buffer("shift", (sm - dm) / ds)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * self.scale + self.shift)


@contextlib.contextmanager
def cuda_as_cpu() -> Iterator[None]:
    """`Tensor.cuda()` / `Module.cuda()` as the identity while the official code runs (no GPU here); its
    `nn.DataParallel` already falls back to calling the module when CUDA is absent."""
    saved = torch.Tensor.cuda, torch.nn.Module.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    torch.nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.nn.Module.cuda = saved  # type: ignore[method-assign]


def renormalise_first_conv(net: torch.nn.Module, first: torch.nn.Module, src_mean: Sequence[float],
                           src_std: Sequence[float], dst_mean: Sequence[float], dst_std: Sequence[float]):
    """The same converter as `Renormalise`, as a forward pre-hook on the network's first layer, for official code
    that needs the network's own class (CIM's get_features branches on `isinstance(model, ConvNet)`). The hook
    acts before that layer's zero padding, so the teacher computes exactly what it computes on inputs in its own
    normalisation."""
    conv = Renormalise(torch.nn.Identity(), src_mean, src_std, dst_mean, dst_std)
    first.register_forward_pre_hook(lambda _m, args: (conv(args[0]),) + tuple(args[1:]))
    return net


@contextlib.contextmanager
def module_to_cpu() -> Iterator[None]:
    """`Module.to('cuda')` as `Module.to('cpu')` while the official code runs (CIM's evaluator moves its student and
    teacher with `.to("cuda")`)."""
    saved = torch.nn.Module.to

    def to(self, *args, **kw):
        args = tuple("cpu" if isinstance(x, (str, torch.device)) and str(x).startswith("cuda") else x for x in args)
        if str(kw.get("device", "")).startswith("cuda"):
            kw["device"] = "cpu"
        return saved(self, *args, **kw)

    torch.nn.Module.to = to  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module.to = saved  # type: ignore[method-assign]
