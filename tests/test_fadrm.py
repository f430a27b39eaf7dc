"""FADRM / FADRM+ / SRe2L++: the residual blend and the round-robin loss by hand, one cosine over the stages with
Adam restarted per stage, the documented teacher order, patch starts, a short recover lowering the loss, the CLI."""
from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from ddkit.cli import main
from ddkit.methods import create_method
from ddkit.methods.fadrm import residual_blend
from ddkit.methods.patch_init import PatchInit, select_ranked
from ddkit.methods.recover import BNHooks, RecoverSpec, bn_loss, recover
from ddkit.teachers import Teacher, save_teacher
from ddkit.teachers.committee import Committee
from ddkit.utils import DDKitError
from tests.conftest import cli_teachers
from tests.test_sre2l import _bn_teacher, _tiny, _toy_teacher

pytestmark = pytest.mark.usefixtures("one_thread")
WIDE = (torch.full((3,), -100.0), torch.full((3,), 100.0))  # clipping never binds
STILL = dict(jitter=0, rrc=False, flip=False)  # the view is the image itself


def _run(method: str, ds, t, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short pools
        return create_method(method, **kw)(ds, t, device="cpu", progress=False)


def test_residual_blend_equals_hand_computation():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    p = (8.0 - torch.arange(16.0).view(4, 4).t()).view(1, 1, 4, 4)
    # same side: a plain convex combination
    assert torch.equal(residual_blend(x, p, 4, 0.5), 0.5 * x + 0.5 * p)
    # half side: bilinear (align_corners=False) at scale 2 samples between four pixels = the 2×2 block mean
    block = lambda t: t.view(2, 2, 2, 2).permute(0, 2, 1, 3).reshape(2, 2, 4).mean(-1)  # noqa: E731
    want = 0.25 * block(x[0, 0]) + 0.75 * block(p[0, 0])
    assert torch.allclose(residual_blend(x, p, 2, 0.25)[0, 0], want)


def _ce_bn_by_hand(net, x, y):
    a1 = net.c1(x)
    a2 = net.c2(F.relu(net.b1(a1)))
    bn = 0.0
    for k, (a, layer) in enumerate(((a1, net.b1), (a2, net.b2))):
        v = a.permute(1, 0, 2, 3).reshape(a.shape[1], -1)
        mu, var = v.mean(1), v.var(1, unbiased=False)
        bn = bn + (10.0 if k == 0 else 1.0) * ((mu - layer.running_mean).norm() + (var - layer.running_var).norm())
    return F.cross_entropy(net(x), y), bn


def test_round_robin_step_uses_its_members_loss():
    """lr 0: the image never moves, so step k's recorded CE and BN terms are member (start + k) mod K's on x0."""
    nets = [_tiny()]
    torch.manual_seed(5)
    other = _tiny()
    for p in other.parameters():
        p.data.add_(torch.randn_like(p))
    nets.append(other)
    x0 = torch.randn(3, 3, 5, 5, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2])
    members = []
    for n in nets:
        with BNHooks(n) as h:
            members.append((n, 1.0, h.running_targets(1)))
    spec = RecoverSpec(iterations=3, lr=0.0, r_bn=0.01, curve_points=3, **STILL)
    _, curves = recover(None, x0, y, 1, [], [torch.Generator().manual_seed(0)], spec, WIDE, voters=members,
                        rotate=True, start=1, total=6)
    with torch.no_grad():
        for k in range(3):
            ce, bn = _ce_bn_by_hand(nets[(1 + k) % 2], x0, y)
            assert torch.allclose(curves["ce"][0, k], ce, atol=1e-5)
            assert torch.allclose(curves["bn"][0, k], bn, atol=1e-4)


def test_a_stage_is_one_cosine_position_and_a_fresh_adam():
    """A stage starting at global step 2 of 4: lr = 0.5(1 + cos(π·2/4))·lr0, and a fresh Adam's first step moves
    every pixel by that lr times the sign of the gradient (hand-computed through the tiny network)."""
    net = _tiny()
    x0 = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 2])
    with BNHooks(net) as h:
        targets = h.running_targets(1)
    spec = RecoverSpec(iterations=1, lr=0.1, r_bn=0.01, **STILL)
    x1, _ = recover(net, x0, y, 1, targets, [torch.Generator()], spec, WIDE, start=2, total=4)
    xr = x0.clone().requires_grad_(True)
    ce, bn = _ce_bn_by_hand(net, xr, y)
    (g,) = torch.autograd.grad(ce + 0.01 * bn, xr)
    lr = 0.5 * (1 + math.cos(math.pi * 2 / 4)) * 0.1
    assert torch.allclose(x1, x0 - lr * g / (g.abs() + 1e-8), atol=1e-6)


def _probe(ts, order):
    for i, t in enumerate(ts):  # copied with the network into the method's private copies
        t.model.register_forward_pre_hook(lambda m, a, i=i: order.append(i))


def test_fadrm_plus_takes_the_teachers_in_the_given_order():
    """Official order (FADRM recover.py:62-78): one teacher per step, the counter carried across the stages of a
    batch and restarted at the next batch."""
    ds, _ = _toy_teacher()
    ts = [Teacher(_bn_teacher(4, 8), "convnet-d1-bn", ds.classes, ds.mean, ds.std, 8) for _ in range(3)]
    order: list = []
    _probe(ts, order)
    s = _run("fadrm+", ds, Committee(ts), ipc=2, iterations=4, stage_sizes=(8, 8), init="real", seed=1)
    batch = [0, 1, 2, 0, 1, 2, 0, 1]  # stage 1: 0 1 2 0 | stage 2: 1 2 0 1
    assert order == batch * 2
    assert s.meta["recover"]["teachers"] == ["convnet-d1-bn"] * 3 and s.images.shape == (8, 3, 8, 8)


def test_select_ranked_by_difficulty():
    ce = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0])  # ranks: 1, 3, 4, 2, 0
    assert select_ranked(ce, 2, "easy").tolist() == [1, 3]
    assert select_ranked(ce, 2, "medium").tolist() == [3, 4]  # ranks 1-2, around the median rank 2
    assert select_ranked(ce, 2, "hard").tolist() == [2, 0]
    with pytest.raises(DDKitError, match="difficulty"):
        select_ranked(ce, 2, "median")


@pytest.mark.parametrize("method", ["fadrm", "sre2lpp"])
def test_lr_zero_returns_the_medium_patches(method):
    """With lr 0 the images never move and the blend of P with itself is P: the set is the patch start."""
    ds, t = _toy_teacher()
    kw = dict(ipc=2, lr=0.0, iterations=2, pool_size=10, seed=4)
    if method == "fadrm":
        kw["stage_sizes"] = (8, 8)
    s = _run(method, ds, t, **kw)
    init = PatchInit(ds, t, create_method(method, **kw).config, method, torch.device("cpu"))
    want = torch.cat([init.of_class(c)[0] for c in range(4)])
    assert torch.allclose(s.images, want, atol=1e-5)
    assert s.meta["recover"]["patch_difficulty"] == "medium" and len(s.meta["source_indices"]) == 8


def test_short_fadrm_recover_lowers_the_loss():
    ds, t = _toy_teacher()
    s = _run("fadrm", ds, t, ipc=1, iterations=40, stage_sizes=(8, 8), pool_size=10, r_bn=0.1, seed=2)
    for u in s.meta["unit_meta"]:
        assert u["loss_curve"][-1] < u["loss_curve"][0]
    assert s.native == "fadrm" and s.meta["recover"]["stage_sizes"] == [8, 8]


def test_fadrm_refusals():
    ds, t = _toy_teacher()
    with pytest.raises(DDKitError, match="through one teacher"):
        _run("fadrm", ds, Committee([t, t]), ipc=1, iterations=1)
    with pytest.raises(DDKitError, match="cannot take 6 px"):  # ConvNet's fixed-size classifier
        _run("fadrm", ds, t, ipc=1, iterations=1, stage_sizes=(6, 8))
    with pytest.raises(DDKitError, match="last equal to the image side"):
        _run("fadrm", ds, t, ipc=1, iterations=1, stage_sizes=(8, 6))
    with pytest.raises(DDKitError, match="Gaussian"):
        _run("fadrm", ds, t, ipc=1, iterations=1, init="noise")


def test_distill_cli_takes_repeated_teachers_in_order(tmp_path, capsys):
    data = ["--dataset", "digits", "--device", "cpu", "--no-progress"]
    paths = cli_teachers(tmp_path)
    out = tmp_path / "set"
    assert main(["distill", *data, "--method", "FADRM+", *paths, "--preset", "cpu", "--iterations", "3",
                 "--pool-size", "10", "--ipc", "1", "--skip-teacher-check", "--output", str(out)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["method"] == "fadrm-plus" and meta["native"] == "fadrm"
    assert meta["recover"]["teachers"] == ["convnet-d1-bn"] * 2 and meta["teacher_arch"].startswith("committee")
    capsys.readouterr()
    assert main(["distill", *data, "--method", "fadrm", *paths, "--ipc", "1", "--skip-teacher-check",
                 "--output", str(tmp_path / "x")]) == 2
    assert "through one teacher" in capsys.readouterr().err


def test_fadrm_plus_shards_by_unit_with_a_committee(tmp_path):
    from ddkit.distributed import distill_sharded

    ds, t = _toy_teacher()
    other = Teacher(_bn_teacher(4, 8), "convnet-d1-bn", ds.classes, ds.mean, ds.std, 8)
    with torch.no_grad():
        other.model.classifier.weight.mul_(-1.0)
    c = Committee([t, other])
    m = create_method("fadrm+", ipc=2, iterations=3, stage_sizes=(8, 8), pool_size=10, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = m(ds, c, device="cpu", progress=False)
        out = tmp_path / "set"
        assert distill_sharded(m, ds, c, out, shard="0/2", progress=False) is None
        merged = distill_sharded(m, ds, c, out, shard="1/2", progress=False)
    assert torch.equal(merged.images, ref.images) and merged.meta["teacher_arch"] == c.arch
