"""torchvision MobileNetV2 adapted to small (32/64 px) inputs, the cross-architecture verifier of LIC/CIM.

`mobilenet_v2_cifar` = torchvision `mobilenet_v2(num_classes)` with two strides set to 1: the stem conv
(features[0], 3×3 stride 2 → 1) and the first inverted residual that downsamples (features[2], 16 → 24
channels, depthwise stride 2 → 1). The net then downsamples 8× instead of 32×, so a 32 px image still has a
4×4 map at the last block (the ImageNet net leaves 1×1), the adaptation the common CIFAR MobileNetV2 makes
(stride 1 in the stem and in the second stage). Weights, widths and the classifier (dropout 0.2 + linear)
are torchvision's, so the state-dict keys are too.

The plain torchvision `mobilenet_v2` stays reachable by its name (it takes 32 px, ending at 1×1).
torchvision is imported only when the net is built (see resnet_small).
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn

from ddkit.models.factory import adapt_input_channels, register_model

SMALL_INPUT_MAX = 64  # at or below this side the two strides are set to 1 (CIFAR 32 px, Tiny 64 px)


def _stride_one(module: nn.Module) -> None:
    """Set the first stride-2 conv inside `module` to stride 1 (padding is 'same' for 3×3 already)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and m.stride == (2, 2):
            m.stride = (1, 1)
            return
    raise AssertionError("no stride-2 conv found")  # pragma: no cover - torchvision's layout changed


@register_model("mobilenet_v2_cifar", aliases=("mobilenetv2_cifar", "mobilenet_v2_modified", "mobilenet-v2-small"))
def mobilenet_v2_cifar(num_classes: int, image_size: int = 32, channels: int = 3, **kw: Any) -> nn.Module:
    """torchvision mobilenet_v2 with stride 1 in the stem and in features[2] at ≤64 px (8× downsampling)."""
    import torchvision  # here, not at module import

    model = torchvision.models.mobilenet_v2(weights=None, num_classes=num_classes, **kw)
    if channels != 3:
        adapt_input_channels(model, channels, "mobilenet_v2_cifar")
    if image_size <= SMALL_INPUT_MAX:
        _stride_one(model.features[0])
        _stride_one(model.features[2])
    return model
