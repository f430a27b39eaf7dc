"""bench/parity/selection_common.py (issue #27, the RDED and CIM/LIC pairs): the teacher converter puts ddkit's
ConvNet-3-BN weights into the RDED/CIM ConvNet layout without changing a logit, and the input converters are
exact. No official code is imported: the RDED/CIM layout is checked through ddkit's own reader of their
checkpoints (teachers.io) and a stand-in module with their layer names."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from ddkit.models import create_model
from ddkit.teachers.io import load_teacher
from tests.conftest import load_bench_script

sel = load_bench_script("parity/selection_common.py")


class LayoutConvNet(nn.Module):
    """The RDED/CIM ConvNet's naming (layers.conv/norm/act/pool, classifier), conv -> BN -> ReLU -> avg-pool."""

    def __init__(self, depth: int = 3, width: int = 16, classes: int = 10, size: int = 32) -> None:
        super().__init__()
        convs = [nn.Conv2d(3 if d == 0 else width, width, 3, padding=1) for d in range(depth)]
        self.layers = nn.ModuleDict({"conv": nn.ModuleList(convs),
                                     "norm": nn.ModuleList(nn.BatchNorm2d(width) for _ in range(depth))})
        self.classifier = nn.Linear(width * (size >> depth) ** 2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, norm in zip(self.layers["conv"], self.layers["norm"]):
            x = nn.functional.avg_pool2d(torch.relu(norm(conv(x))), 2)
        return self.classifier(x.flatten(1))


def _ours(width: int = 16) -> nn.Module:
    torch.manual_seed(0)
    net = create_model("convnet-d3-bn", num_classes=10, image_size=32, width=width)
    for m in net.modules():  # running statistics off 0/1, so a dropped or swapped BN buffer shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_converter_keeps_the_logits():
    ours = _ours()
    theirs = LayoutConvNet()
    theirs.load_state_dict(sel.to_official_state(ours.state_dict()), strict=True)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(theirs.eval()(x), ours(x))


def test_converted_file_reads_back_through_ddkit_loader(tmp_path):
    """ddkit reads the CIM/RDED `{dataset}_{model}.pth` layout ("model" key); the converted file round-trips."""
    ours = _ours()
    path = tmp_path / "cifar10_conv3.pth"
    torch.save({"model": sel.to_official_state(ours.state_dict())}, path)
    back = load_teacher(str(path), num_classes=10, image_size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back.model(x), ours(x))


def test_converter_refuses_other_architectures():
    with pytest.raises(ValueError, match="not a ddkit ConvNet key"):
        sel.to_official_state({"conv1.weight": torch.zeros(1)})


def test_input_converters_are_exact():
    """Renormalise (a wrapper) and renormalise_first_conv (a pre-hook, before the zero padding) both give the
    network's logits on the input in its own normalisation."""
    net = LayoutConvNet().eval()
    src, dst = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0.49, 0.48, 0.45), (0.245, 0.243, 0.261))
    pix = torch.rand(4, 3, 32, 32)
    own = (pix - torch.tensor(dst[0]).view(1, 3, 1, 1)) / torch.tensor(dst[1]).view(1, 3, 1, 1)
    theirs = (pix - torch.tensor(src[0]).view(1, 3, 1, 1)) / torch.tensor(src[1]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = net(own)
        torch.testing.assert_close(sel.Renormalise(net, *src, *dst)(theirs), want)
        assert (net(theirs) - want).abs().max() > 1e-3  # without a converter the logits do differ
        sel.renormalise_first_conv(net, net.layers["conv"][0], *src, *dst)
        torch.testing.assert_close(net(theirs), want)
