"""Issue #16's method fixes: CAD-Prune's per-dataset window and early-checkpoint ablation, the CA2D pool
reading, EL2N with Paul et al.'s defaults, EL2N-Best (validation-chosen window) and EL2N-SL (Definition 1)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from ddkit.config import build
from ddkit.methods.base import create_method, method_spec
from ddkit.methods.cad import CADConfig, cad_from_scores, dynamics_config, resolve_span
from ddkit.methods.coresets import El2nEasyConfig
from ddkit.methods.dynamics import DynamicsConfig, _lr_lambda, _Recorder
from ddkit.methods.el2n import El2nBestConfig, holdout
from ddkit.models import create_model
from ddkit.teachers import Teacher
from ddkit.utils import DDKitError
from tests.conftest import make_toy
from tests.test_coresets import hand_dynamics

TINY = dict(proxy_arch="convnet-d1", proxy_width=8, proxy_batch_size=8)


# --- CAD-Prune: J = R − W outside ImageNet-1K; early-checkpoint ablation -------------------------------

def test_cad_span_rule_is_whole_run_outside_imagenet():
    assert CADConfig().span is None
    assert resolve_span(None, 10) is None and resolve_span(None, 100) is None and resolve_span(None, 1000) == 6
    assert resolve_span(4, 10) == 4 and resolve_span(4, 1000) == 4
    p = torch.rand(12, 5)
    cad, j = cad_from_scores(p, None, 2)
    assert j == 10  # J = R − W: the two windows start at points 0 and 1
    torch.testing.assert_close(cad, (p[0:10].std(0) + p[1:11].std(0)) / 2)
    with pytest.raises(DDKitError, match="W \\+ 2"):
        cad_from_scores(p[:3], None, 2)


def test_cad_early_checkpoint_ablation_keeps_the_long_runs_schedule():
    cfg = build(CADConfig, dict(budget_epochs=3, early_checkpoint_of=30, **TINY))
    d = dynamics_config(cfg, 3.0, 80)
    assert d.schedule_epochs == 30.0 and d.epochs == 3
    steps = 10
    matched = _lr_lambda(dynamics_config(build(CADConfig, dict(budget_epochs=3, **TINY)), 3.0, 80), steps)
    early = _lr_lambda(d, steps)
    assert matched(2 * steps) == pytest.approx(0.1)  # StepLR@151/300 compressed to K = 3: decayed by epoch 2
    assert all(early(it) == 1.0 for it in range(3 * steps))  # 3 epochs of a 30-epoch schedule: no decay yet
    assert _lr_lambda(DynamicsConfig(epochs=3, schedule="cosine", schedule_epochs=30), steps)(3 * steps) > 0.97
    with pytest.raises(DDKitError, match="≥ the budget"):
        dynamics_config(build(CADConfig, dict(budget_epochs=3, early_checkpoint_of=2, **TINY)), 3.0, 80)
    toy = make_toy(20, 4, 8)
    out = create_method("cad-prune", ipc=2, budget_epochs=2, early_checkpoint_of=20, dynamics_cache="none", **TINY)(
        toy, device="cpu", progress=False)
    assert out.meta["cad_early_checkpoint_of"] == 20 and out.meta["cad_span_rule"].startswith("J = R − W")


def test_ca2d_states_its_pool_reading():
    toy = make_toy(20, 4, 8)
    torch.manual_seed(0)
    t = Teacher(create_model("convnet-d1", 4, 8, width=8), "convnet-d1", toy.classes, toy.mean, toy.std, 8,
                arch_kw={"width": 8})
    assert method_spec("ca2d").config().pool == "coreset"  # the paper's "from this coreset"
    out = create_method("ca2d", ipc=2, budget_epochs=1, dynamics_cache="none", **TINY)(toy, t, device="cpu",
                                                                                    progress=False)
    assert out.meta["pool"] == "cad-coreset" and "from this coreset" in out.meta["pool_reading"]


# --- EL2N: Paul et al.'s defaults; EL2N-Best; EL2N-SL ----------------------------------------------------

def test_el2n_defaults_are_paul_et_al():
    c = El2nEasyConfig()
    assert (c.proxy.runs, c.proxy.early_epochs) == (10, 20.0) and c.proxy.epochs >= 20
    d = c.proxy
    assert (d.runs, d.early_epochs, d.temperature) == (10, 20.0, 0.0)
    assert El2nBestConfig().proxy.runs == 10


def test_el2n_best_picks_the_window_on_a_held_out_slice(tmp_path, monkeypatch):
    ds = make_toy(n_per_class=10, num_classes=2, size=8)
    el2n = torch.arange(20, dtype=torch.float32).view(1, 1, 20)  # easy→hard = dataset order inside a class
    hand_dynamics(ds.labels, el2n=el2n).save(tmp_path / "dyn")
    import ddkit.methods.el2n as m

    trained = []
    real_train = m.train_candidate

    def spy_train(images, labels, dataset, cfg, device, seed):
        trained.append(len(labels))
        return real_train(images, labels, dataset, cfg, device, seed)

    monkeypatch.setattr(m, "train_candidate", spy_train)
    kw = dict(ipc=2, dynamics_path=str(tmp_path / "dyn"), offsets=(0.0, 0.5, 0.9), val_per_class=3,
              search_epochs=2, search_arch="convnet-d1", search_width=8, search_batch_size=4)
    out = create_method("el2n-best", **kw)(ds, device="cpu", progress=False)
    val = set(torch.nonzero(holdout(ds, 3, 0)).flatten().tolist())
    assert len(val) == 6 and not val & set(out.meta["source_indices"])  # the slice is never selected
    res = out.meta["el2n_best"]
    assert set(res["offsets"]) == {"0.0", "0.5", "0.9"} and trained == [4, 4, 4]
    assert res["chosen"] == max(map(float, res["offsets"]), key=lambda b: (res["offsets"][str(b)], -b))
    # the chosen window is ⌊β·7⌋ into each class's 7 non-validation samples, easy→hard
    for c in range(2):
        pool = [i for i in ds.class_indices(c).tolist() if i not in val]
        start = min(int(res["chosen"] * 7), 5)
        assert out.meta["source_indices"][2 * c:2 * c + 2] == pool[start:start + 2]
    assert out.labels.tolist() == [0, 0, 1, 1]


def test_el2n_best_candidate_fast_path_runs_bf16_and_compiled_like_eager(monkeypatch):
    """search_cpu_amp forwards in bf16 where the CPU has it (fp32 elsewhere); search_compile trains the same
    network as eager and returns the plain module."""
    from ddkit.methods.el2n import train_candidate
    from ddkit.utils import cpu_bf16_native

    ds = make_toy(n_per_class=4, num_classes=2, size=8)
    x, y = ds.images.float() / 255, ds.labels
    base = dict(ipc=2, search_epochs=2, search_arch="convnet-d1", search_width=8, search_batch_size=4,
                search_dsa="none")
    dtypes = []
    real = create_model

    def spy_model(*a, **k):
        net = real(*a, **k)
        net.register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype))
        return net

    import ddkit.methods.el2n as m
    with monkeypatch.context() as mp:
        mp.setattr(m, "create_model", spy_model)
        train_candidate(x, y, ds, El2nBestConfig(**base, search_cpu_amp=True), torch.device("cpu"), 0)
    assert set(dtypes) == {torch.bfloat16 if cpu_bf16_native() else torch.float32}
    eager = train_candidate(x, y, ds, El2nBestConfig(**base), torch.device("cpu"), 0)
    comp = train_candidate(x, y, ds, El2nBestConfig(**base, search_compile=True), torch.device("cpu"), 0)
    assert not hasattr(comp, "_orig_mod") and set(comp.state_dict()) == set(eager.state_dict())
    probe = torch.rand(6, 3, 8, 8)
    assert torch.allclose(comp(probe).softmax(1), eager(probe).softmax(1), atol=2e-3)


class _Lin(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 4)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_el2n_sl_is_definition_1():
    torch.manual_seed(0)
    ds = make_toy(5, 4, 8)
    model, q, T = _Lin(), torch.randn(len(ds), 4) * 3, 4.0
    mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.std).view(1, -1, 1, 1)
    rec = _Recorder(model, ds.images, ds.labels, mean, std, torch.device("cpu"), False, soft=q, temperature=T)
    got = rec()["el2n"]
    z = model((ds.images.float() / 255 - mean) / std)
    want = ((z / T).softmax(1) - (q / T).softmax(1)).norm(dim=1) / T
    torch.testing.assert_close(got, want.detach())
    hard = _Recorder(model, ds.images, ds.labels, mean, std, torch.device("cpu"), False)()["el2n"]
    assert not torch.allclose(hard, got)


def test_el2n_sl_end_to_end_keeps_the_easiest(tmp_path):
    ds = make_toy(8, 3, 8)
    torch.manual_seed(0)
    t = Teacher(create_model("convnet-d1", 3, 8, width=8), "convnet-d1", ds.classes, ds.mean, ds.std, 8,
                arch_kw={"width": 8})
    kw = dict(ipc=2, dynamics_cache=str(tmp_path), proxy_epochs=2, proxy_runs=2, proxy_early_epochs=1.0, **TINY)
    out = create_method("el2n-sl", **kw)(ds, t, device="cpu", progress=False)
    sc = out.meta["scores"]
    assert sc["score"] == "el2n-sl" and sc["mode"] == "easy" and sc["temperature"] == 20.0
    assert sc["selected"]["mean"] <= sc["all"]["mean"] and len(list(tmp_path.iterdir())) == 1
    again = create_method("el2n-sl", **kw)(ds, t, device="cpu", progress=False)  # from the cache
    assert again.meta["source_indices"] == out.meta["source_indices"]
    with pytest.raises(DDKitError, match="teacher"):
        create_method("el2n-sl", **kw)(ds, device="cpu", progress=False)
