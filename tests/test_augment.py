"""Tests for ddkit.augment: replay, shared vs per-sample draws, hand-checked values, gradients."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ddkit.augment import (Color, Compose, CutMix, Cutout, FactorCrop, Flip, Identity, Mixup, Normalize, OneOf,
                           RandomResizedCrop, Rotate, Scale, ShufflePatches, Translate, cim_condense_aug, dsa,
                           resized_crop, select)

H = 16


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def image(b: int = 1, c: int = 3, h: int = H, w: int = H, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=gen(seed))


# Ops that transform each image on its own (replay on any batch size with a shared draw).
SPATIAL = {
    "flip": lambda: Flip(), "color": lambda: Color(), "translate": lambda: Translate(), "scale": lambda: Scale(),
    "rotate": lambda: Rotate(), "cutout": lambda: Cutout(), "dsa": lambda: dsa(), "cim": lambda: cim_condense_aug(),
    "dsa_single": lambda: dsa(mode="single"), "dsa_multiple": lambda: dsa(mode="multiple"),
    "rrc": lambda: RandomResizedCrop(H), "rrc_small": lambda: RandomResizedCrop(8, antialias=False),
    "factor": lambda: FactorCrop(2), "shuffle": lambda: ShufflePatches(2),
    "norm": lambda: Normalize([0.5] * 3, [0.25] * 3),
}
MIXING = {"cutmix": lambda: CutMix(), "mixup": lambda: Mixup()}
ALL = {**SPATIAL, **MIXING}


@pytest.mark.parametrize("name", sorted(ALL))
def test_replay_identical_and_seeded(name):
    op = ALL[name]()
    x = image(6)
    p = op.sample(6, x.shape, generator=gen(3))
    assert torch.equal(op.apply(x, p), op.apply(x, p))
    q = op.sample(6, x.shape, generator=gen(3))
    assert p.keys() == q.keys() and all(torch.equal(p[k], q[k]) for k in p)
    # __call__ with the same seed reproduces the same output
    assert torch.equal(op(x, generator=gen(5)), op(x, generator=gen(5)))


@pytest.mark.parametrize("name", sorted(SPATIAL))
def test_shared_params_replay_on_any_batch_size(name):
    op = SPATIAL[name]()
    one = image(1)
    p = op.sample(1, one.shape, generator=gen(7))
    a = op.apply(one.expand(7, -1, -1, -1).contiguous(), p)
    b = op.apply(one.expand(3, -1, -1, -1).contiguous(), p)
    assert a.shape[0] == 7 and b.shape[0] == 3
    assert torch.allclose(a, a[:1].expand_as(a)) and torch.allclose(b, a[:3])
    c = op(one.expand(5, -1, -1, -1).contiguous(), generator=gen(2), shared=True)
    assert torch.allclose(c, c[:1].expand_as(c))


@pytest.mark.parametrize("name", sorted(set(SPATIAL) - {"norm"}))
def test_per_sample_params_differ(name):
    op = SPATIAL[name]()
    x = image(1).expand(16, -1, -1, -1).contiguous()
    out = op(x, generator=gen(11))
    assert not torch.allclose(out, out[:1].expand_as(out))


@pytest.mark.parametrize("name", sorted(ALL))
def test_gradients_flow_to_pixels(name):
    op = ALL[name]()
    x = image(4).requires_grad_(True)
    (op(x, generator=gen(4)) * torch.arange(1.0, 5.0).view(4, 1, 1, 1)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_per_sample_params_refuse_other_batch_size():
    op = Translate()
    p = op.sample(4, (H, H), generator=gen())
    with pytest.raises(ValueError, match="drawn for 4"):
        op.apply(image(3), p)
    m = CutMix()
    pm = m.sample(4, (H, H), generator=gen())
    with pytest.raises(ValueError, match="same size"):
        m.apply(image(3), pm)
    with pytest.raises(ValueError):
        Compose([Flip(), CutMix()])


def test_flip_reverses_last_dim():
    x = image(2)
    out = Flip().apply(x, {"flip": torch.tensor([True, False])})
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])


def test_translate_moves_pixels_and_zero_fills():
    x = torch.arange(1.0, 26.0).view(1, 1, 5, 5)
    out = Translate().apply(x, {"ty": torch.tensor([1]), "tx": torch.tensor([-2])})
    # out[i, j] = x[i + 1, j - 2], zero outside
    assert torch.equal(out[0, 0, :4, 2:], x[0, 0, 1:, :3])
    assert (out[0, 0, 4] == 0).all() and (out[0, 0, :, :2] == 0).all()
    # DSA's range: round(0.125·32) = 4 px
    p = Translate().sample(2000, (32, 32), generator=gen())
    assert p["ty"].min() == -4 and p["ty"].max() == 4 and p["tx"].abs().max() == 4


def test_cutout_zeroes_expected_box():
    x = torch.ones(2, 1, 8, 8)
    out = Cutout(0.5).apply(x, {"cy": torch.tensor([0, 5]), "cx": torch.tensor([0, 3])})
    exp = torch.ones(2, 1, 8, 8)
    exp[0, :, 0:2, 0:2] = 0  # side 4 centred at (0,0): rows/cols [-2, 2) clipped
    exp[1, :, 3:7, 1:5] = 0
    assert torch.equal(out, exp)


def test_color_values():
    x = image(1)
    p = {"brightness": torch.tensor([0.3]), "saturation": torch.tensor([1.0]), "contrast": torch.tensor([1.0])}
    assert torch.allclose(Color().apply(x, p), x + 0.3, atol=1e-6)
    p = {"brightness": torch.tensor([0.0]), "saturation": torch.tensor([0.0]), "contrast": torch.tensor([1.0])}
    grey = Color().apply(x, p)
    assert torch.allclose(grey, x.mean(1, keepdim=True).expand_as(x), atol=1e-6)
    p = Color().sample(4000, (H, H), generator=gen())
    assert -0.5 <= p["brightness"].min() < -0.49 and 0.49 < p["brightness"].max() < 0.5
    assert 0 <= p["saturation"].min() and p["saturation"].max() < 2.0
    assert 0.5 <= p["contrast"].min() and p["contrast"].max() < 1.5


def test_affine_ops_exact_cases():
    x = image(1, h=5, w=5)
    one = torch.tensor([1.0])
    assert torch.allclose(Scale().apply(x, {"sx": one, "sy": one}), x, atol=1e-5)
    # sx=2 with align_corners=True: output col j samples input col 2j-2 (zero outside)
    out = Scale().apply(x, {"sx": torch.tensor([2.0]), "sy": one})
    assert torch.allclose(out[..., 1:4], x[..., [0, 2, 4]], atol=1e-5)
    assert out[..., [0, 4]].abs().max() < 1e-6
    out = Rotate().apply(x, {"angle": torch.tensor([math.pi / 2])})
    assert torch.allclose(out, torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5)
    p = Rotate().sample(1000, (H, H), generator=gen())
    assert p["angle"].abs().max() <= math.radians(15) + 1e-6
    p = Scale().sample(1000, (H, H), generator=gen())
    assert p["sx"].min() >= 1 / 1.2 - 1e-6 and p["sy"].max() <= 1.2 + 1e-6


def test_dsa_pipeline_structure():
    aug = dsa()
    assert [type(o).__name__ for o in aug.ops] == ["Flip", "Color", "OneOf", "Cutout"]
    assert [type(o).__name__ for o in aug.ops[2].ops] == ["Translate", "Scale", "Rotate"]
    assert [type(o).__name__ for o in cim_condense_aug().ops] == ["Flip", "Translate", "Cutout"]
    assert isinstance(dsa("none"), Identity)
    with pytest.raises(ValueError, match="unknown DSA token"):
        dsa("color_zoom")
    # OneOf's choice is a param: forcing it selects that op
    x = image(2)
    one_of = OneOf([Flip(1.0), Cutout()])
    p = one_of.sample(2, x.shape, generator=gen())
    p["which"] = torch.tensor([0])
    assert torch.equal(one_of.apply(x, p), x.flip(-1))


def test_factor_crop_forced_cell_is_upsampled_quadrant():
    x = image(3)
    fc = FactorCrop(2)
    out = fc.apply(x, {"cell": torch.tensor([1, -1, 2])})
    top_right = F.interpolate(x[:1, :, : H // 2, H // 2:], size=(H, H), mode="bilinear", align_corners=False)
    bottom_left = F.interpolate(x[2:, :, H // 2:, : H // 2], size=(H, H), mode="bilinear", align_corners=False)
    assert torch.allclose(out[:1], top_right, atol=1e-5)
    assert torch.allclose(out[1], x[1], atol=1e-5)
    assert torch.allclose(out[2:], bottom_left, atol=1e-5)
    cells = fc.sample(4000, (H, H), generator=gen())["cell"]
    assert abs((cells == -1).float().mean() - 0.25) < 0.03 and set(cells.tolist()) == {-1, 0, 1, 2, 3}


def test_shuffle_patches_permutes_strips():
    x = torch.arange(1.0, 8 * 8 + 1).view(1, 1, 8, 8).expand(5, 3, 8, 8).contiguous()
    sp = ShufflePatches(2)
    out = sp(x, generator=gen(1))
    assert torch.equal(out.flatten(1).sort(1).values, x.flatten(1).sort(1).values)
    for img in out[:, 0]:  # each 4×4 block is one of the original blocks
        blocks = {tuple(img[i:i + 4, j:j + 4].flatten().tolist()) for i in (0, 4) for j in (0, 4)}
        orig = {tuple(x[0, 0, i:i + 4, j:j + 4].flatten().tolist()) for i in (0, 4) for j in (0, 4)}
        assert blocks == orig
    # W=7, f=2: strips [0:3] and [3:7]; swapping puts the wide one first (RDED: last strip takes the rest)
    y = torch.arange(7.0).view(1, 1, 1, 7).expand(1, 1, 7, 7)
    out = sp.apply(y, {"col_perm": torch.tensor([[1, 0]]), "row_perm": torch.tensor([[0, 1]])})
    assert out[0, 0, 0].tolist() == [3, 4, 5, 6, 0, 1, 2]


def test_random_resized_crop_boxes_and_resize():
    rrc = RandomResizedCrop(8, scale=(0.25, 1.0))
    box = rrc.sample(500, (H, 2 * H), generator=gen())["box"]
    top, left, h, w = box.unbind(-1)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= H).all() and (left + w <= 2 * H).all()
    frac = h * w / (H * 2 * H)
    assert frac.min() >= 0.2 and (w / h).min() >= 0.65 and (w / h).max() <= 1.5  # integer rounding
    # impossible scale -> torchvision's centre-crop fallback (whole image for a square input)
    fb = RandomResizedCrop(8, scale=(2.0, 3.0)).sample(4, (H, H), generator=gen())["box"]
    assert torch.equal(fb, torch.tensor([[0.0, 0.0, H, H]] * 4))
    x = image(2)
    b = torch.tensor([[2.0, 3.0, 8.0, 6.0], [0.0, 0.0, H, H]])
    out = resized_crop(x, b, H)
    ref = F.interpolate(x[:1, :, 2:10, 3:9], size=(H, H), mode="bilinear", align_corners=False)
    assert torch.allclose(out[:1], ref, atol=1e-5) and torch.allclose(out[1], x[1], atol=1e-5)
    assert torch.allclose(resized_crop(x, b[1:], H, antialias=True), x, atol=1e-5)
    small = resized_crop(x, b[1:], H // 2, antialias=True)  # 2× downsample = 2×2 box average
    assert torch.allclose(small, F.avg_pool2d(x, 2), atol=1e-5)


def test_cutmix_targets_and_area():
    x = image(6)
    cm = CutMix(1.0)
    p = cm.sample(6, x.shape, generator=gen(2))
    y1, x1, y2, x2 = p["box"][0].tolist()
    assert math.isclose(float(p["lam"]), 1 - (y2 - y1) * (x2 - x1) / (H * H), rel_tol=1e-6)
    out = cm.apply(x, p)
    m = torch.zeros(H, H, dtype=torch.bool)
    m[y1:y2, x1:x2] = True
    assert torch.equal(out[:, :, m], x[p["perm"]][:, :, m]) and torch.equal(out[:, :, ~m], x[:, :, ~m])
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    t = cm.mix_targets(labels, p, num_classes=5)
    assert torch.allclose(t.sum(1), torch.ones(6))
    onehot = F.one_hot(labels, 5).float()
    lam = float(p["lam"])
    assert torch.allclose(t, lam * onehot + (1 - lam) * onehot[p["perm"]], atol=1e-6)
    lams = torch.tensor([float(cm.sample(2, (H, H), generator=gen(s))["lam"]) for s in range(200)])
    # clipping at the border only shrinks boxes, so the adjusted lam is biased above Beta(1,1)'s 1/2
    assert 0 <= lams.min() < 0.35 and 0.5 < lams.mean() < 0.8 and lams.max() <= 1


def test_mixup_values():
    x = image(4)
    mu = Mixup(0.8)
    p = mu.sample(4, x.shape, generator=gen(5))
    lam = float(p["lam"])
    assert 0 <= lam <= 1
    assert torch.allclose(mu.apply(x, p), lam * x + (1 - lam) * x[p["perm"]], atol=1e-6)
    soft = torch.softmax(torch.randn(4, 7, generator=gen()), 1)
    assert torch.allclose(mu.mix_targets(soft, p).sum(1), torch.ones(4), atol=1e-6)


def test_select_and_normalize():
    op = dsa()
    x = image(6)
    p = op.sample(6, x.shape, generator=gen(9))
    idx = torch.tensor([4, 1])
    assert torch.allclose(op.apply(x[idx], select(p, idx)), op.apply(x, p)[idx], atol=1e-6)
    n = Normalize([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    assert torch.allclose(n.apply(x, {}), (x - 0.5) / 0.25)


def test_bfloat16_input():
    x = image(2).bfloat16()
    out = dsa()(x, generator=gen())
    assert out.dtype == torch.bfloat16 and out.shape == x.shape


@pytest.mark.parametrize("name", sorted(SPATIAL))
@pytest.mark.parametrize("channels_last", [False, True])
def test_ops_keep_the_input_layout(name, channels_last):
    # One layout per network: an augmentation must not switch NCHW views to channels_last (or back).
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = image(4).contiguous(memory_format=fmt)
    for seed in range(6):  # OneOf picks differ by seed: cover the translate branch
        out = SPATIAL[name]()(x, generator=gen(seed))
        assert out.is_contiguous(memory_format=fmt), (name, seed, out.stride())


def test_translate_same_values_in_either_layout():
    x = image(3)
    p = Translate().sample(3, x.shape, generator=gen(2))
    a = Translate().apply(x, p)
    b = Translate().apply(x.contiguous(memory_format=torch.channels_last), p)
    assert a.is_contiguous() and torch.equal(a, b)
