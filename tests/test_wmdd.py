"""WMDD: the per-class BN term, the barycenter feature term and the CE weight equal a hand computation; a short
recover lowers the loss; its unit (a class group with all ipc images) shards and merges to the same set."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ddkit.distributed import distill_sharded, parts_dir_for, scan_unit_parts
from ddkit.methods import create_method
from ddkit.methods.base import Unit
from ddkit.utils import make_generator
from tests.test_sre2l import _toy_teacher

pytest.importorskip("ot")
pytestmark = pytest.mark.usefixtures("one_thread")

from ddkit.teachers.barycenter import feature_barycenter  # noqa: E402


def _run(ds, t, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_method("wmdd", **kw)(ds, t, device="cpu", progress=False)


def _forward(net: nn.Module, x: torch.Tensor):
    """Logits, every BN input and the classifier's input of one forward."""
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    fc = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    ins, feat = [], []
    hooks = [m.register_forward_hook(lambda mod, i, o: ins.append(i[0])) for m in bns]
    hooks.append(fc.register_forward_pre_hook(lambda mod, i: feat.append(i[0].flatten(1))))
    with torch.no_grad():
        out = net(x)
    for h in hooks:
        h.remove()
    return out, ins, feat[0]


def _stats(a: torch.Tensor):
    v = a.permute(1, 0, 2, 3).reshape(a.shape[1], -1)
    return v.mean(1), v.var(1, unbiased=False)


def test_iteration_zero_terms_equal_a_hand_computation():
    """r_wb·CE (batch mean) + ‖F − B‖_F (class-major pairing) + r_bn·Σ_l m_l mean_c(‖μ_c − μ*_c‖ + ‖σ²_c − σ²*_c‖),
    per-class targets = batch-size-weighted mean of the statistics of clean batches of `stat_batch` images."""
    ds, t = _toy_teacher()  # 4 classes × 12 images, 8 px
    s = _run(ds, t, ipc=2, iterations=1, jitter=0, augment=False, classes_per_batch=2, stat_batch=5, r_wb=0.7,
             first_bn_multiplier=3.0, seed=4)
    net = t.model.eval()
    norm = lambda x: (x - 0.5) / 0.25  # noqa: E731  (the toy teacher's mean/std)
    for ui, classes in enumerate([(0, 1), (2, 3)]):
        targets, bary = [], []
        for c in classes:
            imgs, _ = ds.class_images(c, 12, generator=make_generator(4, "wmdd", "real", c))
            x = norm(imgs.float() / 255)
            acc, feats = None, []
            for a in range(0, 12, 5):  # batches of 5, 5, 2: weighted by their size
                _, ins, f = _forward(net, x[a:a + 5])
                n = len(x[a:a + 5])
                part = [tuple(z * n for z in _stats(i)) for i in ins]
                acc = part if acc is None else [(p[0] + q[0], p[1] + q[1]) for p, q in zip(acc, part)]
                feats.append(f)
            targets.append([(m / 12, v / 12) for m, v in acc])
            bary.append(feature_barycenter(torch.cat(feats), 2, generator=make_generator(4, "wmdd", "bary", c)))
        x0 = torch.randn(4, 3, 8, 8, generator=make_generator(4, "wmdd", "group", classes[0]))
        out, ins, f = _forward(net, x0)
        y = torch.tensor(classes).repeat_interleave(2)
        ce = float(F.cross_entropy(out, y))
        bn = 0.0
        for k, a in enumerate(ins):
            m_k = 3.0 if k == 0 else 1.0
            for j in range(2):  # the rows of class j: its ipc images
                mu, var = _stats(a[2 * j:2 * j + 2])
                bn += m_k * (float((mu - targets[j][k][0]).norm()) + float((var - targets[j][k][1]).norm())) / 2
        wb = float((f - torch.cat(bary)).norm())
        got = s.meta["unit_meta"][ui]
        assert got["classes"] == [classes[0], classes[1]]
        assert got["ce_first"] == pytest.approx(ce, rel=1e-5)
        assert got["bn_first"] == pytest.approx(bn, rel=1e-4)
        assert got["wb_first"] == pytest.approx(wb, rel=1e-4)
        assert got["loss_curve"][0] == pytest.approx(0.7 * ce + 0.01 * bn + wb, rel=1e-4)  # cifar preset r_bn
    assert s.native == "wmdd" and torch.equal(s.labels, torch.arange(4).repeat_interleave(2))


def test_a_short_recover_lowers_the_loss():
    ds, t = _toy_teacher()
    s = _run(ds, t, ipc=2, iterations=40, lr=0.1, jitter=1, seed=0)
    for u in s.meta["unit_meta"]:
        assert u["loss_curve"][-1] < 0.8 * u["loss_curve"][0] and u["wb_last"] < u["wb_first"]
    assert s.images.shape == (8, 3, 8, 8) and float(s.images.min()) >= 0 and float(s.images.max()) <= 1


def test_class_group_units_shard_and_merge_to_the_same_set(tmp_path):
    ds, t = _toy_teacher()
    m = create_method("wmdd", ipc=3, iterations=2, classes_per_batch=3, seed=1)
    assert m.units(ds) == [Unit(0, (0, 1, 2)), Unit(0, (3,))]
    ref = m(ds, t, device="cpu", progress=False)
    assert torch.equal(ref.labels, torch.arange(4).repeat_interleave(3))
    out = tmp_path / "w"
    assert distill_sharded(m, ds, t, out, shard="1/2", progress=False) is None
    assert sorted(scan_unit_parts(parts_dir_for(out))) == [(0, 3)]
    merged = distill_sharded(m, ds, t, out, shard="0/2", progress=False)
    assert torch.equal(merged.images, ref.images) and torch.equal(merged.labels, ref.labels)
