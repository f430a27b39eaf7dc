"""G-VBSM: the conv-input patch statistics, the EMA straight-through form, the hooks' loss and targets, the
densification term by hand; the teachers' turns; a short recover lowering the loss; the CLI with two teachers."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ddkit.cli import main
from ddkit.evaluate.native import resolve_protocol
from ddkit.methods import create_method
from ddkit.methods.gsm import StatHooks, collect_targets, densify_loss, ema_straight_through, patch_stats
from ddkit.methods.gvbsm import gvbsm_units
from ddkit.methods.recover import pad_crop
from ddkit.teachers import Teacher
from ddkit.teachers.committee import Committee
from ddkit.utils import DDKitError
from tests.conftest import cli_teachers
from tests.test_sre2l import _bn_teacher, _toy_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(ds, t, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_method("gvbsm", **kw)(ds, t, device="cpu", progress=False)


def _cells_by_hand(x: torch.Tensor, cell: int):
    means, vars_ = [], []
    for i in range(0, x.shape[2], cell):
        for j in range(0, x.shape[3], cell):
            block = x[:, :, i:i + cell, j:j + cell].reshape(-1).double()
            means.append(block.mean())
            vars_.append(((block - block.mean()) ** 2).mean())
    return torch.stack(means).float(), torch.stack(vars_).float()


def test_patch_statistics_equal_a_hand_computation():
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    m, v = patch_stats(x, 4)  # 8 px: no resize, 2×2 cells of 4×4 px over batch × channels × cell
    hm, hv = _cells_by_hand(x, 4)
    assert m.shape == (4,) and torch.allclose(m, hm, atol=1e-6) and torch.allclose(v, hv, atol=1e-5)
    # 6 px is first resized (bilinear, half-pixel centres) to the next multiple of 4, 8 px
    x6 = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    m6, v6 = patch_stats(x6, 4)
    hm6, hv6 = _cells_by_hand(F.interpolate(x6, size=(8, 8), mode="bilinear", align_corners=False), 4)
    assert torch.allclose(m6, hm6, atol=1e-6) and torch.allclose(v6, hv6, atol=1e-5)
    assert not torch.allclose(m6, _cells_by_hand(F.interpolate(x6, size=(8, 8), mode="nearest"), 4)[0])


def test_pad_crop_is_a_zero_padded_window():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    out = pad_crop(x, torch.tensor([[0, 0], [3, 1]]), 2)
    padded = F.pad(x, (2, 2, 2, 2))
    assert torch.equal(out[0], padded[0, :, 0:4, 0:4]) and torch.equal(out[1], padded[1, :, 3:7, 1:5])


def test_ema_value_is_the_average_and_the_gradient_the_current_batch():
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    stat = w ** 2
    ema0 = torch.tensor([5.0, -1.0])
    new, value = ema_straight_through(ema0, stat, 0.8)
    assert torch.allclose(value, 0.8 * ema0 + 0.2 * torch.tensor([1.0, 4.0]))
    assert torch.equal(new, value.detach()) and not new.requires_grad
    value.sum().backward()
    assert torch.allclose(w.grad, 2 * w.detach())  # d(stat)/dw, not 0.2·d(stat)/dw
    first, v1 = ema_straight_through(None, torch.tensor([3.0]), 0.8)
    assert torch.equal(first, torch.tensor([3.0])) and torch.equal(v1, torch.tensor([3.0]))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.b1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 3, padding=1)
        self.b1.running_mean.copy_(torch.randn(4))
        self.b1.running_var.copy_(torch.rand(4) + 0.5)

    def forward(self, x):
        return self.c2(F.relu(self.b1(self.c1(x)))).mean((2, 3))


def _stats(a, cell):
    v = a.transpose(0, 1).reshape(a.shape[1], -1)
    return v.mean(1), v.var(1, unbiased=False), *patch_stats(a, cell)


def test_hook_loss_equals_a_hand_computation_with_targets_ema_and_the_first_multiplier():
    net = _Net().eval()
    hooks = StatHooks(net, cell=4, alpha=0.6, drop_rate=0.0)
    assert [h.kind for h in hooks.hooks] == ["conv", "bn", "conv"]  # named_modules order: c1, b1, c2
    real = [torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2)),
            torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))]
    collect_targets(hooks, net, real)
    with torch.no_grad():  # targets: batch-size-weighted means of the batches' statistics (U:199-202)
        acts = [(r, net.c1(r), F.relu(net.b1(net.c1(r)))) for r in real]
        want = [[(3 * a + 1 * b) / 4 for a, b in zip(_stats(acts[0][i], 4), _stats(acts[1][i], 4))] for i in (0, 2)]
    for h, w in zip([hooks.hooks[0], hooks.hooks[2]], want):
        assert all(torch.allclose(t, x, atol=1e-5) for t, x in zip(h.target, w))
    hooks.reset()  # the hand forwards above went through the hooks too
    x1, x2 = (torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(s)) for s in (4, 5))
    net(x1)
    hooks.loss(10.0)
    net(x2)
    got = hooks.loss(10.0)
    with torch.no_grad():
        total = 0.0
        for i, layer in enumerate(("in1", "bn", "in2")):
            def inp(x):
                a = net.c1(x)
                return x if layer == "in1" else a if layer == "bn" else F.relu(net.b1(a))
            s1, s2 = _stats(inp(x1), 4), _stats(inp(x2), 4)
            ema = [0.6 * a + 0.4 * b for a, b in zip(s1, s2)]  # the second step's EMA
            if layer == "bn":
                term = (net.b1.running_var - ema[1]).norm() + (net.b1.running_mean - ema[0]).norm()
            else:
                tgt = hooks.hooks[i].target
                term = (tgt[1] - ema[1]).norm() + (tgt[0] - ema[0]).norm() + (tgt[2] - ema[2]).norm() \
                    + (tgt[3] - ema[3]).norm()
            total = total + (10.0 if i == 0 else 1.0) * term
    assert torch.allclose(got, total, atol=1e-4)
    hooks.remove()


def test_a_dropped_conv_term_is_zero_and_keeps_its_ema():
    net = _Net().eval()
    hooks = StatHooks(net, cell=4, alpha=0.5, drop_rate=0.5, drop_gen=torch.Generator().manual_seed(0))
    collect_targets(hooks, net, [torch.randn(2, 3, 8, 8)])
    draws = torch.rand(40, generator=torch.Generator().manual_seed(0))  # one draw per conv hook per forward
    for step in range(20):
        before = [None if h.ema is None else [e.clone() for e in h.ema] for h in hooks.hooks]
        net(torch.randn(2, 3, 8, 8))
        terms = [h.term.detach() for h in hooks.hooks]
        for j, k in enumerate((0, 2)):
            dropped = bool(draws[2 * step + j] < 0.5)
            assert (float(terms[k]) == 0.0) == dropped
            if dropped:  # no EMA update either (U:205-207)
                now = hooks.hooks[k].ema
                assert (now is None and before[k] is None) or all(torch.equal(a, b) for a, b in zip(now, before[k]))
        assert float(terms[1]) > 0  # BN terms are never dropped
        hooks.loss(10.0)
    hooks.remove()


def test_densification_equals_a_hand_computation():
    g = torch.Generator().manual_seed(7)
    view = torch.randn(6, 3, 64, 64, generator=g, requires_grad=True)
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    got = densify_loss(view, y, tau=4.0)
    got.backward()
    grad = view.grad.clone()
    view.grad = None
    # the official form: general eigvals of the Gram matrix, KLDivLoss(sum)(log_softmax(λ), softmax(λ/τ).detach())
    flat = F.avg_pool2d(view, 2).reshape(6, -1)  # 64 → 32 px
    want = 0.0
    for c in (0, 1):
        xc = flat[y == c]
        lam = torch.linalg.eigvals(xc @ xc.t()).real.float()
        tea = (lam / 4.0).softmax(-1).detach()
        want = want + (tea * (tea.log() - lam.log_softmax(-1))).sum()
    want.backward()
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-6) and float(got.detach()) > 0
    assert torch.allclose(grad, view.grad, rtol=1e-3, atol=1e-6)


def test_teachers_take_turns_in_the_given_order_restarting_at_each_unit():
    ds, _ = _toy_teacher()
    ts = [Teacher(_bn_teacher(4, 8), "convnet-d1-bn", ds.classes, ds.mean, ds.std, 8) for _ in range(3)]
    order: list = []
    for i, t in enumerate(ts):
        t.model.register_forward_pre_hook(lambda m, a, i=i: order.append((i, a[0].shape[0])))
    s = _run(ds, Committee(ts), ipc=2, iterations=4, batch_size=4, stat_images=3, stat_batch=5, seed=1)
    # first each teacher's statistics pass (12 real images in batches of 5), then per unit steps 0 1 2 0
    passes = [(k, n) for k in range(3) for n in (5, 5, 2)]
    assert order == passes + [(0, 4), (1, 4), (2, 4), (0, 4)] * 2
    assert s.images.shape == (8, 3, 8, 8) and s.meta["recover"]["teachers"] == ["convnet-d1-bn"] * 3
    assert s.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3] and len(s.meta["unit_meta"]) == 2


def test_units_are_class_major_batches_of_batch_size_images():
    ds, _ = _toy_teacher()
    units = gvbsm_units(ds, create_method("gvbsm", ipc=2, batch_size=4).config)
    assert [u.classes for u in units] == [(0, 1), (2, 3)] and {u.index for u in units} == {0}
    assert [u.classes for u in gvbsm_units(ds, create_method("gvbsm", ipc=10).config)] == [(0, 1, 2, 3)]


def test_a_short_recover_lowers_the_loss():
    ds, t = _toy_teacher()
    s = _run(ds, t, ipc=2, iterations=60, lr=0.1, drop_rate=0.0, stat_images=6, jitter=2, seed=3)
    for u in s.meta["unit_meta"]:
        curve = u["loss_curve"]
        assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5
        assert u["ce_last"] < u["ce_first"]
    assert s.native == "gvbsm" and s.meta["recover"]["cell"] == 4 and s.meta["recover"]["pad"] == 4
    assert float(s.images.min()) >= 0 and float(s.images.max()) <= 1


def test_presets_and_refusals():
    ds, t = _toy_teacher()
    cfg = create_method("gvbsm", preset="imagenet").config
    from ddkit.methods.gvbsm import resolve
    fam, p = resolve(cfg, 224)
    assert (fam, p["batch_size"], p["lr"], p["alpha"], p["drop_rate"], p["cell"], p["pad"]) == \
        ("imagenet", 40, 0.1, 0.4, 0.0, 16, 0)
    assert resolve(create_method("gvbsm").config, 32)[1]["alpha"] == 0.8
    with pytest.raises(DDKitError, match="drop-rate"):
        _run(ds, t, ipc=1, iterations=1, drop_rate=1.0)
    with pytest.raises(DDKitError, match="unknown preset"):
        _run(ds, t, ipc=1, iterations=1, preset="mnist")


def test_cli_distills_with_two_teachers_and_the_native_protocol_is_mse_ce(tmp_path):
    data = ["--dataset", "digits", "--device", "cpu", "--no-progress"]
    paths = cli_teachers(tmp_path)
    out = tmp_path / "set"
    assert main(["distill", *data, "--method", "G-VBSM", *paths, "--preset", "cpu", "--iterations", "4",
                 "--stat-images", "5", "--ipc", "1", "--skip-teacher-check", "--output", str(out)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["method"] == "gvbsm" and meta["native"] == "gvbsm"
    assert meta["recover"]["teachers"] == ["convnet-d1-bn"] * 2 and meta["teacher_arch"].startswith("committee")
    from ddkit.distilled import load_distilled
    from ddkit.evaluate.protocol import EvalConfig
    from ddkit.evaluate.recipes import get_recipe
    proto = resolve_protocol(EvalConfig(), load_distilled(out))
    assert proto.native == "gvbsm" and proto.cfg.recipe == "gvbsm" and proto.cfg.regime == "slkd"
    recipe = get_recipe("gvbsm")
    assert (recipe.slkd_loss, recipe.mse_weight, recipe.ce_weight, recipe.batch_size) == ("mse_ce", 1.0, 0.15, 100)


def test_ce_unmixed_gives_mse_ce_each_images_own_label_under_cutmix():
    """G-VBSM train_FKD.py:307-308: MSE(s, t) + w·CE(s, target) with the loader's target, the image's own label."""
    from ddkit.augment.mixing import CutMix
    from ddkit.evaluate.losses import LOSSES
    from ddkit.evaluate.student import Targets

    y, view = torch.tensor([0, 1, 2, 3]), torch.zeros(4, 3, 8, 8)
    mixer = CutMix(1.0)
    mp = mixer.sample(4, (8, 8), generator=torch.Generator().manual_seed(0))
    teacher = lambda v: torch.zeros(len(v), 4)  # noqa: E731

    def target(loss: str, unmixed: bool) -> torch.Tensor:
        return Targets("slkd", 4, LOSSES.get(loss), 1.0, teacher_fn=teacher, ce_unmixed=unmixed)(
            view, None, y, None, mixer, mp)[1]

    own, mixed = target("mse_ce", True), target("mse_ce", False)
    assert torch.equal(own, F.one_hot(y, 4).float()) and not torch.equal(mixed, own)
    assert torch.equal(target("kl", True), mixed)  # only mse_ce's CE is unmixed


def test_units_shard_and_merge_to_the_same_set(tmp_path):
    """Each process computes the same targets and each unit restarts its EMAs, turns and draws: two shards = one."""
    from ddkit.distributed import distill_sharded

    ds, t = _toy_teacher()
    other = Teacher(_bn_teacher(4, 8), "convnet-d1-bn", ds.classes, ds.mean, ds.std, 8)
    c = Committee([t, other])
    m = create_method("gvbsm", ipc=2, iterations=3, batch_size=4, stat_images=4, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = m(ds, c, device="cpu", progress=False)
        out = tmp_path / "set"
        assert distill_sharded(m, ds, c, out, shard="1/2", progress=False) is None
        merged = distill_sharded(m, ds, c, out, shard="0/2", progress=False)
    assert torch.equal(merged.images, ref.images) and merged.native == "gvbsm"
