"""Model zoo: every registered name builds and has the right output shape; feature layers are exact."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn

from ddkit.models import (ConvNet, create_model, default_feature_layer, feature_extractor, feature_layers,
                          list_models, resolve_model_name)
from ddkit.models import factory
from ddkit.registry import UnknownNameError
from ddkit.utils import DDKitError

NUM_CLASSES = 10
SIZES = (28, 32, 64)
TORCHVISION = ("resnet18", "mobilenet_v2")
# 224 px only for a few nets (CPU time); the small-input ResNets are meant for ≤ 64 px anyway.
AT_224 = ("ResNet-18-BN", "ResNet-50-BN", "convnet-d5", "convnet-d6-bn", "mlp", "resnet18", "mobilenet_v2")


def _depth(name: str) -> int:
    m = re.match(r"convnet-d(\d)", resolve_model_name(name))
    return int(m.group(1)) if m else 0


# The 50/101-layer small-input nets are size-agnostic (adaptive pooling) and slow to build on CPU:
# 32 and 64 px cover them; every other net runs at 28, 32 and 64 px.
HEAVY = ("resnet50_modified", "resnet101_modified", "ResNet-50-BN")
CASES = [(n, s) for n in list_models() + list(TORCHVISION) for s in ((32, 64) if n in HEAVY else SIZES)]
CASES += [(n, 224) for n in AT_224]


@pytest.mark.parametrize("name,size", CASES, ids=[f"{n}@{s}" for n, s in CASES])
def test_output_shape(name: str, size: int) -> None:
    d = _depth(name)
    if d and size < 2 ** d:  # the feature map would vanish: a clear error, not a crash deep inside
        with pytest.raises(DDKitError, match=f"at least {2 ** d} px"):
            create_model(name, NUM_CLASSES, size)
        return
    torch.manual_seed(0)
    model = create_model(name, NUM_CLASSES, size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, NUM_CLASSES)
    assert torch.isfinite(out).all()


def test_registry_covers_the_peer_names() -> None:
    names = set(list_models())
    assert {f"convnet-d{d}" for d in range(1, 7)} <= names
    assert {"resnet18_modified", "resnet50_modified", "ResNet-18-BN", "mlp"} <= names
    assert "resnet18" in list_models(include_torchvision=True)


@pytest.mark.parametrize("alias,canonical", [
    ("ConvNet-3", "convnet-d3"), ("conv3", "convnet-d3"), ("convnet3", "convnet-d3"), ("ConvNet", "convnet-d3"),
    ("ConvNet-3-BN", "convnet-d3-bn"), ("conv3_bn", "convnet-d3-bn"), ("ConvNet-4", "convnet-d4"),
    ("conv6", "convnet-d6"), ("ConvNet-5-BN", "convnet-d5-bn"), ("ConvNet-3-NN", "convnet-d3-nn"),
    ("resnet18-modified", "resnet18_modified"), ("resnet18_cifar", "resnet18_modified"),
    ("RESNET50_MODIFIED", "resnet50_modified"), ("MLP", "mlp"), ("resnet18", "torchvision:resnet18"),
    ("torchvision:mobilenet_v2", "torchvision:mobilenet_v2"),
])
def test_alias_resolution(alias: str, canonical: str) -> None:
    assert resolve_model_name(alias) == canonical


def test_convnet_structure_and_norms() -> None:
    m = create_model("ConvNet-3", 10, 32)
    assert isinstance(m, ConvNet) and [n for n, _ in m.features.named_children()] == ["block1", "block2", "block3"]
    assert isinstance(m.features.block1[1], nn.GroupNorm) and m.features.block1[1].num_groups == 128
    assert m.classifier.in_features == 128 * 4 * 4  # 2048-d at 32 px (peers.md §1.3)
    assert isinstance(create_model("conv3_bn", 10, 32).features.block2[1], nn.BatchNorm2d)
    assert isinstance(create_model("convnet-d3", 10, 32, norm="none").features.block2[1], nn.Identity)
    assert create_model("conv4", 10, 64, width=32).classifier.in_features == 32 * 4 * 4
    assert create_model("conv6", 10, 128).classifier.in_features == 128 * 2 * 2  # 512-d (Conv6 @128)
    with pytest.raises(ValueError, match="unknown ConvNet norm"):
        create_model("conv3", 10, 32, norm="layer")


def test_resnet_modified_stem() -> None:
    m = create_model("resnet18_modified", 10, 32)
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1) and m.conv1.bias is None
    assert isinstance(m.maxpool, nn.Identity)
    # DD-Ranking's ResNet-18-BN is the plain torchvision net above 64 px.
    assert create_model("ResNet-18-BN", 10, 64).conv1.kernel_size == (3, 3)
    big = create_model("ResNet-18-BN", 10, 224)
    assert big.conv1.kernel_size == (7, 7) and isinstance(big.maxpool, nn.MaxPool2d)
    assert create_model("resnet50_modified", 10, 32).fc.in_features == 2048


@pytest.mark.parametrize("name,size", [("conv3", 32), ("conv3_bn", 28), ("resnet18_modified", 32), ("mlp", 28),
                                       ("resnet18", 32), ("mobilenet_v2", 32), ("ResNet-18-BN", 224)])
def test_single_channel(name: str, size: int) -> None:
    model = create_model(name, 10, size, channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, size, size)).shape == (2, 10)


def test_unknown_name_lists_known() -> None:
    with pytest.raises(UnknownNameError) as e:
        create_model("convnet-d9", 10)
    assert "convnet-d3" in str(e.value) and "resnet18_modified" in str(e.value) and "torchvision" in str(e.value)
    with pytest.raises(UnknownNameError, match="unknown torchvision model 'conv3'"):
        create_model("torchvision:conv3", 10)


def test_timm_missing_is_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(factory, "_timm_available", lambda: False)
    with pytest.raises(DDKitError, match="pip install timm"):
        create_model("timm:resnet18", 10)


def _hooked(model: nn.Module, module: nn.Module, x: torch.Tensor, use_input: bool = False) -> torch.Tensor:
    got = {}
    if use_input:
        h = module.register_forward_pre_hook(lambda m, inp: got.__setitem__("t", inp[0]))
    else:
        h = module.register_forward_hook(lambda m, inp, out: got.__setitem__("t", out))
    with torch.no_grad():
        model(x)
    h.remove()
    return got["t"]


def _no_classifier_call(module: nn.Module, extractor: nn.Module, x: torch.Tensor) -> torch.Tensor:
    calls = []
    h = module.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        out = extractor(x)
    h.remove()
    assert not calls, "feature extractor ran the classifier"
    return out


def test_convnet_features_match_hooks() -> None:
    torch.manual_seed(0)
    m = create_model("conv3", 10, 32, width=16).eval()
    x = torch.randn(2, 3, 32, 32)
    b2 = _no_classifier_call(m.classifier, feature_extractor(m, "block2"), x)
    assert b2.shape == (2, 16, 8, 8) and torch.allclose(b2, _hooked(m, m.features.block2, x))
    pen = _no_classifier_call(m.classifier, feature_extractor(m, "penultimate"), x)
    assert pen.shape == (2, 16 * 16) and torch.allclose(pen, _hooked(m, m.classifier, x, use_input=True))
    assert feature_layers(m) == ["block1", "block2", "block3", "penultimate"]


@pytest.mark.parametrize("name,size,dims", [("resnet18_modified", 32, (128, 16, 16)), ("resnet18", 64, (128, 8, 8))])
def test_resnet_features_match_hooks(name: str, size: int, dims: tuple) -> None:
    torch.manual_seed(0)
    m = create_model(name, 10, size).eval()
    x = torch.randn(2, 3, size, size)
    l2 = _no_classifier_call(m.fc, feature_extractor(m, "layer2"), x)
    assert l2.shape == (2, *dims) and torch.allclose(l2, _hooked(m, m.layer2, x), atol=1e-6)
    pen = _no_classifier_call(m.fc, feature_extractor(m, "penultimate"), x)
    assert pen.shape == (2, 512) and torch.allclose(pen, _hooked(m, m.fc, x, use_input=True), atol=1e-6)


def test_generic_penultimate_and_unknown_layer() -> None:
    m = create_model("mobilenet_v2", 10, 32).eval()
    x = torch.randn(2, 3, 32, 32)
    pen = feature_extractor(m, "penultimate")(x)
    assert torch.allclose(pen, _hooked(m, m.classifier[1], x, use_input=True), atol=1e-6)
    with pytest.raises(ValueError, match="block1, block2, penultimate"):
        feature_extractor(create_model("conv2", 10, 32), "block3")
    with pytest.raises(ValueError, match="layer1, layer2, layer3, layer4, penultimate"):
        feature_extractor(create_model("resnet18_modified", 10, 32), "layer9")


def test_default_feature_layer() -> None:
    assert default_feature_layer("resnet18_modified", 32) == "penultimate"
    assert default_feature_layer("ResNet-18-BN", 64) == "penultimate"
    assert default_feature_layer("resnet18", 224) == "layer2"
    assert default_feature_layer("conv3", 32) == "block3"
    assert default_feature_layer("ConvNet-4-BN", 64) == "block4"
    assert default_feature_layer("mlp", 32) == "penultimate"
    assert default_feature_layer("mobilenet_v2", 224) == "penultimate"


@pytest.mark.parametrize("norm,per_block", [("instancenorm", 4), ("batchnorm", 4), ("none", 3)])
def test_convnet_loads_flat_peer_keys(norm: str, per_block: int) -> None:
    """DC/DD-Ranking ConvNets store a flat `features.<i>` Sequential; ours must load it strictly."""
    torch.manual_seed(0)
    src = create_model("conv2", 10, 16, width=8, norm=norm).eval()
    flat = {}
    for k, v in src.state_dict().items():
        m = re.match(r"features\.block(\d)\.(\d)\.(.+)", k)
        flat[f"features.{(int(m.group(1)) - 1) * per_block + int(m.group(2))}.{m.group(3)}" if m else k] = v
    assert any(k.startswith("features.0.") for k in flat)
    dst = create_model("conv2", 10, 16, width=8, norm=norm).eval()
    dst.load_state_dict(flat, strict=True)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(src(x), dst(x))


def test_torchvision_is_imported_only_for_torchvision_models():
    # Startup: importing the library and building a ConvNet must not pay for torchvision (and torch._dynamo).
    import subprocess
    import sys

    code = ("import sys, ddkit.models, ddkit.augment, ddkit.evaluate\n"
            "ddkit.models.create_model('ConvNet-3', num_classes=10)\n"
            "assert 'torchvision' not in sys.modules, 'torchvision imported'\n"
            "ddkit.models.create_model('resnet18_modified', num_classes=10)\n"
            "assert 'torchvision' in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
