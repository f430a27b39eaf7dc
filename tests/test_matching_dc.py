"""DC / DSA: the gradient-matching distance by hand, siamese DSA sharing, loop tables, small runs."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from ddkit.augment import Augment
from ddkit.augment.zca import Space
from ddkit.data.base import ImageDataset
from ddkit.methods import dc as dcmod
from ddkit.methods.dc import DCConfig, DSAConfig, distance_wb, gradient_matching, match_loss, settings
from ddkit.methods.matching_ops import LossLog, RealPool
from ddkit.utils import DDKitError, make_generator
from tests.conftest import make_toy


def _hand_grads(x, y, w1, b1, w2, b2):
    """Analytic CE gradients of Linear -> ReLU -> Linear (mean over the batch), written out by hand."""
    z1 = x @ w1.T + b1
    h = z1.clamp_min(0)
    z2 = h @ w2.T + b2
    p = torch.softmax(z2, 1)
    d2 = (p - F.one_hot(y, z2.shape[1]).float()) / len(x)
    dw2 = d2.T @ h
    d1 = (d2 @ w2) * (z1 > 0).float()
    dw1 = d1.T @ x
    return [dw1, d1.sum(0), dw2, d2.sum(0)]


def _hand_distance(gr, gs):
    """Σ over weight matrices and their rows of 1 - cos, with plain Python arithmetic; biases count 0."""
    total = 0.0
    for a, b in zip(gr, gs):
        if a.dim() == 1:
            continue
        for ra, rb in zip(a.tolist(), b.tolist()):
            dot = sum(u * v for u, v in zip(ra, rb))
            na = math.sqrt(sum(u * u for u in ra))
            nb = math.sqrt(sum(v * v for v in rb))
            total += 1 - dot / (na * nb + 1e-6)
    return total


def test_dc_distance_equals_hand_computation_on_two_layer_net():
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).double()
    x_real, y_real = torch.randn(7, 5, generator=g).double(), torch.randint(0, 3, (7,), generator=g)
    x_syn, y_syn = torch.randn(2, 5, generator=g).double(), torch.tensor([0, 2])
    params = list(net.parameters())
    g_real = torch.autograd.grad(F.cross_entropy(net(x_real), y_real), params)
    g_syn = torch.autograd.grad(F.cross_entropy(net(x_syn), y_syn), params)
    w1, b1, w2, b2 = [p.detach() for p in params]
    hand_r, hand_s = _hand_grads(x_real, y_real, w1, b1, w2, b2), _hand_grads(x_syn, y_syn, w1, b1, w2, b2)
    for a, b in zip(g_real, hand_r):  # the autograd gradients are the hand-derived ones
        assert torch.allclose(a, b, atol=1e-12)
    expected = _hand_distance(hand_r, hand_s)
    got = float(match_loss(g_syn, g_real, "ours"))
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert 0 < got < 2 * (4 + 3)  # at most 2 per row (7 rows); biases are ignored
    assert float(distance_wb(g_real[1], g_syn[1])) == 0.0


def test_conv_rows_are_output_channels_and_other_metrics():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(4, 3, 3, 3, generator=g), torch.randn(4, 3, 3, 3, generator=g)
    rows = sum(1 - F.cosine_similarity(a[i].reshape(1, -1), b[i].reshape(1, -1), eps=0).item() for i in range(4))
    assert float(distance_wb(a, b)) == pytest.approx(rows, rel=1e-4)
    assert float(distance_wb(a, a)) == pytest.approx(0.0, abs=1e-5)
    assert float(match_loss([a], [b], "mse")) == pytest.approx(float(((a - b) ** 2).sum()), rel=1e-6)
    cos = F.cosine_similarity(a.reshape(1, -1), b.reshape(1, -1)).item()
    assert float(match_loss([a], [b], "cos")) == pytest.approx(1 - cos, rel=1e-4)


def test_loop_table_and_presets():
    assert settings(DCConfig(ipc=10)) == {"iterations": 1000, "outer_loop": 10, "inner_loop": 50, "batch_real": 256}
    assert settings(DCConfig(ipc=50))["outer_loop"] == 50 and settings(DCConfig(ipc=50))["inner_loop"] == 10
    cpu = settings(DCConfig(ipc=10, preset="cpu"))
    assert cpu == {"iterations": 10, "outer_loop": 2, "inner_loop": 5, "batch_real": 32}
    assert settings(DCConfig(ipc=10, preset="cpu", iterations=3))["iterations"] == 3
    with pytest.raises(DDKitError, match="ipc=7"):
        settings(DCConfig(ipc=7))
    assert settings(DCConfig(ipc=7, outer_loop=2, inner_loop=3))["outer_loop"] == 2
    assert DSAConfig().init == "real" and DSAConfig().dsa and not DCConfig().dsa
    with pytest.raises(DDKitError, match="preset"):
        settings(DCConfig(ipc=1, preset="fast"))


def _one_image_per_class() -> ImageDataset:
    g = torch.Generator().manual_seed(3)
    imgs = torch.randint(0, 256, (2, 3, 8, 8), generator=g, dtype=torch.uint8)
    return ImageDataset(imgs, torch.tensor([0, 1]), ["a", "b"], [0.5] * 3, [0.25] * 3, name="two")


def _match_once(cfg: DCConfig, ds: ImageDataset) -> float:
    pool = RealPool(ds, Space(ds.mean, ds.std), torch.device("cpu"))
    syn = pool.encode(ds.images)  # the synthetic images ARE the real ones
    s = {"iterations": 0, "outer_loop": 1, "inner_loop": 1, "batch_real": 1}
    log = LossLog(1, "t", False, "dsa")
    gradient_matching(pool, [0, 1], syn, cfg, s, make_generator(0, "t"), log, "dsa")
    return log.values[0]


def test_dsa_shared_draw_gives_identical_views_hence_zero_loss(monkeypatch):
    """Siamese DSA: real and synthetic batches see the same draw, so identical images match exactly;
    drawing separately for the two batches (what DSA must not do) gives a clearly positive loss."""
    ds = _one_image_per_class()
    # mse: identical gradients give exactly 0 ('ours' gives 1 per all-zero row, e.g. dead ReLUs).
    cfg = DSAConfig(ipc=1, model="mlp", lr_img=0.0, dsa_strategy="crop_scale_rotate", dis_metric="mse")
    assert _match_once(cfg, ds) == pytest.approx(0.0, abs=1e-12)
    recorded = []

    class Recorder(Augment):
        def __init__(self, inner):
            self.inner = inner

        def sample(self, n, image_size, *, generator=None, device=None):
            return self.inner.sample(n, image_size, generator=generator, device=device)

        def apply(self, x, params):
            recorded.append((len(x), {k: v.clone() for k, v in params.items()}))
            return self.inner.apply(x, params)

    real_dsa = dcmod.dsa
    monkeypatch.setattr(dcmod, "dsa", lambda *a, **k: Recorder(real_dsa(*a, **k)))
    _match_once(cfg, ds)
    assert len(recorded) == 4  # (real, syn) for each of 2 classes
    for (n_r, p_r), (n_s, p_s) in [(recorded[0], recorded[1]), (recorded[2], recorded[3])]:
        assert p_r.keys() == p_s.keys() and all(torch.equal(p_r[k], p_s[k]) for k in p_r)
        assert all(v.shape[0] == 1 for k, v in p_r.items())  # one draw for the whole batch
    assert any(not torch.equal(recorded[0][1][k], recorded[2][1][k]) for k in recorded[0][1])  # new draw per class

    fresh = torch.Generator().manual_seed(123)

    class Unshared(Recorder):  # draws afresh at every apply: breaks the siamese pairing
        def apply(self, x, params):
            return self.inner.apply(x, self.inner.sample(1, x.shape, generator=fresh))

    monkeypatch.setattr(dcmod, "dsa", lambda *a, **k: Unshared(real_dsa(*a, **k)))
    assert _match_once(cfg, ds) > 1e-3


def test_dc_small_run_changes_images_and_records_curve():
    ds = make_toy(n_per_class=6, num_classes=3, size=8)
    cfg = DCConfig(ipc=2, model="mlp", iterations=2, outer_loop=2, inner_loop=1, batch_real=4, init="real", lr_img=1.0)
    pool = RealPool(ds, Space(ds.mean, ds.std), torch.device("cpu"))
    syn0 = torch.cat([pool.batch(c, 2, make_generator(0, "i", c))[0] for c in range(3)])
    log = LossLog(3, "t", False, "dc")
    out = gradient_matching(pool, [0, 1, 2], syn0.clone(), cfg, settings(cfg), make_generator(0, "r"), log, "dc")
    assert out.shape == syn0.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, syn0)
    assert len(log.values) == 3 and log.meta()["loss_curve"][0][0] == 0
