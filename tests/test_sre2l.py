"""SRe2L / CDA / DWA: the BN term by hand, CDA's schedule, DWA's weight move, recover, class independence."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.conftest import make_toy
from ddkit.methods.recover import (BNHooks, RecoverSpec, adjust_weights, apply_views, bn_loss, cda_min_scale,
                                   group_stats, recover, require_bn, restore_weights, valid_bounds)
from ddkit.models import create_model
from ddkit.teachers import Teacher
from ddkit.utils import DDKitError


class TinyBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 5, 3, padding=1), nn.BatchNorm2d(5)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        h = F.relu(self.b1(self.c1(x)))
        h = F.relu(self.b2(self.c2(h)))
        return self.fc(h.mean((2, 3)))


def _tiny() -> TinyBN:
    torch.manual_seed(0)
    net = TinyBN()
    for bn in (net.b1, net.b2):
        bn.running_mean.copy_(torch.randn(bn.num_features))
        bn.running_var.copy_(torch.rand(bn.num_features) + 0.5)
    return net.eval()


def test_bn_term_equals_hand_computation():
    net = _tiny()
    x = torch.randn(6, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    with BNHooks(net) as hooks:
        hooks.groups = 2
        net(x)
        got = bn_loss(hooks.stats, hooks.running_targets(2), first_multiplier=10.0, r_var=3.0)
    # by hand: inputs of each BN, statistics over the 3 rows of each group and all positions
    a1 = net.c1(x)
    a2 = net.c2(F.relu(net.b1(a1)))
    want = []
    for g in range(2):
        total = 0.0
        for k, (a, bn) in enumerate(((a1, net.b1), (a2, net.b2))):
            v = a[3 * g:3 * g + 3].permute(1, 0, 2, 3).reshape(a.shape[1], -1)
            mu, var = v.mean(1), v.var(1, unbiased=False)
            term = torch.sqrt(((mu - bn.running_mean) ** 2).sum()) + 3.0 * torch.sqrt(((var - bn.running_var) ** 2).sum())
            total = total + (10.0 if k == 0 else 1.0) * term
        want.append(total)
    assert torch.allclose(got, torch.stack(want), rtol=1e-5, atol=1e-5)


def test_group_stats_biased_variance():
    x = torch.randn(4, 2, 3, 3)
    m, v = group_stats(x, 2)
    ref = x[2:].permute(1, 0, 2, 3).reshape(2, -1)
    assert torch.allclose(m[1], ref.mean(1), atol=1e-6) and torch.allclose(v[1], ref.var(1, unbiased=False), atol=1e-6)


@pytest.mark.parametrize("it,total,milestone,mode,want", [
    (0, 100, 1.0, "cosine", 1.0),
    (50, 100, 1.0, "cosine", 0.08 + 0.92 * (1 + math.cos(math.pi * 0.5)) / 2),  # 0.54
    (75, 100, 1.0, "cosine", 0.08 + 0.92 * (1 + math.cos(math.pi * 0.75)) / 2),
    (25, 100, 1.0, "linear", 0.08 + 0.92 * 0.75),
    (10, 100, 0.5, "step", 1.0),
    (60, 100, 0.5, "step", 0.08),
    (60, 100, 0.5, "cosine", 0.08),
    (0, 100, 0.0, "cosine", 0.08),                    # milestone 0 (argparse default): curriculum off
])
def test_cda_schedule_matches_official_rule(it, total, milestone, mode, want):
    assert cda_min_scale(it, total, milestone, mode) == pytest.approx(want, abs=1e-12)


def test_apply_views_roll_and_flip_per_group():
    x = torch.arange(2 * 1 * 4 * 5, dtype=torch.float32).reshape(2, 1, 4, 5)
    views = {"roll": torch.tensor([[1, 2], [3, 0]]), "flip": torch.tensor([False, True])}
    out = apply_views(x, views, groups=2)
    assert torch.equal(out[0], torch.roll(x[0], shifts=(1, 2), dims=(1, 2)))
    assert torch.equal(out[1], torch.roll(x[1].flip(2), shifts=(3, 0), dims=(1, 2)))


def test_teacher_without_batchnorm_is_refused():
    net = create_model("ConvNet-3", num_classes=4, image_size=8, width=8)
    with pytest.raises(DDKitError) as e:
        require_bn(net, "sre2l", "convnet-d3")
    msg = str(e.value)
    assert "\n" not in msg and "ConvNet-3-BN" in msg and "resnet18_modified" in msg
    assert "ddkit teacher train --model ConvNet-3-BN" in msg
    require_bn(create_model("ConvNet-3-BN", num_classes=4, image_size=8, width=8))  # no error


def _bn_teacher(k: int = 4, size: int = 8) -> nn.Module:
    torch.manual_seed(0)
    net = create_model("convnet-d1-bn", num_classes=k, image_size=size, width=8)
    net.train()
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(5):
            net(torch.randn(32, 3, size, size))
        net.classifier.weight.mul_(10.0)  # a confident teacher: a random net's logits are nearly flat
    return net.eval().requires_grad_(False)


def test_recover_without_bn_term_drives_ce_to_zero():
    net = _bn_teacher()
    y = torch.arange(4).repeat_interleave(2)
    x0 = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    spec = RecoverSpec(iterations=150, lr=0.1, r_bn=0.0, jitter=1)
    gens = [torch.Generator().manual_seed(c) for c in range(4)]
    with BNHooks(net) as h:
        tg = h.running_targets(4)
    lo, hi = valid_bounds([0.5] * 3, [0.25] * 3)
    x, curves = recover(net, x0, y, 4, tg, gens, spec, (lo, hi))
    ce0 = F.cross_entropy(net(x0), y)
    ce = F.cross_entropy(net(x), y)
    assert float(ce) < 0.05 < float(ce0)
    assert curves["ce"].shape[0] == 4 and float(curves["ce"][:, -1].max()) < 0.1
    assert float(x.min()) >= float(lo.min()) - 1e-6 and float(x.max()) <= float(hi.max()) + 1e-6  # clipped


@pytest.mark.parametrize("direction,sign", [("descent", -1.0), ("ascent", 1.0)])
def test_dwa_adjustment_moves_along_real_batch_gradient_and_restores(direction, sign):
    net = _bn_teacher()
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    y = torch.full((6,), 1)
    params = list(net.parameters())
    before = [p.detach().clone() for p in params]
    for p in params:
        p.requires_grad_(True)
    g = torch.autograd.grad(F.cross_entropy(net(x), y), params)
    for p in params:
        p.requires_grad_(False)
    gnorm = torch.sqrt(sum((t ** 2).sum() for t in g))
    loss0 = float(F.cross_entropy(net(x), y))
    saved = adjust_weights(net, x, y, steps=1, rho=0.05, direction=direction)
    moved = [p.detach() - b for p, b in zip(net.parameters(), before)]
    for d, t in zip(moved, g):
        assert torch.allclose(d, sign * 0.05 * t / gnorm, atol=1e-6)
    assert float(torch.sqrt(sum((d ** 2).sum() for d in moved))) == pytest.approx(0.05, rel=1e-4)
    loss1 = float(F.cross_entropy(net(x), y))
    assert (loss1 < loss0) if direction == "descent" else (loss1 > loss0)
    # K steps of rho/K: total displacement at most rho
    restore_weights(net, saved)
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before))
    saved = adjust_weights(net, x, y, steps=4, rho=0.05, direction=direction)
    total = torch.sqrt(sum(((p - b) ** 2).sum() for p, b in zip(net.parameters(), before)))
    assert float(total) <= 0.05 + 1e-6
    restore_weights(net, saved)
    assert all(torch.equal(p, b) for p, b in zip(net.parameters(), before))


# -- the registered methods (driver contract of issue #11) ------------------------------------------
def _toy_teacher():
    ds = make_toy(n_per_class=12, num_classes=4, size=8)
    net = _bn_teacher(4, 8)
    return ds, Teacher(net, "convnet-d1-bn", ds.classes, ds.mean, ds.std, 8)


@pytest.mark.parametrize("method", ["sre2l", "cda", "dwa"])
def test_class_result_does_not_depend_on_batch_mates(method):
    """ddkit's unit=class variant (the default before #26): a class's images never depend on its batch-mates."""
    from ddkit.methods import create_method

    ds, t = _toy_teacher()
    kw = dict(ipc=2, iterations=6, stat_images=8, seed=3, unit="class", bn_target="class")
    together = create_method(method, classes_per_batch=4, **kw)(ds, t, device="cpu", progress=False)
    alone = create_method(method, classes_per_batch=1, **kw)(ds, t, device="cpu", progress=False)
    assert together.images.shape == (8, 3, 8, 8) and torch.equal(together.labels, torch.arange(4).repeat_interleave(2))
    # dwa: one class after another through ONE teacher copy, so equality also shows each adjustment was undone
    assert torch.allclose(together.images, alone.images, atol=1e-5)
    assert float(together.images.min()) >= 0 and float(together.images.max()) <= 1


def test_registered_methods_refuse_a_teacher_without_batchnorm():
    from ddkit.methods import create_method

    ds = make_toy(n_per_class=12, num_classes=4, size=8)
    net = create_model("ConvNet-3", num_classes=4, image_size=8, width=8)
    t = Teacher(net, "convnet-d3", ds.classes, ds.mean, ds.std, 8)
    for m in ("sre2l", "cda", "dwa"):
        with pytest.raises(DDKitError, match="ConvNet-3-BN"):
            create_method(m, ipc=1, iterations=1)(ds, t, device="cpu", progress=False)
