"""Shared fixed-shape forwards (issue 17): RDED's crops and LIC's selection of several classes in one
teacher forward, with each class's result the same bytes whether it runs alone or in any group."""
from __future__ import annotations

import warnings
from typing import List

import pytest
import torch

from ddkit.methods.base import create_method
from ddkit.methods.lic import LICConfig
from ddkit.methods.rded import RDEDConfig
from ddkit.models import create_model
from ddkit.teachers import Teacher
from ddkit.teachers.frozen import FrozenTeacher
from ddkit.teachers.shared import CPU_SCORE_BATCH, Rows, groups, score_batch, shared_forward, tensor_rows
from ddkit.utils import DDKitError, cpu_bf16_native

from tests.conftest import make_toy


# -- the engine ---------------------------------------------------------------------------------------
def _recording(calls: List[int]):
    def fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(len(x))
        return x.flatten(1).sum(1, keepdim=True) * 2
    return fn


def test_every_forward_has_the_fixed_shape_and_rows_go_back_to_their_request():
    g = torch.Generator().manual_seed(0)
    reqs = [torch.rand(n, 2, 3, generator=g) for n in (5, 0, 12, 1, 3)]
    cuts: List[int] = []

    def rows(x):
        def cut(s, e):
            cuts.append(e - s)
            return x[s:e]
        return Rows(len(x), cut)

    calls: List[int] = []
    outs = shared_forward(_recording(calls), [rows(x) for x in reqs], batch=4)
    assert calls == [4] * 6  # 21 rows → 5 full forwards + 1 padded one, all of 4 rows
    assert max(cuts) <= 4 and sum(cuts) == 21  # rows are cut on demand, at most one forward at a time
    for x, y in zip(reqs, outs):
        assert y.shape == (len(x), 1)
        assert torch.equal(y, x.flatten(1).sum(1, keepdim=True) * 2)
    calls.clear()
    shared_forward(_recording(calls), [tensor_rows(x) for x in reqs], batch=4, pad=False)
    assert calls == [4] * 5 + [1]
    with pytest.raises(ValueError):
        shared_forward(_recording(calls), [tensor_rows(reqs[0])], batch=0)
    assert groups([3, 1, 4, 1, 5], 2) == [[3, 1], [4, 1], [5]] and groups([7], 0) == [[7]]


def test_padding_makes_a_shape_dependent_kernel_group_independent():
    """A fn whose rows depend on the batch's shape (as a backend's kernel choice can): with padding a
    request's outputs are the same alone or in a group; without, they are not (the test can fail)."""
    def shape_dependent(x):
        return x[:, :1] + 1e-3 * len(x)

    a, b = torch.arange(6.).view(6, 1), torch.arange(3.).view(3, 1)
    alone = shared_forward(shape_dependent, [tensor_rows(b)], batch=4)[0]
    grouped = shared_forward(shape_dependent, [tensor_rows(a), tensor_rows(b)], batch=4)[1]
    assert torch.equal(alone, grouped)
    alone = shared_forward(shape_dependent, [tensor_rows(b)], batch=4, pad=False)[0]
    grouped = shared_forward(shape_dependent, [tensor_rows(a), tensor_rows(b)], batch=4, pad=False)[1]
    assert not torch.equal(alone, grouped)


def test_frozen_teacher_shared_logits_equal_a_forward_of_the_same_shape():
    ds = make_toy(10, 3, 16)
    torch.manual_seed(0)
    t = Teacher(create_model("convnet-d2", 3, 16, width=8), "convnet-d2", ds.classes, ds.mean, ds.std, 16,
                arch_kw={"width": 8})
    ft = FrozenTeacher(t, torch.device("cpu"))
    pools = [ds.images[ds.class_indices(c)] for c in range(3)]
    shared = ft.shared_logits(pools, max_batch=8)
    alone = [ft.shared_logits([p], max_batch=8)[0] for p in pools]
    for s, a, p in zip(shared, alone, pools):
        assert torch.equal(s, a)
        torch.testing.assert_close(s, ft.logits(p), rtol=1e-5, atol=1e-5)
    feats = ft.shared_features(pools, "penultimate", max_batch=8)
    assert feats[1].shape == (10, ft.features(pools[1]).shape[1])


# -- the methods: alone vs in a group -----------------------------------------------------------------
@pytest.fixture(scope="module")
def setup():
    ds = make_toy(14, 4, 16)
    torch.manual_seed(0)
    t = Teacher(create_model("convnet-d2", 4, 16, width=8), "convnet-d2", ds.classes, ds.mean, ds.std, 16,
                arch_kw={"width": 8})
    return ds, t


def _classes(method, ds, t, classes, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # toy classes are smaller than the 300-image pool
        return {r.cls: r for r in create_method(method, **kw).run(ds, t, classes=classes, device="cpu",
                                                                   progress=False)}


@pytest.mark.parametrize("cpu_amp", [False, True])
def test_rded_class_alone_equals_the_class_in_any_group(setup, cpu_amp):
    ds, t = setup
    # 14 images × 3 crops = 42 crops a class, forwards of 16: class boundaries fall inside forwards
    kw = dict(ipc=2, factor=2, num_crop=3, max_batch=16, store_labels=True, cpu_amp=cpu_amp)
    grouped = _classes("rded", ds, t, [0, 1, 2, 3], lookahead=4, **kw)
    pairs = _classes("rded", ds, t, [1, 2, 3], lookahead=2, **kw)
    for c in (1, 2, 3):
        alone = _classes("rded", ds, t, [c], lookahead=1, **kw)[c]
        for other in (grouped[c], pairs[c]):
            assert torch.equal(other.images, alone.images)
            assert torch.equal(other.extras["source_index"], alone.extras["source_index"])
            assert torch.equal(other.soft["soft"], alone.soft["soft"])
            assert other.meta == alone.meta
    assert grouped[1].set_meta["scoring_bf16"] == (cpu_amp and cpu_bf16_native())
    assert not torch.equal(grouped[1].images, grouped[2].images)


def test_rded_grouping_keeps_the_per_class_path_result(setup):
    """The shared path picks what scoring each class's crops in one plain forward of its own picks."""
    ds, t = setup
    from ddkit.augment import RandomResizedCrop, resized_crop
    from ddkit.data.base import to_float
    from ddkit.methods.rded import PatchScorer
    from ddkit.utils import make_generator

    grouped = _classes("rded", ds, t, [0, 1, 2, 3], lookahead=4, ipc=2, factor=2, num_crop=3, max_batch=64)
    scorer = PatchScorer(t, torch.device("cpu"), max_batch=64)
    rrc = RandomResizedCrop(8, scale=(0.08, 1.0), ratio=(1.0, 1.0), antialias=True)
    for c in range(4):
        pool, idx = ds.class_images(c, 300, generator=make_generator(0, "class", c))
        boxes = rrc.sample(len(pool) * 3, pool.shape, generator=make_generator(0, "rded", "crop", c))["box"]
        crops = resized_crop(to_float(pool).repeat_interleave(3, 0), boxes, 8, antialias=True)
        best = scorer.ce(crops, c).view(len(pool), 3).min(1).values  # the old path: this class's crops only
        order = torch.argsort(best, stable=True)[:8]
        assert grouped[c].extras["source_index"].tolist() == idx[order].tolist()
        assert grouped[c].meta["patch_ce_mean"] == pytest.approx(float(best[order].mean()), rel=1e-5)


@pytest.mark.parametrize("selection", ["lowest", "herding"])
def test_lic_class_alone_equals_the_class_in_any_group(setup, selection):
    ds, t = setup
    kw = dict(ipc=1, iterations=2, pool_size=300, max_batch=6, selection=selection, seed=2)
    grouped = _classes("lic", ds, t, [0, 1, 2, 3], lookahead=4, classes_per_step=2, **kw)
    for c in (1, 3):
        alone = _classes("lic", ds, t, [c], lookahead=1, **kw)[c]
        g = grouped[c]
        assert torch.equal(g.images, alone.images)
        assert torch.equal(g.soft["region_soft"], alone.soft["region_soft"])
        assert g.meta["selected_indices"] == alone.meta["selected_indices"]
        assert g.meta["selected_ce"] == alone.meta["selected_ce"]
    assert grouped[0].meta["selected_indices"] != grouped[1].meta["selected_indices"]


def test_lic_cpu_amp_selection_runs_and_is_recorded(setup):
    ds, t = setup
    kw = dict(ipc=1, iterations=0, store_labels=False, max_batch=8, cpu_amp=True)
    out = _classes("lic", ds, t, [0, 1, 2], lookahead=3, **kw)
    alone = _classes("lic", ds, t, [2], lookahead=1, **kw)[2]
    assert out[2].set_meta["selection_bf16"] == cpu_bf16_native()
    assert out[2].meta["selected_indices"] == alone.meta["selected_indices"]
    assert torch.equal(out[2].images, alone.images)


def test_lookahead_and_score_batch_checks_and_auto_score_batch(setup):
    for cfg in (RDEDConfig, LICConfig):
        with pytest.raises(DDKitError, match="lookahead"):
            cfg(lookahead=0)
        with pytest.raises(DDKitError, match="score-batch"):
            cfg(score_batch=-1)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert score_batch(0, cpu, 256) == CPU_SCORE_BATCH and score_batch(0, cpu, 8) == 8
    assert score_batch(0, cuda, 256) == 256 and score_batch(7, cuda, 256) == 7
    ds, t = setup
    r = _classes("rded", ds, t, [0], ipc=1, factor=2, num_crop=2, score_batch=5)[0]
    l = _classes("lic", ds, t, [0], ipc=1, iterations=0)[0]
    assert r.set_meta["score_batch"] == 5 and l.set_meta["score_batch"] == CPU_SCORE_BATCH
