"""CAD-Prune / CA2D: window arithmetic (Eq. 1–2, fallback), compute alignment, record plan, end to end."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

import ddkit.methods.cad  # noqa: F401  (registers cad-prune / ca2d until the lead adds them to the built-ins)
from ddkit.config import build
from ddkit.methods.base import create_method
from ddkit.methods.cad import (CA2DConfig, CADConfig, cad_from_scores, dynamics_config, record_plan, scoring_epochs,
                               top_per_class)
from ddkit.methods.dynamics import dynamics_for
from ddkit.models import create_model
from ddkit.teachers import Teacher
from ddkit.utils import DDKitError

from tests.conftest import make_toy

S3 = math.sqrt(1 / 3)  # unbiased std of (1, 0, 1) or (0, 0, 1)


def _p() -> torch.Tensor:
    """R=6 points × 4 samples; columns built so each wrong window choice changes the answer."""
    cols = [
        [0, 1, 0, 1, 0, 1],   # alternating: every 3-window has std √(1/3)
        [0, 0, 0, 0, 1, 1],   # only the window ending at point 4 sees a change
        [5, 0, 0, 0, 0, 0],   # a change in window 0, which Eq. 2 does not use (J=3, W=2)
        [0, 0, 0, 0, 0, 9],   # a change only in the FINAL point, which Eq. 2 drops
    ]
    return torch.tensor(cols, dtype=torch.float32).T


def test_eq2_last_w_windows_drop_final_point():
    cad, j = cad_from_scores(_p(), span=3, windows=2)
    assert j == 3
    # windows k = R−J−W … R−J−1 = 1, 2: rows 1..3 and 2..4
    torch.testing.assert_close(cad, torch.tensor([S3, S3 / 2, 0.0, 0.0]))


def test_eq2_single_window_and_unbiased_std():
    p = torch.tensor([[1.0], [2.0], [4.0], [7.0], [100.0]])
    cad, _ = cad_from_scores(p, span=3, windows=1)  # window k = 1: (2, 4, 7)
    assert cad.item() == pytest.approx(torch.tensor([2.0, 4.0, 7.0]).std().item())
    assert cad.item() == pytest.approx(math.sqrt(((2 - 13 / 3) ** 2 + (4 - 13 / 3) ** 2 + (7 - 13 / 3) ** 2) / 2))


def test_span_fallback_is_j_equals_r_minus_w():
    p = _p()[:5]  # R = 5 < J + W = 8
    cad, j = cad_from_scores(p, span=6, windows=2, fallback=True)
    assert j == 3  # J' = R − W
    # windows k = 0, 1: rows 0..2 and 1..3
    col2 = (torch.tensor([5.0, 0, 0]).std() + torch.tensor([0.0, 0, 0]).std()) / 2
    torch.testing.assert_close(cad, torch.tensor([S3, 0.0, float(col2), 0.0]))
    with pytest.raises(DDKitError, match="R ≥ J \\+ W = 8"):
        cad_from_scores(p, span=6, windows=2, fallback=False)
    with pytest.raises(DDKitError, match="at least W \\+ 2 = 4"):
        cad_from_scores(p[:3], span=6, windows=2)


def test_compute_alignment_matches_hardtruths_table():
    # K = E_down·ipc·C/|D| with E_down = 300: CIFAR-100 K = 6 at IPC 10, 30 at IPC 50 (hardtruths §2.4)
    assert scoring_epochs(CADConfig(ipc=10), 50000, 100) == pytest.approx(6.0)
    assert scoring_epochs(CADConfig(ipc=50), 50000, 100) == pytest.approx(30.0)
    assert scoring_epochs(CADConfig(ipc=10), 1281167, 1000) == pytest.approx(2.3416, abs=1e-3)
    assert scoring_epochs(CADConfig(ipc=10, budget_epochs=5), 50000, 100) == 5.0


def test_record_plan_rule():
    assert record_plan(20, 6, 2, steps_per_epoch=10) == (20, 0)       # whole K ≥ J+W: once per epoch
    assert record_plan(2, 6, 2, steps_per_epoch=10) == (2, 2)         # m = 4 → every 2 iterations (5 per epoch)
    assert record_plan(2.3, 6, 2, steps_per_epoch=100) == (3, 25)     # m = ceil(8/2.3) = 4; trains ceil(K)
    assert record_plan(0.5, 6, 2, steps_per_epoch=10) == (1, 1)       # m = 16 > steps: every iteration
    assert record_plan(10.5, 6, 2, steps_per_epoch=10) == (11, 0)     # ⌊10.5⌋ = 10 ≥ 8 points at epoch ends
    assert record_plan(20, 6, 2, steps_per_epoch=10, points_per_epoch=2) == (20, 5)
    d = dynamics_config(build(CADConfig, dict(budget_epochs=2, proxy_batch_size=8)), 2.0, 80)
    assert (d.epochs, d.record_every, d.early_epochs) == (2, 2, 2.0)


def test_top_per_class_descending_with_stable_ties():
    scores = torch.tensor([0.1, 0.5, 0.5, 0.2, 0.9, 0.3])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    picks = top_per_class(scores, labels, 2, 2)
    assert [p.tolist() for p in picks] == [[1, 2], [4, 5]]


def test_config_checks():
    with pytest.raises(DDKitError, match="score"):
        CADConfig(score="forgetting")
    with pytest.raises(DDKitError, match="span"):
        CADConfig(span=1)
    with pytest.raises(DDKitError, match="pool"):
        CA2DConfig(pool="random")


PROXY = dict(proxy_arch="convnet-d1", proxy_width=8, proxy_batch_size=8)


@pytest.fixture(scope="module")
def toy():
    return make_toy(20, 4, 8)


def test_cad_prune_end_to_end_selects_top_cad(toy, tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("dyn"))
    cfg = build(CADConfig, dict(ipc=3, budget_epochs=2, dynamics_cache=cache, span=6, **PROXY))  # an explicit J (IN-1K's)
    out = create_method("cad-prune", **{k: getattr(cfg, k) for k in cfg.__dataclass_fields__})(
        toy, device="cpu", progress=False)
    # the recording is cached: reload it and redo Eq. 1–2 + the class-balanced top-ipc by hand
    dyn = dynamics_for(toy, dynamics_config(cfg, 2.0, len(toy)), cache, progress=False)
    assert dyn.num_points == 10 and dyn.record_epochs[-1].item() == pytest.approx(2.0)
    cad, j = cad_from_scores(dyn.p_true, 6, 2)
    expect = torch.cat(top_per_class(cad, toy.labels, 4, 3))
    assert out.meta["source_indices"] == expect.tolist()
    assert out.meta["cad_record_points"] == 10 and out.meta["cad_span"] == 6 and not out.meta["cad_span_fallback_used"]
    assert out.meta["cad_K"] == 2.0 and out.meta["intended_regime"] == "hl"
    torch.testing.assert_close(out.images * 255, toy.images[expect].float())
    assert out.labels.tolist() == [c for c in range(4) for _ in range(3)]
    for c in range(4):  # every kept sample out-scores every dropped one of its class
        idx = toy.class_indices(c)
        kept = set(expect[c * 3:(c + 1) * 3].tolist())
        lo = min(cad[i].item() for i in kept)
        assert all(cad[i].item() <= lo for i in idx.tolist() if i not in kept)
    # el2n score from the same cached recording (all points are "early", so EL2N is R×N)
    el = create_method("cad-prune", ipc=3, budget_epochs=2, dynamics_cache=cache, score="el2n", span=6, **PROXY)(
        toy, device="cpu", progress=False)
    cad_el, _ = cad_from_scores(dyn.el2n[0], 6, 2)
    assert el.meta["source_indices"] == torch.cat(top_per_class(cad_el, toy.labels, 4, 3)).tolist()


def test_fractional_budget_truncates_points_and_falls_back(toy, tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("dyn"))
    out = create_method("cad-prune", ipc=2, budget_epochs=0.5, dynamics_cache=cache, **PROXY)(
        toy, device="cpu", progress=False)
    assert out.meta["cad_record_points"] == 5            # every iteration, only points at epoch ≤ 0.5
    assert max(out.meta["cad_record_epochs"]) <= 0.5 + 1e-6
    assert out.meta["cad_span"] == 3 and out.meta["cad_span_rule"].startswith("J = R − W")  # J = R − W = 3
    six = create_method("cad-prune", ipc=2, budget_epochs=0.5, dynamics_cache=cache, span=6, **PROXY)(
        toy, device="cpu", progress=False)
    assert six.meta["cad_span"] == 3 and six.meta["cad_span_fallback_used"]  # J = 6 asked, R < J + W
    # compute-matched: the scoring run stops at K (its dynamics hold no point past the budget)
    dcfg = dynamics_config(build(CADConfig, dict(ipc=2, budget_epochs=0.5, **PROXY)), 0.5, len(toy))
    assert dcfg.epochs == 1 and dcfg.stop_epochs == 0.5
    assert dynamics_config(build(CADConfig, dict(ipc=2, budget_epochs=2, **PROXY)), 2.0, len(toy)).stop_epochs == 0.0


def test_ca2d_pool_is_the_cad_coreset(toy, tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("dyn"))
    torch.manual_seed(0)
    t = Teacher(create_model("convnet-d1", 4, 8, width=8), "convnet-d1", toy.classes, toy.mean, toy.std, 8,
                arch_kw={"width": 8})
    cad = create_method("cad-prune", ipc=2, budget_epochs=2, dynamics_cache=cache, **PROXY)(toy, device="cpu",
                                                                                           progress=False)
    ca = create_method("ca2d", ipc=2, budget_epochs=2, dynamics_cache=cache, **PROXY)(toy, t, device="cpu",
                                                                                     progress=False)
    assert ca.images.shape == (8, 3, 8, 8) and ca.meta["factor"] == 1 and ca.meta["intended_regime"] == "hl"
    for c in range(4):  # factor 1, pool = coreset: the same images, reordered by patch CE
        assert sorted(ca.meta["source_indices"][2 * c:2 * c + 2]) == sorted(cad.meta["source_indices"][2 * c:2 * c + 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        top = create_method("ca2d", ipc=2, budget_epochs=2, dynamics_cache=cache, pool="top_pool", pool_size=5,
                            **PROXY)(toy, t, device="cpu", progress=False)
    top5 = create_method("cad-prune", ipc=5, budget_epochs=2, dynamics_cache=cache, **PROXY)(toy, device="cpu",
                                                                                            progress=False)
    for c in range(4):
        assert set(top.meta["source_indices"][2 * c:2 * c + 2]) <= set(top5.meta["source_indices"][5 * c:5 * c + 5])
