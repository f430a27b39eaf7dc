"""torchvision ResNets modified for small (32/64 px) inputs, as CIM/RDED/SRe2L build them.

`resnet18_modified` = torchvision `resnet18(num_classes)` with conv1 = Conv2d(C, 64, 3, stride 1,
pad 1, bias=False) and maxpool = Identity (peers.md §1.3). The state-dict keys are torchvision's,
so the peers' `{dataset}_resnet18_modified.pth` checkpoints load unchanged.

DD-Ranking's `ResNet-18-BN` is the modified net at ≤ 64 px and the plain torchvision net above
(peers.md §4.4), so it is registered as its own name rather than as an alias.

torchvision is imported only when one of these nets is built: importing ddkit.models (and so every
command) does not pay for torchvision and, through it, torch._dynamo.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch.nn as nn

from ddkit.models.factory import register_model

if TYPE_CHECKING:  # pragma: no cover
    from torchvision.models import ResNet

SMALL_INPUT_MAX = 64  # at or below this side the stem is modified (CIFAR 32 px, Tiny 64 px)


def modify_for_small_inputs(model: "ResNet", channels: int = 3) -> "ResNet":
    """3×3 stride-1 stem without max-pool: keeps 32 px inputs at 32×32 through layer1."""
    model.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _resnet(name: str, num_classes: int, **kw: Any) -> "ResNet":
    import torchvision  # here, not at module import (see the module docstring)

    return getattr(torchvision.models, name)(weights=None, num_classes=num_classes, **kw)


def _plain(name: str, num_classes: int, channels: int, **kw: Any) -> "ResNet":
    model = _resnet(name, num_classes, **kw)
    if channels != 3:
        old = model.conv1
        model.conv1 = nn.Conv2d(channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
    return model


def _modified_builder(depth: int):
    def build(num_classes: int, image_size: int = 32, channels: int = 3, **kw: Any) -> nn.Module:
        return modify_for_small_inputs(_resnet(f"resnet{depth}", num_classes, **kw), channels)

    build.__doc__ = f"torchvision resnet{depth} with a 3×3 stride-1 stem and no max-pool (CIFAR/Tiny)."
    return build


def _ddranking_builder(depth: int):
    def build(num_classes: int, image_size: int = 32, channels: int = 3, **kw: Any) -> nn.Module:
        if image_size > SMALL_INPUT_MAX:
            return _plain(f"resnet{depth}", num_classes, channels, **kw)
        return modify_for_small_inputs(_resnet(f"resnet{depth}", num_classes, **kw), channels)

    build.__doc__ = (f"DD-Ranking's ResNet-{depth}-BN: modified stem at ≤{SMALL_INPUT_MAX} px, "
                     f"plain torchvision resnet{depth} above.")
    return build


register_model("resnet18_modified", aliases=("resnet18_cifar", "resnet18-small"))(
    _modified_builder(18))
register_model("resnet50_modified", aliases=("resnet50_cifar", "resnet50-small"))(
    _modified_builder(50))
# CIM's data README also lists resnet101_modified teachers (93.06 % C10, 70.51 % C100).
register_model("resnet101_modified", aliases=("resnet101_cifar",))(
    _modified_builder(101))
register_model("ResNet-18-BN", aliases=("resnet18bn",))(_ddranking_builder(18))
register_model("ResNet-50-BN", aliases=("resnet50bn",))(_ddranking_builder(50))
