"""RDED: patch choice with a stub teacher, zero-padding in normalised space, stitching layout, errors, end to end."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

import ddkit.methods.rded  # noqa: F401  (registers rded until the lead adds it to the built-in list)
from ddkit.augment import RandomResizedCrop, resized_crop
from ddkit.data.base import ImageDataset
from ddkit.methods.base import create_method
from ddkit.methods.rded import PatchScorer, RDEDConfig, best_patches, resolve_factor, stitch
from ddkit.models import create_model
from ddkit.teachers import Teacher
from ddkit.utils import DDKitError, make_generator

from tests.conftest import make_toy


class Bright(nn.Module):
    """Two-class stub: z = (a·m, −a·m) with m the mean of the (normalised, padded) input, so class 0's CE
    falls with brightness (it prefers bright patches) and class 1's rises (it prefers dark ones)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(3.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.flatten(1).mean(1)
        return torch.stack([self.a * m, -self.a * m], 1)


def _stub(ds: ImageDataset) -> Teacher:
    return Teacher(Bright(), "stub", ds.classes, ds.mean, ds.std, ds.image_size, ds.channels)


def _constant_set(values, size=8) -> ImageDataset:
    """Class 0 and class 1 each get one constant-brightness image per value."""
    v = torch.tensor(values * 2, dtype=torch.float32)
    images = v.view(-1, 1, 1, 1).expand(len(v), 3, size, size).round().to(torch.uint8).contiguous()
    labels = torch.arange(2).repeat_interleave(len(values))
    return ImageDataset(images, labels, ["bright", "dark"], (0.5,) * 3, (0.25,) * 3, name="const")


def _quiet(fn, *a, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # toy classes are smaller than the 300-image pool
        return fn(*a, **kw)


def test_stub_teacher_picks_brightest_for_class0_darkest_for_class1():
    values = [10, 200, 90, 250, 40, 120]
    ds = _constant_set(values)
    # one full-image crop per image (scale 1, square): the choice is purely between images
    out = _quiet(create_method("rded", ipc=2, factor=1, num_crop=1, scale_min=1.0), ds, _stub(ds),
                 device="cpu", progress=False)
    n = len(values)
    assert out.meta["source_indices"] == [3, 1, n + 0, n + 4]  # 250, 200 | 10, 40, in rank order
    assert out.labels.tolist() == [0, 0, 1, 1]
    torch.testing.assert_close(out.images[:, 0, 0, 0] * 255, torch.tensor([250., 200., 10., 40.]), atol=1e-3, rtol=0)


def test_best_patch_is_the_lowest_ce_crop():
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, 16).view(1, 1, 1, 16).expand(3, 3, 16, 16)  # brightness grows to the right
    pool = (ramp + 0.05 * torch.rand(3, 3, 16, 16, generator=g)).clamp(0, 1)
    ds = _constant_set([0], size=16)
    scorer = PatchScorer(_stub(ds), torch.device("cpu"), max_batch=5)  # chunks split the 18 crops unevenly
    patches, ce, boxes = best_patches(pool, 0, scorer, num_crop=6, patch=8, scale_min=0.08,
                                      generator=make_generator(1, "crop"))
    # replay the same draw and brute-force every crop
    rrc = RandomResizedCrop(8, scale=(0.08, 1.0), ratio=(1.0, 1.0), antialias=True)
    all_boxes = rrc.sample(18, pool.shape, generator=make_generator(1, "crop"))["box"]
    crops = resized_crop(pool.repeat_interleave(6, 0), all_boxes, 8, antialias=True)
    all_ce = scorer.ce(crops, 0).view(3, 6)
    best = all_ce.argmin(1)
    torch.testing.assert_close(ce, all_ce.min(1).values)
    torch.testing.assert_close(boxes, all_boxes.view(3, 6, 4)[torch.arange(3), best])
    torch.testing.assert_close(patches, crops.view(3, 6, 3, 8, 8)[torch.arange(3), best])
    # the stub prefers brightness: the winner is the brightest crop of each image
    assert torch.equal(best, crops.view(3, 6, -1).mean(-1).argmax(1))


def test_padding_is_zero_in_normalised_space():
    ds = _constant_set([0], size=8)
    patch = torch.ones(1, 3, 4, 4)
    x = PatchScorer(_stub(ds), torch.device("cpu")).pad(patch)
    assert x.shape == (1, 3, 8, 8)
    assert torch.all(x[:, :, 2:6, 2:6] == 2.0)  # (1 − 0.5) / 0.25, centred
    inner = torch.zeros(8, 8, dtype=torch.bool)
    inner[2:6, 2:6] = True
    assert torch.all(x[:, :, ~inner] == 0)
    y = PatchScorer(_stub(ds), torch.device("cpu"), normalization="imagenet").pad(patch)
    assert y[0, 0, 3, 3].item() == pytest.approx((1 - 0.485) / 0.229, rel=1e-5)
    assert y[0, 2, 0, 0].item() == 0.0


@pytest.mark.parametrize("factor,size", [(2, 8), (3, 8), (1, 8)])
def test_stitch_layout_matches_cim(factor, size):
    ipc = 3
    p = size // factor
    ranked = torch.arange(factor * factor * ipc, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, p, p)
    out = stitch(ranked, factor, size)
    assert out.shape == (ipc, 3, size, size)
    from ddkit.methods.lic_ops import cell_bounds
    bounds = cell_bounds(size, factor)
    for m in range(ipc):
        for i, (r0, rh) in enumerate(bounds):
            for j, (c0, cw) in enumerate(bounds):
                k = i * factor + j
                assert torch.all(out[m, :, r0:r0 + rh, c0:c0 + cw] == k * ipc + m)


def test_pool_smaller_than_ipc_f2_names_the_class():
    ds = make_toy(10, 3, 16)
    keep = torch.cat([ds.class_indices(0), ds.class_indices(1)[:3], ds.class_indices(2)])
    small = ds.subset(keep)
    net = create_model("convnet-d1", 3, 16, width=8)
    t = Teacher(net, "convnet-d1", ds.classes, ds.mean, ds.std, 16, arch_kw={"width": 8})
    with pytest.raises(DDKitError, match="class 1 \\('class1'\\).*4 are needed"):
        _quiet(create_method("rded", ipc=1, factor=2), small, t, device="cpu", progress=False)


def test_config_checks_and_auto_factor():
    assert resolve_factor(0, 32) == 1 and resolve_factor(0, 64) == 1 and resolve_factor(0, 224) == 2
    assert resolve_factor(3, 32) == 3
    with pytest.raises(DDKitError, match="normalization"):
        RDEDConfig(normalization="cifar")
    with pytest.raises(DDKitError, match="num-crop"):
        RDEDConfig(num_crop=0)


def test_end_to_end_deterministic_with_stored_labels():
    ds = make_toy(12, 3, 16)
    torch.manual_seed(0)
    net = create_model("convnet-d1", 3, 16, width=8)
    t = Teacher(net, "convnet-d1", ds.classes, ds.mean, ds.std, 16, arch_kw={"width": 8})
    m = create_method("rded", ipc=2, factor=2, store_labels=True)
    with pytest.warns(UserWarning, match="fewer than --pool-size 300"):
        a = m(ds, t, device="cpu", progress=False)
    b = _quiet(m, ds, t, device="cpu", progress=False)
    assert a.images.shape == (6, 3, 16, 16) and a.labels.tolist() == [0, 0, 1, 1, 2, 2]
    torch.testing.assert_close(a.images, b.images, atol=0, rtol=0)
    assert float(a.images.min()) >= 0 and float(a.images.max()) <= 1
    src = torch.tensor(a.meta["source_indices"])
    assert len(src) == 3 * 2 * 4 and len(set(src.tolist())) == len(src)
    assert ds.labels[src].tolist() == [c for c in range(3) for _ in range(8)]
    assert a.soft["soft"].shape == (6, 3)
    torch.testing.assert_close(a.soft["soft"], t(a.images).float(), atol=1e-5, rtol=1e-5)
    assert a.meta["factor"] == 2 and a.meta["intended_recipe"] == "rded"
    other = _quiet(create_method("rded", ipc=2, factor=2, seed=1), ds, t, device="cpu", progress=False)
    assert not torch.equal(other.images, a.images)


def test_one_class_alone_is_bit_identical_to_the_full_run():
    ds = make_toy(12, 3, 16)
    torch.manual_seed(0)
    t = Teacher(create_model("convnet-d1", 3, 16, width=8), "convnet-d1", ds.classes, ds.mean, ds.std, 16,
                arch_kw={"width": 8})
    m = create_method("rded", ipc=1, factor=2)
    full = _quiet(m, ds, t, device="cpu", progress=False)
    got = _quiet(lambda: list(m.run(ds, t, classes=[1], device="cpu", progress=False)))
    part = _quiet(m, ds, t, device="cpu", progress=False, classes=[1])
    assert part.labels.tolist() == [1] and [r.cls for r in got] == [1]
    torch.testing.assert_close(part.images, full.images[1:2], atol=0, rtol=0)
    assert got[0].extras["source_index"].tolist() == full.meta["source_indices"][4:8]
