"""DCS: Spearman with ties, size-held-fixed grouping, student test losses agree with `evaluate`, tiny study."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from ddkit.dcs import dcs, dcs_study, grouped_dcs, make_distill_loss, spearman, student_test_losses
from ddkit.evaluate import EvalConfig, evaluate
from ddkit.methods import create_method
from ddkit.models import create_model
from ddkit.teachers import Teacher
from ddkit.utils import DDKitError



def test_perfect_and_anti_correlation():
    x = [0.1, 0.5, 0.7, 2.0, 9.0]
    assert dcs(x, [v ** 3 for v in x]) == pytest.approx(1.0)          # monotone, not linear
    assert dcs(x, [-math.exp(v) for v in x]) == pytest.approx(-1.0)


def test_ties_get_average_ranks():
    # ranks x = (1, 2.5, 2.5, 4), y = (1, 2, 3, 4): ρ = 4.5 / sqrt(5 · 4.5) = sqrt(0.9)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(math.sqrt(0.9), abs=1e-12)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))     # constant side: undefined
    with pytest.raises(DDKitError, match="one test loss per"):
        dcs([1, 2], [1, 2, 3])


def test_grouped_dcs_holds_size_fixed():
    # within each IPC the objective is perfectly anti-correlated, but pooled the size effect makes it look good
    d = [10, 11, 12, 1, 2, 3]
    t = [3.0, 2.9, 2.8, 1.2, 1.1, 1.0]
    g = [10, 10, 10, 50, 50, 50]
    value, per = grouped_dcs(d, t, g)
    assert per == {10: pytest.approx(-1.0), 50: pytest.approx(-1.0)} and value == pytest.approx(-1.0)
    assert dcs(d, t) > 0.2  # pooled ρ is size-biased
    value, per = grouped_dcs([1, 2, 3, 5, 5], [1, 2, 3, 4, 6], [1, 1, 1, 2, 2])  # group 2 constant: skipped
    assert math.isnan(per[2]) and value == pytest.approx(1.0)


@pytest.fixture(scope="module")
def data(toy_pair):
    return toy_pair


CFG = EvalConfig(recipe="hardtruths-hl", regime="hl", seeds=2, student="convnet-d1", student_width=8, epochs=4)


def test_student_test_losses_train_like_evaluate(data):
    train, test = data
    s = create_method("random", ipc=3)(train, device="cpu", progress=False)
    ref = evaluate(s, test, CFG, device="cpu", progress=False)
    got = student_test_losses(s, test, CFG, device="cpu")
    assert [a for a, _ in got] == ref.accs
    assert all(math.isfinite(l) and l > 0 for _, l in got)
    with pytest.raises(DDKitError, match="hl"):
        student_test_losses(s, test, EvalConfig(regime="slkd"), device="cpu")


def test_teacher_ce_loss_and_tiny_study(data):
    train, test = data
    torch.manual_seed(0)
    t = Teacher(create_model("convnet-d1", 4, 8, width=8), "convnet-d1", train.classes, train.mean, train.std, 8)
    s = create_method("random", ipc=2)(train, device="cpu", progress=False)
    want = F.cross_entropy(t(s.images), s.labels).item()
    assert make_distill_loss("teacher_ce", t)(s, train, torch.device("cpu")) == pytest.approx(want, rel=1e-5)
    res = dcs_study(train, test, "dm", ipcs=(2, 3), subsets=3, eval_cfg=dataclasses.replace(CFG, seeds=1),
                    loss_options=dict(arch="convnet-d1", width=8, num_nets=2, real_per_class=8), device="cpu",
                    progress=False)
    assert [r["ipc"] for r in res.rows] == [2, 2, 2, 3, 3, 3]
    value, per = grouped_dcs([r["distill_loss"] for r in res.rows], [r["test_loss"] for r in res.rows],
                             [r["ipc"] for r in res.rows])
    assert set(res.per_ipc) == {2, 3} and (res.dcs == value or (math.isnan(res.dcs) and math.isnan(value)))
    assert all(r["distill_loss"] > 0 for r in res.rows)
    assert "size held fixed" in res.to_markdown()
    with pytest.raises(DDKitError, match="needs a teacher"):
        make_distill_loss("feature_mean", None)


def test_dcs_trains_through_the_evaluators_public_hook(data):
    """DCS holds no student loop of its own: `evaluate(on_student=…)` hands it each trained student."""
    from pathlib import Path

    import ddkit.dcs
    from ddkit.teachers import accuracy

    text = Path(ddkit.dcs.__file__).read_text()
    assert "train_run" not in text and "StudentTrainer" not in text and "make_plan" not in text
    train, test = data
    s = create_method("random", ipc=3)(train, device="cpu", progress=False)
    seen = []
    res = evaluate(s, test, dataclasses.replace(CFG, stack=2), device="cpu", progress=False,
                   on_student=lambda seed, m: seen.append((seed, accuracy(m, test, s.mean, s.std, device="cpu"))))
    assert [seed for seed, _ in seen] == res.seeds == [0, 1]  # one call per seed, in order (no stacking)
    assert [a for _, a in seen] == res.accs  # the trained student itself, not a copy
    assert res.accs == evaluate(s, test, CFG, device="cpu", progress=False).accs
