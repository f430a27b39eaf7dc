"""Training-dynamics recorder: shapes, reproducibility, GraNd closed form, sub-epoch points, caching."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ddkit.data.stream import DeviceBatches
from ddkit.methods import dynamics as dynmod
from ddkit.methods.dynamics import (Dynamics, DynamicsConfig, _lr_lambda, _Recorder, dynamics_for, record_dynamics,
                                    window_std)
from ddkit.models import create_model
from ddkit.utils import DDKitError
from tests.conftest import make_toy

TINY = DynamicsConfig(arch="convnet-d1", width=8, epochs=2, batch_size=16, lr=0.05)


def test_record_shapes_ranges_and_reproducible():
    ds = make_toy(n_per_class=10, num_classes=4, size=8)
    a = record_dynamics(ds, TINY, "cpu", progress=False)
    b = record_dynamics(ds, TINY, "cpu", progress=False)
    assert a.p_true.shape == a.margin.shape == a.correct.shape == (2, 40)
    assert a.el2n.shape == a.grand.shape == (1, 1, 40)  # early = max(1, 0.1·2) = epoch 1 only
    assert a.record_epochs.tolist() == [1.0, 2.0] and a.early_epochs.tolist() == [1.0]
    assert float(a.p_true.min()) >= 0.0 and float(a.p_true.max()) <= 1.0
    assert float(a.el2n.min()) >= 0.0 and float(a.el2n.max()) <= 2 ** 0.5 + 1e-6
    assert torch.all(a.grand >= a.el2n - 1e-6)  # ‖p−y‖·sqrt(‖h‖²+1) ≥ ‖p−y‖
    # margin > 0 exactly when the true class wins the argmax
    assert torch.equal(a.correct, a.margin > 0)
    for k in ("p_true", "margin", "correct", "entropy", "el2n", "grand"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    c = record_dynamics(ds, DynamicsConfig(**{**TINY.__dict__, "seed": 1}), "cpu", progress=False)
    assert not torch.equal(a.p_true, c.p_true)
    assert torch.equal(a.labels, ds.labels) and a.classes == ds.classes


def test_runs_and_subepoch_points():
    ds = make_toy(n_per_class=10, num_classes=4, size=8)  # 40 samples, bs 10 -> 4 steps/epoch
    cfg = DynamicsConfig(arch="convnet-d1", width=8, epochs=2, batch_size=10, record_every=2, early_epochs=1.0, runs=2)
    d = record_dynamics(ds, cfg, "cpu", progress=False)
    assert d.record_epochs.tolist() == [0.5, 1.0, 1.5, 2.0]
    assert d.early_epochs.tolist() == [0.5, 1.0]
    assert d.el2n.shape == (2, 2, 40)
    assert not torch.equal(d.el2n[0], d.el2n[1])  # the second run has its own seed
    assert d.meta["record_iterations"] == [2, 4, 6, 8]
    with pytest.raises(DDKitError, match="record_every"):
        record_dynamics(ds, DynamicsConfig(**{**cfg.__dict__, "record_every": 100}), "cpu", progress=False)


def test_grand_closed_form_matches_autograd():
    torch.manual_seed(0)
    ds = make_toy(n_per_class=3, num_classes=3, size=8)
    model = create_model("convnet-d1", 3, 8, 3, width=4)
    mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.std).view(1, -1, 1, 1)
    rec = _Recorder(model, DeviceBatches(ds, "cpu"), ds.labels, mean, std, torch.device("cpu"), amp=False)()
    x = (ds.images.float() / 255 - mean) / std
    for i in range(len(ds)):
        model.zero_grad()
        F.cross_entropy(model(x[i:i + 1]), ds.labels[i:i + 1]).backward()
        g = torch.cat([model.classifier.weight.grad.flatten(), model.classifier.bias.grad])
        assert rec["grand"][i].item() == pytest.approx(g.norm().item(), rel=1e-4)
        p = model(x[i:i + 1]).softmax(1)[0].detach()
        assert rec["el2n"][i].item() == pytest.approx((p - F.one_hot(ds.labels[i], 3)).norm().item(), rel=1e-5)
        assert rec["p_true"][i].item() == pytest.approx(p[ds.labels[i]].item(), rel=1e-5)


def test_step_schedule_compressed_to_k():
    lam = _lr_lambda(DynamicsConfig(epochs=10, schedule="step"), steps=3)
    assert [lam(i) for i in (0, 14, 15, 29)] == [1.0, 1.0, 0.1, 0.1]  # milestone round(10·151/300)=5 epochs
    cos = _lr_lambda(DynamicsConfig(epochs=2, schedule="cosine"), steps=2)
    assert cos(0) == pytest.approx(1.0) and cos(2) == pytest.approx(0.5) and cos(4) == pytest.approx(0.0)


def test_stop_epochs_shortens_the_run_and_compresses_the_schedule():
    ds = make_toy(n_per_class=10, num_classes=4, size=8)  # 40 samples, bs 10 -> 4 steps/epoch
    base = dict(arch="convnet-d1", width=8, epochs=1, batch_size=10, record_every=1, schedule="none")
    full = record_dynamics(ds, DynamicsConfig(**base), "cpu", progress=False)
    short = record_dynamics(ds, DynamicsConfig(**base, stop_epochs=0.5), "cpu", progress=False)
    # round(0.5·4) = 2 iterations trained and recorded; with a flat schedule they are the full run's prefix
    assert short.meta["record_iterations"] == [1, 2] and short.record_epochs.tolist() == [0.25, 0.5]
    assert torch.equal(short.p_true, full.p_true[:2]) and torch.equal(short.margin, full.margin[:2])
    # the step milestone moves inside the shortened run: round(total·151/300) iterations
    lam = _lr_lambda(DynamicsConfig(epochs=1, stop_epochs=0.2, schedule="step"), steps=100)
    assert [lam(i) for i in (9, 10, 19)] == [1.0, 0.1, 0.1]  # total 20 → milestone round(10.07) = 10
    with pytest.raises(DDKitError, match="stop_epochs"):
        record_dynamics(ds, DynamicsConfig(**base, stop_epochs=1.5), "cpu", progress=False)


def test_window_std_values():
    p = torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    u = window_std(p, 3)
    assert u.shape == (2, 2)
    s = torch.tensor([0.0, 1.0, 0.0]).std().item()  # unbiased: sqrt(1/3)
    assert u[0].tolist() == pytest.approx([s, 0.0])
    assert u[1].tolist() == pytest.approx([s, s])
    with pytest.raises(DDKitError, match="span"):
        window_std(p, 5)


def test_save_load_and_cache(tmp_path, monkeypatch):
    ds = make_toy(n_per_class=6, num_classes=3, size=8)
    calls = []
    real = dynmod.record_dynamics

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(dynmod, "record_dynamics", counting)
    d1 = dynamics_for(ds, TINY, tmp_path, "cpu", progress=False)
    d2 = dynamics_for(ds, TINY, tmp_path, "cpu", progress=False)
    assert len(calls) == 1
    for k in ("p_true", "margin", "correct", "entropy", "el2n", "grand", "labels", "record_epochs"):
        assert torch.equal(getattr(d1, k), getattr(d2, k)), k
    assert d2.config["arch"] == "convnet-d1" and d2.classes == ds.classes
    dynamics_for(ds, DynamicsConfig(**{**TINY.__dict__, "epochs": 3}), tmp_path, "cpu", progress=False)
    assert len(calls) == 2  # another config is another entry
    other = make_toy(n_per_class=6, num_classes=3, size=8, seed=5)
    dynamics_for(other, TINY, tmp_path, "cpu", progress=False)
    assert len(calls) == 3  # same name and size but other pixels: not a cache hit
    named = make_toy(n_per_class=6, num_classes=3, size=8)
    named.name = "tar:../data/x.tar.gz"  # a path-like dataset name stays one folder in the cache
    dynamics_for(named, TINY, tmp_path / "c2", "cpu", progress=False)
    assert [p.name.startswith("tar_.._data_x.tar.gz-") for p in (tmp_path / "c2").iterdir()] == [True]
    d1.save(tmp_path / "one")
    back = Dynamics.load(tmp_path / "one")
    assert torch.equal(back.correct, d1.correct) and back.correct.dtype == torch.bool
    with pytest.raises(DDKitError, match="recorded on"):
        back.check_matches(make_toy(n_per_class=5, num_classes=3, size=8))
    with pytest.raises(FileNotFoundError):
        Dynamics.load(tmp_path / "missing")
