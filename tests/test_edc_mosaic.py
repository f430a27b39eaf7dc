"""EDC's ImageNet-1K mosaic start: ensemble CE by hand, the 2×2 layout, the pool and full-batch rules, the draw
with replacement, the refusal, and `--init mosaic` through the method with the statistic hooks left alone."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ddkit.data.base import ImageDataset
from ddkit.methods import create_method
from ddkit.methods.edc_mosaic import class_mosaics, ensemble_ce, mosaic_start, tile
from ddkit.utils import DDKitError
from tests.test_sre2l import _toy_teacher

pytestmark = pytest.mark.usefixtures("one_thread")


def _flat(values_per_class, size=8):
    """Constant-colour images (every crop of one is that colour again): class c's i-th image has value v[c][i]."""
    vals = [v for vs in values_per_class for v in vs]
    labels = torch.tensor([c for c, vs in enumerate(values_per_class) for _ in vs])
    images = torch.tensor(vals, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, size, size).contiguous()
    return ImageDataset(images, labels, [f"c{c}" for c in range(len(values_per_class))], [0.5] * 3, [0.25] * 3,
                        name="flat")


def test_ensemble_ce_is_the_ce_of_the_mean_logits_by_hand():
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Flatten(), nn.Linear(12, 3)) for _ in range(2)]
    mean, std = torch.tensor(0.4).view(1, 1, 1, 1), torch.tensor(0.2).view(1, 1, 1, 1)
    x = torch.rand(5, 3, 2, 2)
    got = ensemble_ce(nets, mean, std)(x, 2)
    z = (nets[0]((x - 0.4) / 0.2) + nets[1]((x - 0.4) / 0.2)) / 2
    want = torch.stack([-F.log_softmax(z[i], 0)[2] for i in range(5)])
    assert torch.allclose(got, want, atol=1e-6)


def test_tile_puts_four_ranked_crops_top_left_top_right_bottom_left_bottom_right():
    ranked = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 1, 6, 6)
    m = tile(ranked, 6)
    assert m.shape == (2, 1, 6, 6)
    for i in range(2):
        cells = [m[i, 0, :3, :3], m[i, 0, :3, 3:], m[i, 0, 3:, :3], m[i, 0, 3:, 3:]]
        assert [float(c.unique()) for c in cells] == [4 * i + k for k in range(4)]


def test_pool_and_full_batches_bound_what_the_crops_come_from():
    # class 0: 20 images of distinct brightness. The whole-image pass prefers BRIGHT images (pool 8 keeps the 8
    # brightest); the crop pass prefers DARK crops. Full batches of 3 use only the 6 brightest of the kept 8, so the
    # best crops are the 6th-brightest image's (4 views, a tie broken by arrival) then the 5th's.
    values = [[10 * i + 5 for i in range(20)]]
    ds = _flat(values)
    calls = []

    def score(x01, c):
        calls.append(len(x01))
        v = x01.mean((1, 2, 3))
        return -v if len(calls) == 1 else v

    mosaics, src = class_mosaics(ds, 0, 2, score, torch.device("cpu"), torch.Generator().manual_seed(0), pool=8,
                                 batch=3)
    assert calls == [20] + [3] * 8  # one whole-image pass, then 2 full batches x 4 views
    order = sorted(range(20), key=lambda i: -values[0][i])  # brightest first
    assert src.tolist() == [[order[5]] * 4, [order[4]] * 4]
    for m, i in zip(mosaics, (order[5], order[4])):
        assert torch.allclose(m, torch.full_like(m, values[0][i] / 255), atol=1e-6)


def test_slots_draw_mosaics_with_replacement_and_too_few_crops_refuse():
    ds = _flat([[10 * i + 5 for i in range(16)], [200 - 10 * i for i in range(16)]])
    score = lambda x01, c: -x01.mean((1, 2, 3))  # noqa: E731  (brightest wins in both passes)
    x, src = mosaic_start(ds, [0, 1], 3, score, torch.device("cpu"), torch.Generator().manual_seed(1), pool=16,
                          batch=4)
    assert x.shape == (6, 3, 8, 8) and src.shape == (6, 4)
    for row, s in zip(range(6), src):
        assert int(ds.labels[s[0]]) == row // 3 and len(set(s.tolist())) == 1  # a constant image's 4 views
    # class 0's 3 mosaics come from its 3 brightest images; 6 draws with replacement from a seeded generator
    picks = [int(s[0]) for s in src[:3]]
    assert set(picks) <= {15, 14, 13}

    def draws(seed):
        _, s = mosaic_start(ds, [0], 3, score, torch.device("cpu"), torch.Generator().manual_seed(seed), 16, 4)
        return [int(r[0]) for r in s]
    assert any(len(set(draws(seed))) < 3 for seed in range(10))  # with replacement: a mosaic used twice
    with pytest.raises(DDKitError, match="class 0 gives 1 full batch.*12 crops, fewer than the 16 that 4 mosaics"):
        mosaic_start(ds, [0], 4, score, torch.device("cpu"), torch.Generator().manual_seed(1), pool=4, batch=3)


def test_init_mosaic_runs_through_edc_and_leaves_the_hooks_alone(monkeypatch):
    import ddkit.methods.edc as edc_mod

    made, untouched = [], []

    class Recorded(edc_mod.ClassStatHooks):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    def start(*a, **k):  # the scoring forwards run through the hooked teachers: the hooks must not see them
        out = real_start(*a, **k)
        untouched.append(all(h.ema is None and h.term is None for hs in made for h in hs.hooks))
        return out

    real_start = edc_mod.mosaic_start
    monkeypatch.setattr(edc_mod, "ClassStatHooks", Recorded)
    monkeypatch.setattr(edc_mod, "mosaic_start", start)
    ds, t = _toy_teacher()  # 12 images per class
    opts = dict(ipc=2, iterations=1, lr=1e-12, stat_images=6, batch_size=8, seed=3, mosaic_pool=12, mosaic_batch=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = create_method("edc", init="mosaic", **opts)(ds, t, device="cpu", progress=False)
        made.clear()  # the first run's hooks hold its recover's EMAs
        again = create_method("edc", init="mosaic", **opts)(ds, t, device="cpu", progress=False)
    assert s.meta["recover"]["init"] == "mosaic" and s.meta["recover"]["mosaic_pool"] == 12
    src = torch.tensor(s.meta["source_indices"])
    assert src.shape == (8, 4) and all(int(ds.labels[i]) == c for row, c in zip(src, s.labels) for i in row)
    assert torch.equal(s.images, again.images)
    assert untouched == [True, True]  # one unit (4 classes x 2) per run


def test_paused_hooks_ignore_forwards():
    from ddkit.methods.gsm import ClassStatHooks, collect_class_targets
    from tests.test_gvbsm import _Net

    net = _Net().eval()
    hooks = ClassStatHooks(net, cell=4, alpha=0.6, drop_rate=0.0, num_classes=2)
    collect_class_targets(hooks, net, [(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 0, 1]))])
    hooks.labels = torch.tensor([0, 1])
    with hooks.paused():
        net(torch.randn(5, 3, 8, 8))  # 5 rows against 2 labels: a hook that ran would fail or keep a term
    assert all(h.ema is None and h.term is None for h in hooks.hooks)
    net(torch.randn(2, 3, 8, 8))
    assert all(h.term is not None for h in hooks.hooks)
