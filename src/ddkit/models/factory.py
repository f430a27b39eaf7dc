"""Model factory: one name -> one freshly initialised network.

Resolution chain (style.md §2.3): the ddkit zoo (ConvNet-D, small-input ResNets, MLP, with the
peers' spellings as aliases) -> any torchvision classification model -> timm (`timm:<name>`, or a
plain name when timm is installed). torchvision comes before timm so that a plain `resnet18`
always means the same network (and the same state-dict keys) whether or not timm is installed.
"""
from __future__ import annotations

import importlib.util
from typing import Any, Callable, List

import torch.nn as nn

from ddkit.registry import Registry, UnknownNameError
from ddkit.utils import DDKitError

# Every builder has the signature (num_classes, image_size, channels, **kw) -> nn.Module.
Builder = Callable[..., nn.Module]
MODELS: Registry[Builder] = Registry("model")


def register_model(name: str, aliases: tuple = ()) -> Callable[[Builder], Builder]:
    """Decorator registering a builder `f(num_classes, image_size, channels, **kw)` under `name`."""
    return MODELS.register(name, aliases=aliases)  # type: ignore[return-value]


def list_models(include_torchvision: bool = False) -> List[str]:
    """Names in the ddkit zoo (plus torchvision's classification models when asked)."""
    names = MODELS.names()
    if include_torchvision:
        names = names + [n for n in _torchvision_names() if n not in MODELS]
    return names


def _torchvision_names() -> List[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def _timm_available() -> bool:
    return importlib.util.find_spec("timm") is not None


def resolve_model_name(name: str) -> str:
    """Canonical spelling of `name`: the zoo's canonical name, `torchvision:<n>` or `timm:<n>`.

    Raises UnknownNameError listing the zoo (and saying where else names come from).
    """
    if name.startswith("timm:"):
        return name
    if name.startswith("torchvision:"):
        # `torchvision:` names a *pretrained* teacher elsewhere; as an architecture it is the plain net.
        base = name.split(":", 1)[1]
        if base not in _torchvision_names():
            raise UnknownNameError(f"unknown torchvision model {base!r}; see torchvision.models.list_models()")
        return name
    if name in MODELS:
        return MODELS.resolve(name)
    if name in _torchvision_names():
        return "torchvision:" + name
    if _timm_available():
        import timm

        if timm.is_model(name):
            return "timm:" + name
    try:
        MODELS.resolve(name)
    except UnknownNameError as e:
        extra = "; or any torchvision classification model (e.g. resnet18, mobilenet_v2) or timm:<name>"
        raise UnknownNameError(str(e) + extra) from None
    raise AssertionError("unreachable")  # pragma: no cover


def create_model(name: str, num_classes: int, image_size: int = 32, channels: int = 3, **kw: Any) -> nn.Module:
    """Build model `name` for `num_classes` classes and `channels`×`image_size`² inputs.

    Example:
        >>> m = create_model("ConvNet-3", num_classes=10, image_size=32)
        >>> m(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])

    Extra keyword arguments go to the builder (e.g. `width=`, `norm=` for ConvNets).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    canonical = resolve_model_name(name)
    if canonical.startswith("torchvision:"):
        model = _torchvision_model(canonical.split(":", 1)[1], num_classes, channels, **kw)
    elif canonical.startswith("timm:"):
        model = _timm_model(canonical.split(":", 1)[1], num_classes, channels, **kw)
    else:
        model = MODELS.get(canonical)(num_classes=num_classes, image_size=image_size, channels=channels, **kw)
    # Remember what built the net so feature layers and checkpoints can name it later.
    model.ddkit_arch = canonical  # type: ignore[assignment]
    return model


def _torchvision_model(name: str, num_classes: int, channels: int, **kw: Any) -> nn.Module:
    import torchvision

    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kw)
    if channels != 3:
        adapt_input_channels(model, channels, name)
    return model


def _timm_model(name: str, num_classes: int, channels: int, **kw: Any) -> nn.Module:
    if not _timm_available():
        raise DDKitError(f"model 'timm:{name}' needs timm: pip install timm")
    import timm

    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=channels, **kw)


def adapt_input_channels(model: nn.Module, channels: int, name: str = "model") -> nn.Module:
    """Replace the first Conv2d (3 input channels) by a fresh one taking `channels` inputs.

    Works for the resnet/mobilenet/vgg/efficientnet families, whose stem is the first Conv2d in
    module order; raises DDKitError when no such layer exists.
    """
    for path, child in model.named_modules():
        if isinstance(child, nn.Conv2d):  # named_modules is pre-order: the first conv is the stem
            if child.in_channels != 3 or child.groups != 1:
                raise DDKitError(f"cannot adapt {name} to {channels} input channels: its first conv "
                                 f"takes {child.in_channels}; use channels=3 or a ddkit model")
            new = nn.Conv2d(channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                            child.dilation, 1, child.bias is not None, child.padding_mode)
            parent_path, _, attr = path.rpartition(".")
            setattr(model.get_submodule(parent_path) if parent_path else model, attr, new)
            return model
    raise DDKitError(f"cannot adapt {name} to {channels} input channels: no Conv2d found")
