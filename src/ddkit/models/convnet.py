"""ConvNet-D (the DC/MTT/DD-Ranking/CIM benchmark net) and a small MLP.

ConvNet-D: D blocks of [Conv3×3 (width 128, pad 1) → norm → ReLU → AvgPool 2×2], then
flatten → Linear(width·(H/2^D)²). "instancenorm" is GroupNorm(width, width, affine=True), exactly
as DC/MTT/DD-Ranking implement it, so their checkpoints and numbers carry over.

The blocks are named (`features.block1` … `features.blockD`) so feature layers can be addressed
by name. Peer checkpoints store the same layers as a flat Sequential (`features.0.weight`, …,
DC/DD-Ranking) or a ModuleDict (`layers.conv.0.weight`, …, CIM/RDED); a load-state-dict pre-hook
renames those keys, so their ConvNet checkpoints load with a strict `load_state_dict`.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any, Dict, List

import torch
import torch.nn as nn

from ddkit.models.factory import register_model
from ddkit.utils import DDKitError

NORMS = ("instancenorm", "batchnorm", "none")
_NORM_ALIASES = {"instance": "instancenorm", "in": "instancenorm", "instancenorm": "instancenorm",
                 "batch": "batchnorm", "bn": "batchnorm", "batchnorm": "batchnorm",
                 "none": "none", "nn": "none", "no": "none"}


def _norm_layer(norm: str, width: int) -> nn.Module:
    if norm == "instancenorm":
        return nn.GroupNorm(width, width, affine=True)
    if norm == "batchnorm":
        return nn.BatchNorm2d(width)
    return nn.Identity()


class ConvNet(nn.Module):
    """ConvNet-D for `channels`×`image_size`² inputs.

    Attributes:
        features: nn.Sequential of blocks `block1` … `blockD` (each ends with the 2×2 pooling).
        classifier: the final nn.Linear; its input is the "penultimate" feature (see `embed`).
    """

    def __init__(self, num_classes: int, depth: int = 3, width: int = 128, norm: str = "instancenorm",
                 image_size: int = 32, channels: int = 3) -> None:
        super().__init__()
        norm_key = _NORM_ALIASES.get(str(norm).lower())
        if norm_key is None:
            raise ValueError(f"unknown ConvNet norm {norm!r}; choose one of {', '.join(NORMS)}")
        side = image_size // 2 ** depth
        if side < 1:
            raise DDKitError(f"ConvNet-D{depth} needs inputs of at least {2 ** depth} px "
                             f"({depth} halvings), got {image_size} px; use a smaller depth")
        self.depth, self.width, self.norm, self.image_size = depth, width, norm_key, image_size
        blocks: "OrderedDict[str, nn.Module]" = OrderedDict()
        in_ch = channels
        for d in range(1, depth + 1):
            blocks[f"block{d}"] = nn.Sequential(
                nn.Conv2d(in_ch, width, kernel_size=3, padding=1),
                _norm_layer(norm_key, width),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(kernel_size=2, stride=2),
            )
            in_ch = width
        self.features = nn.Sequential(blocks)
        self.feature_dim = width * side * side
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        self.register_load_state_dict_pre_hook(_rename_flat_keys)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The flattened output of the last block (the classifier's input, "penultimate")."""
        return torch.flatten(self.features(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))

    def feature_layers(self) -> List[str]:
        """Names accepted by `ddkit.models.feature_extractor` for this net."""
        return [f"block{d}" for d in range(1, self.depth + 1)] + ["penultimate"]


_FLAT = re.compile(r"^features\.(\d+)\.(.+)$")
_RDED = re.compile(r"^layers\.(conv|norm)\.(\d+)\.(.+)$")


def _rename_flat_keys(module: ConvNet, state_dict: Dict[str, Any], prefix: str, *args: Any) -> None:
    """Map peer ConvNet keys to ours (`features.block<d>.<j>.<p>`), in place.

    DC/MTT/DD-Ranking: a flat Sequential `features.<i>.<p>` with 4 modules per block (conv, norm,
    act, pool), or 3 when norm is none. CIM/RDED: a ModuleDict `layers.conv.<d>` / `layers.norm.<d>`.
    """
    per_block = 3 if module.norm == "none" else 4
    for key in [k for k in state_dict if k.startswith(prefix)]:
        local = key[len(prefix):]
        m = _FLAT.match(local)
        if m is not None:
            i, rest = int(m.group(1)), m.group(2)
            state_dict[f"{prefix}features.block{i // per_block + 1}.{i % per_block}.{rest}"] = state_dict.pop(key)
            continue
        m = _RDED.match(local)
        if m is not None:
            j, d, rest = (0 if m.group(1) == "conv" else 1), int(m.group(2)), m.group(3)
            state_dict[f"{prefix}features.block{d + 1}.{j}.{rest}"] = state_dict.pop(key)


def _convnet_builder(depth: int, norm: str):
    def build(num_classes: int, image_size: int = 32, channels: int = 3, **kw: Any) -> ConvNet:
        kw.setdefault("norm", norm)
        return ConvNet(num_classes, depth=depth, image_size=image_size, channels=channels, **kw)

    build.__doc__ = f"ConvNet-D{depth} with {norm} (kw: width=128, norm=...)."
    return build


for _d in range(1, 7):
    # Canonical names follow DC (`ConvNetD3`); aliases cover DD-Ranking (`ConvNet-3[-BN]`) and CIM (`conv3`).
    register_model(f"convnet-d{_d}", aliases=(f"ConvNet-{_d}", f"conv{_d}", f"convnet{_d}", f"convnet-d{_d}-in",
                                              f"ConvNet-{_d}-IN", f"convnetd{_d}")
                   + (("ConvNet",) if _d == 3 else ()))(_convnet_builder(_d, "instancenorm"))
    register_model(f"convnet-d{_d}-bn", aliases=(f"ConvNet-{_d}-BN", f"conv{_d}_bn", f"convnet{_d}-bn",
                                                 f"convnetd{_d}-bn")
                   + (("ConvNet-BN",) if _d == 3 else ()))(_convnet_builder(_d, "batchnorm"))
    register_model(f"convnet-d{_d}-nn", aliases=(f"ConvNet-{_d}-NN", f"conv{_d}_nn", f"convnet{_d}-nn",
                                                 f"convnetd{_d}-nn"))(_convnet_builder(_d, "none"))


class MLP(nn.Module):
    """flatten → Linear(C·H·W, 128) → ReLU → Linear(128, 128) → ReLU → Linear(128, classes) (DC's MLP)."""

    def __init__(self, num_classes: int, image_size: int = 32, channels: int = 3, width: int = 128) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Flatten(), nn.Linear(channels * image_size * image_size, width), nn.ReLU(inplace=True),
            nn.Linear(width, width), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(width, num_classes)
        self.feature_dim = width

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The 128-d hidden vector feeding the classifier ("penultimate")."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def feature_layers(self) -> List[str]:
        return ["penultimate"]


@register_model("mlp", aliases=("MLP",))
def _mlp(num_classes: int, image_size: int = 32, channels: int = 3, **kw: Any) -> MLP:
    return MLP(num_classes, image_size=image_size, channels=channels, **kw)
