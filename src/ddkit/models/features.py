"""Feature layers by name: a module that runs a network only up to one layer.

Feature matching (CIM, SRe2L-style losses) needs one intermediate tensor per forward; computing
the rest of the net would waste time and memory. For ddkit's ConvNet/MLP we build a truncated
Sequential that shares the model's modules; for everything else torchvision's
`create_feature_extractor` traces the net with torch.fx and prunes the graph after the node.

Layer names: ConvNet `block1` … `blockD` (block output after pooling) and `penultimate` (flattened
last block = classifier input); ResNets `layer1` … `layer4` and `penultimate` (the globally pooled
512/2048-d vector, flattened); any other net `penultimate` or a module / torch.fx node name.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn as nn

from ddkit.models.convnet import MLP, ConvNet
from ddkit.models.factory import resolve_model_name

_SKIP = (nn.Dropout, nn.Identity)


class _Embed(nn.Module):
    """Calls `model.embed` (flattened classifier input) without running the classifier."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.embed(x)


class _Node(nn.Module):
    """Wraps a torchvision feature-extractor GraphModule so it returns one tensor, not a dict."""

    def __init__(self, graph_module: nn.Module, penultimate: bool) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.penultimate = penultimate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.graph_module(x)["out"]
        return torch.flatten(out, 1) if self.penultimate else out


def _is_resnet(model: nn.Module) -> bool:
    import torchvision

    return isinstance(model, torchvision.models.ResNet)


def _eval_nodes(model: nn.Module) -> List[str]:
    from torchvision.models.feature_extraction import get_graph_node_names

    return get_graph_node_names(model)[1]


def _penultimate_node(model: nn.Module, nodes: List[str]) -> str:
    """The node feeding the last nn.Linear, skipping dropout/identity nodes in between."""
    def module_at(name: str):
        try:
            return model.get_submodule(name)
        except AttributeError:
            return None

    linear = [i for i, n in enumerate(nodes) if isinstance(module_at(n), nn.Linear)]
    if not linear:
        raise ValueError(f"{type(model).__name__} has no final nn.Linear, so 'penultimate' is undefined; "
                         f"name a node instead")
    i = linear[-1] - 1
    while i > 0 and isinstance(module_at(nodes[i]), _SKIP):
        i -= 1
    return nodes[i]


def feature_layers(model: nn.Module) -> List[str]:
    """The layer names `feature_extractor` documents for `model` (fx nets accept any node too)."""
    if isinstance(model, (ConvNet, MLP)):
        return model.feature_layers()
    if _is_resnet(model):
        return ["layer1", "layer2", "layer3", "layer4", "penultimate"]
    return ["penultimate"]


def feature_extractor(model: nn.Module, layer: str) -> nn.Module:
    """A module computing `model` only up to `layer` and returning that layer's output tensor.

    The extractor shares the model's parameters (no copy), so it follows later weight updates.
    Unknown layer names raise ValueError listing the valid ones.
    """
    valid = feature_layers(model)
    if isinstance(model, (ConvNet, MLP)):
        if layer not in valid:
            raise ValueError(f"unknown feature layer {layer!r} for {type(model).__name__}; valid: {', '.join(valid)}")
        if layer == "penultimate":
            return _Embed(model)
        k = int(layer[len("block"):])
        return nn.Sequential(*list(model.features.children())[:k])

    from torchvision.models.feature_extraction import create_feature_extractor

    nodes = _eval_nodes(model)
    if layer == "penultimate":
        node = "flatten" if _is_resnet(model) else _penultimate_node(model, nodes)
    elif layer in nodes or layer in dict(model.named_modules()):
        node = layer  # a module name selects its last node (torchvision's prefix rule)
    else:
        raise ValueError(f"unknown feature layer {layer!r} for {type(model).__name__}; valid: "
                         f"{', '.join(valid)} (or any module / torch.fx node name of this model)")
    gm = create_feature_extractor(model, return_nodes={node: "out"})
    wrapper = _Node(gm, penultimate=(layer == "penultimate"))
    wrapper.train(model.training)
    return wrapper


def default_feature_layer(model_name: str, image_size: int) -> str:
    """The layer CIM matches for this net (peers.md §8 item 2).

    `penultimate` for small-input ResNets (≤ 64 px), `layer2` for 224-px-style ResNets, the last
    block for ConvNets, `penultimate` otherwise.
    """
    canonical = resolve_model_name(model_name)
    base = canonical.split(":", 1)[-1].lower()
    if base.startswith("convnet-d"):
        return f"block{int(base[len('convnet-d')])}"
    if "resnet" in base:
        return "penultimate" if image_size <= 64 else "layer2"
    return "penultimate"


def penultimate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The flattened classifier input of `model` for `x`, without running the classifier.

    ConvNet/MLP: their `embed`. torchvision ResNets: the stem, the four stages and the global pool run module by
    module (no fx tracing, so a net rebuilt every iteration — DM draws a fresh one — pays nothing extra).
    Anything else: the traced `feature_extractor(model, "penultimate")`.
    """
    fn = getattr(model, "embed", None)
    if fn is not None:
        return fn(x)
    if _is_resnet(model):
        m = model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        x = m.layer4(m.layer3(m.layer2(m.layer1(x))))
        return torch.flatten(m.avgpool(x), 1)
    return feature_extractor(model, "penultimate")(x)

