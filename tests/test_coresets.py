"""Coreset scores on hand-built dynamics, selection rules, CCS, herding, k-center, and every method end to end."""
from __future__ import annotations

import pytest
import torch

from ddkit.data.base import to_float
from ddkit.methods import coresets  # noqa: F401  (registers the methods)
from ddkit.methods.base import create_method
from ddkit.methods.el2n import window_search
from ddkit.methods.coresets_scores import (ccs_allocate, ccs_select, compute_score, difficulty, early_score,
                                           forgetting_counts, herding_select, kcenter_select, select_by_difficulty)
from ddkit.methods.dynamics import Dynamics
from ddkit.models import create_model
from ddkit.teachers import Teacher
from ddkit.utils import DDKitError
from tests.conftest import make_toy


def hand_dynamics(labels: torch.Tensor, r: int = 4, **given) -> Dynamics:
    """A Dynamics with chosen tensors (the rest zeros) — no training involved."""
    n = len(labels)
    t = {"p_true": torch.zeros(r, n), "margin": torch.zeros(r, n), "correct": torch.zeros(r, n, dtype=torch.bool),
         "entropy": torch.zeros(n), "el2n": torch.zeros(1, 1, n), "grand": torch.zeros(1, 1, n)}
    t.update(given)
    return Dynamics(**t, labels=labels.clone(), record_epochs=torch.arange(1, r + 1).float(),
                    early_epochs=torch.ones(t["el2n"].shape[1]), dataset="toy/train")


def test_forgetting_aum_dynunc_el2n_exact_values():
    correct = torch.tensor([[1, 1, 0, 0, 0], [0, 1, 0, 1, 0], [1, 1, 0, 1, 0], [0, 1, 0, 0, 1]]).bool()
    assert forgetting_counts(correct).tolist() == [2.0, 0.0, 4.0, 1.0, 0.0]  # never-learned (col 2) gets R = 4
    assert forgetting_counts(correct, "zero").tolist() == [2.0, 0.0, 0.0, 1.0, 0.0]  # DeepCore: never counted
    with pytest.raises(DDKitError, match="unknown --unlearned"):
        forgetting_counts(correct, "inf")
    margin = torch.tensor([[1.0, -2.0], [3.0, -2.0], [2.0, 1.0], [2.0, 3.0]])
    p = torch.tensor([[0.1, 0.5], [0.3, 0.5], [0.5, 0.5], [0.7, 0.9]])
    el2n = torch.tensor([[[0.2, 0.4], [0.6, 0.8]], [[0.4, 0.2], [1.0, 0.0]]])  # runs=2, E=2, N=2
    dyn = hand_dynamics(torch.tensor([0, 1]), p_true=p, margin=margin, correct=correct[:, :2], el2n=el2n,
                        grand=2 * el2n, entropy=torch.tensor([0.3, 0.1]))
    assert compute_score("aum", dyn).tolist() == pytest.approx([2.0, 0.0])
    assert difficulty("aum", compute_score("aum", dyn)).tolist() == pytest.approx([-2.0, 0.0])  # low AUM = hard
    assert compute_score("el2n", dyn, early_reduce="last").tolist() == pytest.approx([0.8, 0.4])
    assert compute_score("el2n", dyn, early_reduce="mean").tolist() == pytest.approx([0.55, 0.35])
    assert compute_score("grand", dyn).tolist() == pytest.approx([1.6, 0.8])
    assert compute_score("entropy", dyn).tolist() == pytest.approx([0.3, 0.1])
    # span 2: windows of (0.1,0.3),(0.3,0.5),(0.5,0.7): unbiased std = 0.2/sqrt(2) each; col 1: 0, 0, 0.4/sqrt(2)
    du = compute_score("dyn-unc", dyn, span=2)
    assert du.tolist() == pytest.approx([0.2 / 2 ** 0.5, (0.4 / 2 ** 0.5) / 3], rel=1e-5)
    # span 3 over R=4: two windows
    s1 = torch.tensor([0.1, 0.3, 0.5]).std().item()
    assert compute_score("dyn-unc", dyn, span=3)[0].item() == pytest.approx(s1, rel=1e-5)
    with pytest.raises(DDKitError, match="span"):
        compute_score("dyn-unc", dyn, span=10)
    with pytest.raises(DDKitError):
        early_score(el2n, "median")


def test_select_by_difficulty_modes():
    d = torch.tensor([5.0, 1.0, 9.0, 3.0, 7.0, 0.0, 8.0, 2.0, 6.0, 4.0])  # easy→hard: 5,1,7,3,9,0,8,4,6,2
    assert select_by_difficulty(d, 3, "easy").tolist() == [5, 1, 7]
    assert select_by_difficulty(d, 3, "hard").tolist() == [2, 6, 4]
    assert select_by_difficulty(d, 3, "window", 0.5).tolist() == [0, 8, 4]       # start ⌊0.5·10⌋ = 5
    assert select_by_difficulty(d, 3, "window", 1.0).tolist() == [4, 6, 2]       # clamped to the hardest window
    assert select_by_difficulty(d, 3, "window", 0.0).tolist() == [5, 1, 7]
    assert select_by_difficulty(d, 4, "window", 0.5, unit="selmatch").tolist() == [4, 8, 0, 9]  # skip ⌊0.5·4⌋ = 2
    with pytest.raises(DDKitError):
        select_by_difficulty(d, 3, "middle")
    with pytest.raises(DDKitError):
        select_by_difficulty(d, 11, "easy")
    with pytest.raises(DDKitError):
        select_by_difficulty(d, 3, "window", 1.5)


def test_ccs_allocation_and_cut():
    assert ccs_allocate([1, 5, 10, 0], 8) == [1, 3, 4, 0]
    assert ccs_allocate([3, 3], 5) == [2, 3]
    assert ccs_allocate([2, 2, 2], 5) == [1, 2, 2]
    assert sum(ccs_allocate([1, 1, 50], 20)) == 20
    aum = torch.arange(10).float()  # samples 0 and 1 have the lowest AUM -> cut at β = 0.2
    score = torch.tensor([9.0, 9.0, 0, 0, 0, 0, 0, 0, 1, 1])
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        sel = ccs_select(score, aum, 4, mislabel_ratio=0.2, strata=2, generator=g).tolist()
        assert len(sel) == 4 and len(set(sel)) == 4
        assert 8 in sel and 9 in sel          # the small stratum is taken whole
        assert 0 not in sel and 1 not in sel  # the mislabel cut removed them
    # the cut shrinks so that ipc samples remain
    sel = ccs_select(score, aum, 10, mislabel_ratio=0.2, strata=2, generator=torch.Generator().manual_seed(0))
    assert sorted(sel.tolist()) == list(range(10))


def test_herding_direction_and_kcenter_farthest():
    f = torch.tensor([[0.0, 0.0], [2.0, 0.0], [-2.0, 0.0], [10.0, 0.0]])  # class mean (2.5, 0)
    # textbook argmin: closest to μ first, then the one bringing the mean back to μ
    assert herding_select(f, 3).tolist() == [1, 0, 3]
    line = torch.tensor([[0.0], [1.0], [2.0], [10.0], [5.0]])
    assert kcenter_select(line, 4, first=0).tolist() == [0, 3, 4, 2]
    assert kcenter_select(line, 2, first=3).tolist() == [3, 0]


def _check_set(ds, out, ipc):
    src = torch.tensor(out.meta["source_indices"])
    assert len(out) == ipc * ds.num_classes and len(set(src.tolist())) == len(src)
    assert torch.bincount(out.labels, minlength=ds.num_classes).tolist() == [ipc] * ds.num_classes
    assert torch.equal(out.labels, ds.labels[src])
    assert torch.equal(out.images, to_float(ds.images[src]))
    return src


def test_methods_on_precomputed_dynamics(tmp_path):
    ds = make_toy(n_per_class=5, num_classes=2, size=8)
    el2n = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.0]).view(1, 1, 10)
    margin = -el2n[0].expand(4, 10).clone()  # AUM = −el2n: same ranking, opposite direction
    hand_dynamics(ds.labels, el2n=el2n, margin=margin).save(tmp_path / "dyn")
    kw = dict(ipc=2, dynamics_path=str(tmp_path / "dyn"))
    easy = create_method("el2n-easy", **kw)(ds, device="cpu", progress=False)
    hard = create_method("el2n-hard", **kw)(ds, device="cpu", progress=False)
    assert easy.meta["source_indices"] == [1, 3, 9, 5]
    assert hard.meta["source_indices"] == [2, 4, 6, 8]
    assert create_method("el2n", **kw)(ds, device="cpu", progress=False).meta["source_indices"] == [2, 4, 6, 8]
    assert create_method("aum", **kw)(ds, device="cpu", progress=False).meta["source_indices"] == [2, 4, 6, 8]
    aum_easy = create_method("aum", mode="easy", **kw)(ds, device="cpu", progress=False)
    assert aum_easy.meta["source_indices"] == [1, 3, 9, 5]
    win = create_method("el2n", mode="window", window_offset=0.4, **kw)(ds, device="cpu", progress=False)
    assert win.meta["source_indices"] == [0, 4, 7, 8]  # start ⌊0.4·5⌋ = 2 in easy→hard order
    assert hard.meta["scores"]["selected"]["min"] == pytest.approx(0.6)
    with pytest.raises(DDKitError, match="recorded on"):
        create_method("el2n", **kw)(make_toy(n_per_class=6, num_classes=2, size=8), device="cpu", progress=False)
    with pytest.raises(DDKitError, match="needs 6 images per class"):
        create_method("el2n", ipc=6, dynamics_path=str(tmp_path / "dyn"))(ds, device="cpu", progress=False)
    # EL2N-Best picks β on the validation slice through the given evaluator
    best, out, res = window_search([0.0, 0.4, 1.0], lambda b: create_method(
        "el2n", ipc=2, mode="window", window_offset=b, dynamics_path=str(tmp_path / "dyn"))(ds, device="cpu",
                                                                                            progress=False),
        lambda d: -abs(d.meta["source_indices"][0] - 0))
    assert best == 0.4 and set(res) == {0.0, 0.4, 1.0} and out.meta["source_indices"][0] == 0


PROXY = dict(proxy_arch="convnet-d1", proxy_width=8, proxy_epochs=3, proxy_batch_size=16, proxy_lr=0.05, proxy_runs=1,
             proxy_early_epochs=0.0)  # EL2N methods default to Paul et al. (10 runs, epoch 20): align them


def test_every_method_end_to_end(tmp_path):
    ds = make_toy(n_per_class=8, num_classes=3, size=8)
    teacher = Teacher(create_model("convnet-d1", 3, 8, 3, width=8), "convnet-d1", ds.classes, ds.mean, ds.std, 8, 3)
    extra = {"dyn-unc": {"span": 2}, "dynamic-uncertainty": {"span": 3}, "ccs": {"strata": 4}}
    names = ["el2n", "el2n-easy", "el2n-hard", "grand", "forgetting", "forgetting-easy", "aum", "entropy",
             "dyn-unc", "dynamic-uncertainty", "ccs"]
    recordings = set()
    for name in names:
        out = create_method(name, ipc=3, dynamics_cache=str(tmp_path), **PROXY, **extra.get(name, {}))(
            ds, device="cpu", progress=False)
        _check_set(ds, out, 3)
        recordings.add(out.meta["scores"]["dynamics"])
    assert len(recordings) == 1 and len(list(tmp_path.iterdir())) == 1  # one shared proxy recording
    for name, kw in (("herding", {}), ("kcenter", {}), ("k-center", {"start": "mean"})):
        out = create_method(name, ipc=3, **kw)(ds, teacher, device="cpu", progress=False)
        _check_set(ds, out, 3)
    with pytest.raises(DDKitError, match="teacher"):
        create_method("herding", ipc=3)(ds, device="cpu", progress=False)
    ccs = create_method("ccs", ipc=3, dynamics_cache=str(tmp_path), seed=1, strata=4, **PROXY)
    a, b = ccs(ds, device="cpu", progress=False), ccs(ds, device="cpu", progress=False)
    assert a.meta["source_indices"] == b.meta["source_indices"]  # seeded stratum sampling


def test_forgetting_unlearned_convention_reaches_the_selection(tmp_path):
    # class 0: images 0-4; image 1 is never learned, image 3 forgotten twice, image 0 once (4 record points)
    ds = make_toy(n_per_class=5, num_classes=2, size=8)
    correct = torch.ones(4, 10, dtype=torch.bool)
    correct[:, 1] = False
    correct[1, 3] = correct[3, 3] = False
    correct[2, 0] = False
    hand_dynamics(ds.labels, correct=correct).save(tmp_path / "dyn")
    kw = dict(ipc=1, dynamics_path=str(tmp_path / "dyn"))
    top = create_method("forgetting", **kw)(ds, device="cpu", progress=False)
    zero = create_method("forgetting", unlearned="zero", **kw)(ds, device="cpu", progress=False)
    assert top.meta["source_indices"][0] == 1 and zero.meta["source_indices"][0] == 3
