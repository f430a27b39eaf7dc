"""DELT: the early-late rounds in the documented order, the active rows' loss by hand, median-confidence init,
a short recover lowers the loss, and its native protocol (RandAugment first) resolves from the set."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from ddkit.evaluate import EvalConfig
from ddkit.evaluate.native import resolve_protocol
from ddkit.evaluate.recipes import resolve_recipe
from ddkit.evaluate.student import Views
from ddkit.methods import create_method
from ddkit.methods.delt import start_rounds
from ddkit.methods.real_init import medium_order
from tests.conftest import bn_loss_by_hand
from tests.test_sre2l import _toy_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(ds, t, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_method("delt", **kw)(ds, t, device="cpu", progress=False)


def test_start_rounds_follow_the_official_split():
    # IPC 10 over 8 rounds (4000 / 500): sizes 2,2,1,1,1,1,1,1 (recover.py:41-45)
    assert start_rounds(10, 8) == [0, 0, 1, 1, 2, 3, 4, 5, 6, 7]
    assert start_rounds(50, 8) == [0] * 7 + [1] * 7 + [2] * 6 + [3] * 6 + [4] * 6 + [5] * 6 + [6] * 6 + [7] * 6
    assert start_rounds(1, 8) == [0] and start_rounds(3, 8) == [0, 1, 2]


def test_first_step_loss_is_over_the_first_rounds_rows_only():
    """Iteration 0 of a 2-round run forwards only image 0 of every class: CE and ONE set of BN statistics over
    those 4 rows, against the running statistics, first layer x10 (by hand, augmentation off)."""
    ds, t = _toy_teacher()
    s = _run(ds, t, ipc=2, iterations=2, round_iterations=1, jitter=0, augment=False, select_pool=12, seed=0)
    assert s.meta["recover"]["join_round"] == [0, 1] and s.meta["recover"]["rounds"] == 2
    idx = torch.tensor(s.meta["source_indices"]).view(4, 2)
    x0 = (ds.images[idx[:, 0]].float() / 255 - 0.5) / 0.25  # round 0: image 0 (nearest the median) of each class
    logits, bn = bn_loss_by_hand(t.model.eval(), x0)
    got = s.meta["unit_meta"][0]
    assert got["ce_first"] == pytest.approx(float(F.cross_entropy(logits, torch.arange(4))), rel=1e-5)
    assert got["bn_first"] == pytest.approx(bn, rel=1e-5)


def test_medium_init_and_a_short_recover_lowers_the_loss():
    ds, t = _toy_teacher()
    s = _run(ds, t, ipc=2, iterations=40, round_iterations=20, lr=0.05, jitter=1, select_pool=0, seed=0)
    u = s.meta["unit_meta"][0]
    assert u["loss_curve"][-1] < 0.8 * u["loss_curve"][0]
    # the init: per class, the images nearest the teacher's median p_y (all 12 scored), in DELT's order
    from ddkit.teachers.frozen import FrozenTeacher
    ft = FrozenTeacher(t, torch.device("cpu"), amp=False, channels_last=False)
    for c in range(4):
        idx = ds.class_indices(c)
        p = torch.softmax(ft.logits(ds.images[idx].float() / 255), 1)[:, c]
        want = idx[medium_order(p, 2)].tolist()
        assert s.meta["source_indices"][2 * c:2 * c + 2] == want
    assert s.native == "delt" and s.images.shape == (8, 3, 8, 8)


def test_native_protocol_applies_randaugment_first():
    ds, t = _toy_teacher()
    s = _run(ds, t, ipc=2, iterations=2, round_iterations=1, select_pool=6, seed=0)
    proto = resolve_protocol(EvalConfig(), s)
    assert proto.cfg.recipe == "delt" and proto.cfg.regime == "slkd"
    r = resolve_recipe(proto.cfg, n_images=len(s), num_classes=4, ipc=2, image_size=8)
    assert r.randaug == "rand-m6-n2-mstd1.0" and r.rrc_min == 0.25 and r.schedule == "quarter_cosine"
    v = Views(r, 8, ds.mean, ds.std)
    p = v.draw(8, (8, 3, 8, 8), torch.Generator().manual_seed(0))
    assert {"pre.0.op", "pre.0.on", "pre.0.mag", "pre.0.neg"} <= set(p)  # RandAugment runs first
    out, _, _ = v.apply(s.images, p)
    assert out.shape == (8, 3, 8, 8) and torch.isfinite(out).all()
